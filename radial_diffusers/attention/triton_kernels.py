"""Triton block-sparse attention over a BSR layout: forward (out + log-sum-exp) and backward (dQ; dK/dV).

Kernel invariants (all three kernels):

* q, k, v, out, dO are ``(B, S, H, D)`` with arbitrary strides (passed per axis); the head dimension is padded to
  ``BLOCK_D`` (a power of two >= 16) with masked loads, so any ``D <= 256`` works.
* The layout is the BSR of :class:`~radial_diffusers.BlockLayout`: ``counts[r]`` kept key blocks of
  ``BLOCK_SIZE`` tokens for query block ``r``, their indices in ``indices[r, :counts[r]]`` (row stride
  ``idx_stride``). The backward dK/dV kernel walks the transposed layout (query blocks per key block).
* A program covers ``BLOCK_M`` query rows (or ``BLOCK_N`` key rows in dK/dV), a sub-tile of one layout block
  (``BLOCK_M`` and ``BLOCK_N`` divide ``BLOCK_SIZE``); each kept block is walked in sub-tiles.
* Keys at positions ``>= min(seq_len, kv_lengths[b])`` are masked to probability 0. Softmax runs in base 2 on
  ``qk * scale * log2(e)`` with fp32 accumulation; ``lse`` is returned in natural log. A row with no attendable
  key gets ``out = 0`` and ``lse = -inf``, and no gradient.
* ``UPCAST`` casts tiles to fp32 before ``tl.dot`` (used for fp32 inputs, and for bf16 under ``TRITON_INTERPRET=1``,
  whose bf16 dot is wrong), multiplied in IEEE fp32 (not TF32); otherwise fp16/bf16 tiles go to the tensor cores
  and probabilities are cast to v's dtype (fp16 runs that way under the interpreter too).

The Hopper kernels (TMA descriptors, flat pipelined loops) live in ``triton_tma`` (forward) and
``triton_tma_backward``; ``kernel_variant`` chooses between them and the portable kernels here. Launch configs are chosen by ``triton_tuning``.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from . import triton_tma, triton_tma_backward, triton_tuning
from .triton_common import _batch_head_kv_limit
from .triton_tma import _fwd_tma_kernel
from .triton_tma_backward import _bwd_dkdv_tma_kernel, _bwd_dq_tma_kernel
from .triton_tuning import interpreting

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# ----------------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _load_rows(base, offs, s_row, offs_d, s_d, row_ok, d_ok, UPCAST: tl.constexpr):
    """A (rows, BLOCK_D) tile of a BSHD tensor (``base`` already at the batch/head), zero outside the masks."""
    x = tl.load(base + offs[:, None] * s_row + offs_d[None, :] * s_d, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _fwd_kernel(
    Q, K, V, Out, Lse, Counts, Indices, KvLen, QScale, KScale,
    sqb, sqs, sqh, sqd, skb, sks, skh, skd, svb, svs, svh, svd, sob, sos, soh, sod,
    idx_stride, H, seq_len, n_blocks, qk_scale,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_KV_LEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, FP8: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, kv_limit = _batch_head_kv_limit(pid_bh, H, seq_len, KvLen, HAS_KV_LEN)
    SUB_M: tl.constexpr = BLOCK_SIZE // BLOCK_M
    row_block = pid_m // SUB_M
    if FP8:  # q and k are e4m3 with one scale per (batch, head, layout block): fold q's into the softmax scale
        qk_scale = qk_scale * tl.load(QScale + pid_bh * n_blocks + row_block)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    m_ok = offs_m < seq_len

    q = _load_rows(Q + b * sqb + h * sqh, offs_m, sqs, offs_d, sqd, m_ok, d_ok, UPCAST)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    count = tl.load(Counts + row_block)
    for i in range(count):
        kb = tl.load(Indices + row_block * idx_stride + i)
        for sub in tl.static_range(BLOCK_SIZE // BLOCK_N):
            offs_n = kb * BLOCK_SIZE + sub * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = offs_n < kv_limit
            k = _load_rows(K + b * skb + h * skh, offs_n, sks, offs_d, skd, n_ok, d_ok, UPCAST)
            v = _load_rows(V + b * svb + h * svh, offs_n, svs, offs_d, svd, n_ok, d_ok, UPCAST)
            if FP8:
                s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * (
                    qk_scale * tl.load(KScale + pid_bh * n_blocks + kb))
            else:
                s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            s = tl.where(n_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(Out + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :] * sod,
             out.to(Out.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(Lse + pid_bh * seq_len + offs_m, lse, mask=m_ok)


# ----------------------------------------------------------------------------------------------------------------
# backward: dQ per query sub-tile over its kept key blocks
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ, Counts, Indices, KvLen,
    sqb, sqs, sqh, sqd, skb, sks, skh, skd, svb, svs, svh, svd, sdob, sdos, sdoh, sdod, sgb, sgs, sgh, sgd,
    idx_stride, H, seq_len, qk_scale, sm_scale,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_KV_LEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, kv_limit = _batch_head_kv_limit(pid_bh, H, seq_len, KvLen, HAS_KV_LEN)
    SUB_M: tl.constexpr = BLOCK_SIZE // BLOCK_M
    row_block = pid_m // SUB_M
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    m_ok = offs_m < seq_len

    io_mask = m_ok[:, None] & d_ok[None, :]
    q = _load_rows(Q + b * sqb + h * sqh, offs_m, sqs, offs_d, sqd, m_ok, d_ok, UPCAST)
    do = _load_rows(DO + b * sdob + h * sdoh, offs_m, sdos, offs_d, sdod, m_ok, d_ok, UPCAST)
    lse = tl.load(Lse + pid_bh * seq_len + offs_m, mask=m_ok, other=float("inf"))
    # base-2 lse; rows without keys (lse = -inf) and padded rows get +inf so that p = 0
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(Delta + pid_bh * seq_len + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    count = tl.load(Counts + row_block)
    for i in range(count):
        kb = tl.load(Indices + row_block * idx_stride + i)
        for sub in tl.static_range(BLOCK_SIZE // BLOCK_N):
            offs_n = kb * BLOCK_SIZE + sub * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = offs_n < kv_limit
            k = _load_rows(K + b * skb + h * skh, offs_n, sks, offs_d, skd, n_ok, d_ok, UPCAST)
            v = _load_rows(V + b * svb + h * svh, offs_n, svs, offs_d, svd, n_ok, d_ok, UPCAST)
            # masked before exp2: a masked key's score (0, from zero-filled k) minus a very negative lse would
            # overflow to inf
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            s = tl.where(n_ok[None, :], s, float("-inf"))
            p = tl.exp2(s - lse2[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + b * sgb + h * sgh + offs_m[:, None] * sgs + offs_d[None, :] * sgd,
             dq.to(DQ.dtype.element_ty), mask=io_mask)


# ----------------------------------------------------------------------------------------------------------------
# backward: dK, dV per key sub-tile over the query blocks that attend it (transposed layout)
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV, TCounts, TIndices, KvLen,
    sqb, sqs, sqh, sqd, skb, sks, skh, skd, svb, svs, svh, svd, sdob, sdos, sdoh, sdod, sgb, sgs, sgh, sgd,
    tidx_stride, H, seq_len, qk_scale, sm_scale,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_KV_LEN: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h, kv_limit = _batch_head_kv_limit(pid_bh, H, seq_len, KvLen, HAS_KV_LEN)
    SUB_N: tl.constexpr = BLOCK_SIZE // BLOCK_N
    col_block = pid_n // SUB_N
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    n_ok = offs_n < kv_limit
    k = _load_rows(K + b * skb + h * skh, offs_n, sks, offs_d, skd, n_ok, d_ok, UPCAST)
    v = _load_rows(V + b * svb + h * svh, offs_n, svs, offs_d, svd, n_ok, d_ok, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    count = tl.load(TCounts + col_block)
    for i in range(count):
        qb = tl.load(TIndices + col_block * tidx_stride + i)
        for sub in tl.static_range(BLOCK_SIZE // BLOCK_M):
            offs_m = qb * BLOCK_SIZE + sub * BLOCK_M + tl.arange(0, BLOCK_M)
            m_ok = offs_m < seq_len
            q = _load_rows(Q + b * sqb + h * sqh, offs_m, sqs, offs_d, sqd, m_ok, d_ok, UPCAST)
            do = _load_rows(DO + b * sdob + h * sdoh, offs_m, sdos, offs_d, sdod, m_ok, d_ok, UPCAST)
            lse = tl.load(Lse + pid_bh * seq_len + offs_m, mask=m_ok, other=float("inf"))
            lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
            delta = tl.load(Delta + pid_bh * seq_len + offs_m, mask=m_ok, other=0.0)
            # (BLOCK_N, BLOCK_M): keys x queries
            s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
            s_t = tl.where(n_ok[:, None], s_t, float("-inf"))  # masked before exp2, as in dQ
            p_t = tl.exp2(s_t - lse2[None, :])
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    dk = dk * sm_scale
    out_mask = (offs_n < seq_len)[:, None] & d_ok[None, :]
    g_off = b * sgb + h * sgh + offs_n[:, None] * sgs + offs_d[None, :] * sgd
    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=out_mask)



# ----------------------------------------------------------------------------------------------------------------
# backward preamble: delta = rowsum(dO * O) - dLSE, per (batch, head, row), in fp32
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _delta_kernel(
    DO, O, Lse, DLse, Delta,
    sdob, sdos, sdoh, sdod, sob, sos, soh, sod,
    H, seq_len,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, HAS_DLSE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seq_len
    d_ok = offs_d < D
    do = _load_rows(DO + b * sdob + h * sdoh, offs_m, sdos, offs_d, sdod, m_ok, d_ok, True)
    o = _load_rows(O + b * sob + h * soh, offs_m, sos, offs_d, sod, m_ok, d_ok, True)
    delta = tl.sum(do * o, 1)
    if HAS_DLSE:  # the lse gradient of rows without keys (lse = -inf) does not flow
        lse = tl.load(Lse + pid_bh * seq_len + offs_m, mask=m_ok, other=0.0)
        dlse = tl.load(DLse + pid_bh * seq_len + offs_m, mask=m_ok, other=0.0)
        delta -= tl.where(lse == float("-inf"), 0.0, dlse)
    tl.store(Delta + pid_bh * seq_len + offs_m, delta, mask=m_ok)


# ----------------------------------------------------------------------------------------------------------------
# launch configuration
# ----------------------------------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates per kernel, best first for H100 (sm_90) at head_dim 128, bf16:
# the first of each list compiles for sm_90 without register spills (bench/triton_compile_check.py). BLOCK_M is the
# query tile, BLOCK_N the key tile; dK/dV keeps a wide key tile resident and streams narrow query tiles.
CONFIGS = {
    "fwd": [(128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 2), (16, 16, 2, 2)],
    "dq": [(128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2), (16, 16, 2, 2)],
    "dkdv": [(32, 128, 8, 2), (32, 64, 4, 2), (32, 64, 8, 2), (32, 32, 8, 2), (16, 32, 4, 2), (16, 16, 2, 2)],
}
VARIANTS = ("auto", "portable", "tma")


def block_d(head_dim: int, fp8: bool = False) -> int:
    """Width of a head tile: ``head_dim`` to a power of two, at least 16, or 32 with e4m3 q / k (an fp8
    tensor-core product reduces over 32 elements); columns past ``head_dim`` are zero."""
    return max(32 if fp8 else 16, triton.next_power_of_2(head_dim))


def candidate_configs(kind: str, block_size: int, head_dim: int, element_size: int = 2,
                      qk_element_size: int | None = None) -> list[tuple[int, int, int, int]]:
    """Launch configs of kernel ``kind`` ("fwd", "dq" or "dkdv"; "fwd_tma" for the Hopper forward) whose tiles divide
    ``block_size`` and fit ``head_dim`` and the element size (wide heads and fp32 tiles get smaller tiles / fewer
    pipeline stages to stay within registers and shared memory). ``qk_element_size``: q's and k's when they differ
    from v's (fp8: 1), for the Hopper forward's shared-memory estimate."""
    if kind == "fwd_tma":
        return triton_tma.candidate_configs(block_size, block_d(head_dim, qk_element_size == 1), element_size,
                                            qk_element_size)
    if kind in ("dq_tma", "dkdv_tma"):
        return triton_tma_backward.candidate_configs(kind, block_size, block_d(head_dim), element_size)
    bytes_per_row = block_d(head_dim) * element_size
    wide = bytes_per_row >= 512  # head_dim 256 in 16 bits, 128 in fp32
    limit = 64 if wide else 128
    out = []
    for bm, bn, warps, stages in CONFIGS[kind]:
        if bm <= min(block_size, limit) and bn <= min(block_size, limit):
            # wide rows: one stage (no multi-buffered K/V tiles) to stay within shared memory
            cfg = (bm, bn, warps, 1 if wide else min(stages, 2) if element_size > 2 else stages)
            if cfg not in out:
                out.append(cfg)
    return out


def _pick(kind: str, launch, block_size: int, head_dim: int, element_size: int, shape: tuple, tag: str = "",
          qk_element_size: int | None = None):
    """Launch ``launch`` with the config chosen for this kernel, shape class and device (``triton_tuning.pick``);
    ``tag`` names a variant of the kernel tuned on its own (``"fp8"``, with ``qk_element_size`` 1)."""
    key = (*triton_tuning.device_kind(), kind + tag, block_size, head_dim, element_size,
           triton_tuning.shape_class(*shape))
    candidates = candidate_configs(kind, block_size, head_dim, element_size, qk_element_size)
    on_cuda = not interpreting() and torch.cuda.is_available()
    if on_cuda and torch.cuda.get_device_capability()[0] != 9:
        # Warp specialization as the Hopper kernels use it compiles for sm_90 only (Triton 3.9 fails the sm_100
        # build); on other GPUs, forced to the Hopper kernels, their other configs run.
        candidates = [c for c in candidates if len(c) < 5 or not c[4]]
    return triton_tuning.pick(kind, launch, candidates, key, on_cuda=on_cuda)


def _on_device(x: torch.Tensor):
    """Launch on ``x``'s GPU: Triton launches on the current CUDA device, which need not be the tensors' one."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _upcast(dtype: torch.dtype) -> bool:
    """fp32 tiles stay fp32; bf16 tiles are upcast under the interpreter only (its bf16 ``tl.dot`` is wrong). fp16
    tiles always run as fp16, so the interpreter exercises the 16-bit loads and ``p.to(v.dtype)`` casts."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())


def _precision(upcast: bool) -> str:
    """fp32 tiles multiply in full precision ("ieee"), not TF32; fp16/bf16 tiles ignore the setting."""
    return "ieee" if upcast else "tf32"


def _strides(x: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(x.stride())


def check_device(device: torch.device, block_size: int | None = None) -> None:
    """Raise where these kernels cannot run: tensors on ``device`` in blocks of ``block_size`` tokens."""
    if device.type != "cuda" and not interpreting():
        raise RuntimeError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    if block_size is not None and block_size < 16:
        raise ValueError(f"backend='triton' needs block_size >= 16 (tensor-core tiles), got {block_size}; "
                         "use a larger block or backend='torch'")


def kernel_variant(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *others: torch.Tensor) -> str:
    """The kernels for these tensors (``others``: the call's other ``(B, S, H, D)`` tensors, outputs included):
    ``"tma"`` (Hopper: TMA descriptors, flat pipelined loops) or ``"portable"`` (sm_80+, pointer loads, any
    strides); see :func:`choose_variant`."""
    wanted = os.environ.get("RADIAL_TRITON_KERNEL", "auto").strip().lower() or "auto"
    if not triton_tma.available():
        why = f"Triton {triton.__version__} has no host tensor descriptors / warp specialization (Triton >= 3.4)"
    else:
        why = triton_tma.ineligible((q, k, v, *others), scale)
    capability = torch.cuda.get_device_capability(q.device) if q.is_cuda and not interpreting() else None
    return choose_variant(wanted, why, v.dtype, capability)


def choose_variant(wanted: str, why_not_tma: str | None, dtype: torch.dtype, capability: tuple | None) -> str:
    """``wanted`` is ``RADIAL_TRITON_KERNEL`` (default ``auto``): ``auto`` takes ``"tma"`` for fp16/bf16 inputs on a
    GPU of compute capability 9.x (``capability``; ``None`` off a GPU) when TMA can address them
    (``why_not_tma`` is ``None``), else ``"portable"``; ``"tma"`` forces it (also under ``TRITON_INTERPRET=1``) and
    raises if it cannot run; ``"portable"`` forces the other. Decided before any launch: never a fallback after an
    error."""
    if wanted not in VARIANTS:
        raise ValueError(f"RADIAL_TRITON_KERNEL={wanted!r} is not a kernel variant: choose one of {VARIANTS} "
                         "(auto picks by GPU)")
    if wanted == "portable":
        return "portable"
    if wanted == "tma":
        if why_not_tma:
            raise ValueError(f"RADIAL_TRITON_KERNEL=tma cannot run these inputs: {why_not_tma}; unset it (auto) or "
                             "set RADIAL_TRITON_KERNEL=portable")
        return "tma"
    hopper = capability is not None and capability[0] == 9  # built and checked for sm_90; Blackwell runs portable
    return "tma" if hopper and why_not_tma is None and dtype in (torch.float16, torch.bfloat16) else "portable"


_INT32_LIMIT = 2**31


def _max_offset(x: torch.Tensor) -> int:
    return sum((size - 1) * stride for size, stride in zip(x.shape, x.stride()))


_GRID_Y_LIMIT = 65535  # CUDA's limit on gridDim.y, which carries batch * heads


def _split_batch(*tensors: torch.Tensor) -> bool:
    """Launch one batch element at a time when a launch would not fit: kernels index with 32-bit offsets (64-bit
    ones cost registers and spills), so a tensor may span at most 2**31 elements, and batch * heads rides on grid
    axis 1 (at most 65535). A single batch element that does not fit is refused."""
    batch, _, heads, _ = tensors[0].shape
    if heads > _GRID_Y_LIMIT:
        raise ValueError(f"backend='triton' supports at most {_GRID_Y_LIMIT} heads, got {heads}")
    if batch * heads > _GRID_Y_LIMIT:
        return True
    if all(_max_offset(t) < _INT32_LIMIT for t in tensors):
        return False
    if any(_max_offset(t[:1]) >= _INT32_LIMIT for t in tensors):
        raise ValueError("backend='triton' indexes with 32-bit offsets: one batch element of these q/k/v spans "
                         f"more than 2**31 elements (shape {tuple(tensors[0].shape)}); use backend='torch'")
    return True


def _max_count(indices: torch.Tensor) -> int:
    """The Hopper kernels' vector width for a row of kept-block indices (a power of two, at least 16)."""
    return max(16, triton.next_power_of_2(int(indices.shape[1])))


def _samples(batch: int, split: bool) -> list[slice]:
    """The batch slices launched one after another (one slice of everything unless ``split``)."""
    return [slice(i, i + 1) for i in range(batch)] if split else [slice(0, batch)]


def forward(q, k, v, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len, scale, fp8_scales=None):
    """``out (B, S, H, D)`` like v (contiguous) and ``lse (B, H, S)`` float32.

    ``fp8_scales``: ``(q_scale, k_scale)``, ``(B, H, blocks)`` float32, when q and k are e4m3 (``attention.fp8``).
    Memory beyond the inputs and these outputs: none (a batch split launches per sample into the same output) but,
    for the Hopper kernel, 128 B of descriptor scratch per program (``triton_tma.ensure_allocator``)."""
    check_device(q.device, block_size)
    out = torch.empty(q.shape, dtype=v.dtype, device=q.device)
    lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32, device=q.device)
    variant = kernel_variant(q, k, v, scale, out)
    with _on_device(q):
        for part in _samples(q.shape[0], _split_batch(q, k, v, out)):
            kv = None if kv_lengths is None else kv_lengths[part]
            scales = None if fp8_scales is None else tuple(x[part] for x in fp8_scales)
            _forward_into(q[part], k[part], v[part], out[part], lse[part], counts, indices, kv, block_size, scale,
                          variant, scales)
    return out, lse


