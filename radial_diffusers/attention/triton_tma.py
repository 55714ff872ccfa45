"""Hopper forward kernel: Q, K, V through TMA tensor descriptors, one flat pipelined loop over the kept key tiles.

Same contract as ``triton_kernels._fwd_kernel`` (see that module's invariants: BSR layout, ``kv_limit`` masking,
base-2 softmax with fp32 accumulation, ``out = 0`` / ``lse = -inf`` on rows with no attendable key), different
schedule:

* The streamed K/V tiles and the output go through host-built tensor descriptors over the ``(B, S, H, D)`` tensors
  Diffusers passes (block ``[1, rows, 1, BLOCK_D]``, no copies); the Q tile, read once, through a 2-D descriptor the
  program builds over its (batch, head)'s rows, so the QK^T products take Q from shared memory, not registers
  (``triton_common._resident_tile``). The hardware zero-fills rows past ``S`` and columns past ``D`` and clips the
  output store, so no load carries a mask.
* The loop is flat over (kept block, sub-tile) pairs, so Triton pipelines single key tiles (not whole layout
  blocks) through ``num_stages`` shared-memory buffers, and can warp-specialize it (a producer warp issuing TMA
  copies, consumer warpgroups on wgmma and softmax).
* Kept blocks are ascending, so the tiles wholly below ``kv_limit`` come first: they run without a key mask; only
  the tiles that cross it are masked, and tiles wholly past it are skipped.
* ``qk_scale = scale * log2(e)`` (> 0) is applied in the exponent, ``exp2(qk * qk_scale - m)``, one FMA per score.

Used on sm_90+ (chosen by ``triton_kernels.kernel_variant``), and under ``TRITON_INTERPRET=1`` when asked for, where
the interpreter runs the same descriptors and loop (warp specialization is a scheduling hint it ignores).
"""

from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl

from .triton_common import _batch_head_kv_limit, _index_scaled, _live_tiles, _resident_tile, _tma_tile

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton < 3.4: no host tensor descriptors, so no TMA variant
    TensorDescriptor = None

# (BLOCK_M, BLOCK_N, num_warps, num_stages, warp_specialize), best first for H100 at head_dim 128, bf16. The default
# takes 128-key tiles (the 128 x D accumulator is rescaled once per 128-token layout block) on two warpgroups, with Q
# and a 3-stage K/V ring in shared memory (230,400 of 232,448 B): tiles prefetched two iterations ahead (see
# triton_common._index_scaled; a 2-stage ring issues each tile at the end of the iteration before the one that uses
# it, leaving its latency exposed); the warp-specialized ones are those Triton 3.9 can split for sm_90 (one TMA
# producer warp, one consumer warpgroup with setmaxnreg): 64-row query tiles on 4 warps (128-row tiles on 4 warps
# fail its warp-specialization pass, and on 8 warps it leaves the loop unspecialized); 128x64x8x2 is the widest tile
# that fits beside Q at head_dim 256; 4 stages (3 tiles ahead) fit at head_dim 64 (LTX-Video, CogVideoX). The tuner
# times them against each other on the GPU; bench/triton_compile_check.py checks the default and the specialized ones
# compile for sm_90 within shared memory. The warp-specialized ones come after the plain configs of their tile, so
# that no block size's fixed default (RADIAL_TRITON_AUTOTUNE=0, CUDA-graph capture) is one before a GPU run has
# checked them (none has yet; at block 64 the default was 64x64x4x2x1).
CONFIGS = [(128, 128, 8, 3, 0), (128, 128, 8, 4, 0), (128, 128, 8, 2, 0), (128, 64, 8, 3, 0), (128, 64, 8, 2, 0),
           (64, 64, 4, 3, 0), (64, 32, 4, 3, 0), (64, 64, 4, 2, 1), (64, 32, 4, 3, 1), (32, 32, 4, 2, 0),
           (16, 16, 4, 2, 0)]
SHARED_BYTES = 232448  # sm_90 opt-in shared memory per block
# beyond the tiles: the pipeline's barriers and the compiler's staging (24-1,080 B in the sm_90 builds of the plain
# configs here and in triton_tma_backward; bench/triton_compile_check.py fails a build over estimate + reserve)
SHARED_RESERVE = 2048
# Triton 3.9's warp-specialized schedule allocates up to 2.34x the tiles (its own per-partition buffers and
# barriers; dQ's 64x64x4x2x1 with kv_lengths, bench/triton_compile_check.py)
WS_SHARED_FACTOR = 2.4


