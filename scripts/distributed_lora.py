"""Train the course's LoRA adapter on PyTorch's distributed engine: FSDP2 or DDP, gloo on CPUs, NCCL on GPUs.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 scripts/distributed_lora.py --strategy fsdp
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 scripts/distributed_lora.py --strategy ddp
    python scripts/distributed_lora.py --strategy single                   # one process, no torchrun

(`python -m torch.distributed.run` is torchrun.) Every process loads the course's small model
(assets/course-llama) as the notebooks do, puts the course's LoRA adapter on q, k, v, o (r = 32, alpha = 64, no
dropout, so that every process draws the same numbers) and trains a few steps on the course's dataset. Each
global batch is the same on every process; rank r takes its 1/N of the rows. The loss is the sum over the
global batch's answer tokens divided by their count, so the averaged gradient is the one-process gradient.

- `--strategy fsdp`: `fully_shard` (FSDP2) on every decoder layer, then on the root: each process keeps 1/N of
  every parameter (a DTensor), of its gradient and of its AdamW states.
- `--strategy ddp`: DistributedDataParallel: every process keeps everything; gradients are averaged.
- `--four-bit` (QLoRA): the base in NF4, its packed weights stored as bf16 (`bnb_4bit_quant_storage`), so that
  FSDP shards them like any bf16 tensor; the NF4 constants stay whole in each layer's quant_state. bf16 compute.
Each process prints what it holds (parameters and buffers, gradients, optimizer states), measured, against
`course_utils.distributed.predicted_process_bytes`. Rank 0 gathers the full adapter, saves it (`--out`/adapter),
trains the same steps in one process (the reference, saved to `--out`/reference-adapter) and prints the largest
difference between the two adapters. The results go to `--out`/result.json.

On N GPUs the same script runs unchanged: with CUDA available it picks the NCCL backend and the device
cuda:LOCAL_RANK, e.g. `torchrun --standalone --nproc_per_node 8 scripts/distributed_lora.py --strategy fsdp`
on one node of 8 GPUs (several nodes: `--nnodes`, `--node_rank`, `--rdzv_endpoint` instead of --standalone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from course_utils import data, runtime, training  # noqa: E402
from course_utils.data import IGNORE_INDEX  # noqa: E402
from course_utils.distributed import predicted_process_bytes  # noqa: E402
from course_utils.lora import COURSE_ALPHA, COURSE_RANK, COURSE_TARGETS  # noqa: E402
from course_utils.memory import training_memory  # noqa: E402
from course_utils.quantization import bnb_4bit_config, keep_standard_4bit_layout  # noqa: E402

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# The largest difference allowed between the distributed and the one-process adapter. fp32 (measured 2.4e-6, and
# 6.0e-6 with transformers 5.25, after 10 steps on a CPU): the processes add the same numbers in another order.
# --four-bit computes in bf16, which keeps 8 significant bits, so those orders differ more (measured 7.1e-4 after
# 10 steps).
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-3}
MAX_LENGTH = 64


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default="fsdp", choices=("fsdp", "ddp", "single"))
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch, split across processes")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", default="runs/distributed", help="folder for result.json and the adapter")
    parser.add_argument("--no-reference", action="store_true", help="skip the one-process comparison")
    parser.add_argument("--four-bit", action="store_true",
                        help="QLoRA: the base in NF4, stored as bf16 (bnb_4bit_quant_storage) so FSDP can shard it")
    return parser.parse_args(argv)


def launch_problem(strategy: str) -> str | None:
    """A sentence when `--strategy fsdp/ddp` runs without torchrun's environment."""
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if strategy == "single" or not missing:
        return None
    return (f"--strategy {strategy} needs one process per GPU (or CPU share), started by torchrun, which sets "
            f"{', '.join(missing)}. Launch it as:\n  OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 "
            f"scripts/distributed_lora.py --strategy {strategy}\nor run one process: "
            "python scripts/distributed_lora.py --strategy single")