def _forward_into(q, k, v, out, lse, counts, indices, kv_lengths, block_size, scale, variant, fp8_scales):
    batch, s, heads, d = q.shape
    n_blocks = counts.shape[0]
    has_kv = kv_lengths is not None
    kv = kv_lengths if has_kv else counts
    q_scale, k_scale = fp8_scales if fp8_scales is not None else (lse, lse)  # unread without FP8
    upcast = _upcast(v.dtype)
    bd = block_d(d, fp8=fp8_scales is not None)
    common = dict(BLOCK_D=bd, BLOCK_SIZE=block_size, HAS_KV_LEN=has_kv, UPCAST=upcast,
                  DOT_PRECISION=_precision(upcast), FP8=fp8_scales is not None)

    def launch(cfg):
        bm, bn, warps, stages = cfg
        _fwd_kernel[(n_blocks * (block_size // bm), batch * heads)](
            q, k, v, out, lse, counts, indices, kv, q_scale, k_scale,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            indices.stride(0), heads, s, n_blocks, scale * LOG2E,
            D=d, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **common,
        )

    def launch_tma(cfg):
        bm, bn, warps, stages, ws = cfg
        _fwd_tma_kernel[(n_blocks * (block_size // bm), batch * heads)](
            triton_tma.descriptor(q, bm, bd), q, triton_tma.descriptor(k, bn, bd), triton_tma.descriptor(v, bn, bd),
            triton_tma.descriptor(out, bm, bd), lse, counts, indices, kv, q_scale, k_scale,
            *triton_tma.tma_strides(q)[:3], indices.stride(0), heads, s, n_blocks, scale * LOG2E,
            D=d, BLOCK_M=bm, BLOCK_N=bn, MAX_COUNT=_max_count(indices),
            WARP_SPECIALIZE=bool(ws), num_warps=warps, num_stages=stages, **common,
        )

    shape = (batch * heads, s, int(indices.shape[1]))
    # fp8 q/k are tuned on their own; their candidates are sized for the 16-bit V tiles
    tag = "" if fp8_scales is None else "fp8"
    if variant == "tma":
        triton_tma.ensure_allocator()
        _pick("fwd_tma", launch_tma, block_size, d, v.element_size(), shape, tag, q.element_size())
    else:
        _pick("fwd", launch, block_size, d, v.element_size(), shape, tag)


def delta(grad_out, out, lse, grad_lse):
    """``rowsum(dO * O) - dLSE`` as ``(B, H, S)`` float32 (dLSE of rows without keys dropped), by a kernel that reads
    dO and O once in their own dtypes and strides: no fp32 ``(B, S, H, D)`` temporaries."""
    batch, s, heads, d = out.shape
    result = torch.empty((batch, heads, s), dtype=torch.float32, device=out.device)
    has_dlse = grad_lse is not None
    bm = 64 if block_d(d) <= 128 else 32
    dl = grad_lse.float().contiguous() if has_dlse else result
    with _on_device(out):
        for part in _samples(batch, _split_batch(grad_out, out)):
            g, o = grad_out[part], out[part]
            _delta_kernel[(triton.cdiv(s, bm), g.shape[0] * heads)](
                g, o, lse[part], dl[part], result[part], *_strides(g), *_strides(o), heads, s,
                D=d, BLOCK_D=block_d(d), BLOCK_M=bm, HAS_DLSE=has_dlse, num_warps=4,
            )
    return result


def backward(grad_out, q, k, v, out, lse, grad_lse, counts, indices, t_counts, t_indices, kv_lengths, block_size,
             seq_len, scale):
    """dq, dk, dv (contiguous, in the inputs' dtypes) of the forward's ``out`` and ``lse`` (``(B, H, S)``, float32)
    for upstream gradients ``grad_out`` and ``grad_lse`` (``None``: zero).

    Memory beyond inputs, ``out`` and the gradients: ``delta``, one float32 per (batch, head, row) (plus a float32
    copy of ``lse`` / ``grad_lse`` if they come in another dtype or layout), and for the Hopper kernels 256 B of
    descriptor scratch per program; a batch split launches per sample into the same gradients."""
    check_device(q.device, block_size)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    lse = lse.float().contiguous()
    delta_rows = delta(grad_out, out, lse, grad_lse)
    variant = kernel_variant(q, k, v, scale, grad_out, dq)
    with _on_device(q):
        for part in _samples(q.shape[0], _split_batch(q, k, v, grad_out, dq)):
            kv = None if kv_lengths is None else kv_lengths[part]
            _backward_into(grad_out[part], q[part], k[part], v[part], lse[part], delta_rows[part], dq[part],
                           dk[part], dv[part], counts, indices, t_counts, t_indices, kv, block_size, scale, variant)
    return dq, dk, dv


def _backward_into(grad_out, q, k, v, lse, delta_rows, dq, dk, dv, counts, indices, t_counts, t_indices, kv_lengths,
                   block_size, scale, variant):
    batch, s, heads, d = q.shape
    n_blocks = counts.shape[0]
    has_kv = kv_lengths is not None
    kv = kv_lengths if has_kv else counts
    upcast = _upcast(q.dtype)
    in_strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out))
    common = dict(BLOCK_D=block_d(d), BLOCK_SIZE=block_size, HAS_KV_LEN=has_kv, UPCAST=upcast,
                  DOT_PRECISION=_precision(upcast))

    def launch_dq(cfg):
        bm, bn, warps, stages = cfg
        _bwd_dq_kernel[(n_blocks * (block_size // bm), batch * heads)](
            q, k, v, grad_out, lse, delta_rows, dq, counts, indices, kv, *in_strides, *_strides(dq),
            indices.stride(0), heads, s, scale * LOG2E, scale,
            D=d, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **common,
        )

    def launch_dkdv(cfg):
        bm, bn, warps, stages = cfg
        _bwd_dkdv_kernel[(n_blocks * (block_size // bn), batch * heads)](
            q, k, v, grad_out, lse, delta_rows, dk, dv, t_counts, t_indices, kv, *in_strides, *_strides(dk),
            t_indices.stride(0), heads, s, scale * LOG2E, scale,
            D=d, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **common,
        )

    bd = block_d(d)

    def launch_dq_tma(cfg):
        bm, bn, warps, stages, ws = cfg
        _bwd_dq_tma_kernel[(n_blocks * (block_size // bm), batch * heads)](
            triton_tma.descriptor(q, bm, bd), q, triton_tma.descriptor(k, bn, bd), triton_tma.descriptor(v, bn, bd),
            triton_tma.descriptor(grad_out, bm, bd), grad_out, triton_tma.descriptor(dq, bm, bd),
            lse, delta_rows, counts, indices, kv,
            *triton_tma.tma_strides(q)[:3], *triton_tma.tma_strides(grad_out)[:3], indices.stride(0), heads, s,
            scale * LOG2E, scale,
            D=d, BLOCK_M=bm, BLOCK_N=bn, MAX_COUNT=_max_count(indices), WARP_SPECIALIZE=bool(ws), num_warps=warps,
            num_stages=stages, **common,
        )

    def launch_dkdv_tma(cfg):
        bm, bn, warps, stages, ws = cfg
        _bwd_dkdv_tma_kernel[(n_blocks * (block_size // bn), batch * heads)](
            triton_tma.descriptor(q, bm, bd), triton_tma.descriptor(k, bn, bd), k, triton_tma.descriptor(v, bn, bd), v,
            triton_tma.descriptor(grad_out, bm, bd),
            *(triton_tma.descriptor(x, bn, bd) for x in (dk, dv)), lse, delta_rows, t_counts, t_indices, kv,
            *triton_tma.tma_strides(k)[:3], *triton_tma.tma_strides(v)[:3], t_indices.stride(0), heads, s,
            scale * LOG2E, scale,
            D=d, BLOCK_M=bm, BLOCK_N=bn, WARP_SPECIALIZE=bool(ws), num_warps=warps, num_stages=stages, **common,
        )

    shape = (batch * heads, s, int(indices.shape[1]))
    if variant == "tma":
        triton_tma.ensure_allocator()
        _pick("dq_tma", launch_dq_tma, block_size, d, q.element_size(), shape)
        _pick("dkdv_tma", launch_dkdv_tma, block_size, d, q.element_size(), shape)
    else:
        _pick("dq", launch_dq, block_size, d, q.element_size(), shape)
        _pick("dkdv", launch_dkdv, block_size, d, q.element_size(), shape)