def available() -> bool:
    """Whether this Triton build has host and device-built tensor descriptors (with a scratch allocator) and
    ``tl.range(..., warp_specialize=...)``."""
    return (TensorDescriptor is not None and hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")
            and "warp_specialize" in inspect.signature(tl.range.__init__).parameters)


def _scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Global scratch of a launch (128 B per program for each descriptor it builds), from PyTorch's caching allocator
    on the current device: freed after the launch, reused only by work queued behind it on the stream."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def ensure_allocator() -> None:
    """Give Triton the scratch allocator the kernels' device-built descriptors need, unless one is set already
    (``triton.set_allocator``: the user's own is kept). Per thread: Triton keeps it in a context variable, and
    PyTorch runs CUDA backward on threads of its own, where this one is installed unless the user set one there. On
    a Triton whose allocator cannot be inspected (no ``triton.runtime._allocation._allocator``) it is installed."""
    from triton.runtime import _allocation

    null = getattr(_allocation, "NullAllocator", None)
    current = getattr(_allocation, "_allocator", None)
    if null is None or current is None or isinstance(current.get(), null):
        triton.set_allocator(_scratch)


def shared_bytes(bm: int, bn: int, block_d: int, element_size: int, stages: int, warp_specialize: int = 0,
                 qk_element_size: int | None = None) -> int:
    """Estimated shared memory of a config's tiles: Q and ``stages`` K and V tiles; ``element_size`` is V's,
    ``qk_element_size`` Q's and K's (default the same; fp8: 1). Warp-specialized: the tiles at V's size, scaled (its
    buffers do not shrink with fp8 Q / K as the plain pipeline's do: 119,520 B at 64x32x4x3 on sm_90)."""
    if warp_specialize:
        return int((bm + 2 * stages * bn) * block_d * element_size * WS_SHARED_FACTOR)
    qk = element_size if qk_element_size is None else qk_element_size
    return (bm * qk + stages * bn * (qk + element_size)) * block_d


def candidate_configs(block_size: int, block_d: int, element_size: int,
                      qk_element_size: int | None = None) -> list[tuple[int, int, int, int, int]]:
    """The configs whose tiles divide ``block_size`` and whose buffers fit sm_90's shared memory (with
    ``SHARED_RESERVE`` left for the barriers)."""
    return [cfg for cfg in CONFIGS
            if block_size % cfg[0] == 0 and block_size % cfg[1] == 0
            and shared_bytes(cfg[0], cfg[1], block_d, element_size, cfg[3], cfg[4], qk_element_size)
            <= SHARED_BYTES - SHARED_RESERVE]


def ineligible(tensors: tuple[torch.Tensor, ...], scale: float) -> str | None:
    """Why TMA descriptors cannot address these ``(B, S, H, D)`` tensors (``None`` when they can): the last
    dimension must be unit-stride, the others 16-byte multiples and not broadcast, the base 16-byte aligned, rows at
    least 16 bytes."""
    if scale <= 0:
        return f"the softmax scale must be positive for the TMA kernel (got {scale})"
    for t in tensors:
        es = t.element_size()
        strides = tma_strides(t)
        if t.shape[-1] * es < 16:
            return f"head_dim {t.shape[-1]} is under 16 bytes"
        if strides[-1] != 1:
            return f"head_dim is not unit-stride (strides {tuple(t.stride())})"
        if any((s * es) % 16 for s in strides[:-1]):
            return f"strides {tuple(t.stride())} are not multiples of 16 bytes"
        if 0 in strides:  # no TMA box over a broadcast dimension
            return f"strides {tuple(t.stride())} broadcast a dimension (stride 0)"
        if t.data_ptr() % 16:
            return "the tensor's base address is not 16-byte aligned"
    return None


def tma_strides(t: torch.Tensor) -> tuple[int, ...]:
    """``t``'s strides (in elements) as a descriptor takes them: a size-1 dimension's stride, which never moves an
    address and which PyTorch leaves arbitrary (0 after ``expand``, 1 after some permutes), is replaced by the span of
    the dimensions after it, so that it is a nonzero multiple of 16 bytes whenever those are."""
    strides = list(t.stride())
    for i in range(t.dim() - 1, -1, -1):
        if t.shape[i] == 1:
            strides[i] = strides[i + 1] * t.shape[i + 1] if i + 1 < t.dim() else 1
    return tuple(strides)


def descriptor(t: torch.Tensor, rows: int, block_d: int):
    """A TMA descriptor over a ``(B, S, H, D)`` tensor reading ``[1, rows, 1, block_d]`` boxes (size-1 dimensions
    restrided by :func:`tma_strides`: the same addresses)."""
    strides = tma_strides(t)
    if strides != t.stride():
        t = t.as_strided(t.shape, strides, t.storage_offset())
    return TensorDescriptor.from_tensor(t, [1, rows, 1, block_d])


