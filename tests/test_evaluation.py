"""Measuring a model (course_utils.evaluation): generation, scoring, token losses, the base's checksum."""

from __future__ import annotations

import math

import pytest
import torch

from course_utils import data, evaluation, training
from tests.test_training import base_checksum, task, tiny_lora_model  # noqa: F401  (task is a fixture)


def test_batched_generation_matches_one_at_a_time(task):
    splits, tokenizer = task
    model = tiny_lora_model(tokenizer, seed=1).eval()
    with torch.no_grad():  # make the adapter non-zero, so LoRA is in the computation
        for name, p in training.trainable_parameters(model).items():
            p.normal_(0, 0.5)
    exs = splits["test"][:5]
    batched = evaluation.generate(model, tokenizer, exs, batch_size=5, max_new_tokens=6)
    single = [evaluation.generate(model, tokenizer, [ex], batch_size=1, max_new_tokens=6)[0] for ex in exs]
    assert batched == single
    result = evaluation.evaluate(model, tokenizer, exs)
    assert 0 <= result["exact_match"] <= 1 and len(result["predictions"]) == 5


def test_side_by_side_marks_right_and_wrong(task):
    exs = task[0]["test"][:2]
    table = evaluation.side_by_side(exs, ["nonsense", "x"], [data.make_answer(exs[0]["record"]), "y"], n=2)
    assert table.count("✅") == 1 and table.count("❌") == 3 and exs[1]["request"] in table


def test_token_losses_average_to_the_models_loss(task):
    splits, tokenizer = task
    model = tiny_lora_model(tokenizer, seed=2, dropout=0.0).eval()
    ex = splits["train"][0]
    rows = evaluation.token_losses(model, tokenizer, ex)
    enc = data.encode_example(tokenizer, ex)
    assert [r["token"] for r in rows] == tokenizer.convert_ids_to_tokens(enc["input_ids"][-len(rows):])
    assert len(rows) == sum(label != data.IGNORE_INDEX for label in enc["labels"])
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([enc["input_ids"]]), labels=torch.tensor([enc["labels"]])).loss
    assert abs(sum(r["loss"] for r in rows) / len(rows) - loss.item()) < 1e-5
    for r in rows:  # the guesses are sorted, and the right token's probability is exp(-loss)
        probs = [p for _, p in r["top"]]
        assert probs == sorted(probs, reverse=True) and len(probs) == 3
        if r["top"][0][0] == r["token"]:
            assert abs(probs[0] - math.exp(-r["loss"])) < 1e-5




def test_generate_texts_continues_plain_prompts_like_generate(task):
    splits, tokenizer = task
    model = tiny_lora_model(tokenizer, seed=3).eval()
    exs = splits["test"][:4]
    prompts = [data.make_prompt(ex["request"]) for ex in exs]
    assert evaluation.generate_texts(model, tokenizer, prompts, max_new_tokens=5, batch_size=3, first_line=True) == \
        evaluation.generate(model, tokenizer, exs, max_new_tokens=5)
    texts = evaluation.generate_texts(model, tokenizer, prompts[:1], max_new_tokens=5)
    assert len(texts) == 1 and 0 < len(tokenizer(texts[0], add_special_tokens=False)["input_ids"]) <= 5


def test_weights_checksum_sees_the_base_and_ignores_the_adapter(task):
    tokenizer = task[1]
    model = tiny_lora_model(tokenizer, seed=4)
    first = evaluation.weights_checksum(model)
    assert first == evaluation.weights_checksum(tiny_lora_model(tokenizer, seed=4, adapter_seed=9))  # A differs
    assert first != evaluation.weights_checksum(tiny_lora_model(tokenizer, seed=5))  # another base
    with torch.no_grad():
        for name, p in training.trainable_parameters(model).items():
            p.add_(1.0)  # training moves only the adapter ...
    assert evaluation.weights_checksum(model) == first
    assert base_checksum(model) == base_checksum(tiny_lora_model(tokenizer, seed=4))  # (the test's own reference)
    with torch.no_grad():  # ... one base weight moving by one step of float32 is seen
        w = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(math.inf))
    assert evaluation.weights_checksum(model) != first


def test_weights_checksum_is_the_same_with_or_without_peft_and_after_an_fp32_upcast(task):
    tokenizer = task[1]
    wrapped = tiny_lora_model(tokenizer, seed=6)
    plain = wrapped.get_base_model()  # the same tensors, without PEFT's name prefixes
    expected = evaluation.weights_checksum(wrapped)
    bare = tiny_lora_model(tokenizer, seed=6).unload()  # the base alone: LoRA layers swapped back out
    assert evaluation.weights_checksum(bare) == expected
    half = tiny_lora_model(tokenizer, seed=6).unload().to(torch.bfloat16)  # rounded: a real change
    assert evaluation.weights_checksum(half) != expected
    back = half.float()  # bf16 values upcast to fp32 hash as the bf16 ones did (what prepare_model_for_kbit does)
    assert evaluation.weights_checksum(back) == evaluation.weights_checksum(half)
    assert evaluation.weights_checksum(plain) == expected


