"""Checkpoints that never lose work or surprise a class (course_utils.checkpoints, through training.train)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from course_utils import checkpoints, training
from tests.test_training import Disconnect, batches_for, task, tiny_lora_model  # noqa: F401  (task is a fixture)


def run(task, train_config, seed=0, r=None, **kwargs):
    model = tiny_lora_model(task[1], seed=seed) if r is None else rank_model(task, r)
    return model, training.train(model, batches_for(task), train_config, show_progress=False, **kwargs)


def rank_model(task, r):
    """The same tiny base as tiny_lora_model, with an adapter of rank r on q and v only."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    config = tiny_lora_model(task[1]).get_base_model().config
    torch.manual_seed(0)
    return get_peft_model(LlamaForCausalLM(config), LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"],
                                                               task_type="CAUSAL_LM"))


def config(tmp_path, **kw):
    return training.TrainConfig(steps=4, batch_size=8, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                                checkpoint_dir=str(tmp_path / "ckpt"), **kw)


def test_a_finished_run_is_kept_and_the_next_run_trains_live(task, tmp_path, capsys):
    train_config = config(tmp_path)
    _, first = run(task, train_config)
    _, second = run(task, train_config)  # the live run after a rehearsal
    assert first.steps_run == second.steps_run == 4 and second.resumed_from is None
    out = capsys.readouterr().out
    assert "had already finished (4 of 4 steps)" in out and "ckpt-finished-1" in out
    assert checkpoints.latest_checkpoint(tmp_path / "ckpt-finished-1").name == "checkpoint-000004"
    _, shorter = run(task, replace(train_config, steps=2))  # fewer steps than were done: a new live run too
    assert shorter.steps_run == 2 and (tmp_path / "ckpt-finished-2").is_dir()


def test_steps_not_a_multiple_of_checkpoint_every_still_finish(task, tmp_path, capsys):
    """Steps not a multiple of checkpoint_every (as a live STEPS may be): the last step
    is saved too, so a rehearsal is seen as finished and the live run trains all its steps, instead of 'resuming'
    for the last two."""
    train_config = config(tmp_path, keep_checkpoints=2)
    train_config = replace(train_config, steps=5, checkpoint_every=2)
    run(task, train_config)
    assert checkpoints.latest_checkpoint(train_config.checkpoint_dir).name == "checkpoint-000005"
    _, live = run(task, train_config)
    assert live.steps_run == 5 and live.resumed_from is None
    assert "had already finished (5 of 5 steps)" in capsys.readouterr().out


def test_another_alpha_is_other_settings(task, tmp_path, capsys):
    """Same shapes, another LoRA alpha: resuming would silently mix two scalings, so the run starts over."""
    train_config = config(tmp_path)
    with pytest.raises(Disconnect):
        run(task, train_config, on_step=lambda step, loss: step == 2 and _raise())
    model = tiny_lora_model(task[1])
    model.peft_config["default"].lora_alpha *= 2
    result = training.train(model, batches_for(task), train_config, show_progress=False)
    assert result.resumed_from is None and result.steps_run == 4
    assert "lora_alpha" in capsys.readouterr().out and (tmp_path / "ckpt-other-settings-1").is_dir()


