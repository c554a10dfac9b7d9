"""The training loop, checkpoints and resume, evaluation (course_utils.training), on a tiny random Llama."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from course_utils import checkpoints, data, lora, memory, plots, pretraining, training
from course_utils.architecture import empty_model
from course_utils.configs import load_config
from course_utils.lora import lora_params
from course_utils.params import LINEAR_KINDS


def memory_linear_suffixes() -> tuple[str, ...]:
    return tuple(f"{kind}.weight" for kind in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))

SIZES = {"train": 64, "validation": 8, "test": 8}


@pytest.fixture(scope="module")
def task():
    splits = data.make_dataset(seed=11, sizes=SIZES)
    texts = [data.make_prompt(ex["request"]) + data.make_answer(ex["record"]) for rows in splits.values() for ex in rows]
    tokenizer = pretraining.build_tokenizer(texts)
    return splits, tokenizer


def tiny_lora_model(tokenizer, seed: int = 0, dropout: float = 0.1, adapter_seed: int | None = None):
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         initializer_range=0.3)  # embeddings big enough that frozen, they allow confident logits
    torch.manual_seed(seed)
    base = LlamaForCausalLM(config)  # stands for a pretrained base: the same weights for the same seed
    training.set_seed(seed if adapter_seed is None else adapter_seed)
    peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=list(lora.COURSE_TARGETS),
                             task_type="CAUSAL_LM")
    return get_peft_model(base, peft_config)


def batches_for(task, batch_size=8, seed=0):
    splits, tokenizer = task
    return data.Batches(data.encode_split(tokenizer, splits["train"], max_length=64), batch_size,
                        tokenizer.pad_token_id, seed=seed)


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in training.trainable_parameters(model).items()}


def base_checksum(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if "lora_" not in name:
            h.update(name.encode())
            h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_lr_schedule_warms_up_then_decays_to_zero():
    c = training.TrainConfig(steps=20, warmup_steps=4)
    factors = [training.lr_factor(s, c) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert factors[20] == 0.0


def test_only_the_adapter_trains_and_the_loss_falls(task):
    model = tiny_lora_model(task[1], dropout=0.0)
    names = set(training.trainable_parameters(model))
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    before_base, before_adapter = base_checksum(model), adapter_state(model)
    assert all(torch.count_nonzero(v) == 0 for k, v in before_adapter.items() if "lora_B" in k)  # B = 0 at start
    result = training.train(model, batches_for(task), training.TrainConfig(steps=15, lr=1e-2, warmup_steps=2),
                            show_progress=False)
    assert base_checksum(model) == before_base  # the frozen base is bit-for-bit unchanged
    after = adapter_state(model)
    assert all(not torch.equal(after[k], before_adapter[k]) for k in after)
    assert len(result.history) == result.steps_run == 15
    first, last = result.history[0]["loss"], sum(r["loss"] for r in result.history[-3:]) / 3
    assert last < first - 0.5, (first, last)
    assert result.tokens > 0 and result.tokens_per_second > 0


def test_gradient_accumulation_matches_one_big_batch(task):
    # Every answer has the same number of tokens with the word-level tokenizer, so the mean of two micro-batch
    # means is the mean over the big batch: one step of 2 x 4 must equal one step of 1 x 8.
    results = []
    for batch_size, accum in ((8, 1), (4, 2)):
        model = tiny_lora_model(task[1], dropout=0.0)
        train_config = training.TrainConfig(steps=1, batch_size=batch_size, grad_accum=accum, lr=1e-2, warmup_steps=1)
        training.train(model, batches_for(task, batch_size), train_config, show_progress=False)
        results.append(adapter_state(model))
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=1e-6, rtol=1e-5)


def test_training_is_reproducible_with_a_seed(task):
    states = []
    for _ in range(2):
        model = tiny_lora_model(task[1], seed=3)
        training.train(model, batches_for(task), training.TrainConfig(steps=4, lr=1e-2, seed=3), show_progress=False)
        states.append(adapter_state(model))
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name])


class Disconnect(Exception):
    """Stands for a Colab runtime that goes away in the middle of training."""


def test_resume_after_an_interruption_ends_with_the_same_adapter(task, tmp_path):
    """Stop a run after step 7 (a checkpoint was written after step 6), resume, and compare with a run that was
    never interrupted. Tolerance: 1e-6 absolute (on a CPU the two runs agree bit for bit in practice)."""
    train_config = training.TrainConfig(steps=10, batch_size=8, lr=1e-2, warmup_steps=2, seed=5, checkpoint_every=3,
                                        checkpoint_dir=str(tmp_path / "interrupted"), keep_checkpoints=2)
    # the reference: no interruption (LoRA dropout 0.1 is on, so the random state must be restored too)
    reference = tiny_lora_model(task[1], seed=5)
    ref_result = training.train(reference, batches_for(task), replace(train_config, checkpoint_dir=None),
                                show_progress=False)

    model = tiny_lora_model(task[1], seed=5)

    def disconnect(step, loss):
        if step == 7:
            raise Disconnect()

    with pytest.raises(Disconnect):
        training.train(model, batches_for(task), train_config, on_step=disconnect, show_progress=False)
    saved = checkpoints.list_checkpoints(train_config.checkpoint_dir)
    assert [p.name for p in saved] == ["checkpoint-000003", "checkpoint-000006"]

    fresh = tiny_lora_model(task[1], seed=5, adapter_seed=99)  # a new session: the base again, another random adapter
    result = training.train(fresh, batches_for(task), train_config, show_progress=False)
    assert result.resumed_from.endswith("checkpoint-000006") and result.steps_run == 4
    final, expected = adapter_state(fresh), adapter_state(reference)
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], atol=1e-6, rtol=0)
    assert [round(r["loss"], 5) for r in result.history] == [round(r["loss"], 5) for r in ref_result.history]
    kept = [p.name for p in checkpoints.list_checkpoints(train_config.checkpoint_dir)]
    assert kept == ["checkpoint-000009", "checkpoint-000010"]  # the last step is always saved


def test_checkpoint_is_the_adapter_only_and_partial_writes_are_ignored(task, tmp_path):
    model = tiny_lora_model(task[1])
    train_config = training.TrainConfig(steps=2, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    training.train(model, batches_for(task), train_config, show_progress=False)
    (tmp_path / ".tmp-checkpoint-000004").mkdir()  # a write cut short by a disconnect
    (tmp_path / "checkpoint-000008").mkdir()        # a folder without its state file
    latest = checkpoints.latest_checkpoint(tmp_path)
    assert latest.name == "checkpoint-000002"
    from safetensors.torch import load_file
    saved = load_file(str(latest / "trainable.safetensors"))
    assert set(saved) == set(training.trainable_parameters(model))
    with pytest.raises(ValueError, match="no weights"):
        other = tiny_lora_model(task[1])
        other.base_model.model.model.embed_tokens.weight.requires_grad_(True)
        opt = torch.optim.AdamW(list(training.trainable_parameters(other).values()))
        checkpoints.apply_checkpoint(checkpoints.read_checkpoint(latest), training.trainable_parameters(other), opt,
                                     torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), None)


def test_live_plot_records_and_draws_headless():
    plot = plots.LivePlot(total_steps=5)
    for step, loss in enumerate([3.0, 2.0, 1.5, 1.2, 1.0]):
        plot.update(step, loss)
    assert plot.losses == [3.0, 2.0, 1.5, 1.2, 1.0]
    smooth = plot.smoothed()
    assert smooth[0] == pytest.approx(3.0) and all(a > b for a, b in zip(smooth, smooth[1:]))
    fig = plot.figure()
    assert "step 5/5" in fig.axes[0].get_title()
    assert fig.axes[0].get_yscale() == "log"  # a loss from 8 to 0.05 stays readable all the way down
    picture = plots.sharp_png(fig)
    assert int.from_bytes(picture.data[16:20], "big") // 2 == picture.width  # drawn at twice its shown size


def test_smoothing_does_not_lag_at_the_start():
    """A plain moving average starting from 0 (or from the first loss) lags; the bias-corrected one doesn't."""
    assert plots.bias_corrected_average([2.0] * 6, 0.9) == pytest.approx([2.0] * 6)
    falling = [8.0, 4.0, 2.0, 1.0]
    plain, avg = [], 0.0
    for x in falling:
        avg = 0.9 * avg + 0.1 * x
        plain.append(avg)
    corrected = plots.bias_corrected_average(falling, 0.9)
    assert corrected[0] == pytest.approx(8.0) and plain[0] == pytest.approx(0.8)
    assert all(min(falling[: i + 1]) <= c <= max(falling[: i + 1]) for i, c in enumerate(corrected))


