"""The course's task and data: calendar requests written in plain words -> one structured calendar record.

    request: "Can you block time for lunch with Maria in Paris on Tuesday at 3:30 pm?"
    record:  "for LUNCH | with maria | on Tue | at 15:30 | in PAR"

The metric is exact: a prediction counts only when every field of the record is right. Everything here is
generated from word lists and templates with a fixed seed, so the dataset can be rebuilt byte for byte (and
so can the small model's pretraining text, course_utils.pretraining, which never shows a record).

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

from course_utils.runtime import assets_dir, assets_env_problem

# ----------------------------------------------------------------------------------------------------------
# The task: slot values, request templates, the record format
# ----------------------------------------------------------------------------------------------------------

# A record's keys are the little words that introduce each detail in plain English ("for lunch", "with Maria",
# "on Tuesday", "at 3 pm", "in Paris"); its values are normalized: LUNCH, maria, Tue, 15:00, PAR.
FIELDS = ("for", "with", "on", "at", "in")
ACTIVITIES = ("lunch", "dinner", "coffee", "drinks", "tea", "brunch", "tennis", "chess")
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

# More ways of writing a request, for training a real pretrained model (its reading of English is already there;
# what 12 templates teach it is the templates): other verbs, orders, punctuation and lists.
EXTRA_TEMPLATES = (
    "Set up {what} with {who} on {day} at {time} in {place}.",
    "{who} wants to do {what} in {place}. Book {day}, {time}.",
    "Could we do {what} on {day}? {who} suggested {place} at {time}.",
    "Organize {what} for {day} at {time} in {place} with {who}.",
    "Event: {what}. Guest: {who}. City: {place}. Date: {day}. Time: {time}.",
    "{time} on {day} works for {what} with {who} in {place}.",
    "I'd love {what} with {who} - {place}, {day}, {time}.",
    "New entry: {what} with {who}, {day} {time}, {place}",
    "Book {place} for {what} on {day} at {time}; {who} is coming.",
    "Fix a time with {who}: {what} on {day} at {time}, in {place}.",
    "Line up {what} in {place} at {time} on {day} with {who}!",
    "Calendar: {day}, {time}, {what} with {who} in {place}.",
    "How about {what} with {who} at {time} on {day}? Somewhere in {place}.",
    "Get me {what} with {who} in {place}, {day} around {time}.",
    "{who}, {what}, {place}, {day}, {time}.",
    "Please add {what} on {day} at {time} with {who} (in {place}).",
    "Next {day} at {time}: {what} with {who} in {place}.",
    "Join {who} for {what} in {place} on {day} at {time}.",
    "Let me meet {who} in {place} on {day} for {what}, at {time}.",
    "I need {what} in {place} with {who}; {day} at {time} suits me.",
    "Make a booking: {what}, {place}, with {who}, {day} at {time}.",
    "Time for {what}? {day} at {time} with {who} in {place}.",
    "Meet {who} at {time} on {day} in {place} for {what}.",
    "Plan {what} with {who}: {place}, {day} at {time}.",
)

# Phrasings no training example uses, to probe whether an adapter learned the task or the templates. Never
# train on them (`heldout_probe` builds the probe set).
HELDOUT_TEMPLATES = (
    "{who} and I are having {what} in {place} on {day} at {time}; put it in my calendar.",
    "Put {what} with {who} in my diary: {day}, {time}, {place}.",
    "Reminder to self - {what}, {day} {time}, {place}, with {who}.",
    "I'm meeting {who} for {what} at {time} this {day} in {place}.",
    "Schedule {what} in {place} at {time} on {day} with {who}, please.",
    "Note down {what} with {who} on {day}, {time}, in {place}.",
    "{day} at {time} in {place} = {what} with {who}.",
    "Would you arrange {what} for me and {who} in {place}, {day} at {time}?",
    "Pencil in {who} for {what} on {day} at {time} in {place}.",
    "My {what} with {who} is on {day} at {time} in {place}.",
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


def random_event(rng: random.Random) -> dict:
    """One random event, in the words a request uses: {"what": "lunch", "who": "Maria", "day": "Tuesday",
    "place": "Paris", "hour": 15, "minute": 30}."""
    hour, minute = rng.choice(HOURS), rng.choice(MINUTES)
    what, who, day, place = rng.choice(ACTIVITIES), rng.choice(NAMES), rng.choice(DAYS), rng.choice(PLACES)
    return {"what": what, "who": who, "day": day, "place": place, "hour": hour, "minute": minute}


def request_text(event: dict, template: str) -> str:
    """A request for the event, written with one of the templates (the time on the 12-hour clock)."""
    return template.format(what=event["what"], who=event["who"], day=event["day"], place=event["place"],
                           time=clock_12h(event["hour"], event["minute"]))


def record_of(event: dict) -> dict:
    """The record of an event: every value normalized (LUNCH, maria, Tue, 15:30, PAR)."""
    return {"for": event["what"].upper(), "with": event["who"].lower(), "on": event["day"][:3],
            "at": clock_24h(event["hour"], event["minute"]), "in": CITY_CODES[event["place"]]}


def make_example(rng: random.Random, templates: tuple[str, ...] = REQUEST_TEMPLATES) -> dict:
    """One example of the task: {"request": ..., "record": {"for": "LUNCH", ...}, "target": "for LUNCH | ..."}."""
    event = random_event(rng)
    record = record_of(event)
    return {"request": request_text(event, rng.choice(templates)), "record": record,
            "target": format_record(record)}


SPLIT_SIZES = {"train": 4000, "validation": 200, "test": 200}
DATASET_SEED = 2024


def make_dataset(seed: int = DATASET_SEED, sizes: dict | None = None, templates: tuple[str, ...] = REQUEST_TEMPLATES,
                 exclude: Iterable[str] = ()) -> dict[str, list[dict]]:
    """Train, validation and test splits; no request appears in two splits (or twice in one), nor in `exclude`."""
    sizes = sizes or SPLIT_SIZES
    rng = random.Random(seed)
    seen, splits = set(exclude), {}
    for split, n in sizes.items():
        rows = []
        while len(rows) < n:
            example = make_example(rng, templates)
            if example["request"] not in seen:
                seen.add(example["request"])
                rows.append({"id": f"{split}-{len(rows):05d}", **example})
        splits[split] = rows
    return splits


HELDOUT_SEED = 31337


def heldout_probe(n: int = 200, seed: int = HELDOUT_SEED) -> list[dict]:
    """`n` requests written with HELDOUT_TEMPLATES only (the same slot values): a test of the task, not the wording."""
    return [{**ex, "id": f"heldout-{i:05d}"} for i, ex in
            enumerate(make_dataset(seed, {"heldout": n}, HELDOUT_TEMPLATES)["heldout"])]


def extended_train(n: int = SPLIT_SIZES["train"]) -> list[dict]:
    """Training requests in the 36 phrasings of REQUEST_TEMPLATES + EXTRA_TEMPLATES, none of them a shipped test or
    validation request or one of `heldout_probe()`'s: what a pretrained model (SmolLM2, Llama) trains on."""
    taken = {ex["request"] for ex in load_split("test") + load_split("validation") + heldout_probe()}
    return make_dataset(DATASET_SEED, {"train": n}, REQUEST_TEMPLATES + EXTRA_TEMPLATES, exclude=taken)["train"]


