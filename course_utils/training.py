"""A training loop you can read in one sitting, its presets, and the checkpoints that let a run resume.

The loop in `train` is what every fine-tuning library does underneath (one optimizer step of it is
`train_step`, which a notebook can call by hand):

    for each step:
        for each micro-batch (gradient accumulation):
            loss = model(input_ids, labels).loss / accumulation    # forward (autocast to fp16/bf16 on a GPU),
                                                                    # logits only where labels are graded
            loss.backward()                                         # gradients, only for the adapter's parameters
        clip the gradient norm; optimizer.step(); scheduler.step(); optimizer.zero_grad()
        every N steps: save a checkpoint (adapter weights, optimizer, scheduler, random state, loss history)

around it: a fixed seed, gradient checkpointing, a progress bar, a live loss plot and resuming from the latest
checkpoint, which is what lets a run survive a Colab disconnect when the checkpoints go to Google Drive.
Measuring the result (generation, exact match, the base's checksum) is course_utils.evaluation's job.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from course_utils.checkpoints import (adapter_start, apply_checkpoint, folder_problem, list_checkpoints,
                                      lock_holder, release_lock, restore_start, resume_point, save_checkpoint,
                                      take_lock)
from course_utils.data import IGNORE_INDEX
from course_utils.lora import (COURSE_ALPHA, COURSE_DROPOUT, COURSE_RANK, COURSE_TARGETS, get_lora_model,
                               lora_config)
from course_utils.memory import OPTIMIZERS
from course_utils.params import LINEAR_KINDS
from course_utils.runtime import display_path, progress

if TYPE_CHECKING:
    from course_utils.data import Batches
    from course_utils.plots import LivePlot


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
    optimizer: str = "adamw"         # one of memory.OPTIMIZERS: "adamw" (torch), "paged_adamw_8bit" (bitsandbytes)
    mixed_precision: str = "auto"    # "auto" (the model's compute dtype on a GPU), "fp16", "bf16" or "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_dir: str | None = None  # a folder (on Google Drive to survive a disconnect); None: no checkpoints
    checkpoint_every: int = 0        # save every N steps (0: never)
    keep_checkpoints: int = 2        # older checkpoints are deleted
    # The adapter this preset was sized with (rank and alpha are always the course's, 32 and 64):
    lora_targets: tuple[str, ...] = COURSE_TARGETS  # the Linear kinds that get A and B
    lora_dropout: float = COURSE_DROPOUT
    lora_top_layers: int | None = None  # adapt only the last N decoder layers (None: all of them)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


PRESETS: dict[str, TrainConfig] = {
    # The course's small model on a CPU: big batches of short sequences, a high learning rate (tiny model).
    # The loss flattens by step ~60 and exact match reaches 100% (`python benchmarks/train_offline.py`).
    "offline": TrainConfig(steps=80, batch_size=32, grad_accum=1, lr=3e-3, warmup_steps=10, max_length=64),
    # SmolLM2-135M-Instruct on a CPU runtime (Colab without a GPU), from `python benchmarks/train_real.py`
    # (every setting tried: benchmarks/results/train_real_exploration.md): LoRA on all seven projections of the
    # last 20 layers (no gradient flows below them), dropout 0, the peak rate held for half the run. QLoRA needs
    # batches of 16: with 8 the 24-hour time was learned on some seeds and not on others (73-100% exact match).
    "cpu": TrainConfig(steps=40, batch_size=16, grad_accum=1, lr=3.5e-3, warmup_steps=4, decay_from=0.5,
                       max_length=96, lora_targets=LINEAR_KINDS, lora_dropout=0.0, lora_top_layers=20),
    # Llama 3.1 8B in NF4 on a 15 GB T4: small micro-batches, accumulation, checkpointing, 8-bit paged AdamW.
    # LoRA on all seven projections, as QLoRA's paper found necessary (section 4) and notebook 07 measures:
    # +0.6 GB and ~1% more matmul work than q,k,v,o on the estimate (notebook 07, section 10).
    "t4": TrainConfig(steps=150, batch_size=4, grad_accum=4, lr=2e-4, warmup_steps=10, max_length=96,
                      optimizer="paged_adamw_8bit", mixed_precision="fp16", gradient_checkpointing=True,
                      lora_targets=LINEAR_KINDS),
    # Ampere and newer (A100, L4, H100): bf16 compute, bigger micro-batches.
    "ampere": TrainConfig(steps=150, batch_size=8, grad_accum=2, lr=2e-4, warmup_steps=10, max_length=96,
                          optimizer="paged_adamw_8bit", mixed_precision="bf16", gradient_checkpointing=True,
                          lora_targets=LINEAR_KINDS),
}


def preset_for(profile) -> TrainConfig:
    """The preset for a `runtime.Profile`: offline, cpu, or t4 / ampere by the GPU's compute dtype."""
    if profile.name == "gpu":
        return replace(PRESETS["ampere" if profile.compute_dtype == torch.bfloat16 else "t4"])
    return replace(PRESETS.get(profile.name, PRESETS["offline"]))


