"""One sweep point (course_utils.sweeps) and the sweep script (benchmarks/lora_sweeps.py): the settings reach PEFT
as stated, full fine-tuning and LoRA see the same batches, a point measures what it says, and the committed
results are what the script's grids produce and reproduce when rerun."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import lora_sweeps
from course_utils import evaluation, sweeps
from course_utils.lora import lora_params
from course_utils.params import LINEAR_KINDS
from course_utils.sweeps import SweepPoint

COMMITTED = json.loads(lora_sweeps.RESULTS.read_text())


@pytest.fixture(scope="module")
def task():
    task = sweeps.course_task(validation_n=40, forget_n=40)
    task.exact_match_n = 20
    return task


def test_bad_settings_say_what_to_use():
    with pytest.raises(ValueError, match="lora, dora, full"):
        SweepPoint(method="qlora")
    with pytest.raises(ValueError, match="alpha/r"):
        SweepPoint(scaling="sqrt")
    with pytest.raises(ValueError, match="3e-3"):
        SweepPoint(lr=3)


def test_scale_follows_each_rule():
    assert SweepPoint(r=16, alpha=None).scale == 2.0  # the habit alpha = 2r
    assert SweepPoint(r=64, alpha=16).scale == 0.25
    assert SweepPoint(r=64, alpha=16, scaling="alpha/sqrt(r)").scale == 2.0
    assert SweepPoint(method="full").scale == 1.0


@pytest.mark.parametrize("point", [SweepPoint(r=8, alpha=16, targets=("q_proj", "v_proj")),
                                   SweepPoint(r=4, alpha=16, scaling="alpha/sqrt(r)", targets=tuple(LINEAR_KINDS)),
                                   SweepPoint(method="dora", r=8, alpha=16)], ids=lambda p: p.label())
def test_the_adapter_peft_builds_is_the_point(task, point):
    model = sweeps.fresh_model(point, task)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    lora = sum(v for n, v in trainable.items() if "lora_A" in n or "lora_B" in n)
    assert lora == lora_params(task.model.config, point.r, point.targets)
    magnitudes = sum(v for n, v in trainable.items() if "magnitude" in n)
    assert magnitudes == (0 if point.method == "lora" else sum(  # DoRA: one magnitude per output row
        m.out_features for n, m in task.model.named_modules() if n.split(".")[-1] in point.targets))
    layer = next(m for n, m in model.named_modules() if n.endswith(point.targets[0]) and hasattr(m, "scaling"))
    assert math.isclose(layer.scaling["default"], point.scale)
    base = {p.data_ptr() for p in task.model.parameters()}
    assert not any(p.data_ptr() in base for p in model.parameters())  # a copy: the shared base is never touched


def test_full_fine_tuning_trains_every_weight_of_a_copy(task):
    model = sweeps.fresh_model(SweepPoint(method="full"), task)
    assert all(p.requires_grad for p in model.parameters())
    base = {p.data_ptr() for p in task.model.parameters()}
    assert not any(p.data_ptr() in base for p in model.parameters())


def test_lora_and_full_fine_tuning_start_from_the_same_loss_on_the_same_batches(task):
    lora = sweeps.run_point(SweepPoint(steps=3, lr=3e-3), task, measure_memory=False, exact_match=False)
    full = sweeps.run_point(SweepPoint(method="full", steps=3, lr=1e-3), task, measure_memory=False,
                            exact_match=False)
    # B = 0: the adapted model computes the base's function, so step 0 sees the same loss on the same batch
    assert lora["train_curve"][0] == pytest.approx(full["train_curve"][0], rel=1e-6)
    assert lora["train_curve"][1] != full["train_curve"][1]
    assert lora["eval_curve"][0] == full["eval_curve"][0]
    assert lora["forget_loss_before"] == full["forget_loss_before"]


def test_a_point_measures_its_curves_metric_and_costs(task):
    point = SweepPoint(r=4, alpha=8, steps=12, lr=1e-2)
    before = evaluation.weights_checksum(task.model, skip=())
    out = sweeps.run_point(point, task)
    assert evaluation.weights_checksum(task.model, skip=()) == before  # the next point starts from the same base
    assert len(out["train_curve"]) == 12
    assert [s for s, _ in out["eval_curve"]] == [0, 10, 12]
    assert out["val_loss"] == out["eval_curve"][-1][1] < out["eval_curve"][0][1]  # it learned
    assert 0.0 <= out["exact_match"] <= 1.0 and out["seconds_per_step"] > 0
    assert out["forget_loss_before"] == pytest.approx(sweeps.batch_loss(task.model, task.forget_batch), abs=1e-5)  # rounded to 5 places
    memory = out["memory_bytes"]
    assert memory["trainable weights"] == memory["gradients"] == 4 * out["trainable_params"]
    assert memory["optimizer states"] >= 2 * 4 * out["trainable_params"]  # AdamW: two fp32 moments
    assert out["point"]["r"] == 4 and "r=4" in out["label"]


def test_the_targets_grid_holds_one_parameter_budget(task):
    config = task.model.config
    sizes = {p.targets: lora_params(config, p.r, p.targets) for p in lora_sweeps.grid("targets")}
    assert len(sizes) == 4 and max(sizes.values()) / min(sizes.values()) < 1.1


def test_committed_results_are_the_scripts_grids():
    assert set(COMMITTED["results"]) == set(lora_sweeps.GRIDS)
    for name, rows in COMMITTED["results"].items():
        assert [SweepPoint.from_dict(r["point"]) for r in rows] == lora_sweeps.grid(name), name
    assert {"torch", "transformers", "peft", "threads"} <= set(COMMITTED["versions"])
    assert len(COMMITTED["task"]["data_sha256"]) == 16  # check() compares it with the data it reruns on
    compute = sum(r["seconds"] for rows in COMMITTED["results"].values() for r in rows) / 60
    assert COMMITTED["minutes"] == pytest.approx(compute, abs=0.1) and compute <= 60  # on this 2-core machine
    runs = COMMITTED["runs"]  # what each invocation added: they add up to every point the file holds
    assert sum(run["new_points"] for run in runs) == sum(map(len, COMMITTED["results"].values()))
    assert all({"versions", "grids", "minutes"} <= set(run) for run in runs)


def test_committed_smollm2_results_are_its_grid():
    """The real-weights sweep notebook 07's section 9 plots: the script's reduced grid, with curves and costs."""
    saved = json.loads(lora_sweeps.REAL_RESULTS.read_text())
    assert saved["model"] == "SmolLM2-135M-Instruct" and saved["command"].endswith("--model smollm2")
    assert set(saved["results"]) == set(lora_sweeps.REAL_GRIDS)
    rows = saved["results"]["smollm2-lr"]
    assert [SweepPoint.from_dict(r["point"]) for r in rows] == lora_sweeps.grid("smollm2-lr")
    for r in rows:
        assert len(r["train_curve"]) == r["point"]["steps"] and "exact_match" not in r
        assert r["forget_loss_before"] == rows[0]["forget_loss_before"]  # one base, measured once per point
    assert len(saved["task"]["data_sha256"]) == 16


def test_committed_points_reproduce_when_rerun():
    """The sweep's own check: CHECK_POINTS rerun on the full validation set match the committed losses."""
    task = sweeps.course_task()
    assert lora_sweeps.check(task) == []


