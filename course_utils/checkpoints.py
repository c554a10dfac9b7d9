"""Checkpoints that let a run survive a Colab disconnect, and never spoil or lose the next run.

A checkpoint is a folder `checkpoint-<step>/` holding the adapter's weights (`trainable.safetensors`), the
optimizer, scheduler, loss-scaler and random state with the loss history (`training_state.pt`), and the settings
(`train_config.json`). `resume_point` picks what `training.train` continues from:
- the newest checkpoint that reads back whole (a damaged one, what a Drive disconnect leaves, is skipped with a
  sentence), read completely before anything touches the model;
- none, when that run already finished or was saved with other settings (another rank, learning rate, ...):
  its checkpoints are moved aside to `<folder>-finished-<n>` / `<folder>-other-settings-<n>` (kept, never
  deleted) and the run starts at step 0, so a rehearsal never turns the live run into "0 steps".
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import tempfile
import time
from pathlib import Path

import torch

CHECKPOINT_PREFIX = "checkpoint-"
DRIVE = Path("/content/drive/MyDrive")  # where Colab mounts Google Drive
# Settings that may change between a run and its resume: how long it runs, and where and how often it saves.
MAY_CHANGE = ("steps", "checkpoint_dir", "checkpoint_every", "keep_checkpoints")


class CheckpointError(Exception):
    """A checkpoint that can't be used, with the reason in a sentence."""


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


def folder_problem(folder: str | Path) -> str | None:
    """Why checkpoints can't be written to `folder` (read-only, full disk, Drive unmounted), or None."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
        return None
    except OSError as err:
        return f"{folder} can't be written ({err.strerror or err})"


def save_checkpoint(folder: str | Path, step: int, params: dict[str, torch.nn.Parameter], optimizer, scheduler,
                    scaler, history: list[dict], settings: dict, keep: int = 2) -> Path:
    """Save everything a resume needs after `step` optimizer steps into `folder/checkpoint-<step>/`: only the
    trainable (adapter) weights `params`, so a checkpoint is as small as the adapter. It is written under a
    temporary name and renamed when complete; a failed write removes its partial folder and raises OSError."""
    from safetensors.torch import save_file

    folder = Path(folder)
    final = folder / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{step:06d}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({name: p.detach().to("cpu").contiguous() for name, p in params.items()},
                  str(tmp / "trainable.safetensors"))
        torch.save({
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "history": history,
        }, tmp / "training_state.pt")
        (tmp / "train_config.json").write_text(json.dumps(settings, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for path in (list_checkpoints(folder)[:-keep] if keep > 0 else []):
        shutil.rmtree(path, ignore_errors=True)
    return final


def list_checkpoints(folder: str | Path | None) -> list[Path]:
    """Checkpoints in `folder` (complete or not: `read_checkpoint` tells), oldest first."""
    if not folder or not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())


def latest_checkpoint(folder: str | Path | None) -> Path | None:
    """The newest checkpoint of `folder` that has its state file, or None."""
    found = [p for p in list_checkpoints(folder) if (p / "training_state.pt").exists()]
    return found[-1] if found else None


def read_checkpoint(path: str | Path) -> dict:
    """Everything in a checkpoint, read completely (weights, state, settings); CheckpointError says what's wrong."""
    from safetensors.torch import load_file

    path = Path(path)
    for name in ("trainable.safetensors", "training_state.pt"):
        if not (path / name).is_file():
            raise CheckpointError(f"{name} is missing")
    try:
        weights = load_file(str(path / "trainable.safetensors"))
    except Exception as err:
        raise CheckpointError(f"trainable.safetensors is damaged ({type(err).__name__})") from None
    try:
        state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"training_state.pt is damaged ({type(err).__name__})") from None
    settings_file = path / "train_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    return {"path": path, "weights": weights, "state": state, "settings": settings}


def differences(checkpoint: dict, params: dict[str, torch.nn.Parameter], settings: dict) -> list[str]:
    """What differs between a checkpoint and this run: the adapter's tensors and shapes, and the settings."""
    saved = checkpoint["weights"]
    out = []
    if set(saved) != set(params):
        out.append(f"the adapter's tensors ({len(saved)} saved, {len(params)} now)")
    else:
        out += [f"{name}: {tuple(saved[name].shape)} saved, {tuple(p.shape)} now"
                for name, p in params.items() if tuple(saved[name].shape) != tuple(p.shape)][:1]
    for key, value in settings.items():
        old = checkpoint["settings"].get(key, value)
        if key not in MAY_CHANGE and json.loads(json.dumps(old)) != json.loads(json.dumps(value)):
            out.append(f"{key} {old} saved, {value} now")
    return out


def apply_checkpoint(checkpoint: dict, params: dict[str, torch.nn.Parameter], optimizer, scheduler,
                     scaler) -> tuple[int, list[dict]]:
    """Restore a checkpoint read by `read_checkpoint` into the adapter, optimizer, scheduler, scaler and random
    generators; returns (steps done, loss history)."""
    weights, state = checkpoint["weights"], checkpoint["state"]
    missing = sorted(set(params) - set(weights))
    if missing:
        raise ValueError(f"{checkpoint['path']} has no weights for {len(missing)} trainable parameters (first: "
                         f"{missing[0]}); was it saved from another model or LoRA setting?")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"], state["history"]


