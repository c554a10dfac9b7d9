"""The training benchmarks run end to end (benchmarks/train_gpu.py in its CPU smoke mode, train_offline.py briefly).

They are smoke tests: they check that the scripts work and print their JSON line, never a speed or a score.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def run_script(*args: str, timeout: int = 300) -> tuple[str, dict]:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**__import__("os").environ, "COURSE_TEXT_PROGRESS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    return out.stdout, json.loads(last)


def test_train_gpu_skips_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real benchmark would run")
    stdout, result = run_script("benchmarks/train_gpu.py", "--steps", "1")
    assert result == {"benchmark": "train_gpu", "skipped": True, "reason": "no CUDA GPU"}
    assert "--smoke" in stdout


def test_train_gpu_smoke_runs_both_runners(tmp_path):
    stdout, result = run_script("benchmarks/train_gpu.py", "--smoke", "--steps", "3", "--warm-from", "1",
                                "--out", str(tmp_path))
    assert result["smoke"] is True and result["steps"] == 3 and result["warm_from"] == 1
    assert result["mixed_precision"] == "bf16" and result["optimizer"] == "paged_adamw_8bit"
    assert set(result["runners"]) == {"our loop", "transformers Trainer"}
    for name, row in result["runners"].items():
        assert row["error"] is None, row
        assert row["timed_steps"] == 2 and row["tokens_per_s"] > 0 and row["final_loss"] > 0, row
        # What really ran: bf16 autocast in force at lm_head (so bf16 logits from the fp32 lm_head), and
        # bitsandbytes' 8-bit AdamW with 8-bit (uint8) states for the adapter matrices of 4096 values or more.
        assert row["autocast"] == "bfloat16" and row["logits_dtype"] == "bfloat16", (name, row)
        assert row["checkpointing"] is True, (name, row)  # the T4 preset's, in both runners
        assert row["optimizer"].startswith("bitsandbytes.optim.") and row["optimizer_8bit_states"] > 0, (name, row)
        assert row["paged_optimizer_gb"] == 0  # bitsandbytes does not page on the CPU
        assert row["peak_allocated_gb"] is None and row["device_used_gb"] is None  # no GPU memory to read
    assert result["runners"]["our loop"]["optimizer"] == "bitsandbytes.optim.adamw.PagedAdamW8bit"
    assert result["runners"]["transformers Trainer"]["optimizer"] == "bitsandbytes.optim.adamw.AdamW"  # optim_bits=8
    assert result["estimate_gb"] > 0 and result["estimate_parts_gb"]["16-bit copies (autocast)"] > 0
    assert "tokens/s" in stdout and "estimate" in stdout and "8-bit states" in stdout


def test_train_gpu_helpers_on_the_cpu():
    from benchmarks import train_gpu
    from course_utils import training
    if not torch.cuda.is_available():
        assert "ignored on the CPU" in train_gpu.cap_memory(15)
    assert train_gpu.cap_memory(None) == ""
    model = train_gpu.build_random_nf4_model(train_gpu.smoke_config(), torch.float32, "cpu")
    training.enable_gradient_checkpointing(model)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    train_gpu.disable_checkpointing(model)  # the real API of this transformers (both venvs)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert train_gpu.paged_bytes(train_gpu.paged_count()) == 0


def test_train_offline_prints_before_and_after():
    if not (ROOT / "assets" / "course-llama" / "model.safetensors").exists():
        pytest.skip("assets/course-llama not built yet (python scripts/pretrain_course_model.py)")
    stdout, result = run_script("benchmarks/train_offline.py", "--steps", "3")
    assert [r["method"] for r in result["runs"]] == ["lora", "qlora"]
    for r in result["runs"]:
        assert 0 <= r["exact_match_before"] <= 1 and 0 <= r["exact_match_after"] <= 1
        assert r["steps"] == 3 and r["train_seconds"] > 0
    assert "EM before" in stdout


def test_cpu_step_time_runs_on_a_small_config():
    from benchmarks import cpu_step_time  # its PROMPT_LENS, ANSWER_LEN, N_PROMPTS, NEW_TOKENS
    stdout, result = run_script("benchmarks/cpu_step_time.py", "course-llama", "--steps", "1", "--batch-sizes", "2", "4")
    assert result["benchmark"] == "cpu_step_time" and result["threads"] >= 1
    assert result["model"] == "course-llama" and result["steps"][0]["batch_size"] == 2
    assert [row["batch_size"] for row in result["steps"]] == [2, 4], "one row per batch size asked for, in order"
    for row in result["steps"]:
        for key in ("seconds_per_step", "every_logit"):  # train_step as it runs, and with every position's logits
            assert row[key] > 0 and math.isfinite(row[key]), row
        table_row = f"{row['batch_size']:>6}{row['seconds_per_step']:>10.2f}{row['every_logit']:>13.2f}"
        assert table_row in stdout, "the table shows the JSON's figures"
    assert result["generate_seconds"] > 0 and math.isfinite(result["generate_seconds"])
    lens = cpu_step_time.PROMPT_LENS
    assert "s / step" in stdout and f"({lens[0]}-{lens[1]} + {cpu_step_time.ANSWER_LEN} tokens per example)" in stdout
    assert f"{result['threads']} threads" in stdout
    assert (f"generation: {result['generate_seconds']} s for {cpu_step_time.N_PROMPTS} prompts x "
            f"{cpu_step_time.NEW_TOKENS} new tokens") in stdout


def test_train_real_runs_briefly_and_saves_an_adapter_peft_can_load(tmp_path):
    from course_utils import real_model
    if real_model.problem() is not None:
        pytest.skip(real_model.problem())
    stdout, result = run_script("benchmarks/train_real.py", "--only", "lora", "--threads", "1", "--steps", "2",
                                "--batch-size", "2", "--n-train", "8", "--n-test", "2", "--n-heldout", "2", "--top-layers", "2",
                                "--save", str(tmp_path / "adapter"), timeout=600)
    assert result["benchmark"] == "train_real" and result["n_test"] == 2 and result["n_heldout"] == 2
    (row,) = result["runs"]
    assert row["method"] == "lora" and row["steps"] == 2 and row["train_seconds"] > 0
    for key in ("exact_match_before", "exact_match_after", "heldout_exact_match_after"):
        assert 0.0 <= row[key] <= 1.0
    assert "held-out" in stdout
    from peft import PeftModel
    from course_utils import runtime
    base, _ = runtime.load_model(runtime.choose_profile("cpu"))
    model = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
    assert (tmp_path / "adapter" / "tokenizer.json").is_file()
