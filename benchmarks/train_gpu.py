"""QLoRA on Llama 3.1 8B with the T4 preset: our loop against transformers' Trainer, same settings.

    python benchmarks/train_gpu.py                 # on a CUDA GPU: the real 8B shape, random weights, NF4
    python benchmarks/train_gpu.py --cap-gb 15     # on a bigger GPU: PyTorch may use only 15 GB, as on a T4
    python benchmarks/train_gpu.py --smoke         # anywhere: a tiny Llama on the CPU, to check the script runs

The 8B is built from its config with random weights (no download, no Hub): each decoder Linear is created on
the GPU in the compute dtype and quantized to NF4 with double quantization at once, so the full fp16 model
(16 GB) never exists. `prepare_model_for_kbit_training` then upcasts embeddings, norms and lm_head to fp32, as
notebook 06 does. Then, for each runner: LoRA r=32, alpha=64, dropout 0.1 on q,k,v,o, the preset's batch size,
accumulation, sequence length, gradient checkpointing, optimizer (paged 8-bit AdamW) and compute dtype (fp16 for
the T4 preset, under autocast), a fixed number of optimizer steps on random token ids (every token counts).

Measured per runner: tokens per second from a warm step on (the first `--warm-from` steps are not timed, so the
Trainer's setup and our cold start don't bias the ratio); on a GPU the peak of PyTorch's allocator
(`max_memory_allocated`), what it reserved (`max_memory_reserved`, allocated plus its cache), the most the
device had in use at the end of a step (`mem_get_info`: also the CUDA context, other processes and the resident
pages of managed memory), and the paged optimizer's managed memory: bitsandbytes allocates the states of its
paged optimizers (tensors of 100k values or more) with cudaMallocManaged, outside PyTorch's allocator, and lists
them in `bitsandbytes.functional.GlobalPageManager`; their bytes are summed here (resident or paged out: CUDA
does not say which without a profiler). `--cap-gb` caps PyTorch's allocator only
(`torch.cuda.set_per_process_memory_fraction`); the context and managed memory come on top, as on a real T4.
Also reported, to show what really ran: the optimizer's class, how many of its states are 8-bit, the autocast
dtype in force at lm_head and the logits' dtype. The estimate is `memory.preset_memory`.

The smoke run (CPU) uses the same code with bf16 autocast, the preset's 8-bit optimizer (bitsandbytes runs it
on the CPU; paging falls back to plain memory there) and a Trainer with `bf16=True, use_cpu=True`.
Prints a table, then one JSON line. Without CUDA (and without --smoke) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import data, memory, runtime, training  # noqa: E402
from course_utils.configs import load_config  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
TRAINER_OPTIM = {"adamw": "adamw_torch", "adamw_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}


def smoke_config():
    """A tiny Llama whose q and o adapters (r=32 x 128) are big enough for 8-bit optimizer states (4096 values)."""
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def build_random_nf4_model(config, compute_dtype: torch.dtype, device: str, seed: int = 0):
    """A LlamaForCausalLM whose decoder Linears are bitsandbytes NF4 (double quantization) with random weights,
    the way `from_pretrained(..., quantization_config=BitsAndBytesConfig(nf4, double quant))` would leave it."""
    import bitsandbytes as bnb
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    std = config.initializer_range
    for layer in model.model.layers:
        for block in (layer.self_attn, layer.mlp):
            for name, linear in list(block.named_children()):
                if not isinstance(linear, nn.Linear):
                    continue
                weight = torch.empty(linear.out_features, linear.in_features, dtype=compute_dtype, device=device)
                weight.normal_(0.0, std)
                q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False, compute_dtype=compute_dtype,
                                      compress_statistics=True, quant_type="nf4", device="meta")
                q.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4").to(device)  # quantized here
                setattr(block, name, q)
                del weight
    # everything else (embeddings, lm_head, norms) in the compute dtype, as from_pretrained(dtype=...) loads it
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            continue
        for pname, param in list(module.named_parameters(recurse=False)):
            value = torch.empty(param.shape, dtype=compute_dtype, device=device)
            if "norm" in type(module).__name__.lower():
                value.fill_(1.0)
            else:
                value.normal_(0.0, std)
            setattr(module, pname, nn.Parameter(value, requires_grad=False))
    model.model.rotary_emb = LlamaRotaryEmbedding(config).to(device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if device == "cpu":  # the smoke test: the same standard 4-bit layout as runtime.load_model keeps on a CPU
        from course_utils.quantization import keep_standard_4bit_layout
        keep_standard_4bit_layout(model)
    model.is_loaded_in_4bit = True  # what transformers' bitsandbytes loader sets; peft and prepare_* read it
    model.config.dtype = compute_dtype
    return model.eval()


def random_features(n: int, seq_len: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, seq_len), generator=g).tolist()
    return [{"input_ids": row, "labels": row} for row in ids]


def disable_checkpointing(model) -> None:
    """Undo `training.enable_gradient_checkpointing` (transformers >= 5.2x renamed the method; both venvs work)."""
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def paged_bytes(start: int = 0) -> int:
    """Bytes of the managed (cudaMallocManaged) tensors bitsandbytes' paged optimizers made after the first `start`."""
    from bitsandbytes.functional import GlobalPageManager
    return sum(t.nbytes for t in GlobalPageManager.get_instance().paged_tensors[start:])


