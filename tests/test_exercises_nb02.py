"""Notebook 02's new and changed pieces: the exercise checkers (right answers pass, wrong ones and answers of the
wrong type get one "❌" line, never the answer; the predict-then-run one is judged against what its run counted),
the suggestion that names its adapters, and the calculator built from notebook 06's T4 preset."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from course_utils.configs import load_config  # noqa: E402
from course_utils.exercises import nb02  # noqa: E402
from course_utils.lora import lora_params  # noqa: E402
from course_utils.memory import preset_memory, training_memory  # noqa: E402
from course_utils.params import LINEAR_KINDS  # noqa: E402
from course_utils.training import PRESETS  # noqa: E402
from tests.test_exercises import assert_right, assert_wrong, verdict  # noqa: E402

ODD = ["abc", 2.5, torch.tensor([1.0, 2.0]), [[1], "x"], {"a": 1}, True, 7]
NEW_CHECKERS = [nb02.check_checkpointing_part, nb02.check_targets_under_budget, nb02.check_checkpoint_bytes]


def assert_wrong_words(capsys, checker, answer, *secret):
    ok, out = verdict(capsys, checker, answer)
    assert ok is False and out.startswith("❌ Not yet."), out
    for word in secret:
        assert word not in out, f"the hint gives {word!r} away: {out}"
    return out


@pytest.mark.parametrize("checker", NEW_CHECKERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("answer", ODD, ids=repr)
def test_an_answer_of_the_wrong_type_gets_a_sentence(capsys, checker, answer):
    ok, out = verdict(capsys, checker, answer)
    assert ok is False and out.startswith("❌ Not yet."), out


@pytest.mark.parametrize("checker", NEW_CHECKERS, ids=lambda c: c.__name__)
def test_the_blank_gets_the_hint(capsys, checker):
    ok, out = verdict(capsys, checker, None)
    assert ok is False and out.startswith("❌ Not yet.") and len(out) > 40, out


# --- exercise 3: what gradient checkpointing shrinks

def test_checkpointing_shrinks_the_activations_and_nothing_else_much():
    config = load_config("llama-3.1-8b")
    run = dict(rank=16, targets=("q_proj", "v_proj"), batch_size=2, seq_len=1024)
    with_gc = training_memory(config, "qlora", gradient_checkpointing=True, **run).parts()
    without = training_memory(config, "qlora", gradient_checkpointing=False, **run).parts()
    shrunk = {part: without[part] - with_gc[part] for part in with_gc}
    assert max(shrunk, key=shrunk.get) == "activations" and shrunk["activations"] > 1e9
    assert all(v == 0 for part, v in shrunk.items() if part != "activations")
    assert set(nb02.PARTS) >= set(with_gc)


def test_checkpointing_part(capsys):
    assert_right(capsys, nb02.check_checkpointing_part, "activations")
    assert_right(capsys, nb02.check_checkpointing_part, " Activations ")
    for wrong in ("weights", "gradients", "optimizer states", "LoRA adapter", "16-bit copies (autocast)"):
        assert_wrong_words(capsys, nb02.check_checkpointing_part, wrong, "Correct")
    ok, out = verdict(capsys, nb02.check_checkpointing_part, "the KV cache")
    assert ok is False and "is not a part of the estimate" in out, out
    ok, out = verdict(capsys, nb02.check_checkpointing_part, 3)
    assert "Expected one part's name (a string)" in out and "got 3 (int)" in out, out


# --- exercise 4: choosing targets under a memory budget

def test_the_budget_is_decided_by_the_estimates():
    config = load_config("llama-3.1-8b")
    fits = {name: training_memory(config, targets=t, **nb02.BUDGET_RUN).fits("T4")
            for name, t in nb02.TARGET_SETS.items()}
    assert fits == {"qv": True, "attention": True, "mlp": True, "all-linear": False}
    params = {name: lora_params(config, 64, t) for name, t in nb02.TARGET_SETS.items()}
    assert params["mlp"] > params["attention"] > params["qv"]  # the MLP's adapters are the biggest that fit
    assert nb02.best_fitting_set() == "mlp"


def test_targets_under_budget(capsys):
    assert_right(capsys, nb02.check_targets_under_budget, "mlp")
    assert_right(capsys, nb02.check_targets_under_budget, " MLP")
    for wrong in ("qv", "attention"):
        ok, out = verdict(capsys, nb02.check_targets_under_budget, wrong)
        assert ok is False and "another set that fits trains more" in out and "mlp" not in out, out
    ok, out = verdict(capsys, nb02.check_targets_under_budget, "all-linear")
    assert ok is False and "does not fit" in out and "mlp" not in out, out
    ok, out = verdict(capsys, nb02.check_targets_under_budget, "lm_head")
    assert ok is False and "is not a name of nb02.TARGET_SETS" in out, out
    ok, out = verdict(capsys, nb02.check_targets_under_budget, ["mlp"])
    assert ok is False and "Expected the name of a target set (a string)" in out, out


# --- exercise 7 (Going deeper): the bytes of the checkpoints

def test_checkpoint_bytes(capsys):
    c = load_config("llama-3.1-70b")
    right = c.num_hidden_layers * 2 * 2048 * c.hidden_size * 2
    assert right == nb02.checkpoint_bytes() == 5_368_709_120
    assert_right(capsys, nb02.check_checkpoint_bytes, right)
    assert_right(capsys, nb02.check_checkpoint_bytes, float(right))
    for wrong in (right // c.num_hidden_layers,  # one layer only
                  right // 2,                    # one sequence, not the batch
                  2 * right,                     # fp32 instead of bf16
                  right // 2048):                # one token per sequence
        assert_wrong(capsys, nb02.check_checkpoint_bytes, wrong, right)
    ok, out = verdict(capsys, nb02.check_checkpoint_bytes, "5 GB")
    assert ok is False and "Expected a number, got '5 GB' (str)." in out, out



# --- exercise 5, predict then run: the numbers AdamW keeps after one step, full fine-tuning against LoRA

LORA_TARGETS = ["q_proj", "v_proj"]


def one_adamw_step(lora: bool):
    """The notebook's experiment: one AdamW step on the course's small model, every weight trained or LoRA r = 8 on
    q_proj and v_proj; the optimizer and the weights it was given."""
    from peft import LoraConfig, get_peft_model

    from course_utils.architecture import random_model
    course = random_model(load_config("course-llama"), seed=0)
    trained = get_peft_model(course, LoraConfig(r=8, target_modules=LORA_TARGETS)) if lora else course
    weights = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(weights)
    ids = torch.randint(0, course.config.vocab_size, (2, 16))
    trained(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return optimizer, weights


@pytest.fixture(scope="module")
def adamw_measured():
    """What the notebook's cell passes to the checker: adamw_numbers after the full step and after the LoRA one."""
    return [nb02.adamw_numbers(one_adamw_step(lora)[0]) for lora in (False, True)]


