"""How long a QLoRA training step and a batch of generations take on this CPU, for a shipped config with random weights.

    python benchmarks/cpu_step_time.py                          # SmolLM2-135M (the cpu profile's model), batch 8
    python benchmarks/cpu_step_time.py smollm2-135m --batch-sizes 8 16

It sizes the "cpu" preset of course_utils.training: the model is built from its shipped config with random
weights (no Hub), saved to a temporary folder and loaded back in NF4 with double quantization on the CPU, with
the course's LoRA adapter (r=32 on q,k,v,o) after `prepare_model_for_kbit_training`. It times a few optimizer
steps of the preset on random tokens (60 per example, the loss on the last 20, about what a request and its
record take), and greedy generation of 25 tokens for 100 prompts of 40 tokens. Random weights compute exactly
as fast as trained ones. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import data, lora, quantization, training  # noqa: E402
from course_utils.architecture import random_model  # noqa: E402
from course_utils.configs import load_config  # noqa: E402

SEQ_LEN, ANSWER_LEN, PROMPT_LEN, NEW_TOKENS, N_PROMPTS = 60, 20, 40, 25, 100


def load_qlora(folder: str):
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                                 quantization_config=quantization.bnb_4bit_config(torch.float32))
    quantization.keep_standard_4bit_layout(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return training.add_peft_lora(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="smollm2-135m", help="a shipped config (default %(default)s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[training.PRESETS["cpu"].batch_size])
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per batch size")
    args = parser.parse_args(argv)

    config = load_config(args.model)
    g = torch.Generator().manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        random_model(config, seed=0).save_pretrained(folder)
        model = load_qlora(folder)
        print(f"{args.model}: QLoRA (NF4 base, LoRA r={lora.COURSE_RANK} on q,k,v,o) on the CPU, "
              f"{torch.get_num_threads()} threads")
        ids = torch.randint(3, config.vocab_size, (max(args.batch_sizes) * args.steps, SEQ_LEN), generator=g).tolist()
        features = [{"input_ids": row, "labels": [data.IGNORE_INDEX] * (SEQ_LEN - ANSWER_LEN) + row[-ANSWER_LEN:]}
                    for row in ids]
        for batch_size in args.batch_sizes:
            preset = replace(training.PRESETS["cpu"], steps=args.steps, batch_size=batch_size)
            result = training.train(model, data.Batches(features, batch_size, pad_id=0), preset, show_progress=False)
            rows.append({"batch_size": batch_size, "seconds_per_step": round(result.seconds / args.steps, 2)})
        prompts = torch.randint(3, config.vocab_size, (N_PROMPTS, PROMPT_LEN), generator=g)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=NEW_TOKENS,
                           do_sample=False, pad_token_id=0)
        generate_s = round(time.perf_counter() - start, 1)

    print(f"\n{'batch':>6}{'s / step':>10}   ({SEQ_LEN} tokens per example)")
    for r in rows:
        print(f"{r['batch_size']:>6}{r['seconds_per_step']:>10.2f}")
    print(f"generation: {generate_s} s for {N_PROMPTS} prompts x {NEW_TOKENS} new tokens")
    print(json.dumps({"benchmark": "cpu_step_time", "model": args.model, "threads": torch.get_num_threads(),
                      "steps": rows, "generate_seconds": generate_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