def paged_count() -> int:
    from bitsandbytes.functional import GlobalPageManager
    return len(GlobalPageManager.get_instance().paged_tensors)


class Probe:
    """Watches one runner: the time and device memory at the end of every optimizer step, the optimizer that
    stepped (a global hook on torch.optim.Optimizer.step, which bitsandbytes' optimizers inherit), and the
    autocast dtype in force at lm_head, the logits' dtype and whether the layers are checkpointed (a forward
    hook)."""

    def __init__(self, model, cuda: bool):
        self.cuda, self.step_ends, self.device_used = cuda, [], 0
        self.optimizer, self.optimizer_8bit_states, self.autocast, self.logits_dtype = None, 0, None, None
        self.checkpointing = None
        device = "cuda" if cuda else "cpu"

        def at_lm_head(module, args, output):
            if self.checkpointing is None:  # whether the layers were checkpointed (the first forward tells)
                self.checkpointing = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
            on = torch.is_autocast_enabled(device)
            self.autocast = str(torch.get_autocast_dtype(device)).replace("torch.", "") if on else None
            self.logits_dtype = str(output.dtype).replace("torch.", "")

        def after_step(optimizer, args, kwargs):
            if type(optimizer).__name__ == "AcceleratedOptimizer":  # accelerate's wrapper: the inner one counts
                return
            self.optimizer = f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"
            self.optimizer_8bit_states = sum(1 for state in optimizer.state.values() for t in state.values()
                                             if isinstance(t, torch.Tensor) and t.dtype == torch.uint8)

        self.handles = [model.get_output_embeddings().register_forward_hook(at_lm_head),
                        register_optimizer_step_post_hook(after_step)]

    def step_end(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            self.device_used = max(self.device_used, total - free)
        self.step_ends.append(time.perf_counter())

    def warm(self, warm_from: int) -> tuple[float, int]:
        """(seconds, steps) from the end of step `warm_from` to the end of the last one."""
        return self.step_ends[-1] - self.step_ends[warm_from - 1], len(self.step_ends) - warm_from

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def run_ours(model, features, preset, probe: Probe) -> float:
    """Our loop (`training.train`); returns the last step's loss."""
    batches = data.Batches(features, preset.batch_size, pad_id=0, seed=0)
    amp = contextlib.nullcontext()
    if training.autocast_dtype(model, preset) is None and preset.mixed_precision in DTYPES:
        # training.train autocasts on a GPU only; on the CPU (the smoke run) autocast goes around it.
        amp = torch.autocast("cpu", dtype=DTYPES[preset.mixed_precision])
    with amp:
        result = training.train(model, batches, preset, show_progress=False,
                                on_step=lambda step, loss: probe.step_end())
    return result.final_loss


def run_trainer(model, features, preset, out_dir: str, probe: Probe) -> float:
    """transformers' Trainer with the same settings; returns the last step's loss."""
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            probe.step_end()

    cuda = torch.cuda.is_available()
    # transformers >= 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns)
    ckpt = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    checkpointing = {ckpt: preset.gradient_checkpointing,
                     f"{ckpt}_kwargs": {"use_reentrant": False} if preset.gradient_checkpointing else None}
    args = TrainingArguments(
        output_dir=out_dir, max_steps=preset.steps, per_device_train_batch_size=preset.batch_size,
        gradient_accumulation_steps=preset.grad_accum, learning_rate=preset.lr, warmup_steps=preset.warmup_steps,
        lr_scheduler_type="linear", weight_decay=preset.weight_decay, max_grad_norm=preset.max_grad_norm,
        optim=TRAINER_OPTIM[preset.optimizer], fp16=preset.mixed_precision == "fp16",
        bf16=preset.mixed_precision == "bf16", logging_steps=1, save_strategy="no", report_to=[], seed=preset.seed,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True, use_cpu=not cuda, **checkpointing)
    trainer = Trainer(model=model, args=args, train_dataset=features, callbacks=[StepEnds()],
                      data_collator=lambda feats: data.pad_batch(feats, pad_id=0))
    trainer.remove_callback(PrinterCallback)  # a loss line per step would come between the table and the JSON
    output = trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return losses[-1] if losses else output.training_loss


def cap_memory(cap_gb: float | None) -> str:
    """Cap PyTorch's allocator at `cap_gb` (1e9 bytes) on GPU 0; a sentence saying what was done."""
    if cap_gb is None:
        return ""
    if not torch.cuda.is_available():
        return f"--cap-gb {cap_gb:g} applies to a CUDA GPU; ignored on the CPU."
    total = torch.cuda.get_device_properties(0).total_memory
    if cap_gb * 1e9 >= total:
        return f"--cap-gb {cap_gb:g} is at least this GPU's {total / 1e9:.1f} GB: no cap."
    torch.cuda.set_per_process_memory_fraction(cap_gb * 1e9 / total, 0)
    return (f"PyTorch's allocator capped at {cap_gb:g} GB of {total / 1e9:.1f} GB "
            f"(fraction {cap_gb * 1e9 / total:.3f}); the CUDA context and managed memory come on top.")


def gb(nbytes: float | None) -> float | None:
    return None if nbytes is None else round(nbytes / 1e9, 3)


def run_one(name: str, base, features, preset, args, cuda: bool) -> dict:
    """One runner on a fresh adapter over `base`; its row of the table."""
    model = training.add_peft_lora(base)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    pages_before, probe, error = paged_count(), Probe(model, cuda), None
    start = time.perf_counter()
    try:
        if name == "our loop":
            loss = run_ours(model, features, preset, probe)
        else:
            loss = run_trainer(model, features, preset, args.out, probe)
    except torch.OutOfMemoryError as err:  # a capped run that does not fit says so and the next one still runs
        loss, error = float("nan"), f"out of memory: {str(err).splitlines()[0][:200]}"
    finally:
        probe.close()
    total_seconds = time.perf_counter() - start
    row = {"seconds_total": round(total_seconds, 2), "final_loss": round(float(loss), 4), "error": error,
           "optimizer": probe.optimizer, "optimizer_8bit_states": probe.optimizer_8bit_states,
           "autocast": probe.autocast, "logits_dtype": probe.logits_dtype, "checkpointing": probe.checkpointing,
           "peak_allocated_gb": gb(torch.cuda.max_memory_allocated()) if cuda else None,
           "peak_reserved_gb": gb(torch.cuda.max_memory_reserved()) if cuda else None,
           "device_used_gb": gb(probe.device_used) if cuda else None,
           "paged_optimizer_gb": gb(paged_bytes(pages_before))}
    warm_from = min(args.warm_from, len(probe.step_ends) - 1)
    if error is None and warm_from >= 1:
        seconds, steps = probe.warm(warm_from)
        tokens = steps * preset.grad_accum * preset.batch_size * len(features[0]["input_ids"])
        row.update(warm_from=warm_from, timed_steps=steps, seconds=round(seconds, 2),
                   tokens_per_s=round(tokens / seconds, 1))
    else:
        row.update(warm_from=None, timed_steps=0, seconds=None, tokens_per_s=None)
    base = model.unload()  # the adapter off again: the next runner starts from the same base
    del model
    gc.collect()
    disable_checkpointing(base)
    return row


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per runner (default %(default)s)")
    parser.add_argument("--warm-from", type=int, default=2,
                        help="steps not timed at the start of each runner (default %(default)s)")
    parser.add_argument("--preset", default="t4", choices=sorted(training.PRESETS))
    parser.add_argument("--cap-gb", type=float, default=None,
                        help="let PyTorch use at most this many GB (1e9 bytes) of the GPU, e.g. 15 for a T4")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny Llama on the CPU: checks the script, measures nothing")
    parser.add_argument("--out", default="build/train_gpu", help="scratch folder for the Trainer")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("No CUDA GPU here: this benchmark needs one (in Colab: Runtime > Change runtime type > T4 GPU). "
              "Skipping. Run with --smoke to check the script on the CPU.")
        print(json.dumps({"benchmark": "train_gpu", "skipped": True, "reason": "no CUDA GPU"}))
        return 0

    from peft import prepare_model_for_kbit_training

    preset = replace(training.PRESETS[args.preset], steps=args.steps, checkpoint_dir=None)
    device = "cuda" if cuda else "cpu"
    notes = [cap_memory(args.cap_gb)]
    if args.smoke:
        config = smoke_config()
        # bf16 autocast on the CPU; the preset's optimizer (8-bit AdamW from bitsandbytes) is kept.
        preset = replace(preset, batch_size=2, grad_accum=2, max_length=32, mixed_precision="bf16")
        model_name = "tiny Llama (smoke test)"
    else:
        config = load_config("llama-3.1-8b")
        model_name = "Llama 3.1 8B (random weights)"
    if cuda:
        wanted = DTYPES.get(preset.mixed_precision, torch.float16)
        compute_dtype, note = runtime.compute_dtype_for(runtime.detect_gpu(), wanted)
        notes.append(note)
        preset = replace(preset, mixed_precision="fp16" if compute_dtype == torch.float16 else "bf16")
    else:
        compute_dtype = DTYPES.get(preset.mixed_precision, torch.float32)
    seq_len = preset.max_length
    features = random_features(preset.steps * preset.grad_accum * preset.batch_size, seq_len, config.vocab_size)
    estimate = memory.preset_memory(config, preset)
    gpu = torch.cuda.get_device_name(0) if cuda else "CPU"
    total_bytes = torch.cuda.get_device_properties(0).total_memory if cuda else None
    print(f"{model_name} in NF4 on {gpu}; preset {args.preset}: batch {preset.batch_size} x accumulation "
          f"{preset.grad_accum}, {seq_len} tokens, checkpointing {preset.gradient_checkpointing}, "
          f"{preset.optimizer}, {preset.mixed_precision} compute; {preset.steps} steps per runner, "
          f"timed from step {args.warm_from + 1}")
    for note in notes:
        if note:
            print(note)

    start = time.perf_counter()
    base = build_random_nf4_model(config, compute_dtype, device)
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)  # norms, embeddings, lm_head: fp32
    print(f"built and quantized in {time.perf_counter() - start:.0f} s")

    rows = {}
    for name in ("our loop", "transformers Trainer"):
        rows[name] = run_one(name, base, features, preset, args, cuda)
        if rows[name]["error"]:
            print(f"{name}: {rows[name]['error']}")

    head = (f"{'runner':<22}{'tokens/s':>10}{'seconds':>9}{'alloc GB':>10}{'reserved GB':>13}{'used GB':>9}"
            f"{'paged GB':>10}{'estimate GB':>13}")
    print("\n" + head)
    for name, row in rows.items():
        print(f"{name:<22}{fmt(row['tokens_per_s'], '.1f'):>10}{fmt(row['seconds'], '.1f'):>9}"
              f"{fmt(row['peak_allocated_gb'], '.2f'):>10}{fmt(row['peak_reserved_gb'], '.2f'):>13}"
              f"{fmt(row['device_used_gb'], '.2f'):>9}{fmt(row['paged_optimizer_gb'], '.3f'):>10}"
              f"{estimate.total / 1e9:>13.2f}")
    print("estimate by part (GB): " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in estimate.parts().items()))
    for name, row in rows.items():
        print(f"{name}: {row['optimizer']} ({row['optimizer_8bit_states']} 8-bit states), autocast "
              f"{row['autocast']}, logits {row['logits_dtype']}, checkpointing {row['checkpointing']}")
    print(json.dumps({"benchmark": "train_gpu", "smoke": args.smoke, "device": gpu, "preset": args.preset,
                      "steps": preset.steps, "warm_from": args.warm_from, "seq_len": seq_len,
                      "mixed_precision": preset.mixed_precision, "optimizer": preset.optimizer,
                      "cap_gb": args.cap_gb if cuda else None, "gpu_total_gb": gb(total_bytes),
                      "estimate_gb": round(estimate.total / 1e9, 4),
                      "estimate_parts_gb": {k: round(v / 1e9, 4) for k, v in estimate.parts().items()},
                      "runners": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
