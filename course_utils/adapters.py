"""Many adapters on one base: a second task, named adapters, one batch that mixes them, and memory.

A LoRA adapter is a few megabytes beside a base of gigabytes, so one base in memory can serve many
adapters. PEFT keeps them by name on the same PeftModel (`load_adapter(folder, adapter_name=...)`),
switches the active one with `set_adapter(name)`, and runs one batch whose rows use different
adapters with `generate(..., adapter_names=[...])`: every LoRA layer computes the base's `W x` for
the whole batch once and adds each row's own `B A x`.

The second task reads the same requests but writes only when and where, so it needs no new data
and builds on what the base learned in pretraining (picking out and normalizing each detail):

    prompt: "Turn the request into a date.\\n"
            "Request: Let's go for lunch with Maria in Paris on Tuesday at 3:30 pm.\\nRecord:"
    answer: " on Tue at 15:30 in PAR"

against the calendar adapter's " for LUNCH | with maria | on Tue | at 15:30 | in PAR". Every word
of it is in the course model's 145-token vocabulary. This module holds the boilerplate;
the notebook shows PEFT's own calls.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from course_utils import data
from course_utils.export import merged_model
from course_utils.lora import (COURSE_ALPHA, COURSE_DROPOUT, COURSE_RANK, COURSE_TARGETS,
                               check_dropout, check_rank_alpha, lora_config, lora_params,
                               target_kinds)
from course_utils.training import model_device, set_seed

BASE = "__base__"  # PEFT's name, in `adapter_names`, for a row that runs on the bare base model

# ------------------------------------------------------------------------------------------------
# The second task: request -> date (when and where only)
# ------------------------------------------------------------------------------------------------

DATE_INSTRUCTION = "Turn the request into a date."
DATE_FIELDS = ("on", "at", "in")  # the record's fields a date keeps, in this order
DATE_ANSWER = "on {on} at {at} in {in}"  # filled from the record's values


def date_prompt(request: str) -> str:
    """The second task's prompt: the calendar task's, with its own instruction."""
    return f"{DATE_INSTRUCTION}\nRequest: {request}\nRecord:"


def date_answer(record: dict) -> str:
    """What the model must write after the prompt: " on Tue at 15:30 in PAR", the day, 24-hour time
    and city code of the example's record (data.record_of), without the activity or the person."""
    try:
        day, time, city = (record[key] for key in DATE_FIELDS)
    except (KeyError, TypeError):
        raise ValueError(f"{record!r} is not a record of the course's task: it needs the fields "
                         f"{', '.join(data.FIELDS)}, valued as data.record_of gives them.") from None
    if (day not in {d[:3] for d in data.DAYS} or city not in data.CITY_CODES.values()
            or time not in {data.clock_24h(h, m) for h in data.HOURS for m in data.MINUTES}):
        raise ValueError(f"{record!r} has a day, time or city the course's task never uses.")
    return " " + DATE_ANSWER.format(**{"on": day, "at": time, "in": city})


def date_examples(split: str = "train", limit: int | None = None,
                  folder: str | Path | None = None) -> list[dict]:
    """The second task's examples, built from the shipped split: one per distinct request, and for
    "train" none whose request is also in the validation or test split. Each is {"id", "request",
    "record", "prompt", "answer"}."""
    seen = set()
    if split == "train":
        seen = {ex["request"] for other in ("validation", "test")
                for ex in data.load_split(other, folder)}
    rows = []
    for ex in data.load_split(split, folder):
        if ex["request"] in seen:
            continue
        seen.add(ex["request"])
        rows.append({"id": f"date-{split}-{len(rows):05d}", "request": ex["request"],
                     "record": ex["record"], "prompt": date_prompt(ex["request"]),
                     "answer": date_answer(ex["record"])})
        if limit is not None and len(rows) >= limit:
            break
    return rows


