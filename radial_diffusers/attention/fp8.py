"""FP8 attention (inference): QK^T on e4m3 tensor cores, SageAttention-style, P V in 16 bits.

* K is *smoothed*: its mean over the tokens (per batch and head, ``(B, H, D)`` float32; over a sample's first
  ``kv_lengths`` tokens when given) is subtracted before quantizing. Every score of a query row then moves by the same
  ``q . mean``, which the softmax ignores, while the outliers that channel-wise bias puts into K no longer set its
  quantization range. The returned log-sum-exp adds ``scale * q . mean`` back (computed from the 16-bit q), so it
  equals that of unsmoothed scores (ring attention merges chunks by it).
* Q and smoothed K are quantized to e4m3 with one float32 scale per (batch, head, layout block of ``block_size``
  tokens): ``x8 = x / s``, ``s = max|x| / 448`` over the block (1 for an all-zero block). The kernels multiply the
  fp8 product by ``s_q * s_k`` in the exponent (the same FMA as the 16-bit path).
* P and V stay in V's dtype (bf16 / fp16) for the second product.
* Keys past a sample's ``kv_lengths`` are never read: they take no part in the mean or a block's scale and are
  stored as 0, so padding of any size (or non-finite) changes nothing.

Extra memory: the e4m3 copies of q and k (half the size of one 16-bit input each) and float32 per row and per
block, ``B * H * (S + 2 * blocks + blocks * D + D)``: row dots, scales, the key mean's per-block sums, the mean. Runs
on GPUs with fp8 tensor cores, compute capability 8.9 (Ada) or 9.0 (Hopper), and under ``TRITON_INTERPRET=1``
(tests); elsewhere a ``ValueError`` says so.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_kernels as tk
from .triton_common import _batch_head_kv_limit

E4M3_MAX = 448.0  # largest finite float8_e4m3fn
SUPPORTED_CAPABILITIES = ((8, 9), (9, 0))


@triton.jit
def _round_to_e4m3(y):
    """fp32 ``y`` (|y| <= 448) rounded to nearest-even on e4m3's 3 mantissa bits, in integer arithmetic, so the
    conversion to e4m3 that follows is exact for normal values on every target (GPUs round to nearest; Triton's
    interpreter does not, which would make the CPU tests test another quantizer)."""
    bits = y.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576  # keep the top 3 of 23 mantissa bits, ties to even
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _key_sum_kernel(
    X, KvLen, Partial,
    sxb, sxs, sxh, sxd, H, seq_len, n_blocks,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, ROWS: tl.constexpr, HAS_KV_LEN: tl.constexpr,
):
    """One (layout block, batch x head): the float32 column sums of the block's rows below the sample's key limit
    into ``Partial`` ``(B*H, n_blocks, D)`` (rows past it are not read)."""
    pid_blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, kv_limit = _batch_head_kv_limit(pid_bh, H, seq_len, KvLen, HAS_KV_LEN)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    base = X + b * sxb + h * sxh
    total = tl.zeros([BLOCK_D], tl.float32)
    for r in tl.static_range(0, BLOCK_SIZE, ROWS):
        offs = pid_blk * BLOCK_SIZE + r + tl.arange(0, ROWS)
        x = tl.load(base + offs[:, None] * sxs + offs_d[None, :] * sxd,
                    mask=(offs < kv_limit)[:, None] & d_ok[None, :], other=0.0)
        total += tl.sum(x.to(tl.float32), 0)
    tl.store(Partial + (pid_bh * n_blocks + pid_blk) * D + offs_d, total, mask=d_ok)


@triton.jit
def _quantize_kernel(
    X, Mean, KvLen, Out, Scale, RowDot,
    sxb, sxs, sxh, sxd, H, seq_len, n_blocks,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, ROWS: tl.constexpr,
    SMOOTH: tl.constexpr, ROW_DOT: tl.constexpr, HAS_KV_LEN: tl.constexpr, HAS_MEAN: tl.constexpr,
):
    """One (layout block, batch x head): amax of the block (after subtracting ``Mean`` if SMOOTH), then the e4m3
    values into the contiguous ``Out``; with ROW_DOT also ``x . Mean`` per row into ``RowDot`` ``(B*H, S)``. With
    HAS_KV_LEN (keys) the rows past the sample's key limit are not read and are stored as 0."""
    pid_blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, kv_limit = _batch_head_kv_limit(pid_bh, H, seq_len, KvLen, HAS_KV_LEN)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    if HAS_MEAN:
        mean = tl.load(Mean + pid_bh * D + offs_d, mask=d_ok, other=0.0)
    else:  # Mean is a placeholder pointer then, not (B*H, D): never read
        mean = tl.zeros([BLOCK_D], tl.float32)
    base = X + b * sxb + h * sxh
    amax = tl.zeros([ROWS], tl.float32)
    for r in tl.static_range(0, BLOCK_SIZE, ROWS):
        offs = pid_blk * BLOCK_SIZE + r + tl.arange(0, ROWS)
        read = (offs < kv_limit)[:, None] & d_ok[None, :]
        x = tl.load(base + offs[:, None] * sxs + offs_d[None, :] * sxd, mask=read, other=0.0).to(tl.float32)
        if ROW_DOT:
            tl.store(RowDot + pid_bh * seq_len + offs, tl.sum(x * mean[None, :], 1), mask=offs < seq_len)
        if SMOOTH:
            x = tl.where(read, x - mean[None, :], 0.0)
        amax = tl.maximum(amax, tl.max(tl.abs(x), 1))
    top = tl.max(amax, 0)
    scale = tl.where(top > 0.0, top / 448.0, 1.0)
    out_base = Out + (b * seq_len * H + h) * D
    for r in tl.static_range(0, BLOCK_SIZE, ROWS):
        offs = pid_blk * BLOCK_SIZE + r + tl.arange(0, ROWS)
        read = (offs < kv_limit)[:, None] & d_ok[None, :]
        x = tl.load(base + offs[:, None] * sxs + offs_d[None, :] * sxd, mask=read, other=0.0).to(tl.float32)
        if SMOOTH:
            x = tl.where(read, x - mean[None, :], 0.0)
        tl.store(out_base + offs[:, None] * (H * D) + offs_d[None, :], _round_to_e4m3(x / scale).to(tl.float8e4nv),
                 mask=(offs < seq_len)[:, None] & d_ok[None, :])
    tl.store(Scale + pid_bh * n_blocks + pid_blk, scale)