def test_presets_and_the_t4_memory_estimate():
    llama8b = load_config("llama-3.1-8b")
    t4 = training.PRESETS["t4"]
    est = memory.preset_memory(llama8b, t4)
    assert est.total < 14.7e9 and est.fits("T4"), est.verdict()
    plain = memory.training_memory(llama8b, "qlora", rank=32, targets=t4.lora_targets, batch_size=t4.batch_size,
                                   seq_len=t4.max_length, gradient_checkpointing=True, optimizer="adamw_8bit",
                                   compute_dtype="fp16")
    # prepare_model_for_kbit_training upcasts what stays unquantized (embeddings, lm_head, norms) fp16 -> fp32
    model = empty_model(llama8b)
    unquantized = sum(p.numel() for n, p in model.named_parameters() if not n.endswith(memory_linear_suffixes()))
    assert est.weights - plain.weights == 2 * unquantized
    # under fp16 autocast, F.linear keeps a 16-bit copy of the fp32 lm_head for the backward pass (1.05 GB)
    assert est.copy_parts["lm_head (16-bit copy)"] == 2 * llama8b.vocab_size * llama8b.hidden_size
    assert 10.5e9 < est.total < 10.8e9
    assert tuple(t4.lora_targets) == LINEAR_KINDS  # all seven projections (notebook 07, section 10)
    assert est.trainable_params == lora_params(llama8b, 32, LINEAR_KINDS) == 83_886_080  # checked against PEFT
    qkvo = memory.preset_memory(llama8b, t4, targets=lora.COURSE_TARGETS)
    assert qkvo.trainable_params == 27_262_976 and 0.5e9 < est.total - qkvo.total < 0.7e9
    no_ckpt = memory.preset_memory(llama8b, replace(t4, gradient_checkpointing=False, batch_size=16))
    assert no_ckpt.activations > 4 * est.activations and not no_ckpt.fits("T4")

    class P:  # a runtime.Profile stand-in
        def __init__(self, name, dtype):
            self.name, self.compute_dtype = name, dtype
    assert training.preset_for(P("gpu", torch.float16)).optimizer == "paged_adamw_8bit"
    assert training.preset_for(P("gpu", torch.bfloat16)).mixed_precision == "bf16"
    assert training.preset_for(P("offline", torch.float32)) == training.PRESETS["offline"]


