"""The GPU path on CUDA: the course's small model (assets/course-llama) in NF4, trained with the T4 settings (fp16
autocast and loss scaling, paged 8-bit AdamW, gradient checkpointing) and the Ampere ones (bf16; skipped below
compute capability 8.0). The same course_utils functions as the CPU tests in tests/test_training.py: a step by
hand, our loop with checkpoints, a kill and resume that ends where an uninterrupted run does, and a few steps of
transformers' Trainer (benchmarks/train_gpu.py's runner). Every test is marked gpu: skipped without CUDA
(tests/conftest.py); `bash scripts/gpu_check.sh OUT_DIR` runs them on a GPU machine.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from course_utils import checkpoints, data, evaluation, runtime, training
from tests.test_training import Disconnect, adapter_state

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
DTYPES = {"t4": torch.float16, "ampere": torch.bfloat16}  # each preset's compute dtype


@pytest.fixture(params=["t4", "ampere"], ids=["t4-fp16", "ampere-bf16"])
def preset_name(request) -> str:
    """The GPU presets; bf16 only where the GPU computes it natively (compute capability >= 8.0)."""
    if request.param == "ampere" and torch.cuda.get_device_capability(0) < (8, 0):
        pytest.skip(f"{torch.cuda.get_device_name(0)} has no native bf16 (compute capability < 8.0)")
    return request.param


def small(preset_name: str, **changes) -> training.TrainConfig:
    """The preset's optimizer, mixed precision and checkpointing, with a few short steps of small batches."""
    base = dict(steps=6, batch_size=4, grad_accum=2, lr=3e-3, warmup_steps=1, max_length=64, seed=1)
    return replace(training.PRESETS[preset_name], **{**base, **changes})


def gpu_profile(preset_name: str) -> runtime.Profile:
    """The gpu profile with the course's small model standing in for the 8B, in the preset's compute dtype."""
    folder = str(runtime.assets_dir() / runtime.OFFLINE_MODEL)
    return runtime.Profile("gpu", folder, DEVICE, True, DTYPES[preset_name], "the GPU tests")


def qlora_model(preset_name: str, seed: int = 0):
    """Notebook 06's model: the base in NF4 on the GPU, prepare_model_for_kbit_training, the course's LoRA (r=32,
    dropout 0.1; its matrices are big enough for 8-bit optimizer states, 4096 values and more)."""
    from peft import prepare_model_for_kbit_training
    profile = gpu_profile(preset_name)
    model, tokenizer = runtime.load_model(profile, four_bit=True)
    assert profile.name == "gpu" and getattr(model, "is_loaded_in_4bit", False), profile  # no fallback taken
    assert training.model_device(model).type == DEVICE
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # train() enables it
    return training.add_peft_lora(model, seed=seed), data.prepare_tokenizer(tokenizer)


def batches_for(tokenizer, train_config: training.TrainConfig) -> data.Batches:
    features = data.encode_split(tokenizer, data.load_split("train", limit=64), train_config.max_length)
    return data.Batches(features, train_config.batch_size, tokenizer.pad_token_id, seed=train_config.seed)


def tensors_in(tree) -> list[torch.Tensor]:
    """The tensors in nested dicts and lists (bitsandbytes nests its quantized optimizer states one level down)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        tree = list(tree.values())
    return [t for item in tree for t in tensors_in(item)] if isinstance(tree, (list, tuple)) else []


def test_bitsandbytes_quantizes_to_nf4_on_this_gpu():
    from course_utils.quantization import four_bit_problem
    assert four_bit_problem("cuda") is None


def test_the_gpu_profile_takes_the_local_stand_in(monkeypatch):
    """COURSE_GPU_MODEL=<folder>: the gpu profile with no Hub, in the GPU's own compute dtype and preset."""
    folder = str(runtime.assets_dir() / runtime.OFFLINE_MODEL)
    monkeypatch.setenv(runtime.GPU_MODEL_ENV, folder)
    env = runtime.detect(check_hub=False)
    if env.gpu.memory_gb < runtime.MIN_GPU_GB:
        pytest.skip(f"{env.gpu.name} has less memory than the gpu profile asks for")
    profile = runtime.choose_profile("gpu", env)
    assert (profile.name, profile.model_id, profile.device, profile.load_in_4bit) == ("gpu", folder, "cuda", True)
    assert profile.compute_dtype == (torch.bfloat16 if env.gpu.bf16 else torch.float16)
    assert training.preset_for(profile) == training.PRESETS["ampere" if env.gpu.bf16 else "t4"]


def test_a_step_by_hand_gives_gradients_to_the_adapter_only(preset_name):
    import bitsandbytes as bnb
    model, tokenizer = qlora_model(preset_name)
    train_config = small(preset_name)
    optimizer = training.make_optimizer(list(training.trainable_parameters(model).values()), train_config)
    assert type(optimizer).__name__ == "PagedAdamW8bit"  # the presets' optimizer, from bitsandbytes
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.weight.device.type == DEVICE and m.compute_dtype == DTYPES[preset_name]
                             for m in quantized)
    before = evaluation.weights_checksum(model)
    training.enable_gradient_checkpointing(model)
    device = training.model_device(model)
    batch = {k: v.to(device) for k, v in batches_for(tokenizer, train_config).batch(0).items()}
    model.train()
    assert training.autocast_dtype(model, train_config) == DTYPES[preset_name]
    with training._autocast(device, training.autocast_dtype(model, train_config)):  # as train() does
        loss = model(**batch).loss  # forward
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()  # backward
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(training.trainable_parameters(model))
    assert with_grad and all("lora_" in n for n in with_grad)
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert evaluation.weights_checksum(model) == before  # a step computes; only the optimizer changes weights