def check_device(device: torch.device) -> None:
    """Refuse a device without fp8 tensor cores (the interpreter's CPU tensors pass)."""
    if device.type != "cuda":
        if tk.interpreting():
            return
        raise ValueError("precision='fp8' runs our Triton kernels on a CUDA GPU with fp8 tensor cores (compute "
                         f"capability 8.9 or 9.0); these tensors are on {device}. Use precision=None")
    capability = torch.cuda.get_device_capability(device)
    if capability not in SUPPORTED_CAPABILITIES:
        raise ValueError(f"precision='fp8' needs fp8 tensor cores of compute capability 8.9 (Ada) or 9.0 (Hopper); "
                         f"this GPU ({torch.cuda.get_device_name(device)}) is {capability[0]}.{capability[1]}. "
                         "Use precision=None (the 16-bit kernels)")


def _rows(block_size: int, d: int) -> int:
    """Rows a quantizer program reads at a time (a block of ``block_size`` in steps that keep the tile small)."""
    return min(block_size, 32 if tk.block_d(d) <= 128 else 16)


def key_mean(k: torch.Tensor, block_size: int, kv_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, H, D)`` float32 mean of ``k`` ``(B, S, H, D)`` over each sample's first ``min(S, kv_lengths[b])``
    tokens (all ``S`` without ``kv_lengths``; 0 for a sample with none). Keys past the limit are not read, so
    their values (padding, uninitialised memory) do not matter. Deterministic: per-block float32 sums, then
    PyTorch's sum over blocks."""
    batch, s, heads, d = k.shape
    n_blocks = triton.cdiv(s, block_size)
    partial = torch.empty((batch, heads, n_blocks, d), dtype=torch.float32, device=k.device)
    has_kv = kv_lengths is not None
    with tk._on_device(k):
        for part in tk._samples(batch, tk._split_batch(k)):
            kp = k[part]
            _key_sum_kernel[(n_blocks, kp.shape[0] * heads)](
                kp, kv_lengths[part] if has_kv else partial, partial[part], *kp.stride(), heads, s, n_blocks,
                D=d, BLOCK_D=tk.block_d(d), BLOCK_SIZE=block_size, ROWS=_rows(block_size, d), HAS_KV_LEN=has_kv,
                num_warps=4,
            )
    count = kv_lengths.clamp(0, s) if has_kv else torch.full((batch,), s, device=k.device)
    return (partial.sum(2) / count.clamp_min(1).to(torch.float32).view(batch, 1, 1)).contiguous()


