"""How long a QLoRA training step and a batch of generations take on this CPU, for a shipped config with random weights.

    python benchmarks/cpu_step_time.py                          # SmolLM2-135M (the cpu profile's model), batch 16
    python benchmarks/cpu_step_time.py smollm2-135m --batch-sizes 8 16

It sizes the "cpu" preset of course_utils.training: the model is built from its shipped config with random
weights (no Hub), saved to a temporary folder and loaded back in NF4 with double quantization on the CPU, with
the preset's LoRA adapter (r=32 on its targets and layers) after `prepare_model_for_kbit_training`. It times a
few optimizer steps of the preset on random tokens (a prompt of 28 to 42 tokens and an answer of 22, the loss
on the answer, about what a request and its record take in SmolLM2's tokens), once as `training.train_step`
runs them (logits only from the first graded position on: `training.graded_window`) and once with the logits
of every position, and greedy generation of 25 tokens for 100 prompts of 40 tokens. Random weights compute
exactly as fast as trained ones. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
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

PROMPT_LENS, ANSWER_LEN, PROMPT_LEN, NEW_TOKENS, N_PROMPTS = (28, 42), 22, 40, 25, 100


def load_qlora(folder: str, preset: training.TrainConfig):
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                                 quantization_config=quantization.bnb_4bit_config(torch.float32))
    quantization.keep_standard_4bit_layout(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    n_layers = model.config.num_hidden_layers
    top = min(preset.lora_top_layers or n_layers, n_layers)
    return training.add_peft_lora(model, targets=preset.lora_targets, dropout=preset.lora_dropout,
                                  layers=list(range(n_layers - top, n_layers)))


@contextlib.contextmanager
def every_logit():
    """train_step with the logits of every position, as before `training.graded_window`."""
    window = training.graded_window
    training.graded_window = lambda model, batch: batch
    try:
        yield
    finally:
        training.graded_window = window


def random_examples(n: int, vocab_size: int, g: torch.Generator) -> list[dict]:
    """Requests and records of random tokens: prompts of PROMPT_LENS tokens, answers of ANSWER_LEN graded."""
    rows = []
    for _ in range(n):
        prompt_len = int(torch.randint(PROMPT_LENS[0], PROMPT_LENS[1] + 1, (1,), generator=g))
        ids = torch.randint(3, vocab_size, (prompt_len + ANSWER_LEN,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [data.IGNORE_INDEX] * prompt_len + ids[prompt_len:]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="smollm2-135m", help="a shipped config (default %(default)s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[training.PRESETS["cpu"].batch_size])
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per batch size")
    args = parser.parse_args(argv)

    config = load_config(args.model)
    g = torch.Generator().manual_seed(0)
    preset = training.PRESETS["cpu"]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        random_model(config, seed=0).save_pretrained(folder)
        model = load_qlora(folder, preset)
        print(f"{args.model}: QLoRA (NF4 base, LoRA r={lora.COURSE_RANK} on {', '.join(preset.lora_targets)} of the "
              f"last {preset.lora_top_layers} layers) on the CPU, {torch.get_num_threads()} threads")
        features = random_examples(max(args.batch_sizes) * (args.steps + 1), config.vocab_size, g)
        for batch_size in args.batch_sizes:
            run = replace(preset, steps=args.steps + 1, batch_size=batch_size)  # the first step warms up: not timed
            row = {"batch_size": batch_size}
            for key, logits in (("seconds_per_step", contextlib.nullcontext()), ("every_logit", every_logit())):
                seconds = []
                with logits:
                    training.train(model, data.Batches(features, batch_size, pad_id=0), run, show_progress=False,
                                   on_step=lambda step, loss: seconds.append(time.perf_counter()))
                row[key] = round((seconds[-1] - seconds[0]) / args.steps, 2)
            rows.append(row)
        prompts = torch.randint(3, config.vocab_size, (N_PROMPTS, PROMPT_LEN), generator=g)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=NEW_TOKENS,
                           do_sample=False, pad_token_id=0)
        generate_s = round(time.perf_counter() - start, 1)

    print(f"\n{'batch':>6}{'s / step':>10}{'every logit':>13}   "
          f"({PROMPT_LENS[0]}-{PROMPT_LENS[1]} + {ANSWER_LEN} tokens per example)")
    for r in rows:
        print(f"{r['batch_size']:>6}{r['seconds_per_step']:>10.2f}{r['every_logit']:>13.2f}")
    print(f"generation: {generate_s} s for {N_PROMPTS} prompts x {NEW_TOKENS} new tokens")
    print(json.dumps({"benchmark": "cpu_step_time", "model": args.model, "threads": torch.get_num_threads(),
                      "steps": rows, "generate_seconds": generate_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