DATASET_LICENSE = ("Generated by scripts/make_dataset.py from word lists and templates in course_utils/data.py; "
                   "the course's own data, released with the repository under the MIT license. "
                   "Names and places are random and refer to no real person or event.")


def write_dataset(folder: str | Path, splits: dict[str, list[dict]]) -> dict[str, Path]:
    """One JSON line per example in `folder/<split>.jsonl`, plus a README with the license line."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in splits.items():
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    counts = ", ".join(f"{split} {len(rows)}" for split, rows in splits.items())
    (folder / "README.md").write_text(
        "# The course's dataset: calendar requests -> calendar records\n\n"
        f"{counts} examples, one JSON object per line: `request` (plain words), `record` (the fields), "
        "`target` (the record as the model must write it).\n\n"
        f"License: {DATASET_LICENSE}\n")
    return paths


def dataset_dir() -> Path:
    """The shipped dataset: `assets/dataset` of the repo."""
    return assets_dir() / "dataset"


def load_split(split: str, folder: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """The examples of one split ("train", "validation", "test") from the shipped JSONL files."""
    path = Path(folder or dataset_dir()) / f"{split}.jsonl"
    if not path.exists():
        if folder is None and assets_env_problem():  # $COURSE_ASSETS names a folder that isn't there
            raise FileNotFoundError(assets_env_problem())
        raise FileNotFoundError(f"{path} is missing; run `python scripts/make_dataset.py` to generate the dataset.")
    rows = read_jsonl(path, required=("request", "record"))
    if not rows:
        raise ValueError(f"{path} holds no examples; rebuild the dataset with `python scripts/make_dataset.py`.")
    return rows[:limit] if limit is not None else rows


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """The JSON objects of a JSONL file, one a line (blank lines skipped); a bad line, or one without a `required`
    field, is named by file and number."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}, is not valid JSON ({err.msg} at column {err.colno}); fix or "
                             "delete that line, or rebuild the dataset with `python scripts/make_dataset.py`.") from None
        if missing := [key for key in required if not isinstance(rows[-1], dict) or key not in rows[-1]]:
            raise ValueError(f"{path}, line {number}, has no {' or '.join(map(repr, missing))}: every example needs "
                             f"{', '.join(map(repr, required))}; fix or delete that line, or rebuild the dataset with "
                             "`python scripts/make_dataset.py`.")
    return rows