def add_peft_lora(model, r: int = COURSE_RANK, alpha: float = COURSE_ALPHA, dropout: float = COURSE_DROPOUT,
                  targets: tuple[str, ...] | str = COURSE_TARGETS, seed: int = 0, layers: list[int] | None = None,
                  **options):
    """The course's LoRA adapter on `model`, through PEFT (a fixed seed for lora_A's random start; lora_B starts
    at 0). Targets are checked first: a wrong name lists the real ones (course_utils.lora). `layers` (decoder
    layer indices) limits the adapter to those layers: no gradient flows below the lowest one, so the backward
    pass is shorter. `options` go to LoraConfig (`use_dora=True`, `use_rslora=True`)."""
    set_seed(seed)
    extra = dict(options, **({"layers_to_transform": list(layers)} if layers is not None else {}))
    peft_config = lora_config(model, r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout,
                              task_type="CAUSAL_LM", **extra)
    return get_lora_model(model, peft_config)


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


def make_optimizer(params: list[torch.nn.Parameter], train_config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW keeps two fp32 numbers per parameter; bitsandbytes' 8-bit AdamW keeps two bytes, and its paged
    version pages them to CPU memory when the GPU runs short."""
    name = train_config.optimizer
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
    kwargs = dict(lr=train_config.lr, betas=tuple(train_config.betas), weight_decay=train_config.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    import bitsandbytes as bnb
    return (bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit)(params, **kwargs)


def lr_factor(step: int, train_config: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, flat until `decay_from` x steps, then linear decay to 0 at `steps`."""
    if step < train_config.warmup_steps:
        return (step + 1) / train_config.warmup_steps
    decay_start = max(train_config.warmup_steps, int(train_config.decay_from * train_config.steps))
    if step < decay_start:
        return 1.0
    return max(0.0, (train_config.steps - step) / max(1, train_config.steps - decay_start))


def autocast_dtype(model, train_config: TrainConfig) -> torch.dtype | None:
    """The dtype to autocast to, or None: only on a GPU (on a CPU the course trains in fp32)."""
    device = model_device(model)
    if device.type != "cuda" or train_config.mixed_precision == "no":
        return None
    if train_config.mixed_precision == "fp16":
        return torch.float16
    if train_config.mixed_precision == "bf16":
        return torch.bfloat16
    dtype = getattr(getattr(model, "config", None), "dtype", None) or torch.float16
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def graded_window(model, batch: dict) -> dict:
    """`batch` with the logits computed only where the loss reads them: from the position before the first
    graded label to the end (`logits_to_keep`, the labels cut to match). The same loss and gradients; the
    logits over the whole vocabulary, their softmax and its gradient shrink with the window
    (`python benchmarks/cpu_step_time.py` times a step both ways)."""
    labels = batch.get("labels")
    inner = getattr(model, "module", model)  # DDP and FSDP wrap the model
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT wraps it too
    if labels is None or "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        return batch
    graded = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    keep = labels.shape[1] - int(graded[0]) + 1 if len(graded) else labels.shape[1]
    return {**batch, "labels": labels[:, -keep:], "logits_to_keep": keep} if keep < labels.shape[1] else batch


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
    stopped: bool = False           # the stop button (KeyboardInterrupt) ended the run early

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def adapter_settings(model) -> dict:
    """The LoRA settings of a PEFT model (rank, alpha, targets, dropout, DoRA), as a checkpoint records them."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        return {}
    targets = config.target_modules
    return {"r": config.r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
            "target_modules": targets if isinstance(targets, str) or targets is None else sorted(targets),
            "use_dora": bool(getattr(config, "use_dora", False))}


def make_scaler(model, train_config: TrainConfig):
    """A GradScaler when the run autocasts to fp16 (whose small gradients would round to 0 without
    loss scaling), else None (fp32 on a CPU, bf16 on Ampere and newer)."""
    fp16 = autocast_dtype(model, train_config) == torch.float16
    return torch.amp.GradScaler("cuda") if fp16 else None


def train_step(model, micro_batches: list[dict], optimizer, scheduler, train_config: TrainConfig,
               scaler=None) -> dict:
    """One optimizer step, as `train` runs every one of them: forward and backward on each
    micro-batch (their gradients add up: gradient accumulation), clip, step, zero. The model is in
    train mode; the optimizer holds the parameters that train. Returns the step's loss (the mean
    over its micro-batches), its learning rate, the gradient norm before clipping, and the tokens
    it read (padding excluded)."""
    device = model_device(model)
    amp_dtype = autocast_dtype(model, train_config)  # fp16 / bf16 on a GPU, None (fp32) on a CPU
    loss_sum, tokens = 0.0, 0
    for batch in micro_batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with _autocast(device, amp_dtype):
            # forward: the cross-entropy on the answer tokens (labels -100 elsewhere)
            loss = model(**graded_window(model, batch)).loss / len(micro_batches)
        # backward: a gradient for every parameter that requires one (the adapter's)
        (scaler.scale(loss) if scaler else loss).backward()
        loss_sum += loss.item()
        tokens += int(batch["attention_mask"].sum())
    if scaler:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, train_config.max_grad_norm)  # clip
    if scaler:
        scaler.step(optimizer)  # skips the step if a gradient overflowed in fp16
        scaler.update()
    else:
        optimizer.step()  # step: move the adapter against its gradient
    lr = scheduler.get_last_lr()[0]
    scheduler.step()  # the learning rate of the next step
    optimizer.zero_grad(set_to_none=True)  # zero: the next step starts from no gradient
    return {"loss": loss_sum, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens}


def train(model, batches: Batches, train_config: TrainConfig, plot: LivePlot | None = None,
          resume: bool = True, on_step=None, show_progress: bool = True) -> TrainResult:
    """Train the parameters of `model` that require grad for `train_config.steps` optimizer steps.

    `batches.batch(i)` gives micro-batch i, so the data order depends only on the seed and the step, and a run
    resumed from a checkpoint sees exactly the batches an uninterrupted run would have. With `resume` and a
    `checkpoint_dir` that holds checkpoints, training continues after the latest one. `on_step(step, loss)` is
    called after every optimizer step (a test uses it to stop a run part-way, as a disconnect would).
    """
    device = model_device(model)
    trainable = trainable_parameters(model)  # name -> parameter: what the optimizer updates and checkpoints save
    params = list(trainable.values())
    if not params:
        raise ValueError("no parameter requires grad: freeze the base and add an adapter first")
    if train_config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = make_optimizer(params, train_config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train_config))
    scaler = make_scaler(model, train_config)

    start_values = adapter_start(model, trainable)  # before any checkpoint is applied
    start, history, resumed_from = 0, [], None
    folder = train_config.checkpoint_dir
    if folder and (why := folder_problem(folder)):  # found before step 0, not after the first save
        print(f"Training without checkpoints: {why}. (Mount Google Drive again, free some space, or set "
              "another folder.)")
        folder = None
    if folder and (other := lock_holder(folder)):  # two tabs, or a Drive shared by two kernels
        print(f"Another kernel is training into {display_path(str(folder))} ({other}): this run trains without "
              "checkpoints, so neither spoils the other's. Stop the other one, or give this one another folder.")
        folder = None
    settings = asdict(train_config) | {"adapter": adapter_settings(model)}  # another alpha is other settings
    checkpoint = resume_point(folder, trainable, settings, train_config.steps) if resume else None
    if checkpoint is not None:
        start, history = apply_checkpoint(checkpoint, trainable, optimizer, scheduler, scaler)
        resumed_from = str(checkpoint["path"])
        print(f"Resuming after step {start} from {display_path(resumed_from)}")
    else:
        if restore_start(trainable, start_values):
            print("The adapter in memory was trained before (this cell ran already, or a run was stopped before its "
                  "first checkpoint): it starts again from its initial values, as a run from step 0 must.")
        set_seed(train_config.seed)
    for p in params:  # a stop after a backward pass leaves gradients behind: the first step must not add them
        p.grad = None
    if folder:
        take_lock(folder)  # after resume_point, which may have moved the old checkpoints aside
    if plot is not None:
        for row in history:
            plot.update(row["step"], row["loss"])

    model.train()
    result = TrainResult(history=history, resumed_from=resumed_from)
    bar = progress(range(start, train_config.steps), total=train_config.steps, initial=start,
                   desc="training", disable=not show_progress)
    t0 = time.perf_counter()
    try:
        _run_steps(model, batches, train_config, bar, optimizer, scheduler, scaler, folder, settings, trainable,
                   history, result, plot, on_step)
    except KeyboardInterrupt:  # the stop button: what was trained stays, and the checkpoints say where to resume
        result.stopped = True
        for p in params:  # a stop between backward and zero_grad leaves gradients: drop them
            p.grad = None
        saved = [p.name for p in list_checkpoints(folder)] if folder else []
        print(f"\nStopped after step {start + result.steps_run} of {train_config.steps}. "
              + (f"The newest checkpoint is {saved[-1]}: run this cell again to resume from it."
                 if saved else "No checkpoint was saved yet: run this cell again to train from step 0."))
    finally:
        if folder:
            release_lock(folder)
    if device.type == "cuda":
        torch.cuda.synchronize()
    result.seconds = time.perf_counter() - t0
    if hasattr(bar, "close"):
        bar.close()
    if plot is not None:
        plot.close()
    model.eval()
    return result


def _run_steps(model, batches, train_config, bar, optimizer, scheduler, scaler, folder, settings, trainable,
               history, result, plot, on_step) -> None:
    """The loop of `train`: one optimizer step per step of `bar`, each recorded, plotted and checkpointed."""
    for step in bar:
        micro_batches = [batches.batch(step * train_config.grad_accum + micro)
                         for micro in range(train_config.grad_accum)]
        done = train_step(model, micro_batches, optimizer, scheduler, train_config, scaler)
        step_loss, step_tokens = done["loss"], done["tokens"]
        history.append({"step": step, **done})  # step, loss, lr, grad_norm, tokens
        result.tokens += step_tokens
        result.steps_run += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{step_loss:.3f}", refresh=False)
        if plot is not None:
            plot.update(step, step_loss)
        every = train_config.checkpoint_every
        if folder and every and ((step + 1) % every == 0 or step + 1 == train_config.steps):  # the end, always
            try:
                save_checkpoint(folder, step + 1, trainable, optimizer, scheduler, scaler,
                                history, settings, keep=train_config.keep_checkpoints)
            except OSError as err:  # a full disk, Drive gone: say so once, keep training
                print(f"\nCould not save a checkpoint at step {step + 1} ({err.strerror or err}); training goes "
                      "on without checkpoints. Save the adapter when it ends, somewhere with space.")
                folder = None
        if folder:
            take_lock(folder)  # still ours, and its time says this kernel is alive
        if on_step is not None:
            on_step(step, step_loss)


def steps_knob(value, preset_steps: int, name: str = "STEPS") -> int | None:
    """A number-of-steps knob as a whole number >= 1 (80, 80.0 and "80" all give 80), or None after a sentence
    that says what to set, so that a typo in class stops nothing with a traceback."""
    try:
        number = float(value)
        ok = number.is_integer() and number >= 1 and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if ok:
        return int(number)
    print(f"{name} = {value!r} is not a number of training steps: set it to a whole number of at least 1 (the preset "
          f"for this runtime trains {preset_steps}) and run this cell again. Nothing was trained.")
    return None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)
