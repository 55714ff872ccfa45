"""Hopper backward kernels: dQ and dK/dV with every 2-D tile through TMA tensor descriptors and flat pipelined loops.

Same contract as ``triton_kernels._bwd_dq_kernel`` / ``_bwd_dkdv_kernel`` (``delta = rowsum(dO * O) - dLSE`` and the
forward's natural-log ``lse`` given per row; rows without keys have ``lse = -inf`` and get no gradient), the schedule
of ``triton_tma``'s forward:

* dQ: per query tile, one flat loop over its kept key tiles (K and V by TMA into a ``num_stages`` ring); tiles wholly
  below ``kv_limit`` run unmasked, those crossing it masked, those past it are skipped.
* dK/dV: per key tile, one flat loop over the (query block, sub-tile) pairs of the transposed layout, Q and dO by
  TMA. No mask in the loop: a key past ``kv_limit`` only reaches its own rows of dK and dV (lse and delta are
  given), which are zeroed at the end.

The tiles a program reads once (dQ: Q and dO; dK/dV: K and V) come through descriptors it builds over its (batch,
head)'s rows, so the products take them from shared memory (``triton_common._resident_tile``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import _batch_head_kv_limit, _index_scaled, _live_tiles, _resident_tile, _tma_tile
from .triton_tma import SHARED_BYTES, SHARED_RESERVE, WS_SHARED_FACTOR

# (BLOCK_M, BLOCK_N, num_warps, num_stages, warp_specialize), best first for H100 at head_dim 128, bf16; BLOCK_M is
# the query tile, BLOCK_N the key tile (bench/triton_compile_check.py checks the defaults compile for sm_90 without
# spills). dK/dV holds two fp32 accumulators of BLOCK_N x D; its default takes 128 keys on two warpgroups (64 each)
# and 64-row query tiles, so every product has N >= 64 (keys x queries for the scores, keys x D for the
# accumulators), with K and V in shared memory (243 registers, no spills; with K and V in registers it spilled 524
# B). Warp-specialized schedules take up to 2.4x the shared memory: they fit at head_dim 64, not 128.
CONFIGS = {
    "dq_tma": [(128, 64, 8, 3, 0), (128, 64, 8, 4, 0), (128, 128, 8, 2, 0), (64, 64, 4, 3, 0), (64, 64, 4, 2, 1),
               (64, 32, 4, 3, 0), (32, 32, 4, 2, 0), (16, 16, 4, 2, 0)],
    "dkdv_tma": [(64, 128, 8, 3, 0), (64, 128, 8, 4, 0), (32, 64, 8, 3, 0), (16, 128, 8, 3, 0), (64, 64, 8, 3, 0),
                 (32, 128, 8, 2, 0), (32, 64, 4, 3, 0), (32, 32, 4, 2, 0), (16, 16, 4, 2, 0)],
}


def shared_bytes(kind: str, bm: int, bn: int, block_d: int, element_size: int, stages: int,
                 warp_specialize: int = 0) -> int:
    """Estimated shared memory of a config's tiles: two streamed tiles per stage (dQ: K and V; dK/dV: Q and dO) and
    the resident pair (scaled when warp-specialized)."""
    streamed, resident = (bn, bm) if kind == "dq_tma" else (bm, bn)
    tiles = (2 * stages * streamed + 2 * resident) * block_d * element_size
    return int(tiles * WS_SHARED_FACTOR) if warp_specialize else tiles


def candidate_configs(kind: str, block_size: int, block_d: int, element_size: int) -> list[tuple]:
    """Configs of ``kind`` whose tiles divide ``block_size`` and whose tiles fit sm_90's shared memory (with
    ``SHARED_RESERVE`` left for the barriers)."""
    return [(bm, bn, warps, stages, ws) for bm, bn, warps, stages, ws in CONFIGS[kind]
            if block_size % bm == 0 and block_size % bn == 0
            and shared_bytes(kind, bm, bn, block_d, element_size, stages, ws) <= SHARED_BYTES - SHARED_RESERVE]


@triton.jit
def _lse2_delta(Lse, Delta, row0, offs, seq_len):
    """Base-2 lse (``+inf`` on rows without keys and rows past ``seq_len``, so their p is 0) and delta of rows."""
    ok = offs < seq_len
    lse = tl.load(Lse + row0 + offs, mask=ok, other=float("inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    return lse2, tl.load(Delta + row0 + offs, mask=ok, other=0.0)


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, t_start, t_end, desc_k, desc_v, Indices, row_off, b, h, kv_limit, qk_scale,
              BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
              PADDED: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
              WARP_SPECIALIZE: tl.constexpr):
    """dQ over key tiles ``t_start..t_end``; MASKED and PADDED as in ``triton_tma._attend_tiles``."""
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    for t in tl.range(t_start, t_end, warp_specialize=WARP_SPECIALIZE):
        kb = tl.load(Indices + row_off + t // SUB)
        n0 = kb * BLOCK_SIZE + (t % SUB) * BLOCK_N
        k = _tma_tile(desc_k, b, n0, h, BLOCK_N, BLOCK_D, UPCAST)
        v = _tma_tile(desc_v, b, n0, h, BLOCK_N, BLOCK_D, UPCAST)
        n_ok = n0 + tl.arange(0, BLOCK_N) < kv_limit
        if PADDED:  # keys past kv_limit: k and v 0, so non-finite padding cannot reach 0 * k (before the scores:
            k = tl.where(n_ok[:, None], k, 0.0)  # zeroed after them, the warp-specialized build fails to compile)
            v = tl.where(n_ok[:, None], v, 0.0)
        # = qk_scale; prefetches K/V num_stages - 1 tiles ahead
        s = _index_scaled(kb, qk_scale) * tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:  # before exp2, so a key past kv_limit cannot overflow it
            s = tl.where(n_ok[None, :], s, float("-inf"))
        p = tl.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _bwd_dq_tma_kernel(
    desc_q, Q, desc_k, desc_v, desc_do, DO, desc_dq, Lse, Delta, Counts, Indices, KvLen,
    stride_qb, stride_qs, stride_qh, stride_ob, stride_os, stride_oh, idx_stride, H, seq_len, qk_scale, sm_scale,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MAX_COUNT: tl.constexpr, HAS_KV_LEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, kv_limit = _batch_head_kv_limit(pid_bh, H, seq_len, KvLen, HAS_KV_LEN)
    row_block = pid_m // (BLOCK_SIZE // BLOCK_M)
    m0 = pid_m * BLOCK_M
    row_off = row_block * idx_stride
    q = _resident_tile(desc_q, Q, b, h, m0, seq_len, stride_qb, stride_qs, stride_qh, D, BLOCK_M, BLOCK_D, UPCAST,
                       WARP_SPECIALIZE)
    do = _resident_tile(desc_do, DO, b, h, m0, seq_len, stride_ob, stride_os, stride_oh, D, BLOCK_M, BLOCK_D, UPCAST,
                        WARP_SPECIALIZE)
    lse2, delta = _lse2_delta(Lse, Delta, pid_bh * seq_len, m0 + tl.arange(0, BLOCK_M), seq_len)
    n_full, n_live = _live_tiles(Counts, Indices, row_block, row_off, kv_limit, BLOCK_SIZE, MAX_COUNT)
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq = _dq_tiles(dq, q, do, lse2, delta, 0, n_full * SUB, desc_k, desc_v, Indices, row_off, b, h, kv_limit,
                   qk_scale, BLOCK_SIZE, BLOCK_N, BLOCK_D, False, False, UPCAST, DOT_PRECISION, WARP_SPECIALIZE)
    dq = _dq_tiles(dq, q, do, lse2, delta, n_full * SUB, n_live * SUB, desc_k, desc_v, Indices, row_off, b, h,
                   kv_limit, qk_scale, BLOCK_SIZE, BLOCK_N, BLOCK_D, True, HAS_KV_LEN, UPCAST, DOT_PRECISION, False)
    desc_dq.store([b, m0, h, 0], (dq * sm_scale).to(desc_dq.dtype).reshape(1, BLOCK_M, 1, BLOCK_D))


@triton.jit
def _bwd_dkdv_tma_kernel(
    desc_q, desc_k, K, desc_v, V, desc_do, desc_dk, desc_dv, Lse, Delta, TCounts, TIndices, KvLen,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, tidx_stride, H, seq_len, qk_scale, sm_scale,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_KV_LEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, kv_limit = _batch_head_kv_limit(pid_bh, H, seq_len, KvLen, HAS_KV_LEN)
    col_block = pid_n // (BLOCK_SIZE // BLOCK_N)
    n0 = pid_n * BLOCK_N
    k = _resident_tile(desc_k, K, b, h, n0, seq_len, stride_kb, stride_ks, stride_kh, D, BLOCK_N, BLOCK_D, UPCAST,
                       WARP_SPECIALIZE)
    v = _resident_tile(desc_v, V, b, h, n0, seq_len, stride_vb, stride_vs, stride_vh, D, BLOCK_N, BLOCK_D, UPCAST,
                       WARP_SPECIALIZE)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_M
    col_off = col_block * tidx_stride
    for t in tl.range(0, tl.load(TCounts + col_block) * SUB, warp_specialize=WARP_SPECIALIZE):
        m0 = tl.load(TIndices + col_off + t // SUB) * BLOCK_SIZE + (t % SUB) * BLOCK_M
        q = _tma_tile(desc_q, b, m0, h, BLOCK_M, BLOCK_D, UPCAST)
        do = _tma_tile(desc_do, b, m0, h, BLOCK_M, BLOCK_D, UPCAST)
        lse2, delta = _lse2_delta(Lse, Delta, pid_bh * seq_len, m0 + tl.arange(0, BLOCK_M), seq_len)
        # (BLOCK_N, BLOCK_M): keys x queries
        # = qk_scale; prefetches Q/dO num_stages - 1 tiles ahead
        p_t = tl.exp2(_index_scaled(m0, qk_scale) * tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
                      - lse2[None, :])
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dk = tl.dot((p_t * (dp_t - delta[None, :])).to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    # keys past kv_limit (and their possibly non-finite products) only ever reached their own rows
    n_ok = (n0 + tl.arange(0, BLOCK_N) < kv_limit)[:, None]
    dk = tl.where(n_ok, dk * sm_scale, 0.0)
    dv = tl.where(n_ok, dv, 0.0)
    desc_dk.store([b, n0, h, 0], dk.to(desc_dk.dtype).reshape(1, BLOCK_N, 1, BLOCK_D))
    desc_dv.store([b, n0, h, 0], dv.to(desc_dv.dtype).reshape(1, BLOCK_N, 1, BLOCK_D))