def test_errors_are_clear(task):
    model = tiny_lora_model(task[1])
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        training.train(model, batches_for(task), training.TrainConfig(steps=1), show_progress=False)
    with pytest.raises(ValueError, match="unknown optimizer"):
        training.make_optimizer([torch.nn.Parameter(torch.zeros(1))], training.TrainConfig(optimizer="sgd"))


def test_run_folder_prefers_the_env_then_drive(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CHECKPOINT_ROOT", str(tmp_path))
    assert checkpoints.run_folder("06-offline") == tmp_path / "06-offline"
    monkeypatch.delenv("COURSE_CHECKPOINT_ROOT")
    monkeypatch.setattr(checkpoints, "DRIVE", tmp_path / "MyDrive")
    assert checkpoints.run_folder("x") == checkpoints.Path("runs") / "x"  # no Drive mounted
    (tmp_path / "MyDrive").mkdir()
    assert checkpoints.run_folder("x") == tmp_path / "MyDrive" / "lora-qlora-course" / "x"


def test_a_4bit_model_on_the_cpu_gives_the_same_outputs_after_a_save(tmp_path):
    """bitsandbytes repacks 4-bit weights for a CPU kernel at the first inference forward (on CPUs with
    AVX512-BF16) and only partly undoes it when the state dict is read; runtime.load_model keeps the standard
    layout, so saving an adapter or merging never changes what the model computes."""
    from course_utils import runtime
    profile = runtime.choose_profile("offline")
    model, tokenizer = runtime.load_model(profile, four_bit=True)
    ids = torch.tensor([tokenizer(data.make_prompt("Lunch with Maria in Paris on Monday at noon."))["input_ids"]])
    with torch.no_grad():
        first = model(input_ids=ids).logits
        model.state_dict()  # what save_pretrained and merging read
        second = model(input_ids=ids).logits
    assert torch.equal(first, second)
    assert not any(getattr(getattr(m, "weight", None), "quant_state", None) is not None
                   and getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in model.modules())


def test_exercise_checkers_of_notebook_06(task):
    from course_utils.exercises import nb06
    splits, tokenizer = task
    # which kinds require grad: read off a real PEFT model (its base is a stand-in for the course's model)
    model = tiny_lora_model(tokenizer)
    trains = {kind for kind in nb06.PARAMETER_KINDS
              if any(p.requires_grad for n, p in model.named_parameters() if f"{kind}." in n or n.endswith(kind + ".weight"))}
    assert trains == {"q_proj.lora_A", "q_proj.lora_B"}
    assert nb06.check_trainable(trains) and not nb06.check_trainable(trains | {"lm_head"}) and not nb06.check_trainable(None)
    assert not nb06.check_trainable({"not_a_kind"})

    # the label mask: the same labels as course_utils.data.encode_example
    def labels(prompt_ids, answer_ids, eos_id):
        return [data.IGNORE_INDEX] * len(prompt_ids) + list(answer_ids) + [eos_id]
    ex = splits["train"][0]
    prompt = tokenizer(data.make_prompt(ex["request"]))["input_ids"]
    answer = tokenizer(data.make_answer(ex["record"]), add_special_tokens=False)["input_ids"]
    assert labels(prompt, answer, tokenizer.eos_token_id) == data.encode_example(tokenizer, ex)["labels"]
    assert nb06.check_label_mask(labels) and not nb06.check_label_mask(None)
    assert not nb06.check_label_mask(lambda p, a, e: list(p) + list(a) + [e])  # the prompt not masked

    t4 = training.PRESETS["t4"]
    assert nb06.check_effective_batch(t4.batch_size * t4.grad_accum) and not nb06.check_effective_batch(t4.batch_size)
    n = lora_params(load_config("llama-3.1-8b"), 32, lora.COURSE_TARGETS)  # checked against PEFT in test_lora.py
    assert nb06.check_lora_params_8b(n) and not nb06.check_lora_params_8b(n // 2) and not nb06.check_lora_params_8b(None)


def test_resume_on_the_qlora_path_of_notebook_06(tmp_path):
    """The notebook's own path: the course's model in NF4 (bitsandbytes on the CPU), prepare_model_for_kbit_training,
    LoRA with dropout; interrupted after step 4 (checkpoint at 4 of every 2), resumed in a fresh model."""
    from peft import prepare_model_for_kbit_training
    from course_utils import runtime
    profile = runtime.choose_profile("offline")
    train = data.load_split("train", limit=64)

    def qlora_model():
        model, tokenizer = runtime.load_model(profile, four_bit=True)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return training.add_peft_lora(model, r=8, alpha=16, seed=0), data.prepare_tokenizer(tokenizer)

    train_config = training.TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup_steps=1, seed=1, checkpoint_every=2,
                                        checkpoint_dir=str(tmp_path / "run"))
    reference, tokenizer = qlora_model()
    batches = data.Batches(data.encode_split(tokenizer, train, 64), 8, tokenizer.pad_token_id, seed=1)
    training.train(reference, batches, replace(train_config, checkpoint_dir=None), show_progress=False)

    model, _ = qlora_model()

    def disconnect(step, loss):
        if step == 4:
            raise Disconnect()

    with pytest.raises(Disconnect):
        training.train(model, batches, train_config, on_step=disconnect, show_progress=False)
    fresh, _ = qlora_model()
    result = training.train(fresh, batches, train_config, show_progress=False)
    assert result.resumed_from.endswith("checkpoint-000004") and result.steps_run == 2
    final, expected = adapter_state(fresh), adapter_state(reference)
    assert final.keys() == expected.keys() and len(final) == 2 * 4 * load_config("course-llama").num_hidden_layers
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], atol=1e-6, rtol=0)