def test_training_with_checkpoints_lowers_the_loss_and_keeps_the_base(preset_name, tmp_path):
    model, tokenizer = qlora_model(preset_name)
    before_base, before_adapter = evaluation.weights_checksum(model), adapter_state(model)
    train_config = small(preset_name, steps=12, checkpoint_every=4, checkpoint_dir=str(tmp_path / "run"))
    torch.cuda.reset_peak_memory_stats()
    result = training.train(model, batches_for(tokenizer, train_config), train_config, show_progress=False)
    assert result.steps_run == 12 and all(math.isfinite(r["loss"]) for r in result.history)
    first, last = result.history[0]["loss"], sum(r["loss"] for r in result.history[-3:]) / 3
    assert last < first, (first, last)
    assert evaluation.weights_checksum(model) == before_base  # the frozen NF4 base is bit-for-bit unchanged
    after = adapter_state(model)
    assert all(not torch.equal(after[k], before_adapter[k]) for k in after if "lora_B" in k)
    saved = checkpoints.list_checkpoints(train_config.checkpoint_dir)
    assert [p.name for p in saved] == ["checkpoint-000008", "checkpoint-000012"]
    from safetensors.torch import load_file
    assert set(load_file(str(saved[-1] / "trainable.safetensors"))) == set(training.trainable_parameters(model))
    state = torch.load(saved[-1] / "training_state.pt", map_location="cpu", weights_only=False)
    assert any(t.dtype == torch.uint8 for t in tensors_in(state["optimizer"]["state"]))  # the 8-bit states
    assert (state["scaler"] is not None) == (preset_name == "t4")  # fp16 scales the loss; bf16 needs no scaler
    assert torch.cuda.max_memory_allocated() < 1e9  # a small model stays small on the GPU


def test_resume_after_a_kill_ends_with_the_same_adapter(preset_name, tmp_path):
    """As tests/test_training.py's QLoRA test, on the GPU: stop after step 4 (a checkpoint every 2), resume in a
    fresh model with another random adapter, compare with a run never interrupted. The checkpoint restores the
    8-bit optimizer's state, the fp16 loss scaler and the CUDA random state (LoRA dropout is on). Tolerance:
    1e-4 absolute, where the CPU test has 1e-6: CUDA's attention backward may add in another order from run to
    run, and a gradient that moves by an ulp can move an 8-bit optimizer state by one level (about lr / 100 on
    the weight). A resume that lost the optimizer's state or the random state misses by about lr (3e-3)."""
    train_config = small(preset_name, checkpoint_every=2, checkpoint_dir=str(tmp_path / "run"))
    reference, tokenizer = qlora_model(preset_name)
    batches = batches_for(tokenizer, train_config)
    ref_result = training.train(reference, batches, replace(train_config, checkpoint_dir=None), show_progress=False)
    expected = adapter_state(reference)
    del reference

    model, _ = qlora_model(preset_name)

    def disconnect(step, loss):
        if step == 4:
            raise Disconnect()

    with pytest.raises(Disconnect):
        training.train(model, batches, train_config, on_step=disconnect, show_progress=False)
    del model
    fresh, _ = qlora_model(preset_name, seed=99)  # a new session: the base again, another random adapter
    result = training.train(fresh, batches, train_config, show_progress=False)
    assert result.resumed_from.endswith("checkpoint-000004") and result.steps_run == 2
    final = adapter_state(fresh)
    assert final.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], atol=1e-4, rtol=0)
    losses = [r["loss"] for r in result.history]
    assert losses == pytest.approx([r["loss"] for r in ref_result.history], abs=1e-3)


def test_a_few_trainer_steps_on_the_same_model_and_data(preset_name, tmp_path):
    """transformers' Trainer with the preset's fp16 or bf16, optimizer and checkpointing, as benchmarks/train_gpu.py
    runs it (its Probe says which optimizer stepped and which autocast dtype reached lm_head)."""
    from benchmarks.train_gpu import Probe, run_trainer
    model, tokenizer = qlora_model(preset_name)
    train_config = small(preset_name, steps=4)
    features = data.encode_split(tokenizer, data.load_split("train", limit=64), train_config.max_length)
    before = adapter_state(model)
    probe = Probe(model, cuda=DEVICE == "cuda")
    try:
        loss = run_trainer(model, features, train_config, str(tmp_path / "trainer"), probe)
    finally:
        probe.close()
    assert math.isfinite(loss) and len(probe.step_ends) == 4
    assert probe.optimizer.startswith("bitsandbytes.") and probe.optimizer_8bit_states > 0  # paged 8-bit AdamW
    assert probe.autocast == str(DTYPES[preset_name]).replace("torch.", "")  # fp16 or bf16 at lm_head
    after = adapter_state(model)
    assert after.keys() == before.keys() and training.model_device(model).type == DEVICE
    assert any(not torch.equal(after[k], before[k]) for k in after if "lora_B" in k)  # the adapter moved
