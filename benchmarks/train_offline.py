"""LoRA and QLoRA on the course's small model, on this machine's CPU: the test metric before and after.

    python benchmarks/train_offline.py               # LoRA (fp32 base) and QLoRA (NF4 base through bitsandbytes)
    python benchmarks/train_offline.py --only lora   # one of them

Both train the same adapter (r=32, alpha=64, dropout 0.1 on q,k,v,o) with the offline preset and the same seed
on assets/dataset/train.jsonl, and are scored on the test set (exact match: every field of the record right).
Prints a table, then one JSON line. Training seconds are the loop's wall time, evaluation excluded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import data, evaluation, training  # noqa: E402
from course_utils import runtime  # noqa: E402
from course_utils.runtime import OFFLINE_MODEL, assets_dir  # noqa: E402


def run(method: str, model_id: str, train: list[dict], test: list[dict], preset: training.TrainConfig) -> dict:
    from peft import prepare_model_for_kbit_training

    profile = replace(runtime.choose_profile("offline"), model_id=model_id)
    model, tokenizer = runtime.load_model(profile, four_bit=(method == "qlora"))
    tokenizer = data.prepare_tokenizer(tokenizer)
    before = evaluation.evaluate(model, tokenizer, test)
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = training.add_peft_lora(model, seed=preset.seed)
    batches = data.Batches(data.encode_split(tokenizer, train, preset.max_length), preset.batch_size,
                           tokenizer.pad_token_id, seed=preset.seed)
    result = training.train(model, batches, preset, show_progress=False)
    after = evaluation.evaluate(model, tokenizer, test)
    return {"method": method, "exact_match_before": before["exact_match"], "exact_match_after": after["exact_match"],
            "field_accuracy_after": after["field_accuracy"], "train_seconds": round(result.seconds, 1),
            "steps": result.steps_run, "tokens_per_s": round(result.tokens_per_second), "final_loss": round(result.final_loss, 4),
            "eval_seconds": round(before["seconds"] + after["seconds"], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("lora", "qlora"), help="run one method (default: both)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the offline preset's)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default %(default)s: fastest for a tiny model)")
    parser.add_argument("--model", default=str(assets_dir() / OFFLINE_MODEL))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    preset = training.PRESETS["offline"]
    if args.steps:
        preset = replace(preset, steps=args.steps)
    train, test = data.load_split("train"), data.load_split("test")
    print(f"course-llama on the CPU ({args.threads} thread{'s' * (args.threads > 1)}), {len(train)} training "
          f"examples, {len(test)} test examples; preset: {preset.steps} steps x batch {preset.batch_size}, "
          f"lr {preset.lr}")
    rows = []
    for method in ([args.only] if args.only else ["lora", "qlora"]):
        start = time.perf_counter()
        rows.append(run(method, args.model, train, test, preset))
        print(f"  {method}: done in {time.perf_counter() - start:.0f} s", flush=True)

    print(f"\n{'method':<8}{'EM before':>11}{'EM after':>10}{'train s':>9}{'tokens/s':>10}   field accuracy after")
    for r in rows:
        fields = " ".join(f"{k} {v:.2f}" for k, v in r["field_accuracy_after"].items())
        print(f"{r['method']:<8}{r['exact_match_before']:>11.1%}{r['exact_match_after']:>10.1%}{r['train_seconds']:>9.1f}"
              f"{r['tokens_per_s']:>10}   {fields}")
    print(json.dumps({"benchmark": "train_offline", "threads": args.threads, "n_test": len(test), "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
