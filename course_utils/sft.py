"""TRL's SFTTrainer beside the course's loop (notebook 09): the examples the loop reads, in its order, as the
prompt-completion conversations SFTTrainer takes, and the losses each one logged."""

from __future__ import annotations

import datasets

from course_utils import templates
from course_utils.data import Batches


datasets.disable_progress_bars()  # a bar per preparation pass of a 1,280-row dataset tells a student nothing


def course_order(batches: Batches, steps: int) -> list[int]:
    """The example indices the course loop reads in `steps` steps of `batches`, in its order."""
    order = []
    for step in range(steps):
        epoch, i = divmod(step, batches.per_epoch)
        order += batches.order(epoch)[i * batches.batch_size:(i + 1) * batches.batch_size]
    return order


def prompt_completion(examples: list[dict], order: list[int]) -> list[dict]:
    """Rows of a conversational prompt-completion dataset: the system and user turns are the prompt, the
    assistant's record the completion (TRL grades the completion only)."""
    rows = []
    for i in order:
        messages = templates.conversation(examples[i])
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return rows


def logged_losses(trainer) -> list[float]:
    """The training loss SFTTrainer logged at each step (logging_steps=1), in order."""
    return [row["loss"] for row in trainer.state.log_history if "loss" in row and "train_loss" not in row]


def quiet(trainer) -> None:
    """No line per logged step from `trainer` (with `disable_tqdm=True` transformers prints each log); the
    notebook prints what it needs after training."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
