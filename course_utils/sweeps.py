"""One point of a LoRA-settings sweep, measured: notebook 07 and `benchmarks/lora_sweeps.py` run the same call.

`run_point(point, task)` fine-tunes a fresh copy of the base with one setting (a LoRA rank, alpha and scaling
rule, targets, a learning rate; DoRA; or full fine-tuning: every weight trainable) through the course's own loop
(`training.train`), with the same data order, steps and evaluation for every point, and returns:

- the task metric: the loss on the validation answers (teacher-forced, every few steps: the eval curve) and
  exact match of generated records at the end;
- forgetting: the loss on text the base was pretrained on (the course model's pretraining documents), before
  and after: how much the fine-tune damaged what the base knew;
- the costs: trainable parameters, seconds per step, and one step's memory measured by part
  (`footprint.measure_training_step`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from course_utils import data, evaluation, footprint, pretraining, training
from course_utils.lora import COURSE_TARGETS

POINT_METHODS = ("lora", "dora", "full")
SCALINGS = ("alpha/r", "alpha/sqrt(r)")  # LoRA's own rule (Hu et al. 2021), rsLoRA's (Kalajdzievski 2023)


@dataclass(frozen=True)
class SweepPoint:
    """One setting of the sweep. `alpha=None` means alpha = 2r (the common habit)."""
    method: str = "lora"             # "lora", "dora" or "full" (full fine-tuning: every weight trains)
    lr: float = 3e-3
    r: int = 16
    alpha: float | None = None
    scaling: str = "alpha/r"         # or "alpha/sqrt(r)": rsLoRA
    targets: tuple[str, ...] = COURSE_TARGETS
    steps: int = 40
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.method not in POINT_METHODS:
            raise ValueError(f"method must be one of {', '.join(POINT_METHODS)}, not {self.method!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, not {self.scaling!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ValueError(f"lr must be a number between 0 and 1 (e.g. 3e-3), not {self.lr!r}")
        for name in ("r", "steps", "batch_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be a whole number of at least 1, not {getattr(self, name)!r}")
        if unknown := set(self.targets) - set(training.LINEAR_KINDS):
            raise ValueError(f"targets must be among {', '.join(training.LINEAR_KINDS)}; {sorted(unknown)} are not")

    @classmethod
    def knob(cls, default: "SweepPoint", **settings) -> "SweepPoint":
        """The point `settings` describe, or, when one is misspelt or out of range, `default` after a sentence
        that says what to fix: a typo in notebook 07's LIVE_POINT never stops the sections after it."""
        try:
            return cls(**settings)
        except (TypeError, ValueError) as bad:
            print(f"LIVE_POINT: {bad}. Running {default.label()} instead: fix the setting and run this cell again.")
            return default

    @property
    def lora_alpha(self) -> float:
        return 2 * self.r if self.alpha is None else self.alpha

    @property
    def scale(self) -> float:
        """The factor on B A x: alpha / r, or alpha / sqrt(r) with rsLoRA (1 for full fine-tuning: no adapter)."""
        if self.method == "full":
            return 1.0
        return self.lora_alpha / (math.sqrt(self.r) if self.scaling == "alpha/sqrt(r)" else self.r)

    @classmethod
    def from_dict(cls, saved: dict) -> "SweepPoint":
        """The point a results file saved (`asdict`: its targets as a list)."""
        return cls(**(saved | {"targets": tuple(saved["targets"])}))

    def label(self) -> str:
        if self.method == "full":
            return f"full FT, lr {self.lr:g}" + (f", seed {self.seed}" if self.seed else "")
        rule = "rsLoRA " if self.scaling == "alpha/sqrt(r)" else ""
        return (f"{self.method.replace('lora', 'LoRA').replace('dora', 'DoRA')} {rule}r={self.r} "
                f"alpha={self.lora_alpha:g} on {','.join(t.replace('_proj', '') for t in self.targets)}, "
                f"lr {self.lr:g}") + (f", seed {self.seed}" if self.seed else "")


@dataclass
class Task:
    """What every point trains and is measured on, prepared once: the base model, the encoded data."""
    model: torch.nn.Module
    tokenizer: object
    train: list[dict]                 # encoded training examples
    validation: list[dict]            # raw validation examples (exact match generates from them)
    validation_batch: dict            # the validation answers, encoded and padded (the teacher-forced loss)
    forget_batch: dict                # text the base knew, encoded and padded
    max_length: int = 64
    eval_every: int = 10
    exact_match_n: int = 100
    name: str = "course-llama"
    extras: dict = field(default_factory=dict)


