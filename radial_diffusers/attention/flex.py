"""The same BSR layout through PyTorch FlexAttention (``BlockMask.from_kv_blocks`` + compiled ``flex_attention``).

A peer to measure our kernels against, not the default path. A listed key block whose keys all lie below the
sample's key limit (``seq_len`` / ``kv_lengths``) is a *full* block (no ``mask_mod`` call in the compiled kernel);
only the blocks that straddle the limit are *partial*. The ``mask_mod`` itself encodes the whole layout, so the
eager FlexAttention path (which applies ``mask_mod`` alone and ignores the block lists) gives the same result.
``BlockMask`` objects are cached per (layout tensors, batch, device) when no ``kv_lengths`` is given (those are
per call). Backward differentiates through compiled FlexAttention; when that records no autograd graph it raises
rather than fall back to eager FlexAttention (which evaluates ``mask_mod`` over the dense S x S grid).
"""

from __future__ import annotations

import functools
import threading
import weakref

import torch

from ..layout import dense_block_mask
from .torch_ref import live_lse_grad

@functools.lru_cache(maxsize=None)
def _compiled_flex(training: bool = False):
    """Compiled FlexAttention; separate wrappers for inference and for the differentiable re-run of backward."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _build_block_mask(counts, indices, kv_lengths, block_size, seq_len, batch, device):
    from torch.nn.attention.flex_attention import BlockMask

    n = counts.shape[0]
    counts = counts.to(device=device, dtype=torch.int32)
    width = indices.shape[1]
    idx = torch.zeros(n, n, dtype=torch.int32, device=device)
    idx[:, :width] = indices.to(device).clamp_min(0)
    listed = torch.arange(n, device=device).view(1, n) < counts.view(n, 1)  # (n, n): slot j of row r is used
    if kv_lengths is None:
        limit = torch.full((batch,), seq_len, dtype=torch.int32, device=device)
    else:
        limit = kv_lengths.to(device=device, dtype=torch.int32).clamp(0, seq_len)
    # per sample: a listed block is full when its last key is below the limit, partial when it straddles it,
    # and dropped when it starts at or past it
    start = idx.view(1, n, n) * block_size
    full = listed.view(1, n, n) & (start + block_size <= limit.view(batch, 1, 1))
    partial = listed.view(1, n, n) & ~full & (start < limit.view(batch, 1, 1))

    def compact(keep):  # (batch, n, n) slot mask -> (counts, indices) with the kept slots first, in order
        order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices
        return (keep.sum(-1, dtype=torch.int32).unsqueeze(1).contiguous(),
                torch.gather(idx.expand(batch, n, n), 2, order).to(torch.int32).unsqueeze(1).contiguous())

    kv_num, kv_idx = compact(partial)
    full_num, full_idx = compact(full)
    dense = dense_block_mask(indices.to(device), n).contiguous()

    def mask_mod(b, h, q_idx, kv_idx_):
        return dense[q_idx // block_size, kv_idx_ // block_size] & (kv_idx_ < limit[b])

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod,
                                    seq_lengths=(seq_len, seq_len))


_CACHE: dict[tuple, tuple] = {}
_CACHE_SIZE = 8
_LOCK = threading.Lock()


def _block_mask(counts, indices, kv_lengths, block_size, seq_len, batch, device):
    """The ``BlockMask`` of these layout tensors, cached per layout (identity and version checked through weak
    references) when there is no per-call ``kv_lengths``. Always built outside inference mode, so a mask made during
    inference also serves a later training step."""
    with torch.inference_mode(False):
        if kv_lengths is not None or counts.is_inference() or indices.is_inference():
            return _build_block_mask(counts, indices, kv_lengths, block_size, seq_len, batch, device)
        tensors = (counts, indices)
        key = (id(counts), id(indices), block_size, seq_len, batch, str(device))
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                refs, versions, mask = hit
                if all(r() is t for r, t in zip(refs, tensors)) and versions == tuple(t._version for t in tensors):
                    return mask
        mask = _build_block_mask(counts, indices, None, block_size, seq_len, batch, device)
        with _LOCK:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = (tuple(weakref.ref(t) for t in tensors), tuple(t._version for t in tensors), mask)
        return mask


def block_mask_for(layout, batch: int, kv_lengths=None, device=None):
    """FlexAttention ``BlockMask`` of a :class:`~radial_diffusers.BlockLayout` for ``batch`` samples (keys past
    ``seq_len`` / ``kv_lengths`` masked)."""
    device = layout.device if device is None else device
    return _block_mask(layout.counts, layout.indices, kv_lengths, layout.block_size, layout.seq_len, batch, device)


def attention_out(q, k, v, block_mask, scale=None):
    """Output only, ``(B, S, H, D)`` in and out: the inference call FlexAttention supports on every device
    (benchmarks use it as the peer on CPU, where compiled FlexAttention cannot return the log-sum-exp)."""
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    return _compiled_flex()(qt, kt, vt, block_mask=block_mask, scale=scale).transpose(1, 2)


def check_device(device: torch.device, block_size: int | None = None) -> None:
    """Raise where the op cannot run FlexAttention: tensors on ``device`` (``block_size``: any)."""
    if device.type != "cuda":
        raise NotImplementedError(
            "backend='flex' needs CUDA: compiled FlexAttention on CPU supports inference only and cannot return the "
            "log-sum-exp the op needs; use backend='torch' on CPU"
        )


def _run(q, k, v, counts, indices, kv_lengths, block_size, seq_len, scale):
    check_device(q.device)
    mask = _block_mask(counts, indices, kv_lengths, block_size, seq_len, q.shape[0], q.device)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    training = torch.is_grad_enabled()
    if training and block_size != 128:
        raise NotImplementedError(
            f"backend='flex' trains only with 128-token blocks (FlexAttention's backward kernel configs do not tile "
            f"{block_size}-token sparse blocks); use backend='torch' or 'triton'"
        )
    kernel_options = None if training else {"BLOCK_M": block_size, "BLOCK_N": block_size}
    out, lse = _compiled_flex(training)(qt, kt, vt, block_mask=mask, scale=scale, return_lse=True,
                                        kernel_options=kernel_options)
    # Rows with no attendable key: FlexAttention returns lse = -inf and out = 0, matching our convention.
    return out.transpose(1, 2), lse.float()


def forward(q, k, v, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len, scale):
    with torch.no_grad():
        out, lse = _run(q, k, v, counts, indices, kv_lengths, block_size, seq_len, scale)
    return out.contiguous(), lse.contiguous()


def backward(grad_out, q, k, v, out, lse, grad_lse, counts, indices, t_counts, t_indices, kv_lengths, block_size,
             seq_len, scale):
    # Differentiate FlexAttention's forward; the lse gradient of rows without keys does not flow.
    grad_lse = live_lse_grad(lse, grad_lse)
    if grad_lse is None:
        grad_lse = torch.zeros_like(lse)
    with torch.enable_grad():
        qd, kd, vd = (x.detach().requires_grad_(True) for x in (q, k, v))
        o, l = _run(qd, kd, vd, counts, indices, kv_lengths, block_size, seq_len, scale)
        if not o.requires_grad:  # never fall back to eager FlexAttention: dense work behind a sparse name
            raise RuntimeError(
                "backend='flex' backward: the compiled FlexAttention re-run inside the backward recorded no autograd "
                "graph, and the eager fallback would evaluate the mask over the dense S x S grid. Train with "
                "backend='triton' (CUDA) or backend='torch'; use backend='flex' for inference"
            )
        grads = torch.autograd.grad((o, l), (qd, kd, vd), (grad_out.to(o.dtype), grad_lse), allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g.contiguous() for g, x in zip(grads, (q, k, v)))
