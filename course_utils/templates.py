"""Chat templates: how a conversation becomes the text and token ids a model reads, and which tokens it is
graded on.

An instruct model was trained on conversations written one exact way (its special tokens, the role names, where
each turn ends); the tokenizer stores that way as a small Jinja program, its chat template, and
`tokenizer.apply_chat_template(messages)` runs it. The template's `{% generation %}` ... `{% endgeneration %}`
markers say which characters the assistant wrote: with `return_assistant_tokens_mask=True` the tokenizer turns
them into a 0/1 mask per token, the loss mask of training on the assistant's turn only.

`COURSE_TEMPLATE` writes the course's own prompt format (course_utils.data) as a chat template, so the course's
small model gets one; `llama31_template` reads Llama 3.1 Instruct's published template from TRL's copy of it.
"""

from __future__ import annotations

from importlib.resources import files

from course_utils import data

# The course's prompt format as a chat template: the system turn is the instruction, the user turn the request,
# the assistant turn the record and EOS, inside the generation markers. {{ '\n' }} writes a newline (Jinja here
# trims the newline after a {% ... %} tag).
COURSE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}"
    "{% elif m.role == 'user' %}{{ '\\nRequest: ' + m.content + '\\nRecord:' }}"
    "{% elif m.role == 'assistant' %}{% generation %}{{ ' ' + m.content + eos_token }}{% endgeneration %}"
    "{% endif %}{% endfor %}"
)


def conversation(example: dict, answer: bool = True) -> list[dict]:
    """A course example as chat messages: the instruction (system), the request (user), the record (assistant)."""
    messages = [{"role": "system", "content": data.INSTRUCTION}, {"role": "user", "content": example["request"]}]
    if answer:
        messages.append({"role": "assistant", "content": data.format_record(example["record"])})
    return messages


def with_course_template(tokenizer):
    """The course tokenizer with COURSE_TEMPLATE as its chat template (returned for chaining)."""
    tokenizer.chat_template = COURSE_TEMPLATE
    return tokenizer


def assistant_labels(tokenizer, messages: list[dict]) -> dict:
    """Token ids of the whole conversation and labels that keep only the assistant's tokens (IGNORE_INDEX
    elsewhere), from the template's generation markers."""
    if "generation" not in (tokenizer.chat_template or ""):
        raise ValueError("this chat template has no {% generation %} markers, so it can't say which tokens the "
                         "assistant wrote: use completion_labels instead")
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids = list(out["input_ids"])
    return {"input_ids": ids, "labels": [i if keep else data.IGNORE_INDEX
                                         for i, keep in zip(ids, out["assistant_masks"])]}


def completion_labels(tokenizer, messages: list[dict]) -> dict:
    """Labels for any chat template: everything after the prompt (the conversation up to the generation prompt)
    is the completion, as TRL's SFTTrainer masks a prompt-completion dataset."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
    ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    if ids[:len(prompt)] != list(prompt):
        raise ValueError("the template writes the prompt differently once the answer follows; the completion "
                         "can't be found by its prefix")
    return {"input_ids": ids, "labels": [data.IGNORE_INDEX] * len(prompt) + ids[len(prompt):]}


def graded(tokenizer, encoded: dict) -> list[str]:
    """The tokens a loss grades (labels not IGNORE_INDEX), as strings."""
    return tokenizer.convert_ids_to_tokens([i for i in encoded["labels"] if i != data.IGNORE_INDEX])


def llama31_template() -> str:
    """Llama 3.1 Instruct's chat template as Meta published it with meta-llama/Llama-3.1-8B-Instruct, read from
    the copy TRL ships (trl/chat_templates/llama3_1.jinja), which TRL compares byte for byte with the model's."""
    return (files("trl") / "chat_templates" / "llama3_1.jinja").read_text(encoding="utf-8")


def chat_tokenizer(profile):
    """SmolLM2-135M-Instruct's tokenizer, with its chat template: the cpu profile's (Hub or local copy), else the
    local copy when it can be had; else, after a sentence, the course's tokenizer with COURSE_TEMPLATE."""
    from transformers import AutoTokenizer

    from course_utils import real_model, runtime
    if profile.name == "cpu":
        return AutoTokenizer.from_pretrained(profile.model_id)
    why = real_model.problem()
    if why is None:
        try:
            return AutoTokenizer.from_pretrained(real_model.local_copy())
        except (OSError, RuntimeError) as err:
            why = str(err).split("\n")[0]
    print(f"SmolLM2's tokenizer can't be had here ({why}); showing the course's own template instead.")
    return with_course_template(AutoTokenizer.from_pretrained(runtime.assets_dir() / runtime.OFFLINE_MODEL))