def make_task(model, tokenizer, train: list[dict], validation: list[dict], forget_texts: list[str],
              max_length: int = 64, name: str = "course-llama") -> Task:
    """Encode the data once. `forget_texts` is text the base was trained on (its pretraining documents)."""
    tokenizer = data.prepare_tokenizer(tokenizer)
    pad = tokenizer.pad_token_id
    forget = [pretraining.encode_document(tokenizer, t) for t in forget_texts]
    for f in forget:  # the same cut as the task's examples, so a long document can't dominate
        f["input_ids"], f["labels"] = f["input_ids"][:max_length], f["labels"][:max_length]
    return Task(model=model.eval(), tokenizer=tokenizer, train=data.encode_split(tokenizer, train, max_length),
                validation=validation, validation_batch=data.pad_batch(data.encode_split(tokenizer, validation,
                                                                                          max_length), pad),
                forget_batch=data.pad_batch(forget, pad), max_length=max_length, name=name)


def course_task(validation_n: int = 200, forget_n: int = 200) -> Task:
    """The course's task on the course's small model, offline: its dataset, and 200 documents like those it was
    pretrained on (from the same generator, another seed) as the text it should not forget."""
    from course_utils import runtime
    model, tokenizer = runtime.load_model(runtime.choose_profile("offline"))
    return make_task(model, tokenizer, data.load_split("train"), data.load_split("validation", limit=validation_n),
                     pretraining.pretraining_corpus(forget_n, seed=1234))


def course_prose(n: int = 120, folder=None) -> list[str]:
    """Paragraphs of plain English from this course's own notebooks (their markdown; headings, lists and tables
    left out): real text for a real pretrained model, one that no fine-tune in the course trains on. By default
    the 120 frozen in assets/course-prose.txt (from notebooks 01-05), so that editing a notebook's prose does not
    change what the committed SmolLM2 sweep measured; with `folder`, taken afresh from the notebooks there."""
    import json
    from course_utils.runtime import repo_root
    if folder is None:
        return (repo_root() / "assets" / "course-prose.txt").read_text().splitlines()[:n]
    paragraphs = []
    for path in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "markdown":
                for block in "".join(cell["source"]).split("\n\n"):
                    text = " ".join(block.split())
                    if len(text) > 200 and not text.startswith(("#", "|", "-", "<", "`", "$", "[", "!", "1.")):
                        paragraphs.append(text)
    return paragraphs[:n]


def fingerprint(task: Task) -> str:
    """A short hash of a task's encoded data (training, validation and forgetting tokens): two results files with
    the same fingerprint were measured on the same data."""
    import hashlib
    digest = hashlib.sha256()
    for ids in [f["input_ids"] for f in task.train] + [task.validation_batch["input_ids"],
                                                      task.forget_batch["input_ids"]]:
        digest.update(torch.as_tensor(ids).numpy().tobytes())
    return digest.hexdigest()[:16]


def real_task(validation_n: int = 100, forget_n: int = 120) -> Task:
    """The course's task on SmolLM2-135M-Instruct (real pretrained weights, the cpu profile's model: its local
    copy offline), with paragraphs of the course's own prose as the text it should not forget."""
    from course_utils import runtime
    model, tokenizer = runtime.load_model(runtime.choose_profile("cpu"), four_bit=False)
    task = make_task(model, tokenizer, data.load_split("train"), data.load_split("validation", limit=validation_n),
                     course_prose(forget_n), max_length=96, name="SmolLM2-135M-Instruct")
    task.eval_every = 8
    return task


@torch.no_grad()
def batch_loss(model, batch: dict) -> float:
    """The mean cross-entropy of `model` on a padded batch (labels -100 are skipped)."""
    was_training = model.training
    model.eval()
    device = training.model_device(model)
    loss = model(**{k: v.to(device) for k, v in batch.items()}).loss.item()
    model.train(was_training)
    return loss


def fresh_model(point: SweepPoint, task: Task):
    """A copy of the base with the point's adapter (or, for full fine-tuning, every weight trainable)."""
    model = copy.deepcopy(task.model)
    if point.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    extra = {"use_dora": True} if point.method == "dora" else {}
    if point.scaling == "alpha/sqrt(r)":
        extra["use_rslora"] = True
    return training.add_peft_lora(model, r=point.r, alpha=point.lora_alpha, dropout=0.0, targets=point.targets,
                                  seed=point.seed, **extra)