@pytest.mark.parametrize("damage", ["truncated weights", "truncated state", "deleted weights"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(task, tmp_path, capsys, damage):
    train_config = config(tmp_path, keep_checkpoints=3)
    with pytest.raises(Disconnect):
        run(task, replace(train_config, steps=8), on_step=lambda step, loss: step == 3 and _raise())
    newest = checkpoints.latest_checkpoint(train_config.checkpoint_dir)
    assert newest.name == "checkpoint-000004"
    name = "training_state.pt" if damage == "truncated state" else "trainable.safetensors"
    if damage.startswith("truncated"):
        data = (newest / name).read_bytes()
        (newest / name).write_bytes(data[: len(data) // 2])
    else:
        (newest / name).unlink()
    model, resumed = run(task, replace(train_config, steps=8))
    out = capsys.readouterr().out
    assert "Skipping checkpoint-000004" in out and name in out
    assert resumed.resumed_from.endswith("checkpoint-000002") and resumed.steps_run == 6
    _, straight = run(task, replace(train_config, steps=8, checkpoint_dir=None))
    reference = straight.history[-1]["loss"]
    assert resumed.history[-1]["loss"] == pytest.approx(reference, abs=1e-5)


def _raise():
    raise Disconnect()


def test_resuming_with_other_settings_says_what_differs_and_starts_over(task, tmp_path, capsys):
    train_config = config(tmp_path)
    with pytest.raises(Disconnect):
        run(task, train_config, on_step=lambda step, loss: step == 1 and _raise())
    _, other_lr = run(task, replace(train_config, lr=2e-3))
    out = capsys.readouterr().out
    assert "other settings (lr 0.001 saved, 0.002 now)" in out and other_lr.steps_run == 4
    assert checkpoints.latest_checkpoint(tmp_path / "ckpt-other-settings-1").name == "checkpoint-000002"
    with pytest.raises(Disconnect):
        run(task, train_config, on_step=lambda step, loss: step == 1 and _raise())
    _, other_rank = run(task, train_config, r=8)  # another rank and targets: no size-mismatch traceback
    assert "other settings" in capsys.readouterr().out and other_rank.steps_run == 4


def test_a_folder_that_cant_be_written_is_found_before_step_0(task, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should go (as an unmounted Drive leaves)")
    _, result = run(task, replace(config(tmp_path), checkpoint_dir=str(blocker / "ckpt")))
    assert result.steps_run == 4 and "Training without checkpoints" in capsys.readouterr().out


def test_a_failed_save_is_said_once_cleaned_up_and_training_goes_on(task, tmp_path, capsys, monkeypatch):
    def full_disk(obj, path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    _, result = run(task, replace(config(tmp_path), steps=6))
    out = capsys.readouterr().out
    assert result.steps_run == 6 and out.count("Could not save a checkpoint") == 1 and "No space left" in out
    assert not list((tmp_path / "ckpt").iterdir()), "the partial checkpoint folder is removed"


def test_a_second_run_from_step_0_starts_from_a_fresh_adapter(task, capsys):
    """The training cell run again after a finished run without checkpoints (or after a stop before the first
    one): 'from step 0' trains the adapter get_peft_model made, not the one already trained (issue 29, item 3)."""
    train_config = training.TrainConfig(steps=3, batch_size=8, lr=1e-2, warmup_steps=1)
    model, first = run(task, train_config)
    again = training.train(model, batches_for(task), train_config, show_progress=False)
    assert [r["loss"] for r in again.history] == [r["loss"] for r in first.history]
    assert "starts again from its initial values" in capsys.readouterr().out


def test_gradients_left_by_a_stop_do_not_leak_into_the_resumed_run(task, tmp_path):
    """A stop after a backward pass leaves .grad on the adapter; the resumed run must not add it to its first
    step (issue 29, item 4)."""
    train_config = config(tmp_path)
    reference, _ = run(task, replace(train_config, checkpoint_dir=None))

    def stop(step, loss):
        if step + 1 == 2:  # after the checkpoint of step 2
            raise Disconnect()

    model = tiny_lora_model(task[1])
    with pytest.raises(Disconnect):
        training.train(model, batches_for(task), train_config, on_step=stop, show_progress=False)
    for p in training.trainable_parameters(model).values():
        p.grad = torch.full_like(p, 3.0)  # what a stop between backward and zero_grad leaves
    training.train(model, batches_for(task), train_config, show_progress=False)
    for name, p in training.trainable_parameters(reference).items():
        torch.testing.assert_close(training.trainable_parameters(model)[name], p, atol=1e-6, rtol=0)


def test_start_over_keeps_the_checkpoints_it_replaces(task, tmp_path):
    """START_OVER moves an interrupted run's checkpoints aside, never deletes them (issue 29, item 2)."""
    train_config = config(tmp_path)
    run(task, replace(train_config, steps=2))
    sentence = checkpoints.start_over(tmp_path / "ckpt")
    kept = tmp_path / "ckpt-start-over-1"
    assert [p.name for p in checkpoints.list_checkpoints(kept)] == ["checkpoint-000002"]
    assert "kept in ckpt-start-over-1" in sentence and not (tmp_path / "ckpt").exists()
    assert "no checkpoints" in checkpoints.start_over(tmp_path / "ckpt")


def test_saved_adapter_problem_names_the_save_cell(task, tmp_path):
    model = tiny_lora_model(task[1])
    trainable = training.trainable_parameters(model)
    assert "run the save cell" in checkpoints.saved_adapter_problem(trainable, tmp_path / "adapter")
    model.save_pretrained(tmp_path / "adapter")
    assert checkpoints.saved_adapter_problem(trainable, tmp_path / "adapter") is None
    with torch.no_grad():
        next(iter(trainable.values())).add_(1.0)  # trained after the save
    assert "not the one in memory" in checkpoints.saved_adapter_problem(trainable, tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"cut short")
    assert "can't be read" in checkpoints.saved_adapter_problem(trainable, tmp_path / "adapter")


def test_the_stop_button_keeps_what_was_trained_and_says_how_to_resume(task, tmp_path, capsys):
    """KeyboardInterrupt (Jupyter's stop button) mid-run: no traceback, no gradients left, a sentence; the next run
    resumes from the newest checkpoint and ends with the uninterrupted run's adapter."""
    train_config = config(tmp_path)
    reference, _ = run(task, replace(train_config, checkpoint_dir=None))

    def stop(step, loss):
        if step + 1 == 3:
            raise KeyboardInterrupt

    model = tiny_lora_model(task[1])
    result = training.train(model, batches_for(task), train_config, on_step=stop, show_progress=False)
    assert result.stopped and result.steps_run == 3
    assert all(p.grad is None for p in training.trainable_parameters(model).values())
    assert "Stopped after step 3 of 4. The newest checkpoint is checkpoint-000002" in capsys.readouterr().out
    resumed = training.train(model, batches_for(task), train_config, show_progress=False)
    assert resumed.resumed_from.endswith("checkpoint-000002") and resumed.steps_run == 2
    for name, p in training.trainable_parameters(reference).items():
        torch.testing.assert_close(training.trainable_parameters(model)[name], p, atol=1e-6, rtol=0)


def test_a_run_folder_in_use_by_another_kernel_is_left_alone(task, tmp_path, capsys):
    """Two tabs (or a Drive shared by two kernels) on one run folder: the second finds the first's lock, says so,
    and trains without checkpoints instead of continuing or spoiling the other's run (issue 29, item 8)."""
    import json
    import os
    import socket
    train_config = config(tmp_path)
    run(task, replace(train_config, steps=2))  # the other kernel's checkpoint
    lock = tmp_path / "ckpt" / checkpoints.LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))  # a live process
    _, result = run(task, train_config)
    assert "Another kernel is training into" in capsys.readouterr().out
    assert result.resumed_from is None and result.steps_run == 4
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path / "ckpt")] == ["checkpoint-000002"], "untouched"
    assert json.loads(lock.read_text())["pid"] == os.getppid(), "the other kernel's lock stays"

    lock.write_text(json.dumps({"pid": 2 ** 22 + 1, "host": socket.gethostname()}))  # a kernel that died
    _, result = run(task, train_config)
    assert result.resumed_from.endswith("checkpoint-000002") and not lock.exists(), "taken over, then released"
