"""Predicted against measured training memory: LoRA (bf16 base) and QLoRA (NF4 base) steps on real architectures.

    python benchmarks/memory_gpu.py                  # on a CUDA GPU: Llama 3.2 1B and Llama 3.1 8B, random weights
    python benchmarks/memory_gpu.py --cpu-smoke      # anywhere: the same code on a tiny config on the CPU
    python benchmarks/memory_gpu.py --nf4-weights llama-3.2-1b   # anywhere: NF4 weight bytes of a real load

Each model gets random weights from its shipped config (no Hub), written tensor by tensor into safetensors
shards of at most 1 GB (`--shard-gb`), so neither the GPU nor the host ever holds the whole 16-bit model (the 8B
is 16.06 GB in bf16: more than a T4's 15 GB and Colab's 12.7 GB of RAM). It is loaded back with
`from_pretrained`, in 16 bits or in NF4 with double quantization (`BitsAndBytesConfig`), so the loaded model is
what a student's would be. The 16-bit dtype is bf16 on compute capability 8.0 and newer, fp16 below (a T4).
A PEFT LoRA adapter is added, and two AdamW training steps run on random tokens; the second step is measured,
once the optimizer states exist. The prediction is `course_utils.memory.training_memory` with the same settings;
a case whose prediction does not fit the GPU (its free memory, or `--cap-gb`) is skipped with a sentence.

Measured on a GPU: `torch.cuda.max_memory_allocated()` over the second step (the peak of what PyTorch allocated;
the CUDA context and the allocator's cache come on top, as nvidia-smi shows). On the CPU smoke run there is no
allocator peak to read, so "measured" is the sum of the parts `measure_training_step` counts: weights, gradients,
optimizer states and the activations saved for the backward pass; it misses the short-lived tensors (logits and
their gradient, the layer recomputed under checkpointing) that the prediction includes, so it reads lower.
With --nf4-weights, only the weights are checked, on the CPU: each named config is saved with random bf16 weights,
loaded in NF4 with double quantization, and every byte it holds (`model_bytes`: parameters, buffers and the
quantization state) is compared with `weight_bytes(config, "nf4")` and with `get_memory_footprint()`.
The table goes to stdout; the last line is the same as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import runtime  # noqa: E402
from course_utils.configs import load_config  # noqa: E402
from course_utils.footprint import measure_training_step, model_bytes  # noqa: E402
from course_utils.memory import HEADROOM, training_memory  # noqa: E402
from course_utils.quantization import bnb_4bit_config  # noqa: E402
from course_utils.training import enable_gradient_checkpointing  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
GPU_MODELS = ("llama-3.2-1b", "llama-3.1-8b")
SMOKE_CONFIG = dict(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
SMOKE_SHARD_BYTES = 500_000  # the tiny model is ~2.5 MB in fp32: several shards, as the 8B has


def save_random_model(config, folder: Path, device: str, dtype: torch.dtype, max_shard_bytes: int = 10**9) -> int:
    """Random weights saved like a downloaded, sharded checkpoint; returns the number of shards.

    The tensors are made on `device` (normal with the config's initializer_range; the norms' scales 1), one
    shard at a time, and written as safetensors shards of at most `max_shard_bytes` (a single bigger tensor gets
    a shard of its own) with the index `from_pretrained` reads: the whole model never exists anywhere.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
    names = [(name, p.shape) for name, p in skeleton.named_parameters()]  # tied weights once
    itemsize = skeleton.model.embed_tokens.weight.element_size()
    del skeleton
    groups, size = [[]], 0
    for name, shape in names:
        nbytes = shape.numel() * itemsize
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    generator = torch.Generator(device).manual_seed(0)
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shape in group:
            value = torch.empty(shape, dtype=dtype, device=device)
            if len(shape) == 1:
                value.fill_(1.0)
            else:
                value.normal_(0.0, config.initializer_range, generator=generator)
            tensors[name] = value.cpu()
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in tensors})
        del tensors
    index = {"metadata": {"total_size": sum(s.numel() for _, s in names) * itemsize}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config.save_pretrained(folder)
    return len(groups)


def skip_reason(name: str, method: str, checkpointing: bool, predicted_total: int, budget: int | None) -> str | None:
    """A sentence when the predicted step does not fit `budget` bytes (keeping memory.HEADROOM free), else None."""
    if budget is None or predicted_total <= budget * (1 - HEADROOM):
        return None
    return (f"Skipped {name} {method} with checkpointing {'on' if checkpointing else 'off'}: the estimate is "
            f"{predicted_total / 1e9:.2f} GB and only {budget / 1e9:.2f} GB are available here.")


def load(folder: Path, method: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM
    kwargs = dict(dtype=dtype, device_map=device)
    if method == "qlora":
        kwargs["quantization_config"] = bnb_4bit_config(dtype, double_quant=True)
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def predict(config, method: str, rank: int, batch_size: int, seq_len: int, checkpointing: bool, dtype: torch.dtype):
    """`training_memory` with the settings of one case."""
    return training_memory(config, method, rank=rank, targets=TARGETS, batch_size=batch_size, seq_len=seq_len,
                           gradient_checkpointing=checkpointing, compute_dtype=DTYPE_NAMES[dtype])


def run_case(name: str, config, folder: Path, method: str, rank: int, batch_size: int, seq_len: int,
             checkpointing: bool, device: str, dtype: torch.dtype) -> dict:
    from peft import LoraConfig, get_peft_model
    model = load(folder, method, device, dtype).train()
    loaded = model_bytes(model)
    if checkpointing:
        enable_gradient_checkpointing(model)
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the first step creates the optimizer states
    predicted = predict(config, method, rank, batch_size, seq_len, checkpointing, dtype)
    row = dict(model=name, method=method, dtype=DTYPE_NAMES[dtype], rank=rank, batch_size=batch_size, seq_len=seq_len,
               checkpointing=checkpointing, weights_predicted=predicted.weights, weights_measured=loaded,
               predicted_total=predicted.total)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        row.update(measured_total=torch.cuda.max_memory_allocated(), measured_how="torch.cuda.max_memory_allocated",
                   step_seconds=round(time.perf_counter() - start, 3), gpu=torch.cuda.get_device_name(0))
    else:
        parts = measure_training_step(model, ids, optimizer)
        row.update(measured_total=sum(parts.values()), measured_how="sum of measured parts (CPU)", gpu=None)
    row["ratio"] = round(row["measured_total"] / row["predicted_total"], 3)
    del model, optimizer
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    return row


def print_table(rows: list[dict]) -> None:
    head = f"{'model':<14}{'method':<7}{'dtype':<6}{'batch x seq':>12}{'ckpt':>6}{'weights pred':>14}{'weights meas':>14}" \
           f"{'total pred':>12}{'total meas':>12}{'meas/pred':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = f"{r['batch_size']} x {r['seq_len']}"
        start = (f"{r['model']:<14}{r['method']:<7}{r['dtype']:<6}{shape:>12}"
                 f"{'yes' if r['checkpointing'] else 'no':>6}"
                 f"{r['weights_predicted'] / 1e9:>12.3f}GB")
        if r.get("skipped"):
            print(f"{start}{'-':>14}{r['predicted_total'] / 1e9:>10.3f}GB{'skipped':>12}{'-':>10}")
        else:
            print(f"{start}{r['weights_measured'] / 1e9:>12.3f}GB{r['predicted_total'] / 1e9:>10.3f}GB"
                  f"{r['measured_total'] / 1e9:>10.3f}GB{r['ratio']:>10.3f}")


def nf4_weights(names: list[str]) -> list[dict]:
    """Predicted against measured bytes of NF4 loads (double quantization) on the CPU."""
    from course_utils.memory import weight_bytes
    rows = []
    for name in names:
        config = load_config(name)
        with tempfile.TemporaryDirectory() as tmp:
            save_random_model(config, Path(tmp), "cpu", torch.bfloat16)
            model = load(Path(tmp), "qlora", "cpu", torch.bfloat16)
            measured, footprint = model_bytes(model), model.get_memory_footprint()
            del model
        predicted = weight_bytes(config, "nf4", double_quant=True)
        rows.append(dict(model=name, predicted=predicted, measured=measured, get_memory_footprint=footprint,
                         difference_percent=round(100 * (predicted - measured) / measured, 4)))
        r = rows[-1]
        print(f"{name:<14} predicted {predicted:>15,}  measured {measured:>15,}  ({r['difference_percent']:+.4f}%)"
              f"  get_memory_footprint {footprint:>15,}")
    return rows


def skipped_row(name: str, method: str, checkpointing: bool, args, dtype: torch.dtype, predicted, reason: str) -> dict:
    return dict(model=name, method=method, dtype=DTYPE_NAMES[dtype], rank=args.rank, batch_size=args.batch_size,
                seq_len=args.seq_len, checkpointing=checkpointing, weights_predicted=predicted.weights,
                predicted_total=predicted.total, skipped=reason)


def gpu_budget(cap_gb: float | None) -> tuple[int, str]:
    """(bytes this run may use on GPU 0, a sentence): its free memory, or less with `cap_gb` (1e9 bytes)."""
    free, total = torch.cuda.mem_get_info()
    if cap_gb is None or cap_gb * 1e9 >= free:
        return free, f"{free / 1e9:.1f} GB of {total / 1e9:.1f} GB free on {torch.cuda.get_device_name(0)}."
    torch.cuda.set_per_process_memory_fraction(cap_gb * 1e9 / total, 0)
    return int(cap_gb * 1e9), f"PyTorch's allocator capped at {cap_gb:g} GB of {total / 1e9:.1f} GB."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="a tiny config on the CPU (what the tests run)")
    parser.add_argument("--models", nargs="*", default=list(GPU_MODELS), help="shipped config names")
    parser.add_argument("--nf4-weights", nargs="+", metavar="CONFIG", help="check NF4 weight bytes on the CPU")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--cap-gb", type=float, default=None, help="on a GPU: use at most this many GB, e.g. 15 (T4)")
    parser.add_argument("--shard-gb", type=float, default=1.0, help="largest checkpoint shard written (default 1)")
    args = parser.parse_args(argv)

    if args.nf4_weights:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        print(json.dumps(nf4_weights(args.nf4_weights)))
        return 0
    notes = []
    if args.cpu_smoke:
        from transformers import LlamaConfig
        # fp32 on the CPU: bf16 matmuls are slow on CPUs without bf16 instructions.
        device, dtype, models = "cpu", torch.float32, {"smoke-tiny": LlamaConfig(**SMOKE_CONFIG)}
        args.seq_len = min(args.seq_len, 64)
        args.batch_size = min(args.batch_size, 2)
        budget, shard_bytes = None, SMOKE_SHARD_BYTES
    elif not torch.cuda.is_available():
        print("No CUDA GPU here, so there is nothing to measure: run this on a GPU machine, "
              "or pass --cpu-smoke to check the code on a tiny model on the CPU.")
        return 0
    else:
        dtype, note = runtime.compute_dtype_for(runtime.detect_gpu(), torch.bfloat16)  # fp16 below 8.0 (a T4)
        device, models = "cuda", {name: load_config(name) for name in args.models}
        budget, budget_note = gpu_budget(args.cap_gb)
        notes += [n for n in (note, budget_note) if n]
        shard_bytes = int(args.shard_gb * 1e9)

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    from course_utils.quantization import bitsandbytes_problem
    methods = ["lora"] + ([] if bitsandbytes_problem() else ["qlora"])
    rows = []
    for name, config in models.items():
        cases = [(method, checkpointing) for method in methods for checkpointing in (True, False)]
        predicted = {(m, c): predict(config, m, args.rank, args.batch_size, args.seq_len, c, dtype) for m, c in cases}
        reasons = {(m, c): skip_reason(name, m, c, predicted[m, c].total, budget) for m, c in cases}
        skipped = [skipped_row(name, m, c, args, dtype, predicted[m, c], reasons[m, c]) for m, c in cases
                   if reasons[m, c]]
        notes += [row["skipped"] for row in skipped]
        rows += skipped
        if len(skipped) == len(cases):
            continue  # nothing to measure: don't write the checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            shards = save_random_model(config, Path(tmp), device, dtype, shard_bytes)
            for method, checkpointing in cases:
                if reasons[method, checkpointing]:
                    continue
                try:
                    row = run_case(name, config, Path(tmp), method, args.rank, args.batch_size, args.seq_len,
                                   checkpointing, device, dtype)
                except torch.OutOfMemoryError as err:  # the estimate fit, the step did not: say so, go on
                    gc.collect()
                    torch.cuda.empty_cache()
                    reason = f"{name} {method} ran out of memory although the estimate fits: {str(err)[:160]}"
                    row = skipped_row(name, method, checkpointing, args, dtype, predicted[method, checkpointing],
                                      reason)
                    notes.append(reason)
                rows.append(dict(row, checkpoint_shards=shards))
                print(f"  done: {name} {method} checkpointing={checkpointing}", file=sys.stderr, flush=True)
    print_table(rows)
    for note in notes:
        print(note)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
