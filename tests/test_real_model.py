"""The Hub profiles' code path on real weights, offline: SmolLM2-135M-Instruct from its local copy
(course_utils.real_model), with its BPE tokenizer, through the same data, training and evaluation code."""

from __future__ import annotations

import pytest
import torch

from course_utils import data, evaluation, real_model, runtime, training
from course_utils.architecture import num_params

pytestmark = pytest.mark.skipif(real_model.problem() is not None, reason=str(real_model.problem()))


@pytest.fixture(scope="module")
def profile():
    env = runtime.Environment(colab=False, gpu=None, hub=False, token=False)
    chosen = runtime.choose_profile("cpu", env)
    assert chosen.name == "cpu" and chosen.model_id == str(real_model.cache_folder())
    return chosen  # load_model converts the copy once per machine (about a minute), then loads it in seconds


@pytest.fixture(scope="module")
def loaded(profile):
    model, tokenizer = runtime.load_model(profile)
    return model, data.prepare_tokenizer(tokenizer)


def test_the_local_copy_is_the_real_pretrained_model(loaded):
    model, tokenizer = loaded
    assert type(model).__name__ == "LlamaForCausalLM" and num_params(model) == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert evaluation.generate_texts(model, tokenizer, ["The capital of France is"], 3)[0].startswith(" Paris")


def test_the_loss_mask_with_a_bpe_tokenizer(loaded):
    tokenizer = loaded[1]
    examples = data.load_split("train", limit=300)
    for ex in examples:
        enc = data.encode_example(tokenizer, ex)
        prompt = data.encode_prompt(tokenizer, ex)
        whole = tokenizer(data.make_prompt(ex["request"]) + data.make_answer(ex["record"]))["input_ids"]
        assert enc["input_ids"] == whole + [tokenizer.eos_token_id]  # the prompt/answer boundary is exact
        assert enc["labels"][:len(prompt)] == [data.IGNORE_INDEX] * len(prompt)
        assert enc["labels"][len(prompt):] == enc["input_ids"][len(prompt):]  # the answer and EOS are graded
    batch = data.pad_batch(data.encode_split(tokenizer, examples[:8]), tokenizer.pad_token_id)
    padding = batch["attention_mask"] == 0
    assert padding.any() and (batch["input_ids"][padding] == tokenizer.eos_token_id).all()  # pad is EOS here ...
    assert (batch["labels"][padding] == data.IGNORE_INDEX).all()  # ... but padding is never graded
    ends = batch["attention_mask"].sum(1) - 1
    assert (batch["labels"][torch.arange(8), ends] == tokenizer.eos_token_id).all()  # the one real EOS is


def test_batched_generation_equals_one_at_a_time(loaded):
    model, tokenizer = loaded
    examples = data.load_split("test", limit=4)
    batched = evaluation.generate(model, tokenizer, examples, batch_size=4, max_new_tokens=8)
    alone = [evaluation.generate(model, tokenizer, [ex], max_new_tokens=8)[0] for ex in examples]
    assert batched == alone


def test_a_short_lora_run_writes_the_record_stops_at_eos_and_survives_save_reload_merge(profile, tmp_path):
    from peft import PeftModel
    model, tokenizer = runtime.load_model(profile)
    tokenizer = data.prepare_tokenizer(tokenizer)
    examples = data.load_split("train", limit=2)
    top = list(range(model.config.num_hidden_layers - 6, model.config.num_hidden_layers))
    model = training.add_peft_lora(model, r=8, alpha=16, dropout=0.0, layers=top)  # on q, k, v, o
    batches = data.Batches(data.encode_split(tokenizer, examples), 2, tokenizer.pad_token_id)
    result = training.train(model, batches, training.TrainConfig(steps=20, batch_size=2, lr=5e-3, warmup_steps=2),
                            show_progress=False)
    assert result.history[-1]["loss"] < 0.1 * result.history[0]["loss"]
    with torch.no_grad():
        ids = torch.tensor([data.encode_prompt(tokenizer, examples[0])])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    assert new[-1] == tokenizer.eos_token_id and len(new) < 40  # it stopped by itself (pad = EOS did not hide EOS)
    assert data.parse_record(tokenizer.decode(new, skip_special_tokens=True)) == examples[0]["record"]

    model.save_pretrained(tmp_path / "adapter")
    probe = torch.tensor([data.encode_example(tokenizer, ex)["input_ids"][:40] for ex in examples])
    with torch.no_grad():
        trained = model(input_ids=probe).logits
        fresh, _ = runtime.load_model(profile)
        reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
        torch.testing.assert_close(reloaded(input_ids=probe).logits, trained, rtol=0, atol=1e-5)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=probe).logits, trained, rtol=0, atol=2e-3)


def test_qlora_through_bitsandbytes_on_the_cpu(profile):
    from course_utils.quantization import four_bit_problem
    if (why := four_bit_problem("cpu")) is not None:
        pytest.skip(why)
    from peft import prepare_model_for_kbit_training
    model, tokenizer = runtime.load_model(profile, four_bit=True)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    tokenizer = data.prepare_tokenizer(tokenizer)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    top = [model.config.num_hidden_layers - 1]
    model = training.add_peft_lora(model, r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj"), layers=top)
    checksum = evaluation.weights_checksum(model)
    batches = data.Batches(data.encode_split(tokenizer, data.load_split("train", limit=4)), 2,
                           tokenizer.pad_token_id)
    result = training.train(model, batches, training.TrainConfig(steps=2, batch_size=2, lr=1e-3, warmup_steps=1),
                            show_progress=False)
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["grad_norm"] > 0 for r in result.history)
    assert evaluation.weights_checksum(model) == checksum  # the 4-bit base is untouched


def test_the_committed_smollm2_sweep_was_measured_on_this_data():
    """Notebook 07's section 9: benchmarks/results/lora_sweeps_smollm2.json names the data it was measured on;
    the real task built here (SmolLM2's tokens of the course's data and frozen prose) is that data."""
    import json

    from benchmarks import lora_sweeps
    from course_utils import sweeps

    saved = json.loads(lora_sweeps.REAL_RESULTS.read_text())
    assert sweeps.fingerprint(sweeps.real_task()) == saved["task"]["data_sha256"]


def test_a_damaged_local_copy_is_named_and_converted_again(tmp_path, monkeypatch, capsys):
    """A copy whose weights file was cut short loads after one conversion, in the cpu profile (issue 29, item 7)."""
    monkeypatch.setenv(real_model.CACHE_ENV, str(tmp_path))
    folder = real_model.local_copy()
    (folder / "model.safetensors").write_bytes(b"cut short")
    profile = runtime.choose_profile("cpu")
    model, _ = runtime.load_model(profile)
    out = capsys.readouterr().out
    assert "That copy is damaged" in out and "converted again" in out, out
    assert profile.name == "cpu" and model.config.num_hidden_layers == 30
