"""scripts/gpu_check.sh: its dry run on this CPU (the plan, and the steps that need no GPU) writes the report, and
a step that fails or hangs never stops the next (scripts/gpu_check.py's own functions, on stand-in steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import gpu_check

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["install", "environment", "gpu_tests", "notebook_06", "train_gpu", "memory_gpu"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("WHEELS", None)
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return done, out, json.loads((out / "report.json").read_text())


def test_the_dry_run_passes_and_says_what_it_would_run(dry_run):
    done, out, report = dry_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert report["dry_run"] is True and report["ok"] is True
    assert [s["name"] for s in report["steps"]] == STEPS
    assert done.stdout.count("on a GPU: ") == len(STEPS)
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["notebook_06"]["status"] == "planned" and steps["notebook_06"]["command"] is None
    assert all(steps[name]["status"] == "passed" for name in STEPS if name != "notebook_06")
    assert all(s["gpu_command_options"] == "ok" for s in report["steps"])  # every GPU command's options exist
    gpu = {name: s["gpu_command"] for name, s in steps.items()}
    assert "-m pytest -m gpu tests/" in gpu["gpu_tests"] and "-rA" in gpu["gpu_tests"]
    course_llama = str(ROOT / "assets" / "course-llama")
    assert gpu["notebook_06"].startswith(f"COURSE_PROFILE=gpu COURSE_GPU_MODEL={course_llama} ")
    assert "scripts/run_notebooks.py 06 --out " in gpu["notebook_06"]
    assert "benchmarks/train_gpu.py --cap-gb 15" in gpu["train_gpu"]
    assert "benchmarks/memory_gpu.py --models llama-3.2-1b --cap-gb 15" in gpu["memory_gpu"]
    assert "--smoke" in steps["train_gpu"]["command"] and "--cpu-smoke" in steps["memory_gpu"]["command"]
    for name in STEPS:
        if name != "notebook_06":
            assert (out / f"{name}.log").exists(), name


def test_the_dry_run_reports_the_environment_and_what_ran(dry_run):
    _, out, report = dry_run
    env = report["environment"]
    for key in ("python", "torch", "cuda", "transformers", "peft", "accelerate", "bitsandbytes", "gpu",
                "four_bit_problem_cuda"):
        assert key in env, key
    import torch
    assert env["torch"] == torch.__version__ and (env["gpu"] is None) == (not torch.cuda.is_available())
    steps = {s["name"]: s for s in report["steps"]}
    collected = steps["gpu_tests"]["details"]
    assert collected["collected"] >= 10 and all("::" in t for t in collected["tests"])
    assert any(t.startswith("tests/test_gpu.py::test_resume_after_a_kill") for t in collected["tests"])
    assert set(steps["train_gpu"]["details"]["runners"]) == {"our loop", "transformers Trainer"}
    assert steps["memory_gpu"]["details"]["rows"]
    assert steps["install"]["details"]["needed"] == []  # the course's venv lacks nothing
    assert report["summary"]["planned"] == ["notebook_06"] and not report["summary"]["failed"]


def test_the_dry_run_writes_a_markdown_table(dry_run):
    _, out, report = dry_run
    text = (out / "report.md").read_text()
    assert text.startswith("# GPU check (dry run")
    assert "| step | status | seconds | limit | result |" in text
    for name in STEPS:
        assert any(line.startswith(f"| {name} | ") for line in text.splitlines()), name
    assert "| environment | |" in text and "| torch | " in text
    assert "- notebook_06: `COURSE_PROFILE=gpu" in text


def test_a_failing_or_hanging_step_never_stops_the_next(tmp_path, monkeypatch):
    def stand_ins(out, dry_run, wheels, python):
        steps = [gpu_check.Step("hangs", "sleeps past its limit", [python, "-c", "import time; time.sleep(60)"], 2),
                 gpu_check.Step("fails", "exits 3", [python, "-c", "import sys; sys.exit(3)"], 30),
                 gpu_check.Step("works", "prints JSON", [python, "-c", "print('{\"x\": 1}')"], 30)]
        for step in steps:
            step.command = step.gpu_command
        return steps

    monkeypatch.setattr(gpu_check, "plan", stand_ins)
    assert gpu_check.check(tmp_path, dry_run=False, wheels=None, budget=60, python=sys.executable) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(s["name"], s["status"]) for s in report["steps"]] == [("hangs", "timeout"), ("fails", "failed"),
                                                                   ("works", "passed")]
    assert report["steps"][0]["seconds"] < 20 and report["steps"][2]["details"] == {"x": 1}
    assert report["summary"]["passed"] == ["works"] and report["ok"] is False
    assert (tmp_path / "hangs.log").exists() and "| works | passed |" in (tmp_path / "report.md").read_text()


def test_a_step_left_without_time_in_the_budget_is_skipped(tmp_path, monkeypatch):
    def stand_ins(out, dry_run, wheels, python):
        steps = [gpu_check.Step("slow", "sleeps", [python, "-c", "import time; time.sleep(30)"], 30)]
        steps.append(gpu_check.Step("late", "never starts", [python, "-c", "pass"], 30))
        for step in steps:
            step.command = step.gpu_command
        return steps

    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 5)
    monkeypatch.setattr(gpu_check, "plan", stand_ins)
    assert gpu_check.check(tmp_path, dry_run=False, wheels=None, budget=7, python=sys.executable) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(s["name"], s["status"]) for s in report["steps"]] == [("slow", "timeout"), ("late", "skipped")]


def test_install_takes_only_what_is_missing_and_never_torch(monkeypatch, capsys):
    from packaging.requirements import Requirement
    wanted = ["torch>=99", "not-a-course-package==1.0", "pytest>=1", "bitsandbytes==0.0.1"]
    monkeypatch.setattr(gpu_check, "requirements", lambda: [Requirement(r) for r in wanted])
    result = gpu_check.install("/nowhere", dry_run=True)
    assert result["needed"] == ["not-a-course-package==1.0", "bitsandbytes==0.0.1"]  # another bitsandbytes: the pin
    assert any(v.startswith("torch ") for v in result["other_versions"])
    printed = capsys.readouterr().out
    assert printed.count("--no-index --find-links /nowhere -c ") == 2  # -c: the constraint that holds torch
    assert "torch>=99" not in printed


def test_pytest_counts_read_the_closing_line_and_the_outcomes():
    text = ("PASSED tests/test_gpu.py::test_a[t4-fp16]\nFAILED tests/test_gpu.py::test_b - AssertionError\n"
            "SKIPPED [1] tests/test_gpu.py:30: no bf16\n"
            "==== 1 failed, 1 passed, 1 skipped, 200 deselected in 9.1s ====")
    counts = gpu_check.pytest_counts(text)
    assert {k: counts[k] for k in ("passed", "failed", "skipped", "deselected")} == \
        {"passed": 1, "failed": 1, "skipped": 1, "deselected": 200}
    assert counts["results"] == {"tests/test_gpu.py::test_a[t4-fp16]": "PASSED", "tests/test_gpu.py::test_b": "FAILED"}
    collected = gpu_check.pytest_counts("tests/test_gpu.py::test_a\n\n10/230 tests collected (220 deselected) in 5s")
    assert collected["collected"] == 10 and collected["tests"] == ["tests/test_gpu.py::test_a"]
    assert gpu_check.last_json('noise\n{"a": 1}\n[not json\n') == {"a": 1}


def test_notebook_facts_tell_the_gpu_profile_from_a_fallback(tmp_path):
    def notebook(*printed):
        cells = [{"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout", "text": t}]}
                 for t in printed]
        path = tmp_path / "nb.ipynb"
        path.write_text(json.dumps({"cells": cells, "metadata": {"course": {"run_seconds": 12.5}}}))
        return gpu_check.notebook_facts(path)

    facts = notebook("Profile 'gpu': COURSE_PROFILE=gpu asked for it\n  model assets/course-llama on cuda, ...",
                     "150 steps in 20 s (9,000 tokens/s); loss 2.1 -> 0.1", "unchanged: True")
    assert facts["gpu_profile"] and facts["run_seconds"] == 12.5 and facts["checksum_unchanged"] == "unchanged: True"
    assert facts["training"].startswith("150 steps in 20 s")
    assert not notebook("The gpu profile can't run here", "Profile 'cpu': ...")["gpu_profile"]
    assert gpu_check.notebook_facts(tmp_path / "missing.ipynb") == {"notebook": None}
