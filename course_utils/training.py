"""A training loop you can read in one sitting, and the evaluation around it.

The loop in `train` is what every fine-tuning library does underneath:

    for each step:
        for each micro-batch (gradient accumulation):
            loss = model(input_ids, labels).loss / accumulation    # forward (autocast to fp16/bf16 on a GPU)
            loss.backward()                                         # gradients, only for the adapter's parameters
        clip the gradient norm; optimizer.step(); scheduler.step(); optimizer.zero_grad()
        every N steps: save a checkpoint (adapter weights, optimizer, scheduler, random state, loss history)

around it: a fixed seed, gradient checkpointing, a progress bar, a live loss plot and resuming from the latest
checkpoint, which is what lets a run survive a Colab disconnect when the checkpoints go to Google Drive.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from course_utils import data as course_data
from course_utils.runtime import progress


# ----------------------------------------------------------------------------------------------------------
# Settings and presets
# ----------------------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    steps: int = 100                 # optimizer steps in the whole run
    batch_size: int = 16             # examples per forward pass (a micro-batch)
    grad_accum: int = 1              # micro-batches per optimizer step: effective batch = batch_size * grad_accum
    lr: float = 2e-4                 # peak learning rate, after a linear warmup; then linear decay to 0
    warmup_steps: int = 10
    decay_from: float = 0.0          # the decay starts after this fraction of the steps (0: right after warmup)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's moment decay rates
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 128            # tokens per example at most (the prompt's start is cut, never the answer)
    optimizer: str = "adamw"         # "adamw" (torch) or "paged_adamw_8bit" (bitsandbytes)
    mixed_precision: str = "auto"    # "auto" (the model's compute dtype on a GPU), "fp16", "bf16" or "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_dir: str | None = None  # a folder (on Google Drive to survive a disconnect); None: no checkpoints
    checkpoint_every: int = 0        # save every N steps (0: never)
    keep_checkpoints: int = 2        # older checkpoints are deleted

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


# LoRA settings of the course: r=32, alpha=64 on the attention projections, dropout 0.1, on every profile.
LORA_R, LORA_ALPHA, LORA_DROPOUT = 32, 64, 0.1
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

PRESETS: dict[str, TrainConfig] = {
    # The course's small model on a CPU: big batches of short sequences, a high learning rate (tiny model).
    "offline": TrainConfig(steps=240, batch_size=32, grad_accum=1, lr=3e-3, warmup_steps=10, max_length=64),
    # SmolLM2-135M in NF4 on a CPU runtime (Colab without a GPU): 2.2-2.6 s a step of 8 on 2 cores
    # (`python benchmarks/cpu_step_time.py`, random weights).
    "cpu": TrainConfig(steps=60, batch_size=8, grad_accum=1, lr=1e-3, warmup_steps=6, max_length=96),
    # Llama 3.1 8B in NF4 on a 15 GB T4: small micro-batches, accumulation, checkpointing, 8-bit paged AdamW.
    "t4": TrainConfig(steps=150, batch_size=4, grad_accum=4, lr=2e-4, warmup_steps=10, max_length=96,
                      optimizer="paged_adamw_8bit", mixed_precision="fp16", gradient_checkpointing=True),
    # Ampere and newer (A100, L4, H100): bf16 compute, bigger micro-batches.
    "ampere": TrainConfig(steps=150, batch_size=8, grad_accum=2, lr=2e-4, warmup_steps=10, max_length=96,
                          optimizer="paged_adamw_8bit", mixed_precision="bf16", gradient_checkpointing=True),
}


def preset_for(profile) -> TrainConfig:
    """The preset for a `runtime.Profile`: offline, cpu, or t4 / ampere by the GPU's compute dtype."""
    if profile.name == "gpu":
        return replace(PRESETS["ampere" if profile.compute_dtype == torch.bfloat16 else "t4"])
    return replace(PRESETS.get(profile.name, PRESETS["offline"]))