def train_config(point: SweepPoint, task: Task) -> training.TrainConfig:
    """The course's offline preset with the point's steps, batch and learning rate (warmup: a tenth of the run)."""
    return replace(training.PRESETS["offline"], steps=point.steps, batch_size=point.batch_size, lr=point.lr,
                   warmup_steps=max(1, point.steps // 10), max_length=task.max_length, seed=point.seed,
                   checkpoint_dir=None)


def run_point(point: SweepPoint, task: Task, measure_memory: bool = True, exact_match: bool = True) -> dict:
    """Train one point and measure it: the metric, the curves and the costs (see the module's docstring)."""
    model = fresh_model(point, task)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = train_config(point, task)
    batches = data.Batches(task.train, config.batch_size, task.tokenizer.pad_token_id, seed=point.seed)
    forget_before = batch_loss(model, task.forget_batch)
    eval_curve = [(0, batch_loss(model, task.validation_batch))]

    in_loop_eval = [0.0]  # seconds of the evaluations inside the loop, taken off its time

    def on_step(step: int, loss: float) -> None:
        if (step + 1) % task.eval_every == 0 or step + 1 == config.steps:
            t = time.perf_counter()
            eval_curve.append((step + 1, batch_loss(model, task.validation_batch)))
            in_loop_eval[0] += time.perf_counter() - t

    result = training.train(model, batches, config, on_step=on_step, show_progress=False)
    eval_seconds = 0.0
    out = {"point": asdict(point), "label": point.label(), "scale": point.scale, "trainable_params": trainable,
           "train_curve": [round(row["loss"], 5) for row in result.history],
           "eval_curve": [(s, round(v, 5)) for s, v in eval_curve],
           "val_loss": round(eval_curve[-1][1], 5),
           "forget_loss_before": round(forget_before, 5),
           "forget_loss_after": round(batch_loss(model, task.forget_batch), 5)}
    if exact_match:
        t1 = time.perf_counter()
        scored = evaluation.evaluate(model, task.tokenizer, task.validation[:task.exact_match_n])
        out["exact_match"] = scored["exact_match"]
        eval_seconds = time.perf_counter() - t1
    out["seconds_per_step"] = round((result.seconds - in_loop_eval[0]) / config.steps, 4)
    out["eval_seconds"] = round(eval_seconds, 2)
    if measure_memory:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
        batch = batches.batch(0)
        model.train()
        out["memory_bytes"] = footprint.measure_training_step(model, batch["input_ids"], optimizer)
        model.eval()
    return out


LOSS_FLOOR = 0.05  # below this loss, a rerun is compared in absolute terms (tolerance x LOSS_FLOOR)


def same_loss(a: float, b: float, tolerance: float) -> bool:
    """Whether a rerun's loss `a` matches the committed `b`: within `tolerance` relative, or, for losses under
    LOSS_FLOOR, within tolerance x LOSS_FLOOR absolute. Near zero a loss moves by more than 2% between torch
    releases (full fine-tuning at lr 3e-3, step 20: 0.00420 on torch 2.14.1 against 0.00402 on 2.13.0)."""
    return abs(a - b) <= tolerance * max(abs(b), LOSS_FLOOR)


def load_results(name: str = "lora_sweeps.json") -> dict:
    """A committed sweep (benchmarks/results/`name`): its command, versions, seeds and results by grid."""
    import json
    from course_utils.runtime import repo_root
    return json.loads((repo_root() / "benchmarks" / "results" / name).read_text())


def committed_run(results: dict[str, list[dict]], point: SweepPoint) -> dict | None:
    """The committed run of exactly this setting and seed, or None if the sweep did not run it."""
    return next((r for rows in results.values() for r in rows if SweepPoint.from_dict(r["point"]) == point), None)


def live_against_committed(live: dict, committed: dict | None, tolerance: float) -> str:
    """What notebook 07 prints after a live point: its numbers, and whether the sweep's run of it agrees."""
    lines = [f"{live['label']}", f"  live: validation loss {live['val_loss']:.4f}, loss on the base's text "
                                 f"{live['forget_loss_after']:.4f}, exact match {live['exact_match']:.0%}"]
    if live["val_loss"] != live["val_loss"]:  # nan: the only number not equal to itself
        lines.append("  the loss became nan: training diverged at this rate; try one ten times smaller.")
    if committed is None:
        return "\n".join(lines + ["  this setting is not in the committed sweep: a new point (the plot shows it "
                                  "alone)"])
    same = all(same_loss(live[k], committed[k], tolerance) for k in ("val_loss", "forget_loss_after"))
    return "\n".join(lines + [f"  committed: {committed['val_loss']:.4f}, {committed['forget_loss_after']:.4f}, "
                              f"{committed['exact_match']:.0%}",
                              f"  the same within the sweep's stated tolerance ({tolerance:.0%}): {same}"])
