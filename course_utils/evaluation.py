"""Measuring a model on the course's task: generate records, score them, look inside the loss, and prove
what training did and did not change (the base's checksum, the adapter's size on disk)."""

from __future__ import annotations

import hashlib
import math
import re
import time
from pathlib import Path

import torch
from transformers import StoppingCriteria

from course_utils import data
from course_utils.runtime import progress
from course_utils.training import model_device


def cut_after_first_line(text: str) -> str:
    """`text` up to the end of its first non-empty line (leading blank lines and spaces are kept)."""
    start = len(text) - len(text.lstrip())
    end = text.find("\n", start)
    return text if end < 0 else text[:end]


class FirstLineDone(StoppingCriteria):
    """A stopping criterion for `model.generate`: a sequence is done once its new text holds a non-empty line
    followed by a newline. It returns one flag per sequence, so a batch runs until its last sequence is done."""

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        done = ["\n" in text.lstrip() for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 100,
                   show_progress: bool = False, first_line: bool = False) -> list[str]:
    """Greedy continuations of text prompts, as text. Prompts are padded on the left, so that every one ends
    where the new tokens start; a batched run gives what one prompt at a time would. With `first_line`, a
    continuation stops at the end of its first non-empty line (a record is one line): an untrained model that
    never writes EOS then costs a line, not `max_new_tokens`."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = []
    for i in progress(range(0, len(prompts), batch_size), desc="generating", disable=not show_progress):
        encoded = [{"input_ids": tokenizer(p)["input_ids"]} for p in prompts[i:i + batch_size]]
        batch = data.pad_batch(encoded, pad_id, side="left")
        out = model.generate(input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                             pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
                             stopping_criteria=[FirstLineDone(tokenizer, batch["input_ids"].shape[1])]
                             if first_line else None)
        new_texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        texts += [cut_after_first_line(t) for t in new_texts] if first_line else new_texts
    model.train(was_training)
    return texts


def generate(model, tokenizer, examples: list[dict], batch_size: int = 100, max_new_tokens: int | None = None,
             show_progress: bool = False) -> list[str]:
    """The model's record for each example: greedy continuations of the task's prompts (`data.make_prompt`)."""
    if max_new_tokens is None:  # the longest answer in tokens, and a little room
        max_new_tokens = 4 + max(len(tokenizer(data.make_answer(ex["record"]), add_special_tokens=False)["input_ids"])
                                 for ex in examples)
    prompts = [data.make_prompt(ex["request"]) for ex in examples]
    return generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, show_progress, first_line=True)


def evaluate(model, tokenizer, examples: list[dict], batch_size: int = 100, show_progress: bool = False) -> dict:
    """Generate a record for every example and score it: exact match, per-field accuracy, predictions, seconds."""
    t0 = time.perf_counter()
    predictions = generate(model, tokenizer, examples, batch_size=batch_size, show_progress=show_progress)
    result = data.score(predictions, examples)
    result.update(predictions=predictions, seconds=time.perf_counter() - t0)
    return result


def interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95% interval for a share measured on `n` requests: where the share on every request like them
    probably lies. Unlike share +- 2 standard errors it stays within 0-1 and is not zero wide at 0% or 100%."""
    if n <= 0:
        return 0.0, 1.0
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def value_in_text(value: str, text: str) -> bool:
    """True when `value` ("TEA", "15:00", "kenji") appears in `text` as a whole word: not inside a longer
    word or time ("TEAM", "115:00", "kenjis" don't count). Case counts: the values are normalized, and
    writing them normalized is part of the task."""
    return re.search(rf"(?<![\w:]){re.escape(value)}(?![\w:])", text) is not None


def values_found(predictions: list[str], examples: list[dict]) -> dict:
    """A lenient score beside exact match: the share of the expected field values that appear anywhere in
    the generated text, in any order, format or wording (`value_in_text`). A model that writes
    "with kenji, in LIM, at 15:00" gets 3 of 5 here and 0 in exact match, which reads only records.
    Returns {"values_found": share over all fields, "per_field": {field: share}, "n": examples}."""
    n = len(examples)
    if n == 0:
        raise ValueError("no examples to score")
    found = {k: 0 for k in data.FIELDS}
    for pred, ex in zip(predictions, examples, strict=True):
        for k in data.FIELDS:
            found[k] += value_in_text(ex["record"][k], pred)
    per_field = {k: v / n for k, v in found.items()}
    return {"values_found": sum(per_field.values()) / len(per_field), "per_field": per_field, "n": n}