def test_the_real_models_forgetting_text_is_the_courses_own_prose(tmp_path):
    paragraphs = sweeps.course_prose()  # frozen in assets/course-prose.txt
    assert len(paragraphs) == 120 and all(len(p) > 200 and "\n" not in p for p in paragraphs)
    assert not any(p.startswith(("#", "|", "```")) for p in paragraphs)
    text = " ".join(paragraphs)
    assert "LoRA" in text and "import " not in text  # prose, not code cells
    notebook = {"cells": [{"cell_type": "markdown", "source": ["## A heading\n\n", "word " * 50 + "\n\n",
                                                               "| a | table |"]},
                          {"cell_type": "code", "source": ["x = 1  " * 50]}]}
    (tmp_path / "01_x.ipynb").write_text(json.dumps(notebook))
    assert sweeps.course_prose(folder=tmp_path) == [("word " * 50).strip()]  # how the frozen file was taken


def test_the_fingerprint_names_the_data(task):
    same = sweeps.fingerprint(task)
    assert len(same) == 16 and sweeps.fingerprint(task) == same
    other = sweeps.Task(**{**vars(task), "train": task.train[1:]})
    assert sweeps.fingerprint(other) != same


@pytest.mark.parametrize("settings", [dict(method="lroa"), dict(steps=0), dict(rr=4), dict(targets=("q_prj",)),
                                      dict(r=2.5), dict(lr=0)])
def test_a_misspelt_live_point_runs_the_default_with_a_sentence(settings, capsys):
    """Notebook 07's LIVE_POINT knob with a typo: a sentence and the default point, never a traceback that leaves
    the later sections without their variables (issue 29, item 9)."""
    default = SweepPoint(r=16, alpha=32, lr=3e-3)
    assert SweepPoint.knob(default, **settings) is default
    assert capsys.readouterr().out.startswith("LIVE_POINT: ")
    assert SweepPoint.knob(default, r=8) == SweepPoint(r=8)


def test_a_rerun_loss_is_the_same_within_the_tolerance_relative_or_near_zero_absolute():
    assert sweeps.same_loss(1.01, 1.0, 0.02) and not sweeps.same_loss(1.03, 1.0, 0.02)
    assert sweeps.same_loss(0.00420, 0.00402, 0.02)  # torch 2.14.1 against 2.13.0, full fine-tuning at step 20
    assert not sweeps.same_loss(0.0030, 0.0041, 0.02) and not sweeps.same_loss(0.02, 0.01, 0.02)
