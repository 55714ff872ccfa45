"""``distributed: fsdp``: the frozen base sharded across processes with FSDP2, the LoRA replicated.

Each transformer block (the model's ``_no_split_modules``) and then the root become ``fully_shard`` units over the
frozen base weights, so a process holds about ``1 / world`` of them between uses and all-gathers one block at a time
(again in backward, and for the gradient-checkpointing recompute). The LoRA parameters, and the few frozen tensors
kept in another dtype (Wan's fp32 norms and modulation tables), are ``ignored_params``: full copies on every process,
so checkpoints, resume, EMA and export are exactly those of a DDP run. Their gradients are averaged with one
all-reduce per optimizer step (:func:`average_gradients`); nothing else is communicated for them.

Works on CUDA (NCCL) and on CPU (gloo), which the tests use.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

__all__ = ["shard_frozen_base", "average_gradients", "local_bytes", "fsdp_available"]


def fsdp_available() -> str | None:
    """``None`` if this torch has FSDP2 with ``ignored_params`` (torch >= 2.7), else the reason it does not."""
    try:
        import inspect

        from torch.distributed.fsdp import fully_shard
    except ImportError:
        return f"torch {torch.__version__} has no FSDP2 fully_shard (torch >= 2.7 needed)"
    if "ignored_params" not in inspect.signature(fully_shard).parameters:
        return f"torch {torch.__version__}'s fully_shard has no ignored_params (torch >= 2.7 needed)"
    return None


def _shard_dtype(model: nn.Module) -> torch.dtype:
    """The dtype holding most of the frozen weights (the one FSDP shards; FSDP2 needs one dtype per unit)."""
    sizes: Counter = Counter()
    for p in model.parameters():
        if not p.requires_grad:
            sizes[p.dtype] += p.numel()
    return sizes.most_common(1)[0][0]


def shard_frozen_base(model: nn.Module, device: torch.device) -> int:
    """Apply FSDP2 ``fully_shard`` to every block of ``model`` and to the root over ``device``'s process group;
    return the number of sharded parameters. The LoRA (trainable) parameters must already exist.

    Example (inside ``torchrun --nproc_per_node 2``)::

        transformer.requires_grad_(False); transformer.add_adapter(lora_config)
        shard_frozen_base(transformer, torch.device("cuda", local_rank))
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # FSDP2 places shards on the current device
    world = torch.distributed.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    dtype = _shard_dtype(model)
    block_classes = set(getattr(model, "_no_split_modules", None) or ())

    def shard(module: nn.Module) -> None:
        keep = {p for p in module.parameters() if p.requires_grad or p.dtype != dtype}
        if any(p not in keep for p in module.parameters()):
            fully_shard(module, mesh=mesh, ignored_params=keep)

    for _, module in reversed(list(model.named_modules())):  # inner blocks before the ones that contain them
        if module is not model and type(module).__name__ in block_classes:
            shard(module)
    shard(model)
    return sum(1 for p in model.parameters() if type(p).__name__ == "DTensor")


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of replicated parameters across processes (one flat all-reduce; a parameter without a
    gradient on this process takes part with zeros, so every process sends the same layout)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def local_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of frozen weights this process holds, bytes of the full frozen weights)."""
    here = full = 0
    for p in model.parameters():
        if p.requires_grad:
            continue
        local = p.to_local() if hasattr(p, "to_local") else p
        here += local.numel() * local.element_size()
        full += p.numel() * p.element_size()
    return here, full