def move_aside(folder: str | Path, why: str) -> Path:
    """Rename a run's checkpoint folder to `<folder>-<why>-<n>` (the first n free): kept, out of the way."""
    folder = Path(folder)
    n = 1
    while (target := folder.with_name(f"{folder.name}-{why}-{n}")).exists():
        n += 1
    os.replace(folder, target)
    return target


LOCK_NAME = ".in-use.json"  # written by the kernel that trains into a folder, touched after every step
LOCK_STALE_SECONDS = 300    # a lock untouched this long is a kernel that died (a Drive shared by two tabs)


def lock_holder(folder: str | Path) -> str | None:
    """Who else trains into `folder` now, in words ("pid 123 on host x, 4 s ago"), or None when nobody does: no
    lock, our own, a dead process on this machine, or one untouched for LOCK_STALE_SECONDS."""
    path = Path(folder) / LOCK_NAME
    try:
        holder = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None
    if holder.get("host") == socket.gethostname():
        if holder.get("pid") == os.getpid() or not _alive(holder.get("pid", -1)):
            return None
    elif age > LOCK_STALE_SECONDS:
        return None
    return f"pid {holder.get('pid')} on {holder.get('host')}, {age:.0f} s ago"


def take_lock(folder: str | Path) -> None:
    """Mark `folder` as ours (written again, so its time is now: call it after every step). Best effort: a write
    that fails (Drive gone, a full disk) never stops training; saving the checkpoint says so."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    except OSError:
        pass


def release_lock(folder: str | Path) -> None:
    path = Path(folder) / LOCK_NAME
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


START_ATTRIBUTE = "_course_adapter_start"  # the adapter's values before the model's first run, kept on the model


def adapter_start(model, trainable: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The values the trainable parameters had when `train` first saw this model (a copy on the CPU, kept on the
    model), so that any later run from step 0 starts from the same fresh adapter."""
    start = getattr(model, START_ATTRIBUTE, None)
    if start is None or start.keys() != trainable.keys():
        start = {name: p.detach().to("cpu", copy=True) for name, p in trainable.items()}
        object.__setattr__(model, START_ATTRIBUTE, start)
    return start


def restore_start(trainable: dict[str, torch.nn.Parameter], start: dict[str, torch.Tensor]) -> bool:
    """Put the adapter back to `start` where it moved; whether it had moved."""
    moved = [name for name, p in trainable.items() if not torch.equal(p.detach().cpu(), start[name])]
    with torch.no_grad():
        for name in moved:
            trainable[name].copy_(start[name])
    return bool(moved)


def start_over(folder: str | Path) -> str:
    """What `START_OVER = True` does: the run's checkpoints are moved aside to `<folder>-start-over-<n>` (kept:
    an interrupted class run can still be resumed from them by moving them back) so the next run starts at step
    0. Returns the sentence that says so."""
    from course_utils.runtime import display_path

    folder = Path(folder)
    if not list_checkpoints(folder):
        return f"START_OVER: no checkpoints in {display_path(str(folder))}; this run starts at step 0."
    kept = move_aside(folder, "start-over")
    return (f"START_OVER: the checkpoints in {display_path(str(folder))} are kept in {kept.name} (move them back "
            "to resume that run); this run starts at step 0.")


def saved_adapter_problem(trainable: dict[str, torch.nn.Parameter], adapter_dir: str | Path) -> str | None:
    """Why the adapter saved in `adapter_dir` is not the one in memory (not saved yet, damaged, or another run's),
    as a sentence that names the cell to run; None when every tensor matches. `trainable`: name -> parameter."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from course_utils.runtime import display_path

    path = Path(adapter_dir) / "adapter_model.safetensors"
    where = display_path(str(adapter_dir))
    if not path.is_file():
        return f"No adapter is saved in {where} yet: run the save cell (section 10) first, then this one."
    try:
        saved = load_file(path)
    except (SafetensorError, OSError) as err:
        return f"The adapter file in {where} can't be read ({err}): run the save cell (section 10) again."
    mine = {_saved_name(name): p.detach().cpu() for name, p in trainable.items()}
    if mine.keys() != saved.keys() or any(not torch.equal(saved[k], v.to(saved[k].dtype)) for k, v in mine.items()):
        return (f"The adapter saved in {where} is not the one in memory (saved before the last training): run the "
                "save cell (section 10) again, then this one.")
    return None


def _saved_name(name: str) -> str:
    """A trainable parameter's name as PEFT's save_pretrained writes it (adapter name dropped)."""
    return name.replace(".default.", ".")


def resume_point(folder: str | Path | None, params: dict[str, torch.nn.Parameter], settings: dict,
                 steps: int, show=print) -> dict | None:
    """The checkpoint a run of `steps` steps continues from, read whole, or None to start at step 0 (see the
    module's docstring); says in a sentence what it skipped or moved aside, and why."""
    from course_utils.runtime import display_path

    for path in reversed(list_checkpoints(folder)):
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointError as why:
            show(f"Skipping {path.name}: {why}; trying the one before.")
            continue
        shown = display_path(str(folder))
        if changed := differences(checkpoint, params, settings):
            kept = move_aside(folder, "other-settings")
            show(f"The checkpoints in {shown} were saved with other settings ({'; '.join(changed)}); they are kept "
                 f"in {kept.name}, and this run starts at step 0.")
            return None
        if checkpoint["state"]["step"] >= steps:
            kept = move_aside(folder, "finished")
            show(f"The run in {shown} had already finished ({checkpoint['state']['step']} of {steps} steps): it is "
                 f"kept in {kept.name}, and this run trains again from step 0.")
            return None
        return checkpoint
    return None
