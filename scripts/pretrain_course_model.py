"""Pretrain the course's small Llama ("course-llama") from scratch on text this repo generates.

    python scripts/pretrain_course_model.py               # -> assets/course-llama/ (weights, tokenizer, README)

What the model reads (course_utils.data.pretraining_corpus): calendar requests in plain words, the assistant's
log line for each request in its own short notation, and calendar records (the task's format) with random
values. It never sees a request next to its record: that mapping is what notebook 06 fine-tunes.

Deterministic: fixed seeds, torch.use_deterministic_algorithms, one CPU thread by default (tiny matrices run
fastest on one thread, and the result then does not depend on the core count). The script prints the sha256
of the weights; the same torch version on the same kind of CPU gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import data, training  # noqa: E402
from course_utils.configs import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEED = 7
N_DOCS = 40_000
RECIPE = training.TrainConfig(steps=1200, batch_size=32, lr=5e-3, warmup_steps=100, decay_from=0.8,
                              betas=(0.9, 0.95), max_grad_norm=1.0, seed=SEED)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "assets" / "course-llama"), help="folder (default %(default)s)")
    parser.add_argument("--steps", type=int, default=RECIPE.steps)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default %(default)s)")
    args = parser.parse_args(argv)

    from transformers import LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()

    # 1. The text: never a request of the course's dataset, never a request next to its record.
    splits = data.make_dataset()
    dataset_requests = {ex["request"] for rows in splits.values() for ex in rows}
    corpus = data.pretraining_corpus(N_DOCS, seed=SEED, exclude=dataset_requests)

    # 2. The tokenizer: one token per word, from the corpus and the dataset (so no test word is unknown).
    tokenizer = data.build_tokenizer(corpus + [data.make_prompt(ex["request"]) + data.make_answer(ex["record"])
                                               for rows in splits.values() for ex in rows])
    config = load_config("course-tiny")
    if len(tokenizer) > config.vocab_size:
        raise SystemExit(f"the tokenizer has {len(tokenizer)} tokens but course-tiny.json has vocab_size "
                         f"{config.vocab_size}: raise it in course_utils/model_configs/course-tiny.json")
    features = [data.encode_document(tokenizer, doc) for doc in corpus]
    n_tokens = sum(len(f["input_ids"]) for f in features)
    print(f"corpus: {len(corpus):,} documents, {n_tokens:,} tokens; vocabulary {len(tokenizer)} words "
          f"({time.perf_counter() - start:.1f} s)")

    # 3. The model: course-tiny.json, random weights from the seed, every parameter trained.
    training.set_seed(SEED)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: LlamaForCausalLM, {n_params:,} parameters ({config.num_hidden_layers} layers, hidden "
          f"{config.hidden_size}, {config.num_attention_heads} heads / {config.num_key_value_heads} KV heads)")
    recipe = training.TrainConfig(**{**RECIPE.__dict__, "steps": args.steps})
    batches = data.Batches(features, recipe.batch_size, tokenizer.pad_token_id, seed=SEED, bucket=20)
    result = training.train(model, batches, recipe, resume=False)
    losses = [row["loss"] for row in result.history]
    print(f"pretrained {recipe.steps} steps in {result.seconds:.0f} s: loss {losses[0]:.2f} -> "
          f"{sum(losses[-50:]) / min(50, len(losses)):.3f} (mean of the last 50 steps)")

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
        "seed": SEED, "documents": len(corpus), "tokens": n_tokens, "corpus_mix": data.CORPUS_MIX,
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
        "calendar requests, the assistant's log line for each request, and calendar records with random "
        "values. It has never seen a request next to its record; notebook 06 fine-tunes that.\n\n"
        f"sha256 of model.safetensors: `{digest}`\n\n"
        "License: the course's own work, released with the repository under the MIT license; the training "
        "text is generated by the repository (CC0).\n")
    print(f"saved to {out} ({size_mb:.1f} MB); model.safetensors sha256 {digest[:16]}...")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