def test_a_reloaded_adapter_matches_the_trained_model_only_on_a_base_prepared_the_same_way(tmp_path):
    """Notebook 06's reload check on a 16-bit-compute base (as on a GPU; bf16 here, on the CPU): the trained model
    was prepared (norms, embeddings, lm_head in fp32), so the fresh base must be prepared too, or the logits differ."""
    from peft import PeftModel, prepare_model_for_kbit_training
    from course_utils import runtime
    offline = runtime.choose_profile("offline")
    profile = runtime.Profile("offline", offline.model_id, "cpu", True, torch.bfloat16, "bf16 compute")
    model, tokenizer = runtime.load_model(profile, four_bit=True)
    tokenizer = data.prepare_tokenizer(tokenizer)
    assert model.model.norm.weight.dtype == torch.bfloat16
    model = training.add_peft_lora(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), r=8,
                                   alpha=16)
    batches = data.Batches(data.encode_split(tokenizer, data.load_split("train", limit=32), 64), 8,
                           tokenizer.pad_token_id)
    training.train(model, batches, training.TrainConfig(steps=3, batch_size=8, lr=3e-3, warmup_steps=1),
                   show_progress=False)
    model.save_pretrained(tmp_path / "adapter")
    probe = {k: v for k, v in batches.batch(0).items() if k != "labels"}
    with torch.no_grad():
        trained = model.eval()(**probe).logits.float()

    def reloaded_logits(prepare: bool) -> torch.Tensor:
        fresh, _ = runtime.load_model(profile, four_bit=True)
        if prepare:
            fresh = prepare_model_for_kbit_training(fresh, use_gradient_checkpointing=False)
        with torch.no_grad():
            return PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()(**probe).logits.float()

    assert (reloaded_logits(prepare=True) - trained).abs().max() == 0
    assert (reloaded_logits(prepare=False) - trained).abs().max() > 1e-3  # what the notebook did before