def build_model(device: torch.device, four_bit: bool = False):
    """The course's model with the course's LoRA adapter (dropout 0), as the notebooks load it; `four_bit`: in
    NF4 with bf16 storage and bf16 compute (runtime.load_model's 4-bit load keeps bitsandbytes' uint8 storage)."""
    profile = runtime.choose_profile("offline")
    model, tokenizer = runtime.load_model(profile, four_bit=False)
    if four_bit:
        from transformers import AutoModelForCausalLM
        quantization = bnb_4bit_config(torch.bfloat16)
        quantization.bnb_4bit_quant_storage = torch.bfloat16  # the packed bytes as bf16 elements: FSDP shards them
        model = AutoModelForCausalLM.from_pretrained(profile.model_id, quantization_config=quantization,
                                                     device_map=str(device), dtype=torch.bfloat16)
        keep_standard_4bit_layout(model)
    data.prepare_tokenizer(tokenizer)
    peft_model = training.add_peft_lora(model, r=COURSE_RANK, alpha=COURSE_ALPHA, dropout=0.0,
                                        targets=COURSE_TARGETS, seed=0)
    return peft_model.to(device), tokenizer


def batches_for(tokenizer, batch_size: int) -> data.Batches:
    features = data.encode_split(tokenizer, data.load_split("train"), max_length=MAX_LENGTH)
    return data.Batches(features, batch_size, tokenizer.pad_token_id, seed=0)


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (what this process really holds), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def nbytes(t: torch.Tensor) -> int:
    t = local(t)
    return t.numel() * t.element_size()


def held_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """What this process holds, measured: parameters and buffers, gradients, optimizer state tensors."""
    params = sum(nbytes(p) for p in model.parameters()) + sum(nbytes(b) for b in model.buffers())
    for module in model.modules():  # a 4-bit Linear's constants (absmax, codes): in its quant_state, not sharded
        state = getattr(module, "quant_state", None)
        if state is not None and getattr(state, "absmax", None) is not None:
            nested = [state.offset, state.state2.absmax, state.state2.code] if state.nested else []
            params += sum(nbytes(t) for t in [state.absmax, state.code, *nested])
    grads = sum(nbytes(p.grad) for p in model.parameters() if p.grad is not None)
    states = sum(nbytes(v) for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))
    return {"parameters and buffers": params, "gradients": grads, "optimizer states": states}


def wrap(peft_model, strategy: str, device: torch.device):
    """The module to call forward on: FSDP2 per decoder layer then the root, DDP, or the model itself."""
    inner = peft_model.base_model.model  # the LlamaForCausalLM, with PEFT's LoRA layers inside
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for layer in inner.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(inner, mesh=mesh)
        return inner
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(inner, device_ids=[device.index] if device.type == "cuda" else None)
    return inner


def train(module, params, batches, steps: int, lr: float, rank: int, world: int, device) -> tuple[list, object]:
    """`steps` AdamW steps; rank `rank` of `world` takes its rows of each global batch. Returns the global
    losses and the optimizer."""
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses = []
    for step in range(steps):
        batch = batches.batch(step)
        answer_tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()  # over the whole global batch
        rows = slice(rank * batches.batch_size // world, (rank + 1) * batches.batch_size // world)
        mine = {k: v[rows].to(device) for k, v in batch.items()}
        logits = module(input_ids=mine["input_ids"], attention_mask=mine["attention_mask"]).logits
        total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), mine["labels"][:, 1:].flatten(),
                                ignore_index=IGNORE_INDEX, reduction="sum")
        (total * world / answer_tokens).backward()  # DDP and FSDP average over processes: x world undoes it
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep the gradient tensors, to measure them afterwards
        summed = total.detach().clone()
        if world > 1:
            dist.all_reduce(summed)
        losses.append(round(summed.item() / answer_tokens.item(), 6))
    return losses, optimizer


def adapter_tensors(peft_model) -> dict[str, torch.Tensor]:
    """The whole adapter on the CPU: the trainable tensors, gathered from their shards (a collective)."""
    out = {}
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[name] = full.detach().cpu().clone()
    return out


def prediction(peft_model, per_process_batch: int, world: int, strategy: str, four_bit: bool) -> dict[str, int]:
    estimate = training_memory(peft_model.base_model.model.config, "qlora" if four_bit else "lora", rank=COURSE_RANK,
                               targets=COURSE_TARGETS, batch_size=per_process_batch, seq_len=MAX_LENGTH,
                               compute_dtype="bf16" if four_bit else "fp32")
    return predicted_process_bytes(estimate, world, "ddp" if strategy == "single" else strategy)


