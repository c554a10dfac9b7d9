"""Predicted against measured training memory: LoRA (bf16 base) and QLoRA (NF4 base) steps on real architectures.

    python benchmarks/memory_gpu.py                  # on a CUDA GPU: Llama 3.2 1B and Llama 3.1 8B, random weights
    python benchmarks/memory_gpu.py --cpu-smoke      # anywhere: the same code on a tiny config on the CPU
    python benchmarks/memory_gpu.py --nf4-weights llama-3.2-1b   # anywhere: NF4 weight bytes of a real load

Each model is built from its shipped config with random weights (no Hub), saved to a temporary folder and loaded
back with `from_pretrained`, in bf16 or in NF4 with double quantization (`BitsAndBytesConfig`), so the loaded
model is what a student's would be. A PEFT LoRA adapter is added, and two AdamW training steps run on random
tokens; the second step is measured, once the optimizer states exist. The prediction is
`course_utils.memory.training_memory` with the same settings.

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
from course_utils.configs import load_config  # noqa: E402
from course_utils.footprint import measure_training_step, model_bytes  # noqa: E402
from course_utils.memory import training_memory  # noqa: E402
from course_utils.quantization import bnb_4bit_config  # noqa: E402
from course_utils.training import enable_gradient_checkpointing  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32"}
GPU_MODELS = ("llama-3.2-1b", "llama-3.1-8b")
SMOKE_CONFIG = dict(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)


def save_random_model(config, folder: Path, device: str, dtype: torch.dtype) -> None:
    """Random weights, saved like a downloaded checkpoint."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    del model


def load(folder: Path, method: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM
    kwargs = dict(dtype=dtype, device_map=device)
    if method == "qlora":
        kwargs["quantization_config"] = bnb_4bit_config(dtype, double_quant=True)
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


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
    predicted = training_memory(config, method, rank=rank, targets=TARGETS, batch_size=batch_size, seq_len=seq_len,
                                gradient_checkpointing=checkpointing, compute_dtype=DTYPE_NAMES[dtype])
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
        print(f"{r['model']:<14}{r['method']:<7}{r['dtype']:<6}{str(r['batch_size']) + ' x ' + str(r['seq_len']):>12}"
              f"{'yes' if r['checkpointing'] else 'no':>6}{r['weights_predicted'] / 1e9:>12.3f}GB"
              f"{r['weights_measured'] / 1e9:>12.3f}GB{r['predicted_total'] / 1e9:>10.3f}GB"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="a tiny config on the CPU (what the tests run)")
    parser.add_argument("--models", nargs="*", default=list(GPU_MODELS), help="shipped config names")
    parser.add_argument("--nf4-weights", nargs="+", metavar="CONFIG", help="check NF4 weight bytes on the CPU")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=1024)
    args = parser.parse_args(argv)

    if args.nf4_weights:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        print(json.dumps(nf4_weights(args.nf4_weights)))
        return 0
    if args.cpu_smoke:
        from transformers import LlamaConfig
        # fp32 on the CPU: bf16 matmuls are slow on CPUs without bf16 instructions.
        device, dtype, models = "cpu", torch.float32, {"smoke-tiny": LlamaConfig(**SMOKE_CONFIG)}
        args.seq_len = min(args.seq_len, 64)
        args.batch_size = min(args.batch_size, 2)
    elif not torch.cuda.is_available():
        print("No CUDA GPU here, so there is nothing to measure: run this on a GPU machine, "
              "or pass --cpu-smoke to check the code on a tiny model on the CPU.")
        return 0
    else:
        device, dtype, models = "cuda", torch.bfloat16, {name: load_config(name) for name in args.models}

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    from course_utils.quantization import bitsandbytes_problem
    methods = ["lora"] + ([] if bitsandbytes_problem() else ["qlora"])
    rows = []
    for name, config in models.items():
        with tempfile.TemporaryDirectory() as tmp:
            save_random_model(config, Path(tmp), device, dtype)
            for method in methods:
                for checkpointing in (True, False):
                    rows.append(run_case(name, config, Path(tmp), method, args.rank, args.batch_size, args.seq_len,
                                         checkpointing, device, dtype))
                    print(f"  done: {name} {method} checkpointing={checkpointing}", file=sys.stderr, flush=True)
    print_table(rows)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
