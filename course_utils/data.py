"""The course's task and data: calendar requests written in plain words -> one structured calendar record.

    request: "Can you set up a lunch with Maria in Paris on Tuesday at 3:30 pm?"
    record:  "what: lunch | who: Maria | day: Tuesday | time: 15:30 | place: Paris"

The metric is exact: a prediction counts only when every field of the record is right. Everything here is
generated from word lists and templates with a fixed seed, so the dataset (and the small model's pretraining
text, which reads and confirms requests but never writes a record for one) can be rebuilt byte for byte.

This module also holds the prompt format, the tokenization with the loss on the answer tokens only, padding
and batching, which every profile shares: the course's word-level tokenizer and Llama 3.1's BPE alike.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

# ----------------------------------------------------------------------------------------------------------
# The task: slot values, request templates, the record format
# ----------------------------------------------------------------------------------------------------------

# A record's keys are the little words that introduce each detail in plain English ("for lunch", "with Maria",
# "on Tuesday", "at 3 pm", "in Paris"); its values are normalized: LUNCH, maria, Tue, 15:00, PAR.
FIELDS = ("for", "with", "on", "at", "in")
KINDS = ("lunch", "dinner", "coffee", "drinks", "tea", "brunch", "tennis", "chess")
NAMES = ("Maria", "Tom", "Aisha", "Kenji", "Lucas", "Priya", "Omar", "Elena")
PLACES = ("Paris", "Berlin", "Lisbon", "Rome", "Oslo", "Tokyo", "Lima", "Cairo")
CITY_CODES = {"Paris": "PAR", "Berlin": "BER", "Lisbon": "LIS", "Rome": "ROM", "Oslo": "OSL", "Tokyo": "TYO",
              "Lima": "LIM", "Cairo": "CAI"}  # IATA city codes
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HOURS = tuple(range(8, 19))  # 8 am ... 6 pm, 24-hour clock
MINUTES = (0, 30)

# How people write a request: the order and the words around the details vary; {time} is the 12-hour clock
# ("3:30 pm", "9 am", "noon").
REQUEST_TEMPLATES = (
    "Can you block time for {what} with {who} in {place} on {day} at {time}?",
    "Please book me for {what} with {who} on {day} at {time} in {place}.",
    "On {day} at {time} I am out for {what} with {who} in {place}.",
    "In {place} on {day} at {time}, I meet up for {what} with {who}.",
    "Let's go for {what} with {who} in {place} on {day} at {time}.",
    "Hi, I would like to meet for {what} with {who} on {day} at {time} in {place}.",
    "At {time} on {day} I go for {what} with {who} in {place}.",
    "Could you plan something for {what} with {who} at {time} on {day} in {place}?",
    "Add me for {what} in {place} with {who} on {day} at {time}.",
    "Is {day} at {time} free? I want to meet in {place} for {what} with {who}.",
    "Save the date for {what} with {who}, in {place} on {day} at {time}.",
    "We are in {place} on {day}, so book us for {what} at {time} with {who}.",
)

INSTRUCTION = "Turn the request into a calendar record."


def clock_12h(hour: int, minute: int) -> str:
    """How a request writes a time: 15, 30 -> "3:30 pm"; 9, 0 -> "9 am"; 12, 0 -> "noon"."""
    if hour == 12 and minute == 0:
        return "noon"
    suffix = "am" if hour < 12 else "pm"
    h = hour if hour <= 12 else hour - 12
    return f"{h} {suffix}" if minute == 0 else f"{h}:{minute:02d} {suffix}"


def clock_24h(hour: int, minute: int) -> str:
    """How a record writes a time: 15, 30 -> "15:30"; 9, 0 -> "09:00"."""
    return f"{hour:02d}:{minute:02d}"


def format_record(record: dict) -> str:
    """The record as one line, fields in a fixed order: "for LUNCH | with maria | on Tue | at 15:30 | in PAR"."""
    return " | ".join(f"{key} {record[key]}" for key in FIELDS)


def parse_record(text: str) -> dict | None:
    """Read a record line back into a dict; None when the text is not a record with exactly our fields.

    Only the first line counts (a model may keep talking after it). Each field is its key, a space, its value;
    whitespace around fields is ignored.
    """
    line = text.strip().split("\n", 1)[0]
    record = {}
    for part in line.split("|"):
        key, sep, value = part.strip().partition(" ")
        if not sep or key not in FIELDS or key in record:
            return None
        record[key] = value.strip()
    return record if set(record) == set(FIELDS) else None


def make_prompt(request: str) -> str:
    """The prompt every profile sees. The answer the model must write follows it: " " + the record."""
    return f"{INSTRUCTION}\nRequest: {request}\nRecord:"


def make_answer(record: dict) -> str:
    """What the model must write after the prompt (with a leading space, as a tokenizer would split it)."""
    return " " + format_record(record)


def random_slots(rng: random.Random) -> dict:
    """One random event: the words a request uses, and the normalized values a record stores."""
    hour, minute = rng.choice(HOURS), rng.choice(MINUTES)
    what, who, day, place = rng.choice(KINDS), rng.choice(NAMES), rng.choice(DAYS), rng.choice(PLACES)
    return {"what": what, "who": who, "day": day, "place": place, "time12": clock_12h(hour, minute),
            "time24": clock_24h(hour, minute), "WHAT": what.upper(), "handle": who.lower(), "Day": day[:3],
            "CODE": CITY_CODES[place]}


def request_text(slots: dict, template: str) -> str:
    return template.format(what=slots["what"], who=slots["who"], day=slots["day"], place=slots["place"],
                           time=slots["time12"])


def record_of(slots: dict) -> dict:
    """The record of an event: every value normalized (LUNCH, maria, Tue, 15:30, PAR)."""
    return {"for": slots["WHAT"], "with": slots["handle"], "on": slots["Day"], "at": slots["time24"],
            "in": slots["CODE"]}


def make_example(rng: random.Random) -> dict:
    """One example of the task: {"request": ..., "record": {...}, "target": "what: ... | ..."}."""
    slots = random_slots(rng)
    record = record_of(slots)
    return {"request": request_text(slots, rng.choice(REQUEST_TEMPLATES)), "record": record,
            "target": format_record(record)}


SPLIT_SIZES = {"train": 4000, "validation": 200, "test": 200}
DATASET_SEED = 2024


def make_dataset(seed: int = DATASET_SEED, sizes: dict | None = None) -> dict[str, list[dict]]:
    """Train, validation and test splits; no request appears in two splits (or twice in one)."""
    sizes = sizes or SPLIT_SIZES
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, n in sizes.items():
        rows = []
        while len(rows) < n:
            example = make_example(rng)
            if example["request"] not in seen:
                seen.add(example["request"])
                rows.append({"id": f"{split}-{len(rows):05d}", **example})
        splits[split] = rows
    return splits


DATASET_LICENSE = ("Generated by scripts/make_dataset.py from word lists and templates in course_utils/data.py; "
                   "the course's own data, released with the repository under the MIT license. "
                   "Names and places are random and refer to no real person or event.")


def write_dataset(folder: str | Path, splits: dict[str, list[dict]]) -> dict[str, Path]:
    """One JSON line per example in `folder/<split>.jsonl`, plus a README with the license line."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in splits.items():
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        paths[split] = path
    counts = ", ".join(f"{split} {len(rows)}" for split, rows in splits.items())
    (folder / "README.md").write_text(
        "# The course's dataset: calendar requests -> calendar records\n\n"
        f"{counts} examples, one JSON object per line: `request` (plain words), `record` (the fields), "
        "`target` (the record as the model must write it).\n\n"
        f"License: {DATASET_LICENSE}\n")
    return paths