def quantize(x: torch.Tensor, block_size: int, mean: torch.Tensor | None = None, *, smooth: bool = False,
             kv_lengths: torch.Tensor | None = None):
    """``(x8, scales)``, plus ``x . mean`` per row when ``mean`` is given and not ``smooth``.

    Args:
        x: ``(B, S, H, D)`` 16-bit (any strides).
        mean: ``(B, H, D)`` float32, contiguous: subtracted first (``smooth``) or dotted with each row.
        kv_lengths: ``(B,)`` integer, keys only: rows at or past ``kv_lengths[b]`` are not read and become 0 (they
            take no part in a block's scale).

    Returns:
        ``x8`` ``(B, S, H, D)`` ``float8_e4m3fn`` contiguous, ``scales`` ``(B, H, ceil(S / block_size))`` float32,
        and the ``(B, H, S)`` float32 row dots (``None`` unless asked for).
    """
    batch, s, heads, d = x.shape
    n_blocks = triton.cdiv(s, block_size)
    out = torch.empty((batch, s, heads, d), dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty((batch, heads, n_blocks), dtype=torch.float32, device=x.device)
    if mean is None and smooth:
        raise ValueError("fp8.quantize: smooth=True subtracts a mean; pass mean ((B, H, D) float32)")
    row_dot = mean is not None and not smooth
    dots = torch.empty((batch, heads, s), dtype=torch.float32, device=x.device) if row_dot else scales
    mean_arg = mean if mean is not None else scales
    has_kv = kv_lengths is not None
    with tk._on_device(x):
        # per sample where the kernels' 32-bit offsets or the grid would not fit, as the attention kernels do
        for part in tk._samples(batch, tk._split_batch(x, out)):
            xp = x[part]
            _quantize_kernel[(n_blocks, xp.shape[0] * heads)](
                xp, mean_arg[part] if mean is not None else mean_arg, kv_lengths[part] if has_kv else scales,
                out[part], scales[part], dots[part], *xp.stride(), heads, s, n_blocks,
                D=d, BLOCK_D=tk.block_d(d), BLOCK_SIZE=block_size, ROWS=_rows(block_size, d), SMOOTH=smooth,
                ROW_DOT=row_dot, HAS_KV_LEN=has_kv, HAS_MEAN=mean is not None, num_warps=4,
            )
    return out, scales, (dots if row_dot else None)


def forward(q, k, v, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len, scale):
    """``out (B, S, H, D)`` in v's dtype and ``lse (B, H, S)`` float32 of attention with e4m3 QK^T."""
    check_device(q.device)
    k_mean = key_mean(k, block_size, kv_lengths)  # (B, H, D)
    k8, k_scale, _ = quantize(k, block_size, k_mean, smooth=True, kv_lengths=kv_lengths)
    q8, q_scale, q_dot_mean = quantize(q, block_size, k_mean)
    out, lse = tk.forward(q8, k8, v, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len, scale,
                          fp8_scales=(q_scale, k_scale))
    # scores of smoothed keys are short of scale * q . mean on every key of a row: the lse gets it back
    lse = torch.where(torch.isfinite(lse), lse + scale * q_dot_mean, lse)
    return out, lse