def test_adamw_numbers_counts_two_moments_per_trained_weight_and_no_step_counter():
    from course_utils.params import count_params
    config = load_config("course-llama")
    for lora, trained in ((False, count_params(config)), (True, lora_params(config, 8, LORA_TARGETS))):
        optimizer, weights = one_adamw_step(lora)
        independent = sum(2 * p.numel() for p in weights)  # exp_avg and exp_avg_sq, each the weight's shape
        assert nb02.adamw_numbers(optimizer) == independent == 2 * trained
        steps = sum(state["step"].numel() for state in optimizer.state.values())
        assert steps == len(weights) and nb02.adamw_numbers(optimizer) + steps == sum(
            v.numel() for state in optimizer.state.values() for v in state.values())


def test_adamw_numbers_of_an_optimizer_that_has_not_stepped_is_zero():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3, 4))])
    assert nb02.adamw_numbers(optimizer) == 0  # AdamW makes its state at the first step


def test_adamw_state_judges_the_prediction_against_the_run(capsys, adamw_measured):
    full, lora = adamw_measured
    assert full > 50 * lora  # the frozen base keeps nothing: LoRA's state is a small fraction
    assert_right(capsys, lambda p: nb02.check_adamw_state(p, adamw_measured), (full, lora))
    assert_right(capsys, lambda p: nb02.check_adamw_state(p, adamw_measured), [full, torch.tensor(lora)])
    # the checker reads the measurement it is given, not a number of its own
    assert_right(capsys, lambda p: nb02.check_adamw_state(p, [10, 4]), (10, 4))
    assert verdict(capsys, lambda p: nb02.check_adamw_state(p, [10, 4]), (full, lora))[0] is False


