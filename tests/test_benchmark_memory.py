"""benchmarks/memory_gpu.py: its CPU smoke mode runs the whole measuring code on a tiny config; without a GPU
and without --cpu-smoke it exits cleanly with a message."""

import json

import torch

from benchmarks import memory_gpu


def test_cpu_smoke_prints_a_table_then_json(capsys):
    assert memory_gpu.main(["--cpu-smoke", "--seq-len", "32"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("model") and "meas/pred" in lines[0]
    rows = json.loads(lines[-1])
    assert {(r["method"], r["checkpointing"]) for r in rows} >= {("lora", True), ("lora", False)}
    for r in rows:
        assert r["weights_measured"] == r["weights_predicted"], r  # the loaded model holds exactly the predicted bytes
        # The CPU sum misses the short-lived tensors the prediction includes, so it reads lower, but not much.
        assert 0.5 < r["measured_total"] / r["predicted_total"] <= 1.05, r


def test_without_a_gpu_it_says_so_and_exits_cleanly(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert memory_gpu.main([]) == 0
    assert "No CUDA GPU" in capsys.readouterr().out
