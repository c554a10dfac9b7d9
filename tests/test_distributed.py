"""Past one GPU: the per-GPU arithmetic of course_utils.distributed against the one-GPU figures and the sharding
rules, the well-known cases, and a real two-process run (torchrun, gloo, FSDP2 and DDP) whose measured bytes
match the arithmetic and whose adapter equals a one-process run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_utils.configs import load_config
from course_utils.distributed import (GATHERED_PART, GPU_COUNTS, STRATEGIES, check_strategy, gpus_needed,
                                      llama2_70b_config, needs_sentence, per_gpu_memory, predicted_process_bytes,
                                      replicated_weight_bytes, unit_bytes)
from course_utils.memory import GPUS, training_memory

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "distributed_lora.py"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
SETTINGS = [("llama-3.1-8b", "qlora", dict(rank=16, batch_size=1, seq_len=1024)),
            ("llama-3.1-8b", "full", dict(batch_size=2, seq_len=512, gradient_checkpointing=False)),
            ("llama-3.1-70b", "lora", dict(rank=32, targets="all-linear", seq_len=2048, optimizer="adamw_8bit")),
            ("llama-3.1-405b", "full-mixed", dict(seq_len=512)),
            ("llama-3.1-8b", "qlora", dict(rank=32, prepared=True, compute_dtype="fp16", lora_dropout=0.1)),
            ("course-llama", "lora", dict(rank=32, targets=ATTENTION, compute_dtype="fp32"))]


@pytest.mark.parametrize("name, method, kwargs", SETTINGS, ids=lambda v: str(v)[:20])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_gpu_is_notebook_02s_estimate_exactly(name, method, kwargs, strategy):
    estimate = training_memory(load_config(name), method, **kwargs)
    share = per_gpu_memory(estimate, 1, strategy)
    assert share.parts() == estimate.parts() and share.total == estimate.total


@pytest.mark.parametrize("name, method, kwargs", SETTINGS, ids=lambda v: str(v)[:20])
def test_the_sharding_rules(name, method, kwargs):
    e = training_memory(load_config(name), method, **kwargs)
    for n in (2, 8, 64):
        ddp, zero2, fsdp = (per_gpu_memory(e, n, s) for s in STRATEGIES)
        assert ddp.parts() == e.parts()  # DDP replicates everything
        assert zero2.weights == e.weights and zero2.adapter == e.adapter and zero2.activations == e.activations
        assert zero2.gradients == e.gradients // n
        assert e.optimizer / n <= zero2.optimizer <= e.optimizer / n + 4 * e.trainable_tensors
        assert fsdp.gradients == zero2.gradients and fsdp.optimizer == zero2.optimizer
        kept = replicated_weight_bytes(e)
        assert fsdp.weights == kept + (e.weights - kept) // n and fsdp.adapter == e.adapter // n
        assert fsdp.activations == e.activations  # each GPU runs its own micro-batch
        units = unit_bytes(e)
        assert fsdp.parts()[GATHERED_PART] == units["root"] + 2 * units["layer"] + e.gradients // e.config.num_hidden_layers
        assert fsdp.total - fsdp.gathered < zero2.total <= ddp.total  # the gathered units can cost more at small N


def test_weights_per_gpu_are_the_total_over_n_bar_what_is_no_parameter():
    e = training_memory(load_config("llama-3.1-70b"), "full-mixed", seq_len=512)
    assert replicated_weight_bytes(e) == 512  # the two rotary buffers of a 16-bit model
    assert per_gpu_memory(e, 8, "fsdp").weights == pytest.approx(e.weights / 8, rel=1e-6)
    q = training_memory(load_config("llama-3.1-70b"), "qlora", seq_len=512)
    assert 1.0e9 < replicated_weight_bytes(q) < 1.2e9  # the 8-bit absmax and its constants stay whole


def test_more_gpus_never_hold_more_per_gpu():
    e = training_memory(load_config("llama-3.1-70b"), "full-mixed", seq_len=1024)
    totals = [per_gpu_memory(e, n, "fsdp").total for n in GPU_COUNTS]
    assert totals == sorted(totals, reverse=True)
    assert len({per_gpu_memory(e, n, "ddp").total for n in GPU_COUNTS}) == 1


SMALL_BATCH = dict(rank=16, targets=ATTENTION, batch_size=1, seq_len=512, gradient_checkpointing=True)


def test_answer_ais_70b_qlora_fits_two_24_gb_gpus_under_fsdp():
    e = training_memory(llama2_70b_config(), "qlora", **SMALL_BATCH)
    assert not e.fits("L4") and e.total > 1.5 * GPUS["L4"] * 1e9  # one GPU: 39 GB
    two = per_gpu_memory(e, 2, "fsdp")
    assert two.fits("L4") and 20e9 < two.total < 24e9
    assert not per_gpu_memory(e, 2, "ddp").fits("L4") and not per_gpu_memory(e, 2, "zero2").fits("L4")
    assert gpus_needed(e, "L4", "fsdp") == 2 and gpus_needed(e, "L4", "ddp") is None


def test_llama_3_1_70b_qlora_needs_its_big_vocabulary_gathered_too():
    e = training_memory(load_config("llama-3.1-70b"), "qlora", **SMALL_BATCH)
    two = per_gpu_memory(e, 2, "fsdp")
    states = two.weights + two.adapter + two.gradients + two.optimizer
    assert states < GPUS["L4"] * 1e9  # the sharded states alone fit ...
    assert not two.fits("L4")  # ... but the gathered 4.2 GB root (128,256-token embeddings and lm_head) does not
    assert two.parts()[GATHERED_PART] > 4.2e9
    assert gpus_needed(e, "L4", "fsdp") == 4


def test_405b_on_one_node_of_eight_80_gb_gpus():
    config = load_config("llama-3.1-405b")
    qlora = training_memory(config, "qlora", **SMALL_BATCH)
    assert per_gpu_memory(qlora, 8, "fsdp").fits("H100")
    assert not per_gpu_memory(qlora, 8, "ddp").fits("H100") and not per_gpu_memory(qlora, 8, "zero2").fits("H100")
    lora = training_memory(config, "lora", **SMALL_BATCH)  # a bf16 base: 812 GB of weights, more than 8 x 80 GB
    assert lora.weights > 8 * GPUS["H100"] * 1e9
    assert not any(per_gpu_memory(lora, 8, s).fits("H100") for s in STRATEGIES)
    assert gpus_needed(lora, "H100", "fsdp") == 16


def test_a_full_fine_tune_of_the_70b_on_80_gb_gpus():
    e = training_memory(load_config("llama-3.1-70b"), "full-mixed", batch_size=1, seq_len=1024)
    assert gpus_needed(e, "A100 80GB", "fsdp") == 32 and gpus_needed(e, "A100 80GB", "zero2") is None
    assert needs_sentence(e, "A100 80GB", "fsdp").startswith("Under FSDP / ZeRO-3 this run needs 32 x A100 80GB")
    assert "not even 64" in needs_sentence(e, "A100 80GB", "ddp")


@pytest.mark.parametrize("spelling, strategy", [("DDP", "ddp"), ("ZeRO-2", "zero2"), ("zero3", "fsdp"),
                                                ("FSDP / ZeRO-3", "fsdp"), (" fsdp ", "fsdp")])
def test_strategies_in_any_usual_spelling(spelling, strategy):
    assert check_strategy(spelling) == strategy


@pytest.mark.parametrize("bad", ["tensor-parallel", None, 3])
def test_an_unknown_strategy_is_a_sentence(bad):
    e = training_memory(load_config("llama-3.1-8b"), "qlora")
    with pytest.raises(ValueError, match="Unknown strategy .*; choose one of ddp, zero2, fsdp"):
        per_gpu_memory(e, 2, bad)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "8"])
def test_a_bad_number_of_gpus_is_a_sentence(bad):
    e = training_memory(load_config("llama-3.1-8b"), "qlora")
    with pytest.raises(ValueError, match="The number of GPUs must be a whole number of at least 1"):
        per_gpu_memory(e, bad, "fsdp")


# ------------------------------------------------------------------------------------- the two-process run

def run_script(*args: str, nproc: int | None = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", COURSE_PROFILE="offline")
    return subprocess.run([*command, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    done = run_script("--strategy", "fsdp", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads((out / "result.json").read_text()), out


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    done = run_script("--strategy", "ddp", "--out", str(out), "--no-reference")
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads((out / "result.json").read_text()), out


def course_estimate():
    return training_memory(load_config("course-llama"), "lora", rank=32, targets=ATTENTION, batch_size=8,
                           seq_len=64, compute_dtype="fp32")


def test_each_fsdp_process_holds_its_shard_as_predicted(fsdp_run):
    done, result, _ = fsdp_run
    assert (result["world_size"], result["backend"], result["strategy"]) == (2, "gloo", "fsdp")
    one = predicted_process_bytes(course_estimate(), 1, "ddp")
    predicted = predicted_process_bytes(course_estimate(), 2, "fsdp")
    for rank in result["ranks"]:
        assert rank["held"] == rank["predicted"] == predicted
    # a shard is half the model: the parameters bar the replicated rotary buffers, the AdamW moments bar the steps
    assert predicted["parameters and buffers"] - 192 == (one["parameters and buffers"] - 192) // 2
    assert predicted["gradients"] == one["gradients"] // 2
    assert predicted["optimizer states"] - 4 * 24 == (one["optimizer states"] - 4 * 24) // 2
    for r in (0, 1):
        assert f"rank {r}/2 (fsdp, gloo, cpu): parameters and buffers {predicted['parameters and buffers']:,} B" \
               in done.stdout


def test_each_ddp_process_holds_everything(ddp_run):
    _, result, _ = ddp_run
    whole = predicted_process_bytes(course_estimate(), 1, "ddp")
    assert [r["held"] for r in result["ranks"]] == [whole, whole]


def test_the_two_process_adapter_equals_the_one_process_adapter(fsdp_run, ddp_run):
    done, result, out = fsdp_run
    assert result["max_abs_diff"] <= result["tolerance"] == 1e-5
    assert result["losses"] == pytest.approx(result["reference_losses"], abs=1e-4)
    assert result["losses"][-1] < 0.5 * result["losses"][0]  # it trained
    assert "equal within the tolerance 1e-05" in done.stdout
    from safetensors.torch import load_file
    fsdp_adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    ddp_adapter = load_file(ddp_run[2] / "adapter" / "adapter_model.safetensors")
    assert len(fsdp_adapter) == 24 and fsdp_adapter.keys() == ddp_adapter.keys()
    assert max((fsdp_adapter[k] - ddp_adapter[k]).abs().max().item() for k in fsdp_adapter) <= 2e-5
    assert any(t.abs().max() > 1e-3 for k, t in fsdp_adapter.items() if "lora_B" in k)  # B moved away from 0


def test_without_torchrun_the_script_says_how_to_launch_it():
    done = run_script("--strategy", "fsdp", nproc=None)
    assert done.returncode == 2
    assert "torchrun --standalone --nproc_per_node 2 scripts/distributed_lora.py --strategy fsdp" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_fully_shard_is_where_the_script_imports_it():
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # since torch 2.6
    assert callable(fully_shard) and MixedPrecisionPolicy(param_dtype=torch.bfloat16).param_dtype == torch.bfloat16


def test_qlora_under_fsdp_shards_the_bf16_stored_4bit_weights(tmp_path):
    """--four-bit: NF4 with bnb_4bit_quant_storage=bf16 under FSDP2 on CPUs: the packed weights are sharded, the NF4
    constants stay whole, and the adapter is the one-process adapter to bf16's precision."""
    done = run_script("--strategy", "fsdp", "--four-bit", "--steps", "4", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    estimate = training_memory(load_config("course-llama"), "qlora", rank=32, targets=ATTENTION, batch_size=8,
                               seq_len=64, compute_dtype="bf16")
    predicted = predicted_process_bytes(estimate, 2, "fsdp")
    assert [r["held"] for r in result["ranks"]] == [predicted, predicted]
    kept = replicated_weight_bytes(estimate)  # the NF4 constants and the rotary buffers, whole on each process
    assert predicted["parameters and buffers"] == kept + (estimate.weights - kept) // 2 + estimate.adapter // 2
    assert result["four_bit"] and result["max_abs_diff"] <= result["tolerance"] == 2e-3
