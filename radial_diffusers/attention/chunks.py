"""Attention of a query chunk against a key chunk of a block layout's sequence: the pieces of ring attention.

A chunk is a list of ranges of the layout's tokens (a contiguous chunk of a video, or a video chunk and a text chunk
of a joint sequence). For each pair of ranges only the layout's kept blocks inside it are computed, through the
ordinary square op (:func:`~radial_diffusers.block_sparse_attention`) on windows: the queries are placed at their
offset inside their first block (rows before it are zeros, their output dropped), and the keys are split at their
first block boundary into a head (the tail of a block column, placed at the start of a one-column window) and the
block-aligned rest; keys past the range's end are masked by ``kv_lengths``. Parts are merged by log-sum-exp, and a
pair with no kept block computes nothing. The backward of each part takes the merged output and log-sum-exp of the
whole row, which gives that part's share of the gradient.

    >>> import torch, radial_diffusers as rd
    >>> from radial_diffusers.attention.chunks import PairPlan
    >>> layout = rd.BlockLayout.from_block_mask(torch.eye(8, dtype=torch.bool), 16, 128)
    >>> PairPlan.build(layout, 0, 64, 64, 64).empty   # block-diagonal: the two halves never meet
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import BlockLayout
from .op import block_sparse_attention, block_sparse_attention_backward
from .torch_ref import merge_softmax_parts

__all__ = ["PairPlan", "RangePlan", "chunk_bounds", "shard_ranges", "merge_partial", "range_plan", "joined"]


def chunk_bounds(total: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each of ``parts`` contiguous chunks of ``total`` tokens, as ``torch.tensor_split``
    splits them (Diffusers' equal shards, and its uneven "anything" shards)."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


@dataclass(frozen=True)
class _Window:
    """One square op call of a pair: ``length`` rows/keys; queries at ``q_offset``; keys ``[kv_start, kv_stop)``
    of the key chunk at the window's start; ``kv_global``: the global position of ``kv_start``."""

    layout: BlockLayout
    length: int
    q_offset: int
    kv_start: int
    kv_stop: int
    kv_global: int


