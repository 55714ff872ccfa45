"""Triton helpers shared by the portable and the Hopper attention kernels (program coordinates, kept-tile counts,
TMA tile loads, the index-load staging hint)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _batch_head_kv_limit(pid_bh, H, seq_len, KvLen, HAS_KV_LEN: tl.constexpr):
    """(batch, head, number of attendable keys) of a program's (B * H) index."""
    b = pid_bh // H
    h = pid_bh % H
    kv_limit = seq_len
    if HAS_KV_LEN:
        kv_limit = tl.minimum(kv_limit, tl.load(KvLen + b))
    return b, h, kv_limit


@triton.jit
def _live_tiles(Counts, Indices, row_block, row_off, kv_limit, BLOCK_SIZE: tl.constexpr, MAX_COUNT: tl.constexpr):
    """``(n_full, n_live)`` of a query block row: its kept key blocks ascend, so the first ``n_full`` lie wholly
    below ``kv_limit`` and the next, up to ``n_live``, cross it (the rest lie past it)."""
    count = tl.load(Counts + row_block)
    offs_c = tl.arange(0, MAX_COUNT)
    in_row = offs_c < count
    kept = tl.load(Indices + row_off + offs_c, mask=in_row, other=0)
    n_full = tl.sum((in_row & ((kept + 1) * BLOCK_SIZE <= kv_limit)).to(tl.int32), 0)
    n_live = tl.sum((in_row & (kept * BLOCK_SIZE < kv_limit)).to(tl.int32), 0)
    return n_full, n_live


@triton.jit
def _tma_tile(desc, b, row, h, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    """A ``(ROWS, BLOCK_D)`` tile of a ``(B, S, H, D)`` tensor through its TMA descriptor (zeros past S and D)."""
    x = desc.load([b, row, h, 0]).reshape(ROWS, BLOCK_D)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _resident_tile(desc, X, b, h, row, seq_len, stride_b, stride_s, stride_h, D: tl.constexpr, ROWS: tl.constexpr,
                   BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, HOST_DESCRIPTOR: tl.constexpr):
    """A ``(ROWS, BLOCK_D)`` tile a program loads once (forward: Q; dQ: Q and dO; dK/dV: K and V) of the
    ``(B, S, H, D)`` tensor ``X`` (zeros past ``seq_len`` and ``D``).

    Read through a TMA descriptor the program builds over its (batch, head)'s ``(S, D)`` rows, so the tile reaches
    the products without the reshape of ``_tma_tile``'s 4-D box: Triton 3.9 takes a product's first operand from
    shared memory only when it comes straight from a load, and through the reshape keeps it in registers (64 per
    thread for K and V at 128 x 128 on 8 warps: the dK/dV kernel's 64-row query tiles spilled). The descriptor lives
    in the launch's global scratch (``triton_tma.ensure_allocator``). ``HOST_DESCRIPTOR``: through the host's 4-D
    ``desc`` instead, for warp-specialized loops (Triton 3.9's warp specializer rejects device-built descriptors).
    """
    if HOST_DESCRIPTOR:
        x = _tma_tile(desc, b, row, h, ROWS, BLOCK_D, False)
    else:
        base = X + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
        rows = tl.make_tensor_descriptor(base, shape=[seq_len, D], strides=[stride_s, 1], block_shape=[ROWS, BLOCK_D])
        x = rows.load([row, 0])
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _index_scaled(index, scale):
    """``scale``, through a select on ``index`` (a kept block's index or a row offset from it: never negative), to be
    the first factor of the scores.

    A hint to Triton's software pipeliner, not arithmetic. The Hopper loops load the index of their next key / query
    tile, then the tile by TMA at that index: a chain of two loads. The pipeliner splits the ``num_stages - 1`` stages
    of latency between the links of such a chain, so the TMA tiles were prefetched one iteration ahead at 2-4 stages
    (issued at the end of an iteration, awaited at the top of the next). When the index is also used at distance 0 of
    a product (here, through the scale of the scores), the pipeliner leaves the index load in place (a load used at
    two indirection levels is not staged) and prefetches the tiles ``num_stages - 1`` iterations ahead. Its search
    visits the first operand of a product first, so ``_index_scaled(...) * scores``, not the reverse.
    bench/triton_compile_check.py checks the prefetch distance of the sm_90 builds.
    """
    return tl.where(index >= 0, scale, 0.0)