@torch.no_grad()
def token_losses(model, tokenizer, example: dict, top: int = 3) -> list[dict]:
    """For every token the loss grades in `example` (its answer and EOS): the token, its loss in nats, and the
    model's `top` guesses with their probabilities. A loss of -ln(p) means the right token got probability p.
    Ids the tokenizer does not have (a model's embedding table can be longer) show as "<unused id N>"."""
    enc = data.encode_example(tokenizer, example)
    ids = torch.tensor([enc["input_ids"]], device=model_device(model))
    was_training = model.training
    model.eval()
    logits = model(input_ids=ids).logits[0, :-1].float()  # the prediction for each next token
    model.train(was_training)
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").cpu()
    probs, guesses = torch.softmax(logits, -1).topk(top, dim=-1)

    def name(i: int) -> str:
        return tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else f"<unused id {i}>"
    rows = []
    for pos, label in enumerate(enc["labels"][1:]):
        if label != data.IGNORE_INDEX:
            rows.append({"token": name(int(ids[0, pos + 1])), "loss": float(nll[pos]),
                         "top": [(name(int(g)), float(p)) for g, p in zip(guesses[pos], probs[pos])]})
    return rows


def side_by_side(examples: list[dict], before: list[str], after: list[str], n: int = 5, width: int = 80) -> str:
    """A text table: the request, the base model's record and the fine-tuned one, marked right or wrong."""
    def mark(pred: str, ex: dict) -> str:
        first = pred.strip().split("\n", 1)[0]
        ok = data.parse_record(pred) == ex["record"]
        return ("✅ " if ok else "❌ ") + (first[:width - 3] + "..." if len(first) > width else first)
    lines = []
    for ex, b, a in list(zip(examples, before, after))[:n]:
        lines += [f"request:  {ex['request']}", f"expected: {ex['target']}", f"before:   {mark(b, ex)}",
                  f"after:    {mark(a, ex)}", ""]
    return "\n".join(lines)


def weights_checksum(model, skip: tuple[str, ...] = ("lora_",), chunk_bytes: int = 4 << 20) -> str:
    """sha256 of the model's weights, skipping parameters whose name contains one of `skip` (the adapter).

    A 4-bit weight is hashed as its packed NF4 bytes; any other weight by its values as float32, so the
    upcast of norms to fp32 by `prepare_model_for_kbit_training` does not count as a change. Each tensor is
    fed to the hash in pieces of about `chunk_bytes`, each moved to the CPU and converted on its own: hashing
    the 8B never copies a whole tensor (its fp32 embeddings alone take 2 GB), and the digest is the one that
    the whole tensor's bytes in one piece give.
    """
    def pieces(t: torch.Tensor, n: int):
        """The values of `t` in row-major order, in 1-d pieces of at most `n` (views when `t` is contiguous;
        else cut along the first dimension, each piece copied on its own)."""
        if t.dim() == 0 or t.is_contiguous():
            flat = t.reshape(-1)
            yield from (flat[i:i + n] for i in range(0, flat.numel(), n))
        else:
            rows = max(1, n // max(1, t[0].numel()))
            yield from (t[i:i + rows].reshape(-1) for i in range(0, t.shape[0], rows))

    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        if any(s in name for s in skip):
            continue
        name = name.replace("base_model.model.", "").replace(".base_layer", "")  # the same name with or without peft
        four_bit = type(p).__name__ == "Params4bit"
        digest.update(name.encode())
        t = p.detach()
        for piece in pieces(t, max(1, chunk_bytes // (t.element_size() if four_bit else 4))):
            piece = piece.cpu() if four_bit else piece.cpu().float()  # a view, not a copy, when already fp32 on a CPU
            digest.update(piece.contiguous().view(torch.uint8).numpy())  # numpy's buffer: hashed without a copy
    return digest.hexdigest()


def folder_mb(folder: str | Path) -> float:
    """Size on disk of the files in a folder (recursively), in MB (1e6 bytes)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
