"""Chat templates and the SFTTrainer bridge (course_utils.templates, course_utils.sft): the template's assistant
mask equals notebook 06's labels, a template that leaves EOS out of the mask is caught, SmolLM2's template
grades its end-of-turn token, and TRL reads the course loop's batches in the course loop's order."""

from __future__ import annotations

import pytest
import torch

from course_utils import data, real_model, sft, templates
from course_utils.runtime import OFFLINE_MODEL, assets_dir


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    tok = data.prepare_tokenizer(AutoTokenizer.from_pretrained(assets_dir() / OFFLINE_MODEL))
    return templates.with_course_template(tok)


@pytest.fixture(scope="module")
def examples():
    return data.load_split("train", limit=300)


def test_the_course_template_writes_notebook_06s_prompt_and_answer(tokenizer, examples):
    ex = examples[0]
    text = tokenizer.apply_chat_template(templates.conversation(ex), tokenize=False)
    assert text == tokenizer.bos_token + data.make_prompt(ex["request"]) + data.make_answer(ex["record"]) \
        + tokenizer.eos_token


def test_the_assistant_mask_is_notebook_06s_loss_mask_token_for_token(tokenizer, examples):
    for ex in examples:
        assert templates.assistant_labels(tokenizer, templates.conversation(ex)) == data.encode_example(tokenizer, ex)
        assert templates.completion_labels(tokenizer, templates.conversation(ex)) == \
            data.encode_example(tokenizer, ex)


def test_a_template_that_leaves_eos_outside_the_markers_is_caught(tokenizer, examples):
    """The "never stops" bug: EOS written after {% endgeneration %} is not graded, and the labels differ."""
    from transformers import AutoTokenizer
    broken = AutoTokenizer.from_pretrained(assets_dir() / OFFLINE_MODEL)
    broken.chat_template = templates.COURSE_TEMPLATE.replace(
        "{{ ' ' + m.content + eos_token }}{% endgeneration %}", "{{ ' ' + m.content }}{% endgeneration %}{{ eos_token }}")
    assert broken.chat_template != templates.COURSE_TEMPLATE
    labels = templates.assistant_labels(broken, templates.conversation(examples[0]))
    assert templates.graded(broken, labels)[-1] != broken.eos_token
    assert labels != data.encode_example(tokenizer, examples[0])


def test_a_template_without_markers_gets_a_clear_message(examples):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(assets_dir() / OFFLINE_MODEL)
    tok.chat_template = templates.COURSE_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with pytest.raises(ValueError, match="completion_labels"):
        templates.assistant_labels(tok, templates.conversation(examples[0]))
    graded = templates.graded(tok, templates.completion_labels(tok, templates.conversation(examples[0])))
    assert graded[-1] == tok.eos_token and graded[0] == "Ġfor"


@pytest.mark.skipif(real_model.problem() is not None, reason="SmolLM2's local copy is not installed")
def test_smollm2s_template_grades_the_record_and_its_end_of_turn(examples):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(real_model.local_copy())
    encoded = templates.completion_labels(tok, templates.conversation(examples[0]))
    graded = templates.graded(tok, encoded)
    assert graded[-2:] == ["<|im_end|>", "Ċ"] and tok.eos_token == "<|im_end|>"
    assert tok.convert_tokens_to_string(graded[:-2]) == data.format_record(examples[0]["record"])


def test_llama31s_template_is_the_published_layout():
    text = templates.llama31_template()
    for piece in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "bos_token"):
        assert piece in text


def test_trl_reads_the_course_loops_examples_in_its_order(tokenizer, examples):
    batches = data.Batches(data.encode_split(tokenizer, examples), 32, tokenizer.pad_token_id, seed=3)
    order = sft.course_order(batches, 12)  # past one epoch of 9 batches: the next epoch's order
    assert len(order) == 12 * 32
    for step in (0, 8, 9, 11):
        ids = [data.encode_example(tokenizer, examples[i])["input_ids"] for i in order[step * 32:(step + 1) * 32]]
        assert data.pad_batch([{"input_ids": i, "labels": i} for i in ids], tokenizer.pad_token_id)["input_ids"] \
            .equal(batches.batch(step)["input_ids"])
    rows = sft.prompt_completion(examples, order[:2])
    assert [m["role"] for m in rows[0]["prompt"]] == ["system", "user"]
    assert rows[1]["completion"][0]["content"] == data.format_record(examples[order[1]]["record"])


def test_sfttrainers_first_batch_is_the_course_loops(tokenizer, examples, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer
    batches = data.Batches(data.encode_split(tokenizer, examples), 16, tokenizer.pad_token_id, seed=0)
    rows = sft.prompt_completion(examples, sft.course_order(batches, 2))
    config = SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=16, seed=0,
                       train_sampling_strategy="sequential", bf16=False, gradient_checkpointing=False,
                       logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
                       dataloader_pin_memory=False)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(assets_dir() / OFFLINE_MODEL), args=config,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    sft.quiet(trainer)
    first = next(iter(trainer.get_train_dataloader()))
    assert torch.equal(first["labels"], batches.batch(0)["labels"])
    trainer.train()
    losses = sft.logged_losses(trainer)
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
