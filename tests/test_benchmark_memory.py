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
        assert "skipped" not in r and r["checkpoint_shards"] >= 3, r  # the checkpoint was written in shards
        assert r["weights_measured"] == r["weights_predicted"], r  # the loaded model holds exactly the predicted bytes
        # The CPU sum misses the short-lived tensors the prediction includes, so it reads lower, but not much.
        assert 0.5 < r["measured_total"] / r["predicted_total"] <= 1.05, r


def test_without_a_gpu_it_says_so_and_exits_cleanly(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert memory_gpu.main([]) == 0
    assert "No CUDA GPU" in capsys.readouterr().out


def test_sharded_random_checkpoint_loads_back(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig
    config = LlamaConfig(**memory_gpu.SMOKE_CONFIG)
    n = memory_gpu.save_random_model(config, tmp_path, "cpu", torch.float16, max_shard_bytes=300_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert n == len(set(index["weight_map"].values())) == len(list(tmp_path.glob("model-*.safetensors"))) > 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float16)
    assert set(index["weight_map"]) == {name for name, _ in model.named_parameters()}
    assert index["metadata"]["total_size"] == sum(p.numel() * 2 for p in model.parameters())
    assert torch.equal(model.model.norm.weight, torch.ones(config.hidden_size, dtype=torch.float16))
    assert 0.01 < model.model.embed_tokens.weight.float().std() < 0.03  # initializer_range 0.02


def test_what_cannot_fit_is_skipped_with_a_sentence(capsys):
    from course_utils.configs import load_config
    config = load_config("llama-3.1-8b")
    lora = memory_gpu.predict(config, "lora", 16, 1, 1024, True, torch.float16)
    qlora = memory_gpu.predict(config, "qlora", 16, 1, 1024, True, torch.float16)
    t4 = 15 * 10**9
    reason = memory_gpu.skip_reason("llama-3.1-8b", "lora", True, lora.total, t4)
    assert reason.startswith("Skipped llama-3.1-8b lora") and "15.00 GB" in reason  # 16.06 GB of fp16 weights alone
    assert memory_gpu.skip_reason("llama-3.1-8b", "qlora", True, qlora.total, t4) is None
    assert memory_gpu.skip_reason("llama-3.1-8b", "lora", True, lora.total, None) is None  # the CPU: no budget

    class Args:
        rank, batch_size, seq_len = 16, 1, 1024
    memory_gpu.print_table([memory_gpu.skipped_row("llama-3.1-8b", "lora", True, Args, torch.float16, lora, reason)])
    assert "skipped" in capsys.readouterr().out
