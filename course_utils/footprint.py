"""Measured memory: the bytes a loaded model really holds, and what one training step adds, tensor by tensor.
The estimates in course_utils.memory are held to these measurements (tests/test_memory.py, notebook 02)."""

from __future__ import annotations

import torch


def footprint_bytes(model) -> dict[str, int]:
    """Bytes a loaded (possibly quantized) model holds, by kind, each storage counted once (tied weights).

    Besides the parameters and buffers that `model.get_memory_footprint()` counts, bitsandbytes hangs a
    quantization state on every quantized weight, which that method misses: for 4-bit the block constants
    (absmax; with double quantization their 8-bit form, second-level absmax and mean) and the code books
    (`weight.quant_state`), for int8 one scale per output row (`weight.SCB`).
    """
    groups: dict[str, list] = {"quantized weights": [], "block constants": [], "code books": [],
                               "other weights and buffers": []}
    for tensor in [*model.parameters(), *model.buffers()]:
        state, scales = getattr(tensor, "quant_state", None), getattr(tensor, "SCB", None)
        quantized = state is not None or scales is not None
        groups["quantized weights" if quantized else "other weights and buffers"].append(tensor)
        if scales is not None:
            groups["block constants"].append(scales)
        if state is not None:
            groups["block constants"].append(state.absmax)
            groups["code books"].append(state.code)
            if getattr(state, "nested", False):
                groups["block constants"] += [state.offset, state.state2.absmax]
                groups["code books"].append(state.state2.code)
    return {kind: _unique_bytes(tensors) for kind, tensors in groups.items()}


def model_bytes(model) -> int:
    """The measured bytes of a loaded model: every parameter, buffer and quantization state (`footprint_bytes`)."""
    return sum(footprint_bytes(model).values())


def measure_training_step(model, input_ids, optimizer) -> dict[str, int]:
    """Run one training step (forward with labels, backward, optimizer step) and measure its memory, by part.

    weights: `model_bytes` before the step (trainable adapters split out as "trainable weights" when the
    base is frozen); activations: every tensor autograd saves for the backward pass, each storage once,
    parameters excluded (recorded with `torch.autograd.graph.saved_tensors_hooks`); gradients: the `.grad`
    tensors; optimizer states: every tensor in `optimizer.state`.
    """
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    frozen_base = len(trainable) < len(params)
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    total_weights = model_bytes(model)
    trainable_bytes = _unique_bytes(trainable) if frozen_base else 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    states = [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    out = {"weights": total_weights - trainable_bytes, "trainable weights": trainable_bytes,
           "gradients": _unique_bytes([p.grad for p in trainable if p.grad is not None]),
           "optimizer states": _unique_bytes(states), "activations (saved for backward)": sum(saved.values())}
    optimizer.zero_grad(set_to_none=True)
    return out


def _unique_bytes(tensors) -> int:
    """Bytes of the storages behind `tensors`, each counted once (meta tensors have no storage to share)."""
    seen = {}
    for t in tensors:
        storage = t.untyped_storage()
        key = ("meta", id(t)) if t.is_meta else (t.device.type, storage.data_ptr())
        seen[key] = t.numel() * t.element_size() if t.is_meta else storage.nbytes()
    return sum(seen.values())