@dataclass(frozen=True)
class PairPlan:
    """The kept blocks of ``layout`` between the queries ``[q0, q0 + q_len)`` and the keys ``[k0, k0 + k_len)``
    (global token positions), as at most two windows of the square op (see the module docstring)."""

    windows: tuple[_Window, ...]
    q_len: int
    k_len: int

    @property
    def empty(self) -> bool:
        return not self.windows

    @classmethod
    def build(cls, layout: BlockLayout, q0: int, q_len: int, k0: int, k_len: int) -> "PairPlan":
        bs, seq = layout.block_size, layout.seq_len
        if not (0 <= q0 and q0 + q_len <= seq and 0 <= k0 and k0 + k_len <= seq):
            raise ValueError(f"chunks [{q0}, {q0 + q_len}) x [{k0}, {k0 + k_len}) do not fit a layout of {seq} tokens")
        mask = layout.to("cpu").block_mask()
        n = mask.shape[0]
        row0, q_off = divmod(q0, bs)
        row1 = -(-(q0 + q_len) // bs)
        col0, k_off = divmod(k0, bs)
        windows = []
        pieces = []  # (first block column, keys [start, stop) of the chunk)
        if k_off:
            head = min(k_len, bs - k_off)
            pieces.append((col0, 0, head))
            if head < k_len:
                pieces.append((col0 + 1, head, k_len))
        else:
            pieces.append((col0, 0, k_len))
        for col, start, stop in pieces:
            n_cols = -(-(stop - start) // bs)
            rows = mask[row0:row1, col:min(n, col + n_cols)]
            if not bool(rows.any()):
                continue
            length = max((row1 - row0) * bs, n_cols * bs)
            nb = -(-length // bs)
            window_mask = torch.zeros(nb, nb, dtype=torch.bool)
            window_mask[: rows.shape[0], : rows.shape[1]] = rows
            windows.append(_Window(BlockLayout.from_block_mask(window_mask, bs, nb * bs), nb * bs, q_off, start, stop,
                                   k0 + start))
        return cls(tuple(windows), q_len, k_len)

    def _inputs(self, w: _Window, q, k, v, kv_lengths):
        batch, _, heads, dim = q.shape
        qw = q.new_zeros(batch, w.length, heads, dim)
        qw[:, w.q_offset:w.q_offset + self.q_len] = q
        n = w.kv_stop - w.kv_start
        kw, vw = k.new_zeros(qw.shape), v.new_zeros(qw.shape)
        kw[:, :n] = k[:, w.kv_start:w.kv_stop]
        vw[:, :n] = v[:, w.kv_start:w.kv_stop]
        valid = torch.full((batch,), n, dtype=torch.int32, device=q.device)
        if kv_lengths is not None:  # keys at global positions >= kv_lengths[b] are padding
            valid = (kv_lengths.to(q.device, torch.long) - w.kv_global).clamp(0, n).to(torch.int32)
        return qw, kw, vw, valid

    def forward(self, q, k, v, kv_lengths, scale, backend) -> tuple[torch.Tensor, torch.Tensor]:
        """``out (B, Lq, H, D)`` float32 and ``lse (B, H, Lq)`` of the pair (``-inf`` where no key is kept)."""
        out = lse = None
        for w in self.windows:
            qw, kw, vw, valid = self._inputs(w, q, k, v, kv_lengths)
            o, l = block_sparse_attention(qw, kw, vw, w.layout, kv_lengths=valid, scale=scale, backend=backend,
                                          return_lse=True)
            o, l = o[:, w.q_offset:w.q_offset + self.q_len].float(), l[..., w.q_offset:w.q_offset + self.q_len]
            out, lse = (o, l) if out is None else merge_partial(out, lse, o, l)
        if out is None:
            batch, _, heads, dim = q.shape
            out = q.new_zeros(batch, self.q_len, heads, dim, dtype=torch.float32)
            lse = torch.full((batch, heads, self.q_len), float("-inf"), device=q.device)
        return out, lse

    def backward(self, grad_out, q, k, v, out, lse, kv_lengths, scale, backend):
        """``(dq, dk, dv)`` of this pair's share, given the merged ``out`` / ``lse (B, H, Lq)`` of the whole row."""
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        for w in self.windows:
            qw, kw, vw, valid = self._inputs(w, q, k, v, kv_lengths)
            rows = slice(w.q_offset, w.q_offset + self.q_len)
            go, ow = grad_out.new_zeros(qw.shape), out.new_zeros(qw.shape)
            go[:, rows], ow[:, rows] = grad_out, out
            # rows outside the chunk: zero queries and zero upstream gradient; lse 0 keeps exp(s - lse) finite
            lw = lse.new_zeros(lse.shape[0], lse.shape[1], w.length)
            lw[..., rows] = lse
            gq, gk, gv = block_sparse_attention_backward(go, qw, kw, vw, ow, lw, w.layout, kv_lengths=valid,
                                                         scale=scale, backend=backend)
            n = w.kv_stop - w.kv_start
            dq += gq[:, rows]
            dk[:, w.kv_start:w.kv_stop] += gk[:, :n]
            dv[:, w.kv_start:w.kv_stop] += gv[:, :n]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def merge_partial(out1, lse1, out2, lse2):
    """Merge two softmax parts over disjoint keys: ``out (B, S, H, D)`` float32, ``lse (B, H, S)``; rows empty in
    both stay 0 / -inf."""
    out, lse = merge_softmax_parts(out1.transpose(1, 2), lse1, out2.transpose(1, 2), lse2)
    return out.transpose(1, 2), lse


def shard_ranges(seq_len: int, text_tokens: int, text_position: str, parts: int, index: int) -> list[tuple[int, int]]:
    """The ``(global start, length)`` ranges of the layout's tokens that shard ``index`` of ``parts`` holds, in its
    local order. A video-only sequence is split into contiguous chunks; a joint one (``text_position`` ``"after"``
    or ``"before"``, as the registry says) has its video and its text split separately, and each shard holds its
    video chunk and its text chunk, concatenated in the joint order, as the attention processors concatenate them."""
    if text_position == "none" or not text_tokens:
        start, stop = chunk_bounds(seq_len, parts)[index]
        return [(start, stop - start)]
    video = seq_len - text_tokens
    v0, v1 = chunk_bounds(video, parts)[index]
    t0, t1 = chunk_bounds(text_tokens, parts)[index]
    if text_position == "after":
        ranges = [(v0, v1 - v0), (video + t0, t1 - t0)]
    else:
        ranges = [(t0, t1 - t0), (text_tokens + v0, v1 - v0)]
    return [r for r in ranges if r[1]]


def joined(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
    """``(local offset, global start, length)`` of consecutive ranges, contiguous neighbours merged."""
    out: list[list[int]] = []
    local = 0
    for start, length in ranges:
        if out and out[-1][1] + out[-1][2] == start:
            out[-1][2] += length
        else:
            out.append([local, start, length])
        local += length
    return tuple(tuple(r) for r in out)


@dataclass(frozen=True)
class RangePlan:
    """Attention of a query chunk against a key chunk, each a list of ``(local offset, global start, length)``
    ranges of the layout's tokens: a :class:`PairPlan` per pair of ranges with a kept block. When both chunks hold
    the whole sequence (Ulysses), the op runs once, in global order (``perm``: the global position of each local
    token, ``None`` when they are in order)."""

    layout: BlockLayout
    q_ranges: tuple
    k_ranges: tuple
    pairs: tuple  # ((q range index, k range index, PairPlan), ...)
    perm: torch.Tensor | None = None
    whole: bool = False

    @classmethod
    def build(cls, layout: BlockLayout, q_ranges: tuple, k_ranges: tuple) -> "RangePlan":
        seq = layout.seq_len
        covers = sum(r[2] for r in q_ranges) == seq and q_ranges == k_ranges
        if covers:
            perm = torch.cat([torch.arange(g, g + n) for _, g, n in q_ranges])
            ordered = bool(torch.equal(perm, torch.arange(seq)))
            return cls(layout, q_ranges, k_ranges, (), None if ordered else perm, whole=True)
        pairs = []
        for qi, (_, qg, qn) in enumerate(q_ranges):
            for ki, (_, kg, kn) in enumerate(k_ranges):
                plan = PairPlan.build(layout, qg, qn, kg, kn)
                if not plan.empty:
                    pairs.append((qi, ki, plan))
        return cls(layout, q_ranges, k_ranges, tuple(pairs))

    @property
    def empty(self) -> bool:
        return not self.whole and not self.pairs

    def forward(self, q, k, v, kv_lengths, scale, backend):
        """``out (B, Lq, H, D)`` float32 and ``lse (B, H, Lq)`` (``-inf`` where no key is kept)."""
        if self.whole:
            if self.perm is None:
                out, lse = block_sparse_attention(q, k, v, self.layout, kv_lengths=kv_lengths, scale=scale,
                                                  backend=backend, return_lse=True)
                return out.float(), lse
            inv = torch.argsort(self.perm).to(q.device)
            perm = self.perm.to(q.device)
            out, lse = block_sparse_attention(q[:, inv], k[:, inv], v[:, inv], self.layout, kv_lengths=kv_lengths,
                                              scale=scale, backend=backend, return_lse=True)
            return out[:, perm].float(), lse[..., perm]
        batch, q_len, heads, dim = q.shape
        out = q.new_zeros(batch, q_len, heads, dim, dtype=torch.float32)
        lse = torch.full((batch, heads, q_len), float("-inf"), device=q.device)
        for qi, ki, plan in self.pairs:
            ql, _, qn = self.q_ranges[qi]
            kl, _, kn = self.k_ranges[ki]
            o, l = plan.forward(q[:, ql:ql + qn], k[:, kl:kl + kn], v[:, kl:kl + kn], kv_lengths, scale, backend)
            out[:, ql:ql + qn], lse[..., ql:ql + qn] = merge_partial(out[:, ql:ql + qn], lse[..., ql:ql + qn], o, l)
        return out, lse

    def backward(self, grad_out, q, k, v, out, lse, kv_lengths, scale, backend):
        """``(dq, dk, dv)`` of this chunk pair's share, given the merged ``out`` / ``lse (B, H, Lq)`` of the rows."""
        if self.whole:
            if self.perm is None:
                return block_sparse_attention_backward(grad_out, q, k, v, out, lse, self.layout,
                                                       kv_lengths=kv_lengths, scale=scale, backend=backend)
            inv = torch.argsort(self.perm).to(q.device)
            perm = self.perm.to(q.device)
            grads = block_sparse_attention_backward(grad_out[:, inv], q[:, inv], k[:, inv], v[:, inv], out[:, inv],
                                                    lse[..., inv].contiguous(), self.layout, kv_lengths=kv_lengths,
                                                    scale=scale, backend=backend)
            return tuple(g[:, perm] for g in grads)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        for qi, ki, plan in self.pairs:
            ql, _, qn = self.q_ranges[qi]
            kl, _, kn = self.k_ranges[ki]
            rows, cols = slice(ql, ql + qn), slice(kl, kl + kn)
            gq, gk, gv = plan.backward(grad_out[:, rows], q[:, rows], k[:, cols], v[:, cols], out[:, rows],
                                       lse[..., rows].contiguous(), kv_lengths, scale, backend)
            dq[:, rows] += gq
            dk[:, cols] += gk
            dv[:, cols] += gv
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def range_plan(layout: BlockLayout, q_ranges: tuple, k_ranges: tuple) -> RangePlan:
    """The plan of a chunk pair, built once per layout and kept on it (it lives as long as its geometry's layout).
    Under ``torch.compile`` the plans are looked up, not built (a build reads tensor values): the step hook builds
    them eagerly first (:func:`~radial_diffusers.parallel.prepare_range_plans`)."""
    key = (q_ranges, k_ranges)
    plan = layout._range_plans.get(key)
    if plan is None:
        plan = layout._range_plans[key] = RangePlan.build(layout, q_ranges, k_ranges)
    return plan
