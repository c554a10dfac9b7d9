"""Pretrain the course's small Llama ("course-llama") from scratch on text this repo generates.

    python scripts/pretrain_course_model.py               # -> assets/course-llama/ (weights, tokenizer, README)

What the model reads (course_utils.data.pretraining_corpus): calendar requests in plain words, most of them
followed by a note on each of their five details in a random order, each normalized ("Notes: at 15:30, in PAR,
with maria, on Tue, for LUNCH."). It never sees a calendar record (the details in one fixed order, between "|",
after "Record:"): writing one is what notebook 06 fine-tunes.
The script checks the skill the fine-tuning builds on: on held-out notes, how often the model's first guess
for each detail is right. A model this small learns each lookup suddenly, after a plateau; with a higher
learning rate (5e-3) one detail often stayed at chance for the whole run. With this recipe all five are right
by step 250 (seed 2). As a safety net, a run where a detail is still below CHECK_MIN at CHECK_STEP is stopped
and the next seed is tried (the sequence of seeds is fixed, so the result is too).

Deterministic: fixed seeds, torch.use_deterministic_algorithms, one CPU thread by default (tiny matrices run
fastest on one thread, and the result then does not depend on the core count). The script prints the sha256
of the weights; the same torch version on the same kind of CPU gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import data, pretraining, training  # noqa: E402
from course_utils.configs import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS_SEED = 7   # the text
SEED = 2          # the initial weights and the batch order of the first attempt (then SEED + 1, ...)
N_DOCS = 40_000
RECIPE = training.TrainConfig(steps=800, batch_size=32, lr=2e-3, warmup_steps=100, decay_from=0.8,
                              betas=(0.9, 0.98), max_grad_norm=1.0, seed=SEED)
CHECK_STEP, CHECK_MIN, FINAL_MIN, MAX_ATTEMPTS = 400, 0.9, 0.95, 8


class Stuck(Exception):
    """A detail is still not learned at CHECK_STEP."""


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "assets" / "course-llama"), help="folder (default %(default)s)")
    parser.add_argument("--steps", type=int, default=RECIPE.steps)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default %(default)s)")
    args = parser.parse_args(argv)

    from transformers import LlamaForCausalLM

    os.environ.setdefault("COURSE_TEXT_PROGRESS", "1")  # a plain progress line every few seconds
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()

    # 1. The text: never a request of the course's dataset, never a request next to its record.
    splits = data.make_dataset()
    dataset_requests = {ex["request"] for rows in splits.values() for ex in rows}
    corpus = pretraining.pretraining_corpus(N_DOCS, seed=CORPUS_SEED, exclude=dataset_requests)

    # 2. The tokenizer: one token per word, from the corpus and the dataset (so no test word is unknown).
    tokenizer = pretraining.build_tokenizer(corpus + [data.make_prompt(ex["request"]) + data.make_answer(ex["record"])
                                               for rows in splits.values() for ex in rows])
    config = load_config("course-llama")
    if len(tokenizer) > config.vocab_size:
        raise SystemExit(f"the tokenizer has {len(tokenizer)} tokens but course-llama.json has vocab_size "
                         f"{config.vocab_size}: raise it in course_utils/model_configs/course-llama.json")
    features = [pretraining.encode_document(tokenizer, doc) for doc in corpus]
    n_tokens = sum(len(f["input_ids"]) for f in features)
    print(f"corpus: {len(corpus):,} documents, {n_tokens:,} tokens; vocabulary {len(tokenizer)} words "
          f"({time.perf_counter() - start:.1f} s)")

    # 3. The model: course-llama.json, random weights from the seed, every parameter trained.
    held_out = pretraining.pretraining_corpus(300, seed=CORPUS_SEED + 1000, exclude=dataset_requests)
    probe = held_out[:100]
    show = lambda skills: ", ".join(f"{k} {v:.2f}" for k, v in skills.items())  # noqa: E731
    attempts = []
    for attempt in range(MAX_ATTEMPTS):
        seed = SEED + attempt
        training.set_seed(seed)
        model = LlamaForCausalLM(config)
        if attempt == 0:
            n_params = sum(p.numel() for p in model.parameters())
            print(f"model: LlamaForCausalLM, {n_params:,} parameters ({config.num_hidden_layers} layers, hidden "
                  f"{config.hidden_size}, {config.num_attention_heads} query heads / {config.num_key_value_heads} "
                  f"KV heads of {config.head_dim})")
        recipe = training.TrainConfig(**{**RECIPE.__dict__, "steps": args.steps, "seed": seed})
        batches = data.Batches(features, recipe.batch_size, tokenizer.pad_token_id, seed=seed)

        def check(step, loss, model=model):
            if step + 1 == CHECK_STEP < recipe.steps:
                skills = pretraining.note_skills(model, tokenizer, probe)
                model.train()
                if min(skills.values()) < CHECK_MIN:
                    raise Stuck(show(skills))

        t0 = time.perf_counter()
        try:
            result = training.train(model, batches, recipe, resume=False, on_step=check)
        except Stuck as stuck:
            attempts.append({"seed": seed, "stopped_at": CHECK_STEP, "skills": str(stuck)})
            print(f"attempt {attempt + 1} (seed {seed}): a detail is still stuck at step {CHECK_STEP} ({stuck}); "
                  f"next seed ({time.perf_counter() - t0:.0f} s)")
            continue
        skills = pretraining.note_skills(model, tokenizer, held_out)
        attempts.append({"seed": seed, "skills": show(skills)})
        losses = [row["loss"] for row in result.history]
        print(f"attempt {attempt + 1} (seed {seed}): {recipe.steps} steps in {result.seconds:.0f} s, loss "
              f"{losses[0]:.2f} -> {sum(losses[-50:]) / min(50, len(losses)):.3f} (mean of the last 50 steps)")
        print(f"skill on held-out notes (first guess right): {show(skills)}")
        if min(skills.values()) >= FINAL_MIN:
            break
    else:
        raise SystemExit(f"no attempt learned all five details in {MAX_ATTEMPTS} tries: {attempts}")

    # 4. Save: weights, config, tokenizer, a model card.
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    weights = out / "model.safetensors"
    digest = file_sha256(weights)
    size_mb = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 1e6
    (out / "pretraining.json").write_text(json.dumps({
        "seed": seed, "attempts": attempts, "corpus_seed": CORPUS_SEED, "documents": len(corpus), "note_skills": skills, "tokens": n_tokens, "corpus_mix": pretraining.CORPUS_MIX,
        "recipe": {k: v for k, v in recipe.__dict__.items() if k not in ("checkpoint_dir",)},
        "parameters": n_params, "seconds": round(result.seconds, 1), "final_loss": round(losses[-1], 4),
        "model_sha256": digest, "torch": torch.__version__}, indent=1, default=list) + "\n")
    (out / "README.md").write_text(
        "# course-llama: the course's own small Llama\n\n"
        f"A `LlamaForCausalLM` with {n_params:,} parameters ({config.num_hidden_layers} decoder layers, "
        f"hidden size {config.hidden_size}, {config.num_attention_heads} query heads sharing "
        f"{config.num_key_value_heads} key/value heads, SiLU MLP, RMSNorm, RoPE, tied embeddings) and a "
        f"word-level tokenizer of {len(tokenizer)} tokens.\n\n"
        "Made by `python scripts/pretrain_course_model.py` from text generated by `course_utils/data.py`: "
        "calendar requests, most followed by notes on their details in a random order "
        "(\"Notes: at 15:30, in PAR, with maria, on Tue, for LUNCH.\"). "
        "It has never seen a calendar record; notebook 06 fine-tunes it to write one.\n\n"
        "First-guess accuracy on held-out notes, per detail: "
        + ", ".join(f"{k} {v:.2f}" for k, v in skills.items()) + "\n\n"
        f"sha256 of model.safetensors: `{digest}`\n\n"
        "License: the course's own work, released with the repository under the MIT license; the training "
        "text is generated by the repository.\n")
    print(f"saved to {out} ({size_mb:.1f} MB); model.safetensors sha256 {digest[:16]}...")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
