"""Prompting before fine-tuning: the course's task asked with a few solved examples in the prompt (few-shot),
as a chat conversation where the model has a chat template. Notebook 06 scores it against the bare prompt, so
that the gain of fine-tuning is measured against the best prompt, not against none."""

from __future__ import annotations

from course_utils import data


def few_shot_prompt(request: str, shots: list[dict], tokenizer=None) -> str:
    """The prompt for `request` with `shots` (examples with "request" and "record") solved before it.

    With a tokenizer that has a chat template (an instruct model), the instruction is the system turn, each shot
    a user turn and the assistant's record, and the request the last user turn, followed by the template's
    generation prompt: the form a chat model was trained on. Without one (the course's own model), the shots are
    written in the course's plain format, `Request: ...` / `Record: ...`, under the instruction once."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": data.INSTRUCTION}]
        for shot in shots:
            messages += [{"role": "user", "content": shot["request"]},
                         {"role": "assistant", "content": data.format_record(shot["record"])}]
        messages.append({"role": "user", "content": request})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    solved = "".join(f"Request: {shot['request']}\nRecord:{data.make_answer(shot['record'])}\n" for shot in shots)
    return data.make_prompt(request).replace("Request: ", solved + "Request: ", 1)