def encode_dates(tokenizer, examples: list[dict], max_length: int | None = None) -> list[dict]:
    """Token ids and labels of the second task's examples, the loss on the answer and EOS only
    (`data.encode_pair`): what `data.Batches` and `training.train` take."""
    return [data.encode_pair(tokenizer, ex["prompt"], ex["answer"], max_length) for ex in examples]


def score_dates(predictions: list[str], examples: list[dict]) -> dict:
    """Exact match of generated dates (their first line, spaces around it ignored)."""
    if not examples:
        raise ValueError("no examples to score")
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples: "
                         "give one each.")
    exact = sum(p.strip().split("\n", 1)[0].strip() == ex["answer"].strip()
                for p, ex in zip(predictions, examples))
    return {"exact_match": exact / len(examples), "n": len(examples)}


# ------------------------------------------------------------------------------------------------
# Named adapters: add, save, load
# ------------------------------------------------------------------------------------------------

def adapter_list(model) -> list[str]:
    """The names of the adapters a PEFT model holds, in the order they were added."""
    if not hasattr(model, "peft_config"):
        raise TypeError(f"This is a plain {type(model).__name__}, not a PEFT model: load an "
                        "adapter onto it first (PeftModel.from_pretrained or "
                        "adapters.add_named_adapter).")
    return list(model.peft_config)


def add_named_adapter(model, name: str, r: int = COURSE_RANK, alpha: float = COURSE_ALPHA,
                      dropout: float = COURSE_DROPOUT, targets=COURSE_TARGETS, seed: int = 0):
    """A fresh LoRA adapter called `name` (lora_B = 0) on `model`, a plain or a PEFT model; it
    becomes the active one and the only one that trains. Returns the PEFT model."""
    from peft import LoraConfig, get_peft_model
    if name == BASE or not isinstance(name, str) or not name:
        raise ValueError(f"{name!r} can't name an adapter: pick a word such as 'to_date'.")
    set_seed(seed)
    if not hasattr(model, "peft_config"):
        config = lora_config(model, r=r, lora_alpha=alpha, target_modules=targets,
                             lora_dropout=dropout, task_type="CAUSAL_LM")
        return get_peft_model(model, config, adapter_name=name)
    if name in model.peft_config:
        raise ValueError(f"An adapter called {name!r} is loaded already: pick another name, or "
                         f"remove it first with model.delete_adapter({name!r}).")
    # the Linear layers are wrapped by LoRA now, so names and rank are checked against the config
    lora_params(model.get_base_model().config, r, targets)
    check_rank_alpha(r, alpha)
    check_dropout(dropout)
    model.add_adapter(name, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                       target_modules=list(target_kinds(targets)),
                                       task_type="CAUSAL_LM"))
    model.set_adapter(name)  # active, trainable; every other adapter frozen
    return model


def save_adapter(model, name: str, folder: str | Path) -> Path:
    """Save one adapter; returns the folder that holds its adapter_config.json (PEFT puts any
    adapter not called "default" into a subfolder named after it)."""
    if name not in adapter_list(model):
        raise ValueError(f"No adapter called {name!r}: this model holds "
                         f"{', '.join(adapter_list(model))}.")
    model.save_pretrained(str(folder), selected_adapters=[name])
    return Path(folder) if name == "default" else Path(folder) / name


def load_adapters(base, folders: dict[str, str | Path]):
    """One PEFT model with every adapter of `folders` ({name: folder}) on the one `base`: the
    first through PeftModel.from_pretrained, the others through load_adapter. The first is
    active; all are frozen, in eval mode."""
    from peft import PeftModel
    if not folders:
        raise ValueError("Name at least one adapter folder: {'calendar': 'runs/adapter', ...}.")
    for name, folder in folders.items():
        if not (Path(folder) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no adapter_config.json, so no saved adapter "
                                    f"for {name!r}: give the folder that save_adapter returned.")
    model = base
    for name, folder in folders.items():
        if hasattr(model, "peft_config"):
            model.load_adapter(str(folder), adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, str(folder), adapter_name=name)
    model.set_adapter(next(iter(folders)))
    for param_name, p in model.named_parameters():
        if "lora_" in param_name:
            p.requires_grad_(False)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Generation: one batch of mixed adapters, or each adapter alone