def test_checkpointing_is_never_the_reentrant_kind(recwarn):
    """torch warns (and will fail) when use_reentrant is left unset: training.enable_gradient_checkpointing sets
    False, and every call that lets PEFT turn checkpointing on passes it too."""
    import re
    import warnings
    from peft import prepare_model_for_kbit_training
    from course_utils import runtime
    model, tokenizer = runtime.load_model(runtime.choose_profile("offline"), four_bit=True)
    model = training.add_peft_lora(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), r=4,
                                   alpha=8)
    training.enable_gradient_checkpointing(model)
    batches = data.Batches(data.encode_split(data.prepare_tokenizer(tokenizer), data.load_split("train", limit=8), 64),
                           8, tokenizer.pad_token_id)
    warnings.simplefilter("always")
    model.train()
    model(**batches.batch(0)).loss.backward()
    assert not [w for w in recwarn if "use_reentrant" in str(w.message)]

    root = runtime.repo_root()
    calls = []
    for path in [*root.glob("notebooks/*.ipynb"), *root.glob("benchmarks/*.py"), *root.glob("course_utils/*.py")]:
        text = path.read_text().replace('\\"', '"').replace("\\n", "\n")
        for call in re.findall(r"prepare_model_for_kbit_training\((.*?)\)\s*(?:#|\n)", text, re.S):
            if "use_gradient_checkpointing=False" not in call:
                calls.append((path.name, call))
    assert calls, "notebook 06 lets PEFT turn checkpointing on (the preset decides)"
    for name, call in calls:
        assert '"use_reentrant": False' in call, f"{name}: {call}"


def test_train_runs_its_loop_through_train_step(task, monkeypatch):
    """Notebook 06 shows `training.train_step` as the loop's body: `train` must call it, once per optimizer step,
    with the step's micro-batches (grad_accum of them), and use what it returns."""
    calls = []
    real_step = training.train_step

    def counting(model, micro_batches, *args, **kwargs):
        calls.append(len(micro_batches))
        return real_step(model, micro_batches, *args, **kwargs)

    monkeypatch.setattr(training, "train_step", counting)
    model = tiny_lora_model(task[1], dropout=0.0)
    result = training.train(model, batches_for(task, 4), training.TrainConfig(steps=3, batch_size=4, grad_accum=2),
                            show_progress=False)
    assert calls == [2, 2, 2] and result.steps_run == 3

    def broken(*args, **kwargs):
        raise RuntimeError("the loop ran train_step")

    monkeypatch.setattr(training, "train_step", broken)
    with pytest.raises(RuntimeError, match="the loop ran train_step"):
        training.train(tiny_lora_model(task[1]), batches_for(task), training.TrainConfig(steps=1), show_progress=False)


