"""Notebook 08's exercise checkers: the right answer, worked out here from the arithmetic's rules, passes with a "✅"
line; plausible mistakes get a "❌" hint that does not give it away; answers of the wrong type get a sentence."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from course_utils.configs import load_config
from course_utils.distributed import per_gpu_memory
from course_utils.exercises import nb08
from course_utils.lora import lora_params
from course_utils.memory import training_memory
from tests.test_exercises import ODD_ANSWERS, assert_right, assert_wrong_words, verdict

CHECKERS = {name: f for name, f in inspect.getmembers(importlib.import_module("course_utils.exercises.nb08"),
                                                     inspect.isfunction)
            if name.startswith("check_") and f.__module__ == nb08.__name__}


def test_notebook_08_has_at_least_four_checked_exercises():
    assert len(CHECKERS) >= 4, sorted(CHECKERS)


@pytest.mark.parametrize("kind", ODD_ANSWERS)
@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_an_answer_of_the_wrong_type_gets_a_sentence_never_a_traceback(capsys, name, kind):
    ok, out = verdict(capsys, CHECKERS[name], ODD_ANSWERS[kind])
    assert ok is False and out.startswith("❌ Not yet."), out


@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_the_blank_gets_a_hint(capsys, name):
    ok, out = verdict(capsys, CHECKERS[name], None)
    assert ok is False and out.startswith("❌ Not yet.") and len(out) > 30, out


def test_full_70b_gpus(capsys):
    est = training_memory(load_config("llama-3.1-70b"), **nb08.FULL_70B_RUN)
    fits = {n: per_gpu_memory(est, n, "fsdp").fits("A100 80GB") for n in (8, 16, 32, 64)}
    assert fits == {8: False, 16: False, 32: True, 64: True}  # 16 bytes per weight: 1.1 TB over 32 GPUs
    assert nb08.full_70b_gpus() == 32
    assert_right(capsys, nb08.check_full_70b_gpus, 32)
    assert_right(capsys, nb08.check_full_70b_gpus, torch.tensor(32))
    out = assert_wrong_words(capsys, nb08.check_full_70b_gpus, 64, "32")
    assert "fewer would too" in out
    out = assert_wrong_words(capsys, nb08.check_full_70b_gpus, 16, "32")  # the states alone fit 16
    assert "gathers whole units" in out
    out = assert_wrong_words(capsys, nb08.check_full_70b_gpus, 8, "32")
    assert "still more than 80 GB" in out
    ok, out = verdict(capsys, nb08.check_full_70b_gpus, 30)
    assert ok is False and "Answer with one of the counts" in out, out


def test_lora_optimizer_bytes(capsys):
    config = load_config("llama-3.1-8b")
    n = lora_params(config, 16, ["q_proj", "k_proj", "v_proj", "o_proj"])
    right = 4 * 2 * 32 * 4 + (2 * n * 4) // 4  # 256 tensors: their step counters whole, the moments split 4 ways
    assert nb08.lora_optimizer_bytes() == right
    assert_right(capsys, nb08.check_lora_optimizer_bytes, right)
    assert_right(capsys, nb08.check_lora_optimizer_bytes, 2 * n * 4 / 4)  # without the counters: close enough
    out = assert_wrong_words(capsys, nb08.check_lora_optimizer_bytes, 2 * n * 4 + 4 * 256, f"{right:,}")
    assert "one GPU alone" in out
    out = assert_wrong_words(capsys, nb08.check_lora_optimizer_bytes, n * 4 / 4, f"{right:,}")  # one moment
    assert "two float32 moments" in out


@pytest.mark.parametrize("checker, right, wrong", [
    (nb08.check_shards_weights, "c", ("a", "b", "d")),
    (nb08.check_405b_on_a_node, "c", ("a", "b", "d")),
    (nb08.check_quant_storage, "a", ("b", "c", "d")),
])
def test_the_choices(capsys, checker, right, wrong):
    assert_right(capsys, checker, right)
    assert_right(capsys, checker, f"({right.upper()})")
    for letter in wrong:
        assert_wrong_words(capsys, checker, letter, "Correct")
    ok, out = verdict(capsys, checker, "z")
    assert ok is False and "Expected one of the letters" in out, out


def test_the_405b_answer_is_what_the_arithmetic_says():
    config = load_config("llama-3.1-405b")
    run = dict(rank=16, targets=("q_proj", "k_proj", "v_proj", "o_proj"), batch_size=1, seq_len=512)
    fits = {m: per_gpu_memory(training_memory(config, m, **run), 8, "fsdp").fits("H100")
            for m in ("full-mixed", "lora", "qlora")}
    assert fits == {"full-mixed": False, "lora": False, "qlora": True}


def test_the_strategy_by_name_counts_too(capsys):
    assert_right(capsys, nb08.check_shards_weights, "FSDP / ZeRO-3")
    assert_right(capsys, nb08.check_405b_on_a_node, "QLoRA (NF4 base)")


@pytest.fixture(scope="module")
def accumulation_run():
    """Exercise 6's experiment as the notebook runs it: the course's model, 8 training examples with the loss on
    every token, one batch of 8 against 4 micro-batches of 2 (each mean / 4), and the token-weighted fix."""
    from course_utils import data, runtime
    model, tokenizer = runtime.load_model(runtime.choose_profile("offline"), four_bit=False)
    encoded = data.encode_split(tokenizer, data.load_split("train", limit=8))
    texts = [{"input_ids": e["input_ids"], "labels": e["input_ids"]} for e in encoded]

    def gradient(groups, by_tokens=False):
        batches = [data.pad_batch(group, tokenizer.pad_token_id) for group in groups]
        counts = [(batch["labels"][:, 1:] != -100).sum() for batch in batches]
        model.zero_grad()
        for batch, n in zip(batches, counts):
            loss = model(**batch).loss
            (loss * n / sum(counts) if by_tokens else loss / len(groups)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    micro = [texts[i:i + 2] for i in range(0, 8, 2)]
    return {"lengths": [len(t["input_ids"]) for t in texts], "one_batch": gradient([texts]),
            "accumulated": gradient(micro), "fixed": gradient(micro, by_tokens=True)}


def test_accumulation_is_judged_against_what_the_run_measured(capsys, accumulation_run):
    """Exercise 6, predict then run: plain accumulation of per-micro-batch means differs from the batch's gradient
    when the micro-batches hold different numbers of tokens; weighing them by their tokens gives it back."""
    run = accumulation_run
    assert len(set(run["lengths"])) > 1, "the examples must differ in length, or there is nothing to see"
    one_batch, accumulated = run["one_batch"], run["accumulated"]
    relative, cosine = nb08.accumulation_figures(accumulated, one_batch)
    assert relative > 1e-3 and cosine < 1 - 1e-6, (relative, cosine)
    assert nb08.what_accumulation_did(accumulated, one_batch) == "b"
    assert nb08.what_accumulation_did(run["fixed"], one_batch) == "a"  # what the praise and the solution claim
    ok, out = verdict(capsys, lambda a: nb08.check_accumulation(a, accumulated, one_batch), "b")
    assert ok is True and "n_i / N" in out, out
    for wrong in ("a", "c"):
        ok, out = verdict(capsys, lambda a: nb08.check_accumulation(a, accumulated, one_batch), wrong)
        assert ok is False and "The run says (b)" in out, out
    assert verdict(capsys, lambda a: nb08.check_accumulation(a, run["fixed"], one_batch), "a")[0] is True
    ok, out = verdict(capsys, lambda a: nb08.check_accumulation(a, accumulated, one_batch), None)
    assert ok is False and "MY_PREDICTION" in out and "(b)" not in out, "a blank prediction must not be told"
    for odd in ODD_ANSWERS.values():
        ok, out = verdict(capsys, lambda a: nb08.check_accumulation(a, accumulated, one_batch), odd)
        assert ok is False and out.startswith("❌ Not yet."), out


def test_the_accumulation_outcome_reader_on_each_case(capsys):
    torch.manual_seed(0)
    g = torch.randn(1000)
    other = g + 0.1 * torch.randn(1000)
    assert nb08.what_accumulation_did(g + 1e-7 * torch.randn(1000), g) == "a"
    assert nb08.what_accumulation_did(2 * g, g) == "c"
    assert nb08.what_accumulation_did(other, g) == "b"
    assert nb08.check_accumulation("c", 2 * g, g) is True and nb08.check_accumulation("a", g, g) is True
    assert nb08.check_accumulation("b", g, g) is False
    capsys.readouterr()
    assert "Run the cell" in verdict(capsys, nb08.check_accumulation, "b")[1]


def test_accumulation_options_read_alike():
    lengths = {letter: len(text) for letter, text in nb08.ACCUMULATION.items()}
    assert max(lengths, key=lengths.get) != "b" and lengths["b"] <= 1.25 * max(lengths.values())


def test_the_quant_storage_hint_points_to_the_section_with_the_storage_table(capsys):
    """Exercise 5's hint sends the student to "section 7" for the parameter's bytes: that section must be the one
    whose cell loads the model with bnb_4bit_quant_storage and prints the bytes."""
    import re

    import nbformat

    from scripts.run_notebooks import notebook_paths
    path = next(p for p in notebook_paths() if p.name.startswith("08"))
    section, sections = None, {}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown":
            for number in re.findall(r"^## (\d+)\.", cell.source, re.M):
                section = number
        elif "bnb_4bit_quant_storage = storage" in cell.source:
            sections["storage table"] = section
    hinted = re.findall(r"section (\d+)", verdict(capsys, nb08.check_quant_storage, "c")[1])
    assert sections["storage table"] == "7" and set(hinted) == {"7"}, (sections, hinted)