# ------------------------------------------------------------------------------------------------

def mixed_batch_problem(model, adapter_names: list[str], rows: int | None = None) -> str | None:
    """A sentence for what PEFT's mixed batch (`adapter_names=`) refuses, else None: a name per
    row, adapters that exist, none merged into the base, no DoRA. (PEFT also refuses a model in
    training mode; the helpers here switch to eval mode themselves.)"""
    from peft.tuners.lora import LoraLayer
    names = adapter_list(model)
    if isinstance(adapter_names, str):
        return "adapter_names must be a list with one name per prompt, not one string."
    if rows is not None and len(adapter_names) != rows:
        return f"{len(adapter_names)} adapter names for {rows} prompts: give one name per prompt."
    if unknown := sorted({n for n in adapter_names if n != BASE and n not in names}):
        return (f"No adapter called {', '.join(map(repr, unknown))}: this model holds "
                f"{', '.join(map(repr, names))} (and {BASE!r} means the base alone).")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if any(m.merged for m in layers):
        return ("An adapter is merged into the base weights, so the base is no longer shared: "
                "call model.unmerge_adapter() first.")
    if dora := sorted({n for m in layers for n in set(adapter_names) if m.use_dora.get(n, False)}):
        return f"PEFT can't mix DoRA adapters in a batch ({', '.join(dora)}): use plain LoRA."
    return None