def run(strategy: str, steps: int, batch_size: int, lr: float, rank: int = 0, world: int = 1,
        device: torch.device = torch.device("cpu"), four_bit: bool = False) -> dict:
    """Build, wrap, train and measure in this process; returns its results (the adapter under "adapter")."""
    peft_model, tokenizer = build_model(device, four_bit)
    module = wrap(peft_model, strategy, device)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    start = time.perf_counter()
    losses, optimizer = train(module, params, batches_for(tokenizer, batch_size), steps, lr, rank, world, device)
    seconds = time.perf_counter() - start
    return {"losses": losses, "train_seconds": round(seconds, 2), "held": held_bytes(peft_model, optimizer),
            "predicted": prediction(peft_model, batch_size // world, world, strategy, four_bit),
            "adapter": adapter_tensors(peft_model), "peft_model": peft_model}


def main(argv=None) -> int:
    args = parse_args(argv)
    hf_logging.disable_progress_bar()  # "Loading weights" once per process would bury the results
    if problem := launch_problem(args.strategy):
        print(problem)
        return 2
    distributed = args.strategy != "single"
    cuda = torch.cuda.is_available()
    rank, world, local_rank = 0, 1, 0
    if distributed:
        local_rank = int(os.environ["LOCAL_RANK"])
        if cuda and local_rank >= torch.cuda.device_count():
            print(f"torchrun started more processes on this machine than it has GPUs ({torch.cuda.device_count()}): "
                  "use --nproc_per_node with at most that many, or CUDA_VISIBLE_DEVICES= to run on the CPUs.")
            return 2
        device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        device = torch.device("cuda:0" if cuda else "cpu")
    if args.batch_size % world:
        if rank == 0:
            print(f"The global batch ({args.batch_size}) must split evenly over {world} processes; "
                  f"pick a multiple of {world}.")
        return 2
    backend = dist.get_backend() if distributed else "none"
    tolerance = TOLERANCE["bf16" if args.four_bit else "fp32"]
    result = run(args.strategy, args.steps, args.batch_size, args.lr, rank, world, device, args.four_bit)
    held, predicted = result["held"], result["predicted"]
    line = " | ".join(f"{k} {held[k]:,} B (predicted {predicted[k]:,})" for k in held)
    for turn in range(world):  # each process prints its own line, in rank order
        if turn == rank:
            print(f"rank {rank}/{world} ({args.strategy}, {backend}, {device.type}): {line}", flush=True)
        if distributed:
            dist.barrier()
    per_rank = [{"rank": rank, "held": held, "predicted": predicted}]
    if distributed:
        gathered = [None] * world
        dist.all_gather_object(gathered, per_rank[0])
        per_rank = gathered
        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["peft_model"].save_pretrained(out / "adapter", state_dict=result["adapter"])
    report = {"strategy": args.strategy, "four_bit": args.four_bit, "world_size": world, "backend": backend, "device": device.type,
              "steps": args.steps, "global_batch": args.batch_size, "losses": result["losses"],
              "train_seconds": result["train_seconds"], "ranks": per_rank, "tolerance": tolerance}
    print(f"loss {result['losses'][0]:.3f} -> {result['losses'][-1]:.3f} in {args.steps} steps "
          f"({result['train_seconds']:.1f} s); adapter saved ({len(result['adapter'])} tensors)")
    if distributed and not args.no_reference:
        reference = run("single", args.steps, args.batch_size, args.lr, four_bit=args.four_bit)
        reference["peft_model"].save_pretrained(out / "reference-adapter", state_dict=reference["adapter"])
        diff = max((result["adapter"][k] - reference["adapter"][k]).abs().max().item() for k in reference["adapter"])
        report |= {"reference_losses": reference["losses"], "max_abs_diff": diff,
                   "reference_train_seconds": reference["train_seconds"]}
        verdict = "equal within" if diff <= tolerance else "NOT equal within"
        print(f"one-process reference on the same global batches: largest difference between the adapters "
              f"{diff:.1e}, {verdict} the tolerance {tolerance:.0e}")
    (out / "result.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    code = main()
    if "LOCAL_RANK" in os.environ:  # a process that torchrun started
        # Everything is written and flushed by now; end without the interpreter's teardown, where a gloo process
        # can abort after a clean run (seen once on CI, torch 2.14.1: rank 1 exited with SIGABRT after
        # destroy_process_group, and torchrun then stopped rank 0 in the middle of its one-process reference).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