def dataset_dir() -> Path:
    from course_utils.runtime import assets_dir
    return assets_dir() / "dataset"


def load_split(split: str, folder: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """The examples of one split ("train", "validation", "test") from the shipped JSONL files."""
    path = Path(folder or dataset_dir()) / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `python scripts/make_dataset.py` to generate the dataset.")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit is not None else rows


# ----------------------------------------------------------------------------------------------------------
# Pretraining text for the course's small model: the skills the task builds on, never the task itself
# ----------------------------------------------------------------------------------------------------------

CORPUS_MIX = {"notes": 0.8, "request": 0.2}


def pretraining_corpus(n_docs: int, seed: int = 7, exclude: Iterable[str] = ()) -> list[str]:
    """Documents for the small model's pretraining, of two kinds (shares in CORPUS_MIX):

    - notes: a request, then a note on each of its five details in a random order, each its little word and
      its normalized value ("Notes: at 15:30, in PAR, with maria, on Tue, for LUNCH.");
    - request: a request on its own.
    So the model learns to read a request, to pick out any detail and to normalize it. It never sees a
    calendar record (the details in one fixed order, between "|", after "Record:"): writing one is the task
    left to fine-tuning. Requests in `exclude` (the dataset's) are never used.
    """
    rng = random.Random(seed)
    exclude = set(exclude)
    kinds, weights = zip(*CORPUS_MIX.items())
    docs = []
    while len(docs) < n_docs:
        kind = rng.choices(kinds, weights)[0]
        slots = random_slots(rng)
        request = request_text(slots, rng.choice(REQUEST_TEMPLATES))
        if request in exclude:
            continue
        if kind == "notes":
            record = record_of(slots)
            keys = rng.sample(FIELDS, len(FIELDS))  # every detail, in a random order
            docs.append(f"Request: {request}\nNotes: " + ", ".join(f"{k} {record[k]}" for k in keys) + ".")
        else:
            docs.append(f"Request: {request}")
    return docs


# ----------------------------------------------------------------------------------------------------------
# The course's word-level tokenizer
# ----------------------------------------------------------------------------------------------------------

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


def prepare_tokenizer(tokenizer):
    """Make any causal-LM tokenizer ready for this course: a pad token (Llama 3.1 has none: reuse EOS)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ----------------------------------------------------------------------------------------------------------
# Tokenization with the loss on the answer only, padding, batching
# ----------------------------------------------------------------------------------------------------------

IGNORE_INDEX = -100  # labels with this value are skipped by the cross-entropy loss


def encode_example(tokenizer, example: dict, max_length: int | None = None) -> dict:
    """Token ids of prompt + answer + EOS, and labels that are IGNORE_INDEX on the prompt.

    The prompt and the answer are tokenized separately and concatenated, so the boundary is exact for any
    tokenizer (a BPE could otherwise merge across it). The model learns to write the answer and to stop (EOS);
    it is never graded on the prompt, which it is given.
    """
    prompt_ids = tokenizer(make_prompt(example["request"]))["input_ids"]  # adds BOS when the tokenizer does
    answer_ids = tokenizer(make_answer(example["record"]), add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids + [tokenizer.eos_token_id]
    input_ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    if max_length is not None and len(input_ids) > max_length:  # cut the prompt's start, keep the whole answer
        cut = len(input_ids) - max_length
        input_ids, labels = input_ids[cut:], labels[cut:]
    return {"input_ids": input_ids, "labels": labels}


def encode_prompt(tokenizer, example: dict) -> list[int]:
    """The prompt's token ids alone: what generation starts from."""
    return tokenizer(make_prompt(example["request"]))["input_ids"]


def pad_batch(features: list[dict], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a list of encoded examples to the longest one: input_ids, attention_mask (1 = real token), labels.

    Training pads on the right; generation pads on the left, so every prompt ends where the new tokens start.
    """
    longest = max(len(f["input_ids"]) for f in features)
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        n = longest - len(f["input_ids"])
        ids, mask = f["input_ids"], [1] * len(f["input_ids"])
        labels = f.get("labels", [IGNORE_INDEX] * len(ids))
        if side == "right":
            ids, mask, labels = ids + [pad_id] * n, mask + [0] * n, labels + [IGNORE_INDEX] * n
        elif side == "left":
            ids, mask, labels = [pad_id] * n + ids, [0] * n + mask, [IGNORE_INDEX] * n + labels
        else:
            raise ValueError(f"side must be 'right' or 'left', not {side!r}")
        out["input_ids"].append(ids)
        out["attention_mask"].append(mask)
        out["labels"].append(labels)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


@dataclass
class Batches:
    """Shuffled mini-batches of encoded examples, reproducible from (seed, epoch), endless over epochs.

    `batch(step)` gives the batch at any global step directly, so a resumed run sees exactly the batches
    an uninterrupted run would have seen.
    """
    features: list[dict]
    batch_size: int
    pad_id: int
    seed: int = 0

    def __post_init__(self):
        if not self.features:
            raise ValueError("no examples to batch")
        self.per_epoch = max(1, len(self.features) // self.batch_size)  # drop the last partial batch
        self._order: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        """The example indices of one epoch, shuffled by (seed, epoch)."""
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.features), generator=generator).tolist())
        return self._order[1]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(step, self.per_epoch)
        idx = self.order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        return pad_batch([self.features[j] for j in idx], self.pad_id)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1


def encode_document(tokenizer, text: str) -> dict:
    """A pretraining document: BOS + text + EOS, every token in the loss."""
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": list(ids)}


def encode_split(tokenizer, examples: list[dict], max_length: int | None = None) -> list[dict]:
    return [encode_example(tokenizer, ex, max_length) for ex in examples]


def show_tokens(tokenizer, example: dict, max_length: int | None = None) -> list[tuple[str, int, bool]]:
    """(token, id, counts in the loss) for every token of an encoded example: what the loss mask looks like."""
    enc = encode_example(tokenizer, example, max_length)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    return [(t, i, lab != IGNORE_INDEX) for t, i, lab in zip(tokens, enc["input_ids"], enc["labels"])]


def plot_loss_mask(tokenizer, example: dict, per_row: int = 14, ax=None):
    """The tokens of an encoded example in reading order: grey = prompt (no loss), orange = graded by the loss."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    shown = show_tokens(tokenizer, example)
    rows = (len(shown) + per_row - 1) // per_row
    if ax is None:
        _, ax = plt.subplots(figsize=(per_row * 0.95, rows * 0.55 + 0.6))
    for i, (token, _, counted) in enumerate(shown):
        r, c = divmod(i, per_row)
        text = token.replace("Ġ", "␣").replace("Ċ", "\\n")
        ax.add_patch(FancyBboxPatch((c + 0.05, -r - 0.4), 0.9, 0.8, boxstyle="round,pad=0.02",
                                    color="tab:orange" if counted else "0.85"))
        ax.text(c + 0.5, -r, text, ha="center", va="center", fontsize=8, family="monospace")
    ax.set_xlim(0, per_row)
    ax.set_ylim(-rows + 0.4, 0.6)
    ax.axis("off")
    n_loss = sum(counted for *_, counted in shown)
    ax.set_title(f"{len(shown)} tokens; the loss grades the {n_loss} orange ones (the answer and EOS)", fontsize=10)
    return ax


# ----------------------------------------------------------------------------------------------------------
# The metric
# ----------------------------------------------------------------------------------------------------------

def score(predictions: list[str], examples: list[dict]) -> dict:
    """Exact match (every field right) and per-field accuracy of generated records against the references."""
    n = len(examples)
    if n == 0:
        raise ValueError("no examples to score")
    exact, fields = 0, {k: 0 for k in FIELDS}
    for pred, ex in zip(predictions, examples, strict=True):
        got = parse_record(pred) or {}
        exact += got == ex["record"]
        for k in FIELDS:
            fields[k] += got.get(k) == ex["record"][k]
    return {"exact_match": exact / n, "field_accuracy": {k: v / n for k, v in fields.items()}, "n": n}