@triton.jit
def _attend_tiles(q, acc, l_i, m_i, t_start, t_end, desc_k, desc_v, Indices, row_off, b, h, kv_limit, qk_scale,
                  KScale, scale_off, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  MASKED: tl.constexpr, PADDED: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  FP8: tl.constexpr, WARP_SPECIALIZE: tl.constexpr):
    """Online softmax over key tiles ``t_start..t_end`` of the flat (kept block, sub-tile) sequence. MASKED: tiles
    crossing ``kv_limit``; PADDED: it may fall below ``seq_len`` (``kv_lengths``), where V is read, not zero-filled."""
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    for t in tl.range(t_start, t_end, warp_specialize=WARP_SPECIALIZE):
        kb = tl.load(Indices + row_off + t // SUB)
        n0 = kb * BLOCK_SIZE + (t % SUB) * BLOCK_N
        k = _tma_tile(desc_k, b, n0, h, BLOCK_N, BLOCK_D, UPCAST)
        v = _tma_tile(desc_v, b, n0, h, BLOCK_N, BLOCK_D, UPCAST)
        tile_scale = _index_scaled(kb, qk_scale)  # = qk_scale; prefetches K/V num_stages - 1 tiles ahead
        if FP8:  # the key block's e4m3 scale (> 0)
            tile_scale = tile_scale * tl.load(KScale + scale_off + kb)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:  # keys past kv_limit: score -inf
            n_ok = n0 + tl.arange(0, BLOCK_N) < kv_limit
            qk = tl.where(n_ok[None, :], qk, float("-inf"))
            if PADDED:  # and value 0, so non-finite padding cannot reach 0 * v
                v = tl.where(n_ok[:, None], v, 0.0)
            m_new = tl.maximum(m_i, tl.max(qk, 1) * tile_scale)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:  # every score finite: the running max is finite after the first tile
            m_new = tl.maximum(m_i, tl.max(qk, 1) * tile_scale)
            m_use = m_new
        p = tl.exp2(tile_scale * qk - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_tma_kernel(
    desc_q, Q, desc_k, desc_v, desc_o, Lse, Counts, Indices, KvLen, QScale, KScale,
    stride_qb, stride_qs, stride_qh, idx_stride, H, seq_len, n_blocks, qk_scale,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MAX_COUNT: tl.constexpr, HAS_KV_LEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FP8: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, kv_limit = _batch_head_kv_limit(pid_bh, H, seq_len, KvLen, HAS_KV_LEN)
    row_block = pid_m // (BLOCK_SIZE // BLOCK_M)
    m0 = pid_m * BLOCK_M
    row_off = row_block * idx_stride
    q = _resident_tile(desc_q, Q, b, h, m0, seq_len, stride_qb, stride_qs, stride_qh, D, BLOCK_M, BLOCK_D, UPCAST,
                       WARP_SPECIALIZE)
    scale_off = pid_bh * n_blocks
    if FP8:  # q and k are e4m3 with one scale per (batch, head, layout block): fold q's into the softmax scale
        qk_scale = qk_scale * tl.load(QScale + scale_off + row_block)
    n_full, n_live = _live_tiles(Counts, Indices, row_block, row_off, kv_limit, BLOCK_SIZE, MAX_COUNT)
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, l_i, m_i = _attend_tiles(q, acc, l_i, m_i, 0, n_full * SUB, desc_k, desc_v, Indices, row_off, b, h,
                                  kv_limit, qk_scale, KScale, scale_off, BLOCK_SIZE, BLOCK_N, BLOCK_D, False, False,
                                  UPCAST, DOT_PRECISION, FP8, WARP_SPECIALIZE)
    acc, l_i, m_i = _attend_tiles(q, acc, l_i, m_i, n_full * SUB, n_live * SUB, desc_k, desc_v, Indices, row_off,
                                  b, h, kv_limit, qk_scale, KScale, scale_off, BLOCK_SIZE, BLOCK_N, BLOCK_D, True,
                                  HAS_KV_LEN, UPCAST, DOT_PRECISION, FP8, False)  # the tiles crossing kv_limit

    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    desc_o.store([b, m0, h, 0], out.to(desc_o.dtype).reshape(1, BLOCK_M, 1, BLOCK_D))
    offs_m = m0 + tl.arange(0, BLOCK_M)
    tl.store(Lse + pid_bh * seq_len + offs_m, lse, mask=offs_m < seq_len)