def test_one_train_step_changes_the_adapter_only_and_lowers_the_loss(task):
    model = tiny_lora_model(task[1], dropout=0.0)
    config = training.TrainConfig(steps=5, lr=1e-2, warmup_steps=1)
    params = list(training.trainable_parameters(model).values())
    optimizer = training.make_optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: training.lr_factor(s, config))
    batch = batches_for(task).batch(0)
    with torch.no_grad():
        loss_before = model(**batch).loss.item()
    base_before, adapter_before = base_checksum(model), adapter_state(model)
    model.train()
    done = training.train_step(model, [batch], optimizer, scheduler, config)
    assert done["loss"] == pytest.approx(loss_before, rel=1e-5)  # the forward pass before the step (no dropout)
    assert done["lr"] == pytest.approx(1e-2) and done["grad_norm"] > 0
    assert done["tokens"] == int(batch["attention_mask"].sum())
    assert base_checksum(model) == base_before  # the frozen base: bit for bit the same
    after = adapter_state(model)
    assert any(not torch.equal(after[k], adapter_before[k]) for k in after if "lora_B" in k)  # B moved off 0
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True) ran
    assert scheduler.last_epoch == 1  # the scheduler stepped once
    with torch.no_grad():
        assert model(**batch).loss.item() < loss_before


def test_the_graded_window_keeps_the_loss_and_the_gradients(task):
    """train_step computes the logits only from the position before the first graded label on: the same loss and
    gradients as the whole sequence (a window one position shorter drops the first graded token: caught)."""
    model = tiny_lora_model(task[1], dropout=0.0)
    batch = batches_for(task).batch(0)
    window = training.graded_window(model, batch)
    first = int((batch["labels"] != data.IGNORE_INDEX).any(dim=0).nonzero()[0])
    assert window["logits_to_keep"] == batch["labels"].shape[1] - first + 1 < batch["labels"].shape[1]
    assert torch.equal(window["labels"], batch["labels"][:, first - 1:])

    def loss_and_grads(inputs):
        out = model(**inputs)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in training.trainable_parameters(model).items()}
        model.zero_grad(set_to_none=True)
        return out, grads

    full, full_grads = loss_and_grads(batch)
    cut, cut_grads = loss_and_grads(window)
    assert cut.logits.shape[1] == window["logits_to_keep"] < full.logits.shape[1]
    torch.testing.assert_close(cut.loss, full.loss)
    for name, grad in full_grads.items():
        torch.testing.assert_close(cut_grads[name], grad)
    short = {**window, "labels": window["labels"][:, 1:], "logits_to_keep": window["logits_to_keep"] - 1}
    assert abs(model(**short).loss.item() - full.loss.item()) > 1e-4  # the first graded token lost

    class NoWindow(torch.nn.Module):  # a model whose forward can't cut its logits
        def forward(self, input_ids, attention_mask=None, labels=None):
            return None

    everything = {**batch, "labels": batch["input_ids"].clone()}  # pretraining: every token graded
    assert training.graded_window(model, everything) is everything
    assert training.graded_window(NoWindow(), batch) is batch
    assert training.graded_window(SimpleNamespace(module=model), batch)["logits_to_keep"] > 0  # DDP, FSDP
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    assert training.graded_window(model, no_labels) is no_labels


@pytest.mark.parametrize("value, expected", [(80, 80), (80.0, 80), ("80", 80), (1, 1), (3.5, None), (-5, None),
                                             (0, None), ("eighty", None), (None, None), (True, None)])
def test_the_steps_knob_takes_whole_numbers_and_explains_the_rest(value, expected, capsys):
    assert training.steps_knob(value, 80) == expected
    out = capsys.readouterr().out
    assert ("Nothing was trained" in out and "a whole number of at least 1" in out) == (expected is None)