def test_adamw_state_hints_at_each_mistake_without_the_numbers(capsys, adamw_measured):
    from course_utils.exercises import reset_hints
    full, lora = adamw_measured
    check = lambda p: nb02.check_adamw_state(p, adamw_measured)  # noqa: E731
    secrets = (f"{full:,}", f"{lora:,}", str(full), str(lora))
    out = assert_wrong_words(capsys, check, (full, full), *secrets)  # the frozen base kept state too
    assert "frozen" in out
    out = assert_wrong_words(capsys, check, (full // 2, lora // 2), *secrets)  # one number per weight
    assert "how many running averages" in out
    reset_hints()
    embeddings_twice = full + 2 * load_config("course-llama").vocab_size * load_config("course-llama").hidden_size
    first = assert_wrong_words(capsys, check, (embeddings_twice, lora), *secrets)
    second = assert_wrong_words(capsys, check, (embeddings_twice, lora), *secrets)
    assert first.startswith("❌ Not yet. The full count is off.") and "tied" not in first
    assert "tied embedding table once" in second and "a second hint" in second
    assert "The LoRA count is off." in assert_wrong_words(capsys, check, (full, 3 * lora), *secrets)


def test_adamw_state_asks_for_the_run_then_the_prediction(capsys, adamw_measured):
    assert "Run the cell" in verdict(capsys, nb02.check_adamw_state, (1, 2))[1]
    assert "Run the cell" in verdict(capsys, lambda p: nb02.check_adamw_state(p, "many"), (1, 2))[1]
    ok, out = verdict(capsys, lambda p: nb02.check_adamw_state(p, adamw_measured), None)
    assert ok is False and "run the cell again" in out and "MY_PREDICTION" in out
    for odd in ODD:
        ok, out = verdict(capsys, lambda p: nb02.check_adamw_state(p, adamw_measured), odd)
        assert ok is False and out.startswith("❌ Not yet."), out
    assert "Expected two whole numbers" in verdict(capsys, lambda p: nb02.check_adamw_state(p, adamw_measured),
                                                   (1, 2, 3))[1]


# --- the suggestion names the adapters it assumes

def test_a_suggestion_to_switch_to_qlora_names_its_targets():
    config = load_config("llama-3.1-8b")
    full = training_memory(config, "full", rank=16, batch_size=1, seq_len=1024)
    sentence = full.suggestion("T4")
    assert sentence.startswith("To fit on the T4: train a QLoRA adapter")
    assert "LoRA r=16 on all seven linear modules (" + ", ".join(LINEAR_KINDS) + ")" in sentence
    assumed = training_memory(config, "qlora", rank=16, targets=LINEAR_KINDS, batch_size=1, seq_len=1024)
    assert f"about {assumed.total / 1e9:.1f} GB with" in sentence  # the total of the run it names
    lora = training_memory(config, "lora", rank=8, targets=("q_proj", "v_proj"), batch_size=1, seq_len=1024)
    assert lora.suggestion("T4").endswith("with LoRA r=8 on q_proj, v_proj.")


def test_a_suggestion_for_full_fine_tuning_that_stays_full_names_no_adapter():
    config = load_config("llama-3.2-1b")
    full = training_memory(config, "full", batch_size=8, seq_len=2048, gradient_checkpointing=False)
    sentence = full.suggestion("A100 80GB")
    assert sentence.startswith("To fit on the A100 80GB") and "QLoRA" not in sentence and "LoRA r=" not in sentence


# --- the calculator built from notebook 06's T4 preset

def test_the_calculator_from_the_t4_preset_shows_the_presets_estimate():
    from course_utils.widgets import MemoryCalculator
    config = load_config("llama-3.1-8b")
    calc = MemoryCalculator.from_preset("llama-3.1-8b", PRESETS["t4"])
    expected = preset_memory(config, PRESETS["t4"])
    assert calc.estimate.parts() == expected.parts() and calc.estimate.total == expected.total
    assert calc.verdict == expected.verdict()
    t4 = PRESETS["t4"]
    assert calc.settings() | {"adapter_dtype": "fp32", "double_quant": True} == expected.settings
    assert (calc.widgets["batch_size"].value, calc.widgets["seq_len"].value) == (t4.batch_size, t4.max_length)
    assert calc.widgets["optimizer"].value == t4.optimizer == "paged_adamw_8bit"
    assert calc.widgets["prepared"].value and calc.widgets["lora_dropout"].value == t4.lora_dropout
    # other settings than the preset's give another estimate: the old default (1 x 1024 tokens, plain AdamW)
    old = training_memory(config, "qlora", rank=32, targets=t4.lora_targets, batch_size=1, seq_len=1024,
                          compute_dtype="fp16")
    assert old.total != expected.total


def test_preparation_and_dropout_are_knobs_for_qlora_only():
    from course_utils.widgets import MemoryCalculator
    config = load_config("llama-3.1-8b")
    calc = MemoryCalculator.from_preset("llama-3.1-8b", PRESETS["t4"])
    prepared_total = calc.estimate.total
    calc.widgets["prepared"].value = False
    assert calc.estimate.total < prepared_total and calc.estimate.autocast_copies == 0
    calc.widgets["prepared"].value = True
    calc.widgets["method"].value = "lora"  # prepared applies to QLoRA only: the LoRA estimate ignores it
    assert calc.widgets["prepared"].disabled and not calc.estimate.settings["prepared"]
    assert calc.estimate.total == training_memory(config, **calc.settings()).total
    calc.widgets["method"].value = "full"
    assert calc.widgets["lora_dropout"].disabled and calc.estimate.settings["lora_dropout"] == 0.0
