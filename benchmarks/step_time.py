"""One training step of full fine-tuning, LoRA and QLoRA on the same model and batch: time, optimizer state, checkpoint.

    python benchmarks/step_time.py                       # SmolLM2-135M's shipped config, batch 2 x 32 tokens
    python benchmarks/step_time.py --steps 5 --batch 4 --seq-len 128   # a longer run

The model is SmolLM2-135M-Instruct's architecture from its shipped config with random weights (no Hub; random
weights compute exactly as fast as trained ones). Each method gets the same batch of random tokens and is timed
over forward + backward + `AdamW.step()` + `zero_grad()`: one warm-up step, then the median of `--steps` steps.
The three models are held at once and step in turn, so other programs on a shared machine slow each alike.

- full fine-tuning: AdamW on every parameter of the fp32 model;
- LoRA: PEFT's LoRA (r = 16, alpha = 32, on q, k, v, o) on the frozen fp32 model, AdamW on the adapter only;
- QLoRA: the same adapter on the model loaded in NF4 with double quantization by bitsandbytes (on the CPU here),
  computing in fp32.

Beside the time it reports the trainable parameters, the bytes of AdamW's state (two numbers per trainable
parameter), the model's weights in memory (`get_memory_footprint()`) and the bytes of what `save_pretrained`
writes (the whole model, or the adapter only). Prints a table and writes benchmarks/results/step_time.txt.
Notebook 03 reads that file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import quantization  # noqa: E402
from course_utils.architecture import random_model  # noqa: E402
from course_utils.configs import load_config  # noqa: E402
from course_utils.lora import get_lora_model, lora_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "step_time.txt"
RANK, ALPHA, TARGETS = 16, 32, ("q_proj", "k_proj", "v_proj", "o_proj")
METHODS = ("full fine-tuning", "LoRA", "QLoRA")


def folder_bytes(folder: Path) -> int:
    """Bytes of the weight files `save_pretrained` wrote into `folder`."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW: exp_avg and exp_avg_sq, plus a step counter)."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t))


def one_step(model, optimizer, batch: dict) -> float:
    """Seconds of one training step: forward, backward, AdamW's update, zero_grad."""
    start = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def load_method(method: str, folder: Path):
    """The model of one method, freshly loaded from `folder` (random weights saved there)."""
    from transformers import AutoModelForCausalLM
    if method == "QLoRA":
        from peft import prepare_model_for_kbit_training
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                                     quantization_config=quantization.bnb_4bit_config(torch.float32))
        quantization.keep_standard_4bit_layout(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    footprint = model.get_memory_footprint()
    if method != "full fine-tuning":
        torch.manual_seed(0)
        model = get_lora_model(model, lora_config(model, r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                                  task_type="CAUSAL_LM"))
    return model, footprint


def measure(args) -> list[dict]:
    """All three methods in memory at once, their steps taken in turn (full, LoRA, QLoRA, full, ...): a machine
    shared with other programs then slows each method alike."""
    config = load_config(args.model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq_len), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        random_model(config, seed=0).save_pretrained(base)
        setups = {}
        for method in METHODS:
            model, footprint = load_method(method, base)
            model.train()
            lr = 1e-5 if method == "full fine-tuning" else 1e-4
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
            setups[method] = (model, optimizer, footprint)
        seconds = {method: [] for method in METHODS}
        for round_ in range(args.steps + 1):  # round 0 warms up (and allocates AdamW's state)
            for method, (model, optimizer, _) in setups.items():
                took = one_step(model, optimizer, batch)
                if round_ > 0:
                    seconds[method].append(took)
            print(f"  round {round_}: " + ", ".join(f"{m} {s[-1]:.2f} s" for m, s in seconds.items() if s)
                  if round_ else "  warm-up done", flush=True)
        for method, (model, optimizer, footprint) in setups.items():
            saved = Path(tmp) / method.replace(" ", "_")
            model.save_pretrained(saved)  # the whole model, or (PEFT) the adapter only
            took = seconds[method]
            rows.append({"method": method, "seconds_per_step": round(statistics.median(took), 3),
                         "seconds_min": round(min(took), 3), "seconds_max": round(max(took), 3),
                         "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                         "optimizer_state_bytes": optimizer_state_bytes(optimizer),
                         "weights_in_memory_bytes": footprint, "checkpoint_bytes": folder_bytes(saved)})
    return rows


def table(rows: list[dict], header: str) -> str:
    lines = [header, "",
             f"{'method':<18}{'s / step':>10}{'(min-max)':>14}{'trainable':>14}{'AdamW state MB':>16}"
             f"{'weights MB':>12}{'checkpoint MB':>15}"]
    for r in rows:
        spread = f"{r['seconds_min']:.2f}-{r['seconds_max']:.2f}"
        lines.append(f"{r['method']:<18}{r['seconds_per_step']:>10.2f}{spread:>14}{r['trainable']:>14,}"
                     f"{r['optimizer_state_bytes'] / 1e6:>16.1f}{r['weights_in_memory_bytes'] / 1e6:>12.1f}"
                     f"{r['checkpoint_bytes'] / 1e6:>15.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="smollm2-135m", help="a shipped config (default %(default)s)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method, after one warm-up")
    parser.add_argument("--no-write", action="store_true", help=f"print only; don't write {RESULTS.name}")
    args = parser.parse_args(argv)

    import bitsandbytes
    import peft
    import transformers
    transformers.utils.logging.disable_progress_bar()  # a bar per tensor loaded tells nothing here
    header = (f"# {args.model} (shipped config, random weights), batch {args.batch} x {args.seq_len} tokens, "
              f"median of {args.steps} steps after 1 warm-up, the methods in turn\n"
              f"# LoRA and QLoRA: r={RANK}, alpha={ALPHA} on {','.join(TARGETS)}; QLoRA: NF4 + double quant, fp32 compute\n"
              f"# device cpu, {torch.get_num_threads()} threads; torch {torch.__version__}, "
              f"transformers {transformers.__version__}, peft {peft.__version__}, "
              f"bitsandbytes {bitsandbytes.__version__}\n"
              f"# python benchmarks/step_time.py --batch {args.batch} --seq-len {args.seq_len} --steps {args.steps}")
    rows = measure(args)
    text = table(rows, header)
    print("\n" + text)
    record = {"benchmark": "step_time", "model": args.model, "batch": args.batch, "seq_len": args.seq_len,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    print(json.dumps(record))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n\n" + json.dumps(record) + "\n")
        print(f"wrote {RESULTS.relative_to(RESULTS.parent.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