def add_lora(model, r: int = LORA_R, alpha: int = LORA_ALPHA, dropout: float = LORA_DROPOUT,
             targets: tuple[str, ...] = LORA_TARGETS, seed: int = 0):
    """The course's LoRA adapter on `model` (a fixed seed for lora_A's random start; lora_B starts at 0).
    Targets are checked first: a wrong name lists the real ones (course_utils.lora)."""
    from course_utils import lora
    set_seed(seed)
    config = lora.lora_config(model, r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout,
                              task_type="CAUSAL_LM")
    return lora.get_lora_model(model, config)


def set_seed(seed: int) -> None:
    """Seed Python's and torch's random generators (CPU and GPU)."""
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters the optimizer will update: those with requires_grad (the adapter's, after LoRA)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass instead of storing them: less memory, ~30% slower."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "config"):
        model.config.use_cache = False


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW keeps two fp32 numbers per parameter; bitsandbytes' paged 8-bit AdamW keeps two bytes, and pages
    them to CPU memory when the GPU runs short."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    if config.optimizer in ("paged_adamw_8bit", "adamw_8bit"):
        import bitsandbytes as bnb
        cls = bnb.optim.PagedAdamW8bit if config.optimizer.startswith("paged") else bnb.optim.AdamW8bit
        return cls(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}: use 'adamw' or 'paged_adamw_8bit'")


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, flat until `decay_from` x steps, then linear decay to 0 at `steps`."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    decay_start = max(config.warmup_steps, int(config.decay_from * config.steps))
    if step < decay_start:
        return 1.0
    return max(0.0, (config.steps - step) / max(1, config.steps - decay_start))


def autocast_dtype(model, config: TrainConfig) -> torch.dtype | None:
    """The dtype to autocast to, or None: only on a GPU (on a CPU the course trains in fp32)."""
    device = model_device(model)
    if device.type != "cuda" or config.mixed_precision == "no":
        return None
    if config.mixed_precision == "fp16":
        return torch.float16
    if config.mixed_precision == "bf16":
        return torch.bfloat16
    dtype = getattr(getattr(model, "config", None), "dtype", None) or torch.float16
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16


def model_device(model) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------------------------
# The live loss plot
# ----------------------------------------------------------------------------------------------------------

class LivePlot:
    """A loss curve that redraws in place in a notebook (an IPython display handle), at most every `every_s`
    seconds; its last state stays in the notebook's output. Outside a notebook it only records the points."""

    def __init__(self, total_steps: int, title: str = "Training loss", every_s: float = 2.0, smooth: float = 0.9):
        self.total_steps, self.title, self.every_s, self.smooth = total_steps, title, every_s, smooth
        self.steps: list[int] = []
        self.losses: list[float] = []
        self._last_draw = 0.0
        self._fig = self._handle = None
        self._live = _in_notebook()

    def update(self, step: int, loss: float, force: bool = False) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        if self._live and (force or time.perf_counter() - self._last_draw >= self.every_s):
            self.draw()

    def smoothed(self) -> list[float]:
        out, avg = [], None
        for loss in self.losses:
            avg = loss if avg is None else self.smooth * avg + (1 - self.smooth) * loss
            out.append(avg)
        return out

    def figure(self):
        import matplotlib.pyplot as plt
        if self._fig is None:
            self._fig, self._ax = plt.subplots(figsize=(7, 3.2))
            plt.close(self._fig)  # shown through the display handle only, never twice
        ax = self._ax
        ax.clear()
        ax.plot(self.steps, self.losses, color="tab:blue", alpha=0.3, lw=1, label="loss per step")
        if self.losses:
            ax.plot(self.steps, self.smoothed(), color="tab:blue", lw=2, label="smoothed")
            ax.set_title(f"{self.title}: step {self.steps[-1] + 1}/{self.total_steps}, loss {self.losses[-1]:.3f}")
        ax.set_xlim(0, max(self.total_steps, 1))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss on the answer tokens")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        self._fig.tight_layout()
        return self._fig

    def draw(self) -> None:
        from IPython.display import display
        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        self._last_draw = time.perf_counter()

    def close(self) -> None:
        """Draw the final state."""
        if self._live and self.steps:
            self.draw()


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and type(shell).__name__ != "TerminalInteractiveShell"


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------

CHECKPOINT_PREFIX = "checkpoint-"
DRIVE = Path("/content/drive/MyDrive")  # where Colab mounts Google Drive


def run_folder(name: str) -> Path:
    """Where a run keeps its checkpoints and adapter: on Google Drive when it is mounted (so they survive a
    Colab disconnect), else `./runs/<name>`. $COURSE_CHECKPOINT_ROOT overrides both (the notebook runner
    uses a fresh temporary folder)."""
    root = os.environ.get("COURSE_CHECKPOINT_ROOT")
    if root:
        return Path(root) / name
    if DRIVE.is_dir():
        return DRIVE / "lora-qlora-course" / name
    return Path("runs") / name


def save_checkpoint(folder: str | Path, step: int, model, optimizer, scheduler, scaler, history: list[dict],
                    config: TrainConfig) -> Path:
    """Save everything a resume needs after `step` optimizer steps, into `folder/checkpoint-<step>/`.

    Only the trainable (adapter) weights are saved, so a checkpoint is as small as the adapter. The folder is
    written under a temporary name and renamed when complete, so a disconnect mid-write never leaves a broken
    "latest" checkpoint.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {name: p.detach().to("cpu").contiguous() for name, p in trainable_parameters(model).items()}
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save({
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "history": history,
    }, tmp / "training_state.pt")
    (tmp / "train_config.json").write_text(json.dumps(asdict(config), indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    old = list_checkpoints(folder)[:-config.keep_checkpoints] if config.keep_checkpoints > 0 else []
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return final


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / "training_state.pt").exists())


def latest_checkpoint(folder: str | Path | None) -> Path | None:
    found = list_checkpoints(folder) if folder else []
    return found[-1] if found else None


def load_checkpoint(path: str | Path, model, optimizer, scheduler, scaler) -> tuple[int, list[dict]]:
    """Restore a checkpoint into the model's trainable weights, the optimizer, scheduler, scaler and random
    generators; returns (steps done, loss history)."""
    from safetensors.torch import load_file

    path = Path(path)
    weights = load_file(str(path / "trainable.safetensors"))
    params = trainable_parameters(model)
    missing = sorted(set(params) - set(weights))
    if missing:
        raise ValueError(f"{path} has no weights for {len(missing)} trainable parameters (first: {missing[0]}); "
                         "was it saved from another model or LoRA setting?")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"], state["history"]


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one row per optimizer step: step, loss, lr, tokens
    seconds: float = 0.0            # wall time of the steps run in this call
    steps_run: int = 0              # optimizer steps run in this call
    resumed_from: str | None = None
    tokens: int = 0                 # tokens (padding excluded) seen in this call

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def train(model, batches: "course_data.Batches", config: TrainConfig, plot: LivePlot | None = None,
          resume: bool = True, on_step=None, show_progress: bool = True) -> TrainResult:
    """Train the parameters of `model` that require grad for `config.steps` optimizer steps.

    `batches.batch(i)` gives micro-batch i, so the data order depends only on the seed and the step, and a run
    resumed from a checkpoint sees exactly the batches an uninterrupted run would have. With `resume` and a
    `checkpoint_dir` that holds checkpoints, training continues after the latest one. `on_step(step, loss)` is
    called after every optimizer step (a test uses it to stop a run part-way, as a disconnect would).
    """
    device = model_device(model)
    params = list(trainable_parameters(model).values())
    if not params:
        raise ValueError("no parameter requires grad: freeze the base and add an adapter first")
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = make_optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    amp_dtype = autocast_dtype(model, config)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None  # fp16 needs loss scaling

    start, history, resumed_from = 0, [], None
    checkpoint = latest_checkpoint(config.checkpoint_dir) if resume else None
    if checkpoint is not None:
        start, history = load_checkpoint(checkpoint, model, optimizer, scheduler, scaler)
        resumed_from = str(checkpoint)
        print(f"Resuming after step {start} from {checkpoint}")
    else:
        set_seed(config.seed)
    if plot is not None:
        for row in history:
            plot.update(row["step"], row["loss"])

    model.train()
    result = TrainResult(history=history, resumed_from=resumed_from)
    bar = progress(range(start, config.steps), total=config.steps, initial=start, desc="training",
                   disable=not show_progress)
    t0 = time.perf_counter()
    for step in bar:
        step_loss, step_tokens = 0.0, 0
        for micro in range(config.grad_accum):
            batch = {k: v.to(device) for k, v in batches.batch(step * config.grad_accum + micro).items()}
            with _autocast(device, amp_dtype):
                loss = model(**batch).loss / config.grad_accum        # forward
            (scaler.scale(loss) if scaler else loss).backward()       # backward: grads for the adapter only
            step_loss += loss.item()
            step_tokens += int(batch["attention_mask"].sum())
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()                                          # update the adapter
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        row = {"step": step, "loss": step_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": step_tokens}
        history.append(row)
        result.tokens += step_tokens
        result.steps_run += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{step_loss:.3f}", refresh=False)
        if plot is not None:
            plot.update(step, step_loss)
        if config.checkpoint_dir and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            save_checkpoint(config.checkpoint_dir, step + 1, model, optimizer, scheduler, scaler, history, config)
        if on_step is not None:
            on_step(step, step_loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    result.seconds = time.perf_counter() - t0
    if hasattr(bar, "close"):
        bar.close()
    if plot is not None:
        plot.close()
    model.eval()
    return result


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------
# Evaluation: generate the records, score them, show them side by side
# ----------------------------------------------------------------------------------------------------------

@torch.no_grad()
def generate(model, tokenizer, examples: list[dict], batch_size: int = 100, max_new_tokens: int | None = None,
             show_progress: bool = False) -> list[str]:
    """Greedy continuations of the prompts of `examples` (left-padded batches), as text."""
    device = model_device(model)
    if max_new_tokens is None:  # the longest answer in tokens, and a little room
        max_new_tokens = max(len(tokenizer(course_data.make_answer(ex["record"]), add_special_tokens=False)["input_ids"])
                             for ex in examples) + 4
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = []
    chunks = range(0, len(examples), batch_size)
    for i in progress(chunks, desc="generating", disable=not show_progress):
        prompts = [{"input_ids": course_data.encode_prompt(tokenizer, ex)} for ex in examples[i:i + batch_size]]
        batch = course_data.pad_batch(prompts, pad_id, side="left")
        out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                             pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    model.train(was_training)
    return texts


def evaluate(model, tokenizer, examples: list[dict], batch_size: int = 100, show_progress: bool = False) -> dict:
    """Generate a record for every example and score it: exact match, per-field accuracy, predictions, seconds."""
    t0 = time.perf_counter()
    predictions = generate(model, tokenizer, examples, batch_size=batch_size, show_progress=show_progress)
    result = course_data.score(predictions, examples)
    result.update(predictions=predictions, seconds=time.perf_counter() - t0)
    return result


@torch.no_grad()
def note_skills(model, tokenizer, docs: list[str]) -> dict[str, float]:
    """How often the model's top guess is the right normalized value in "Notes:" lines, per key (teacher forcing).

    The pretraining script prints this: it is the skill the fine-tuning builds on (a base that cannot pick out
    and normalize a detail has nothing for LoRA to reuse).
    """
    model.eval()
    device = model_device(model)
    hits = {k: 0 for k in course_data.FIELDS}
    counts = dict(hits)
    vocab = tokenizer.get_vocab()
    key_ids = {vocab["Ġ" + k]: k for k in course_data.FIELDS if "Ġ" + k in vocab}
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
    return {k: hits[k] / counts[k] for k in course_data.FIELDS if counts[k]}


@torch.no_grad()
def token_losses(model, tokenizer, example: dict, top: int = 3) -> list[dict]:
    """For every token the loss grades in `example` (its answer and EOS): the token, its loss in nats, and the
    model's `top` guesses with their probabilities. A loss of -ln(p) means the right token got probability p.
    Ids the tokenizer does not have (a model's embedding table can be longer) show as "<unused id N>"."""
    enc = course_data.encode_example(tokenizer, example)
    device = model_device(model)
    ids = torch.tensor([enc["input_ids"]], device=device)
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
        if label != course_data.IGNORE_INDEX:
            rows.append({"token": name(int(ids[0, pos + 1])), "loss": float(nll[pos]),
                         "top": [(name(int(g)), float(p)) for g, p in zip(guesses[pos], probs[pos])]})
    return rows


def side_by_side(examples: list[dict], before: list[str], after: list[str], n: int = 5, width: int = 80) -> str:
    """A text table: the request, the base model's record and the fine-tuned one, marked right or wrong."""
    def mark(pred: str, ex: dict) -> str:
        first = pred.strip().split("\n", 1)[0]
        ok = course_data.parse_record(pred) == ex["record"]
        return ("✅ " if ok else "❌ ") + (first[:width - 3] + "..." if len(first) > width else first)
    lines = []
    for ex, b, a in list(zip(examples, before, after))[:n]:
        lines += [f"request:  {ex['request']}", f"expected: {ex['target']}", f"before:   {mark(b, ex)}",
                  f"after:    {mark(a, ex)}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Proofs: the base is unchanged, the adapter is small
# ----------------------------------------------------------------------------------------------------------

def weights_checksum(model, skip: tuple[str, ...] = ("lora_",)) -> str:
    """sha256 of the model's weights, skipping parameters whose name contains one of `skip` (the adapter).

    A 4-bit weight is hashed as its packed NF4 bytes; any other weight by its values as float32, so the
    upcast of norms to fp32 by `prepare_model_for_kbit_training` does not count as a change.
    """
    import hashlib
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        if any(s in name for s in skip):
            continue
        name = name.replace("base_model.model.", "").replace(".base_layer", "")  # the same name with or without peft
        t = p.detach().cpu()  # to the CPU first: no extra GPU memory for the float32 copy
        t = t if type(p).__name__ == "Params4bit" else t.float()
        digest.update(name.encode())
        digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def folder_mb(folder: str | Path) -> float:
    """Size on disk of the files in a folder (recursively), in MB (1e6 bytes)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


# ----------------------------------------------------------------------------------------------------------
# Memory of a preset: course_utils.memory's estimate with the preset's settings
# ----------------------------------------------------------------------------------------------------------

def preset_memory(model_config, config: TrainConfig, rank: int = LORA_R, targets: tuple[str, ...] = LORA_TARGETS,
                  prepared: bool = True):
    """The estimated peak memory of QLoRA training with `config` (a `memory.TrainingMemory`, bytes by part).

    It is `memory.training_memory` with the preset's batch size, sequence length, checkpointing, optimizer
    and compute dtype; with `prepared`, the embeddings, norms and lm_head count in fp32, because
    `prepare_model_for_kbit_training` upcasts every weight bitsandbytes left unquantized.
    """
    from course_utils import memory
    compute = "bf16" if config.mixed_precision == "bf16" else "fp16"
    estimate = memory.training_memory(
        model_config, "qlora", rank=rank, targets=targets, batch_size=config.batch_size, seq_len=config.max_length,
        gradient_checkpointing=config.gradient_checkpointing, compute_dtype=compute,
        optimizer="adamw-8bit" if config.optimizer.endswith("8bit") else "adamw")
    if prepared:
        estimate.weights += (memory.weight_bytes(model_config, "nf4", unquantized="fp32")
                             - memory.weight_bytes(model_config, "nf4", unquantized=compute))
    return estimate