@torch.no_grad()
def _new_ids(model, tokenizer, prompts: list[str], max_new_tokens: int,
             **kwargs) -> list[list[int]]:
    """Greedy new token ids of one left-padded batch, each row cut before its first EOS."""
    pad_id = tokenizer.pad_token_id
    pad_id = tokenizer.eos_token_id if pad_id is None else pad_id
    batch = data.pad_batch([{"input_ids": tokenizer(p)["input_ids"]} for p in prompts], pad_id,
                           side="left")
    device = model_device(model)
    out = model.generate(input_ids=batch["input_ids"].to(device),
                         attention_mask=batch["attention_mask"].to(device),
                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id, **kwargs)
    rows = out[:, batch["input_ids"].shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    return [row[:row.index(eos)] if eos in row else row for row in rows]


def _texts_or_ids(tokenizer, rows: list[list[int]], ids: bool) -> list:
    return rows if ids else [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def _check_prompts(prompts: list[str], adapter_names: list[str]) -> None:
    if isinstance(prompts, str) or not prompts:
        raise ValueError("Give a list of prompts (at least one), each a string.")
    if isinstance(adapter_names, str) or len(adapter_names) != len(prompts):
        raise ValueError(f"Give one adapter name per prompt: {len(prompts)} prompts need "
                         f"{len(prompts)} names in a list.")


def generate_mixed(model, tokenizer, prompts: list[str], adapter_names: list[str],
                   max_new_tokens: int = 24, ids: bool = False) -> list:
    """Greedy continuations of `prompts` in ONE batch, row i through adapter `adapter_names[i]`
    ("__base__": the base alone), with PEFT's `adapter_names=`. Texts, or with `ids` the new token
    ids (cut before EOS)."""
    _check_prompts(prompts, adapter_names)
    if problem := mixed_batch_problem(model, adapter_names, len(prompts)):
        raise ValueError(problem)
    was_training = model.training
    model.eval()  # PEFT refuses adapter_names in training mode
    try:
        rows = _new_ids(model, tokenizer, prompts, max_new_tokens,
                        adapter_names=list(adapter_names))
    finally:
        model.train(was_training)
    return _texts_or_ids(tokenizer, rows, ids)


def generate_each(model, tokenizer, prompts: list[str], adapter_names: list[str],
                  max_new_tokens: int = 24, ids: bool = False) -> list:
    """The same continuations as `generate_mixed`, one adapter at a time: set_adapter(name), then
    one batch of that adapter's rows. The active adapter, eval/train mode and requires_grad flags
    are put back afterwards."""
    _check_prompts(prompts, adapter_names)
    names = adapter_list(model)
    if unknown := sorted({n for n in adapter_names if n != BASE and n not in names}):
        raise ValueError(f"No adapter called {', '.join(map(repr, unknown))}: this model holds "
                         f"{', '.join(map(repr, names))}.")
    active, was_training = model.active_adapter, model.training
    flags = {p: p.requires_grad for p in model.parameters()}
    rows: list = [None] * len(prompts)
    model.eval()
    try:
        for name in dict.fromkeys(adapter_names):  # each adapter once, in order of first use
            where = [i for i, n in enumerate(adapter_names) if n == name]
            batch = [prompts[i] for i in where]
            if name == BASE:
                with model.disable_adapter():
                    out = _new_ids(model, tokenizer, batch, max_new_tokens)
            else:
                model.set_adapter(name)
                out = _new_ids(model, tokenizer, batch, max_new_tokens)
            for i, row in zip(where, out):
                rows[i] = row
    finally:
        model.set_adapter(active)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return _texts_or_ids(tokenizer, rows, ids)


def mixed_vs_each(model, tokenizer, prompts: list[str], adapter_names: list[str],
                  max_new_tokens: int = 24) -> list[dict]:
    """Row by row, the mixed batch against each adapter alone: {"adapter", "mixed", "each",
    "same"}, where "same" compares the token ids."""
    mixed = generate_mixed(model, tokenizer, prompts, adapter_names, max_new_tokens, ids=True)
    each = generate_each(model, tokenizer, prompts, adapter_names, max_new_tokens, ids=True)
    return [{"adapter": name, "mixed": tokenizer.decode(m, skip_special_tokens=True),
             "each": tokenizer.decode(e, skip_special_tokens=True), "same": m == e}
            for name, m, e in zip(adapter_names, mixed, each)]


# ------------------------------------------------------------------------------------------------
# Memory: one base and its adapters, or one merged copy per adapter
# ------------------------------------------------------------------------------------------------

_ADAPTER_PARAM = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\.([^.]+)")


def parameter_bytes(model) -> dict:
    """Bytes of a model's parameters, measured from its tensors (numel x element size; a tied
    weight counts once): {"base": bytes, "adapters": {name: bytes}}."""
    sizes = {"base": 0, "adapters": {}}
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size()
        if match := _ADAPTER_PARAM.search(name):
            sizes["adapters"][match.group(1)] = sizes["adapters"].get(match.group(1), 0) + size
        else:
            sizes["base"] += size
    return sizes


def rss_bytes() -> int | None:
    """This process's resident memory (RSS) in bytes, or None where it can't be read."""
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        pass
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def serving_bytes(model, names: list[str] | None = None) -> dict:
    """One base with its adapters against one merged copy per adapter, in bytes of parameters
    measured from the tensors (the copies are built, measured and dropped): {"base", "adapters",
    "shared" (base + adapters), "merged" ({name: bytes}), "merged_total", "rss_merged" (how much
    this process's RSS grew while the copies were alive, or None)}."""
    sizes = parameter_bytes(model)
    names = list(sizes["adapters"]) if names is None else list(names)
    rss_before = rss_bytes()
    copies = {name: merged_model(model, adapter=name) for name in names}
    rss_after = rss_bytes()
    merged = {}
    for name, one in copies.items():
        measured = parameter_bytes(one)
        merged[name] = measured["base"] + sum(measured["adapters"].values())
    del copies
    return {"base": sizes["base"], "adapters": {n: sizes["adapters"][n] for n in names},
            "shared": sizes["base"] + sum(sizes["adapters"][n] for n in names),
            "merged": merged, "merged_total": sum(merged.values()),
            "rss_merged": None if None in (rss_before, rss_after) else rss_after - rss_before}