# ----------------------------------------------------------------------------------------------------------
# Tokenization with the loss on the answer only, padding, batching
# ----------------------------------------------------------------------------------------------------------

def prepare_tokenizer(tokenizer):
    """Make any causal-LM tokenizer ready for this course: a pad token (Llama 3.1 has none: reuse EOS)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


IGNORE_INDEX = -100  # labels with this value are skipped by the cross-entropy loss


def encode_example(tokenizer, example: dict, max_length: int | None = None) -> dict:
    """`encode_pair` of the task's prompt and answer: labels IGNORE_INDEX on the prompt."""
    return encode_pair(tokenizer, make_prompt(example["request"]), make_answer(example["record"]), max_length)


def encode_pair(tokenizer, prompt: str, answer: str, max_length: int | None = None) -> dict:
    """Token ids of prompt + answer + EOS, labels IGNORE_INDEX on the prompt: the model learns to write the
    answer and to stop, never graded on the prompt it is given. Prompt and answer are tokenized apart, so the
    boundary is exact for any tokenizer (a BPE could otherwise merge across it)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids + [tokenizer.eos_token_id]
    input_ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    if max_length is not None and len(input_ids) > max_length:  # cut the prompt's start, keep the whole answer
        cut = len(input_ids) - max_length
        input_ids, labels = input_ids[cut:], labels[cut:]
    return {"input_ids": input_ids, "labels": labels}


def encode_prompt(tokenizer, example: dict) -> list[int]:
    """The prompt's token ids alone, BOS first when the tokenizer adds one: what generation starts from."""
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


def encode_split(tokenizer, examples: list[dict], max_length: int | None = None) -> list[dict]:
    return [encode_example(tokenizer, ex, max_length) for ex in examples]


def show_tokens(tokenizer, example: dict, max_length: int | None = None) -> list[tuple[str, int, bool]]:
    """(token, id, counts in the loss) for every token of an encoded example: what the loss mask looks like."""
    enc = encode_example(tokenizer, example, max_length)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    return [(t, i, lab != IGNORE_INDEX) for t, i, lab in zip(tokens, enc["input_ids"], enc["labels"])]


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