def whole_tensor_checksum(model, skip=("lora_",)) -> str:
    """weights_checksum as it was first written: every tensor copied whole (to fp32, then to bytes)."""
    import hashlib
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        if any(s in name for s in skip):
            continue
        name = name.replace("base_model.model.", "").replace(".base_layer", "")
        t = p.detach().cpu()
        t = t if type(p).__name__ == "Params4bit" else t.float()
        digest.update(name.encode())
        digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def test_weights_checksum_in_pieces_equals_hashing_whole_tensors(task):
    """The streamed digest is the one of the whole tensors' bytes: for fp32, bf16 and non-contiguous weights,
    for pieces that cut rows and 4-bit blocks anywhere, and for the course's model in NF4 with LoRA."""
    from peft import prepare_model_for_kbit_training
    from course_utils import runtime
    model = tiny_lora_model(task[1], seed=7)
    w = model.base_model.model.model.layers[0].mlp.up_proj.weight
    w.data = w.data.t().contiguous().t()  # the same values, stored column-major
    assert not w.is_contiguous()
    half = tiny_lora_model(task[1], seed=7).unload().to(torch.bfloat16)
    qlora, _ = runtime.load_model(runtime.choose_profile("offline"), four_bit=True)
    qlora = training.add_peft_lora(prepare_model_for_kbit_training(qlora, use_gradient_checkpointing=False), r=4)
    assert any(type(p).__name__ == "Params4bit" for p in qlora.parameters())
    for m, sizes in ((model, (1, 100)), (half, (1, 100)), (qlora, (100, 4096))):  # 1: one value a piece
        expected = whole_tensor_checksum(m)
        assert evaluation.weights_checksum(m) == expected
        for chunk_bytes in sizes:
            assert evaluation.weights_checksum(m, chunk_bytes=chunk_bytes) == expected, (type(m), chunk_bytes)


def test_weights_checksum_makes_no_copy_of_a_whole_tensor():
    """A 64 MB bf16 weight: hashed whole, it took a 128 MB fp32 copy and 128 MB of bytes at once; in pieces of
    4 MB the process's peak resident memory (VmHWM, reset through /proc/self/clear_refs) must grow by far less
    than one fp32 copy, and Python must trace almost no allocation (the bytes copies were Python objects)."""
    import re
    import tracemalloc

    def peak_kb():
        return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))

    big = torch.nn.Linear(8192, 4096, bias=False).to(torch.bfloat16)  # 33.5 M values: 64 MB in bf16
    big.weight.data.fill_(0.5)  # every page touched, so it is resident before the measurement
    evaluation.weights_checksum(torch.nn.Linear(2, 2))  # whatever the first call loads, loaded before it
    try:
        open("/proc/self/clear_refs", "w").write("5")  # resets the peak to what is resident now
    except OSError:
        pytest.skip("this kernel can't reset the peak resident size")
    before = peak_kb()
    tracemalloc.start()
    digest = evaluation.weights_checksum(big)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    extra_mb = (peak_kb() - before) / 1024
    fp32_copy_mb = big.weight.numel() * 4 / 2**20
    assert extra_mb < fp32_copy_mb / 4, (extra_mb, fp32_copy_mb)
    assert traced_peak < 2**20, traced_peak
    assert digest == whole_tensor_checksum(big)


def test_folder_mb_counts_every_file_below(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1_500_000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 500_000)
    assert evaluation.folder_mb(tmp_path) == 2.0


def test_first_line_cuts_at_the_end_of_the_first_non_empty_line():
    assert evaluation.cut_after_first_line(" for TEA | with omar\nRequest: more") == " for TEA | with omar"
    assert evaluation.cut_after_first_line("\n\n for TEA\nmore") == "\n\n for TEA"
    assert evaluation.cut_after_first_line(" no newline") == " no newline"


def test_generation_stops_after_the_first_line(task):
    splits, tokenizer = task
    model = tiny_lora_model(tokenizer, seed=3).eval()
    prompts = [data.make_prompt(ex["request"]) for ex in splits["test"][:6]]
    free = evaluation.generate_texts(model, tokenizer, prompts, max_new_tokens=40)
    stopped = evaluation.generate_texts(model, tokenizer, prompts, max_new_tokens=40, first_line=True)
    assert stopped == [evaluation.cut_after_first_line(text) for text in free]
    assert all("\n" not in text.strip() for text in stopped)


def test_interval_is_wilsons():
    """Wilson's score interval against values worked by hand: 0 of n gives [0, z^2 / (n + z^2)]; 5 of 10 gives the
    textbook [0.237, 0.763]; it narrows as n grows and stays inside [0, 1]."""
    from course_utils.evaluation import interval

    assert interval(0.0, 100) == pytest.approx((0.0, 1.96**2 / (100 + 1.96**2)))
    assert interval(0.5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert interval(1.0, 50)[1] == pytest.approx(1.0) and interval(1.0, 50)[0] < 1.0
    assert interval(0.9, 400)[1] - interval(0.9, 400)[0] < interval(0.9, 100)[1] - interval(0.9, 100)[0]
    assert interval(0.3, 0) == (0.0, 1.0)
