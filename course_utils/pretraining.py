"""The course's small model and what it reads before the course begins: its word-level tokenizer, its
pretraining text (the skills the task builds on, never the task itself) and the check of those skills.
`scripts/pretrain_course_model.py` uses this module to build `assets/course-llama`."""

from __future__ import annotations

import random
from typing import Iterable

import torch

from course_utils.data import FIELDS, REQUEST_TEMPLATES, random_event, record_of, request_text
from course_utils.training import model_device

CORPUS_MIX = {"notes": 0.8, "request": 0.2}


def pretraining_corpus(n_docs: int, seed: int = 7, exclude: Iterable[str] = ()) -> list[str]:
    """Documents for the small model's pretraining, of two types (shares in CORPUS_MIX):

    - notes: a request, then a note on each of its five details in a random order, each its little word and
      its normalized value ("Notes: at 15:30, in PAR, with maria, on Tue, for LUNCH.");
    - request: a request on its own.
    So the model learns to read a request, to pick out any detail and to normalize it. It never sees a
    calendar record (the details in one fixed order, between "|", after "Record:"): writing one is the task
    left to fine-tuning. Requests in `exclude` (the dataset's) are never used.
    """
    rng = random.Random(seed)
    exclude = set(exclude)
    doc_types, weights = zip(*CORPUS_MIX.items())
    docs = []
    while len(docs) < n_docs:
        doc_type = rng.choices(doc_types, weights)[0]
        event = random_event(rng)
        request = request_text(event, rng.choice(REQUEST_TEMPLATES))
        if request in exclude:
            continue
        if doc_type == "notes":
            record = record_of(event)
            keys = rng.sample(FIELDS, len(FIELDS))  # every detail, in a random order
            docs.append(f"Request: {request}\nNotes: " + ", ".join(f"{k} {record[k]}" for k in keys) + ".")
        else:
            docs.append(f"Request: {request}")
    return docs



SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}  # ids 0, 1, 2, 3


def build_tokenizer(texts: Iterable[str]):
    """A word-level tokenizer for the course's small model: one token per word, number or punctuation mark.

    It splits text the way Llama 3's tokenizer does before its merges (the same byte-level pre-tokenizer: a word
    keeps its leading space, shown as "Ġ"), but keeps every word whole, so a request is ~20 tokens and the
    vocabulary ~400. Decoding gives back the exact text. Returns a `PreTrainedTokenizerFast`; save it with
    `.save_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)` loads it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pieces: set[str] = set()
    for text in texts:
        pieces.update(piece for piece, _ in pre.pre_tokenize_str(text))
    specials = [SPECIAL_TOKENS[k] for k in ("pad", "bos", "eos", "unk")]
    vocab = {token: i for i, token in enumerate(specials + sorted(pieces))}

    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    core.pre_tokenizer = pre
    core.decoder = decoders.ByteLevel()
    bos = SPECIAL_TOKENS["bos"]
    core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                        special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=SPECIAL_TOKENS["eos"],
                                   unk_token=SPECIAL_TOKENS["unk"], pad_token=SPECIAL_TOKENS["pad"],
                                   model_max_length=256, clean_up_tokenization_spaces=False)


def encode_document(tokenizer, text: str) -> dict:
    """A pretraining document: BOS + text + EOS, every token in the loss."""
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": list(ids)}


@torch.no_grad()
def note_skills(model, tokenizer, docs: list[str]) -> dict[str, float]:
    """How often the model's top guess is the right normalized value in "Notes:" lines, per key (teacher forcing).

    The pretraining script prints this: it is the skill the fine-tuning builds on (a base that cannot pick out
    and normalize a detail has nothing for LoRA to reuse).
    """
    model.eval()
    device = model_device(model)
    hits = {k: 0 for k in FIELDS}
    counts = dict(hits)
    vocab = tokenizer.get_vocab()
    key_ids = {vocab["Ġ" + k]: k for k in FIELDS if "Ġ" + k in vocab}
    for doc in docs:
        if "\nNotes:" not in doc:
            continue
        ids = tokenizer(doc)["input_ids"]
        start = len(tokenizer(doc.split("\nNotes:")[0])["input_ids"])
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0]
        for i in range(start, len(ids) - 1):
            key = key_ids.get(ids[i])
            if key is not None:  # the token after the key is the value's first token
                counts[key] += 1
                hits[key] += int(logits[i].argmax()) == ids[i + 1]
    return {k: hits[k] / counts[k] for k in FIELDS if counts[k]}
