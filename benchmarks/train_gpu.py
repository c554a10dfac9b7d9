"""QLoRA on Llama 3.1 8B with the T4 preset: our loop against transformers' Trainer, same settings.

    python benchmarks/train_gpu.py                 # on a CUDA GPU: the real 8B shape, random weights, NF4
    python benchmarks/train_gpu.py --smoke         # anywhere: a tiny Llama on the CPU, to check the script runs

The 8B is built from its config with random weights (no download, no Hub): each decoder Linear is created on
the GPU in the compute dtype and quantized to NF4 with double quantization at once, so the full fp16 model
(16 GB) never exists. Then, for each runner: LoRA r=32, alpha=64, dropout 0.1 on q,k,v,o, the preset's
batch size, accumulation, sequence length, gradient checkpointing and paged 8-bit AdamW, a fixed number of
optimizer steps on random token ids (every token counts), tokens per second and the peak GPU memory measured
against the estimate of `memory.preset_memory`. Prints a table, then one JSON line.
Without CUDA (and without --smoke) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import data, memory, training  # noqa: E402
from course_utils.configs import load_config  # noqa: E402


def smoke_config():
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
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


def run_ours(model, features, preset) -> dict:
    batches = data.Batches(features, preset.batch_size, pad_id=0, seed=0)
    result = training.train(model, batches, preset, show_progress=False)
    return {"seconds": result.seconds, "tokens": result.tokens, "final_loss": result.final_loss}


def run_trainer(model, features, preset, out_dir: str) -> dict:
    from transformers import Trainer, TrainingArguments

    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=out_dir, max_steps=preset.steps, per_device_train_batch_size=preset.batch_size,
        gradient_accumulation_steps=preset.grad_accum, learning_rate=preset.lr, warmup_steps=preset.warmup_steps,
        lr_scheduler_type="linear", weight_decay=preset.weight_decay, max_grad_norm=preset.max_grad_norm,
        optim="paged_adamw_8bit" if preset.optimizer == "paged_adamw_8bit" else "adamw_torch",
        fp16=cuda and preset.mixed_precision == "fp16", bf16=cuda and preset.mixed_precision == "bf16",
        gradient_checkpointing=preset.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if preset.gradient_checkpointing else None,
        logging_steps=max(1, preset.steps), save_strategy="no", report_to=[], seed=preset.seed,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True, use_cpu=not cuda)
    trainer = Trainer(model=model, args=args, train_dataset=features,
                      data_collator=lambda feats: data.pad_batch(feats, pad_id=0))
    start = time.perf_counter()
    output = trainer.train()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = preset.steps * preset.grad_accum * preset.batch_size * len(features[0]["input_ids"])
    return {"seconds": seconds, "tokens": tokens, "final_loss": output.training_loss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per runner (default %(default)s)")
    parser.add_argument("--preset", default="t4", choices=sorted(training.PRESETS))
    parser.add_argument("--smoke", action="store_true", help="a tiny Llama on the CPU: checks the script, measures nothing")
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
    if args.smoke:
        config = smoke_config()
        preset = replace(preset, batch_size=2, grad_accum=2, max_length=32, mixed_precision="no",
                         optimizer="paged_adamw_8bit" if cuda else "adamw")
        model_name = "tiny Llama (smoke test)"
    else:
        config = load_config("llama-3.1-8b")
        model_name = "Llama 3.1 8B (random weights)"
    compute_dtype = torch.bfloat16 if preset.mixed_precision == "bf16" else (torch.float16 if cuda else torch.float32)
    seq_len = preset.max_length
    features = random_features(preset.steps * preset.grad_accum * preset.batch_size, seq_len, config.vocab_size)
    estimate = memory.preset_memory(config, preset)
    gpu = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"{model_name} in NF4 on {gpu}; preset {args.preset}: batch {preset.batch_size} x accumulation "
          f"{preset.grad_accum}, {seq_len} tokens, checkpointing {preset.gradient_checkpointing}, "
          f"{preset.optimizer}, {preset.mixed_precision}; {preset.steps} steps per runner")

    start = time.perf_counter()
    base = build_random_nf4_model(config, compute_dtype, device)
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)  # upcasts norms, embeddings, lm_head
    print(f"built and quantized in {time.perf_counter() - start:.0f} s")

    rows = {}
    for name, runner in (("our loop", run_ours), ("transformers Trainer", run_trainer)):
        model = training.add_peft_lora(base)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        stats = runner(model, features, preset) if runner is run_ours else runner(model, features, preset, args.out)
        peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None  # no GPU memory to measure in the smoke test
        rows[name] = {"tokens_per_s": round(stats["tokens"] / stats["seconds"], 1), "seconds": round(stats["seconds"], 1),
                      "peak_gb": round(peak, 2) if peak is not None else None, "final_loss": round(float(stats["final_loss"]), 4)}
        base = model.unload()  # the adapter off again: the next runner starts from the same base
        del model
        gc.collect()
        if hasattr(base, "disable_gradient_checkpointing"):
            base.disable_gradient_checkpointing()

    print(f"\n{'runner':<22}{'tokens/s':>10}{'seconds':>9}{'peak GB':>9}{'estimate GB':>13}")
    for name, row in rows.items():
        print(f"{name:<22}{row['tokens_per_s']:>10.1f}{row['seconds']:>9.1f}{row['peak_gb'] if row['peak_gb'] is not None else 'n/a':>9}{estimate.total / 1e9:>13.2f}")
    print("estimate by part (GB): " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in estimate.parts().items()))
    print(json.dumps({"benchmark": "train_gpu", "smoke": args.smoke, "device": gpu, "preset": args.preset,
                      "steps": preset.steps, "seq_len": seq_len, "estimate_gb": round(estimate.total / 1e9, 4),
                      "runners": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
