"""Pure-PyTorch block-sparse attention over a BSR layout: the CPU path and the reference for the kernels.

Only kept blocks are computed. The kept blocks are covered by rectangles (sets of query blocks that attend the
same key blocks; :mod:`~radial_diffusers.attention.block_cover`), rectangles of one shape are batched (so no slot
padding), split to bound memory: their key/value blocks are gathered into a dense ``(B, H * rects, width * block,
D)`` batch that the rectangle's query blocks attend, and a query block covered by several rectangles merges their
partial results by log-sum-exp (in the backward, each rectangle's share of the gradient comes from the merged row
statistics):

* on CPU through ATen's flash-attention CPU kernel (``_scaled_dot_product_flash_attention_for_cpu`` and its
  backward: tiled, exact softmax, returns the log-sum-exp), which keeps the score tiles in cache;
* elsewhere (and when the gradient of the returned log-sum-exp is non-zero) through an explicit float32 softmax.

No ``S x S`` score matrix is ever formed. Keys at or beyond ``seq_len`` or a sample's ``kv_lengths`` get probability
0. A query row with no attendable key outputs 0 with ``lse = -inf`` (and gets zero gradients).
Internal layout: ``(B, H, n_blocks, block, D)`` float32.
"""

from __future__ import annotations

import threading

import torch

from .block_cover import plan_for

# Upper bound on one chunk's gathered operands (and, off the flash kernel, its score matrices), in float32 elements
# (16 M elements = 64 MiB).
_GROUP_ELEMENTS = 16 * 1024 * 1024
# Use ATen's CPU flash kernel on CPU tensors (tests switch it off to exercise the explicit-softmax path).
USE_CPU_FLASH = True

_NEG_INF = float("-inf")


def _to_blocks(x: torch.Tensor, n_blocks: int, block: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    b, s, h, d = x.shape
    x = x.to(dtype)
    if n_blocks * block != s:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, n_blocks * block - s))
    return x.reshape(b, n_blocks, block, h, d).permute(0, 3, 1, 2, 4).contiguous()


def _from_blocks(x: torch.Tensor, seq_len: int) -> torch.Tensor:
    b, h, n, block, d = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(b, n * block, h, d)[:, :seq_len].contiguous()


def _rows_to_blocks(x: torch.Tensor, n_blocks: int, block: int) -> torch.Tensor:
    """``(B, H, S)`` -> ``(B, H, n_blocks, block)`` float32, zero-padded."""
    b, h, s = x.shape
    return torch.nn.functional.pad(x.float(), (0, n_blocks * block - s)).view(b, h, n_blocks, block)


def _key_valid(batch: int, n_blocks: int, block: int, seq_len: int, kv_lengths, device) -> torch.Tensor | None:
    """``(B, n_blocks, block)`` bool: may this key position be attended? ``None`` when every position may."""
    if kv_lengths is None and seq_len == n_blocks * block:
        return None
    pos = torch.arange(n_blocks * block, device=device).view(1, n_blocks, block)
    limit = torch.full((batch, 1, 1), seq_len, device=device, dtype=torch.long)
    if kv_lengths is not None:
        limit = torch.minimum(limit, kv_lengths.to(device=device, dtype=torch.long).view(batch, 1, 1))
    return pos < limit


def _zero_invalid_keys(blocks: torch.Tensor, source: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """``blocks`` (``(B, H, n, block, D)``, from ``_to_blocks(source)``) with the keys past ``kv_lengths`` zeroed: a
    masked key gets probability 0, and ``0 * nan`` is nan, so non-finite padding (an uninitialised buffer) would
    otherwise reach P @ V and dQ. In place when ``_to_blocks`` made a copy; a new tensor when ``blocks`` is a view of
    the caller's ``source``. (Keys past ``seq_len`` are zero-padded already.)"""
    invalid = ~key_valid[:, None, :, :, None]
    if blocks.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
        return blocks.masked_fill(invalid, 0)
    return blocks.masked_fill_(invalid, 0)


def _groups(counts: torch.Tensor, indices: torch.Tensor, heads_batch: int, block: int, head_dim: int,
            score_copies: int):
    """Yield ``(rows (G, m), keys (G, width), fresh)`` chunks of the layout's rectangle cover
    (:func:`~radial_diffusers.attention.block_cover.plan_for`), bounded in memory: the gathered operands plus
    ``score_copies`` float32 score matrices per rectangle (0 for the flash kernel, which tiles them)."""
    for bucket in plan_for(counts, indices, block):
        m, width = bucket.rows.shape[1], bucket.keys.shape[1]
        per_group = heads_batch * block * (head_dim * (2 * width + 2 * m) + score_copies * m * width * block)
        step = max(1, _GROUP_ELEMENTS // per_group)
        for lo in range(0, bucket.rows.shape[0], step):
            yield bucket.rows[lo : lo + step], bucket.keys[lo : lo + step], bucket.fresh


_SCRATCH = threading.local()


def _gather_blocks(x: torch.Tensor, index: torch.Tensor, slot: str) -> torch.Tensor:
    """``index_select(x, 2, index.flatten())`` into a reused per-thread scratch buffer.

    Freshly allocated multi-MiB tensors are page-faulted in on every call, which costs several times the copy
    itself; gathered operands are only live until the group's attention call returns, so one buffer per operand
    slot is reused across groups and calls. The returned tensor is overwritten by the next gather into ``slot``.
    """
    b, h, _, block, d = x.shape
    shape = (b, h, index.numel(), block, d)
    numel = b * h * index.numel() * block * d
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    key = (slot, x.device, x.dtype, torch.is_inference_mode_enabled())  # inference tensors cannot be reused outside
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = buffers[key] = torch.empty(numel, dtype=x.dtype, device=x.device)
    out = buf[:numel].view(shape)
    torch.index_select(x, 2, index.reshape(-1), out=out)
    return out


class _Group:
    """Gathered operands of one chunk: ``G`` key sets, each attended by ``m`` query blocks, flattened to
    ``(B, H * G, tokens, D)``."""

    def __init__(self, qb, kb, vb, rows, keys, key_valid):
        b, h, _, block, d = qb.shape
        g, m = rows.shape
        width = keys.shape[1]
        self.shape = (b, h, g, m, block, d)
        self.rows, self.idx = rows, keys
        self.q = _gather_blocks(qb, rows, "q").view(b, h * g, m * block, d)
        self.k = _gather_blocks(kb, keys, "k").view(b, h * g, width * block, d)
        self.v = _gather_blocks(vb, keys, "v").view(b, h * g, width * block, d)
        if key_valid is None:
            self.all_valid = True
            return
        valid = key_valid[:, keys].reshape(b, 1, g, 1, width * block)
        self.all_valid = bool(valid.all())
        self.valid = valid
        self.has_key = valid.any(-1)  # (B, 1, G, 1)

    def bias(self) -> torch.Tensor | None:
        """Additive mask ``(B, H * G, 1, keys)`` in the gathered queries' dtype, or ``None`` when every gathered key
        is valid."""
        if self.all_valid:
            return None
        b, h, g = self.shape[:3]
        bias = torch.zeros(self.valid.shape, dtype=self.q.dtype, device=self.q.device)
        bias.masked_fill_(~self.valid, _NEG_INF)
        return bias.expand(b, h, g, 1, bias.shape[-1]).reshape(b, h * g, 1, bias.shape[-1])

    def mask_rows(self) -> torch.Tensor:
        """``(B, H * G, 1, 1)`` bool: do the key set's queries see at least one valid key?"""
        b, h, g = self.shape[:3]
        return self.has_key.expand(b, h, g, 1).reshape(b, h * g, 1, 1)

    def put_rows(self, target: torch.Tensor, value: torch.Tensor) -> None:
        """Write per-query results ``(B, H * G, m * block, ...)`` into ``target (B, H, n, block, ...)``."""
        target[:, :, self.rows] = self.as_blocks(value)

    def add_rows(self, target: torch.Tensor, value: torch.Tensor) -> None:
        """Add per-query results ``(B, H * G, m * block, ...)`` into ``target (B, H, n, block, ...)``."""
        self._add_blocks(target, self.rows, value)

    def as_blocks(self, value: torch.Tensor) -> torch.Tensor:
        """``(B, H * G, m * block, ...)`` -> ``(B, H, G, m, block, ...)``."""
        b, h, g, m, block = self.shape[:5]
        return value.reshape(b, h, g, m, block, *value.shape[3:])

    def take_rows(self, source: torch.Tensor) -> torch.Tensor:
        """Gather per-query rows of ``source (B, H, n, block, ...)`` as ``(B, H * G, m * block, ...)``."""
        b, h, g, m, block = self.shape[:5]
        return source[:, :, self.rows].reshape(b, h * g, m * block, *source.shape[4:])

    def scatter(self, target: torch.Tensor, grad: torch.Tensor) -> None:
        """Add gathered-key gradients ``(B, H * G, width * block, D)`` back into ``target`` blocks."""
        self._add_blocks(target, self.idx, grad)

    def _add_blocks(self, target: torch.Tensor, ids: torch.Tensor, value: torch.Tensor) -> None:
        """``target[:, :, ids] += value``: ``value (B, H * G, ids.numel() * block, ...)`` in the order of ``ids``."""
        b, h, block = self.shape[0], self.shape[1], self.shape[4]
        target.index_add_(2, ids.reshape(-1), value.reshape(b, h, -1, block, *value.shape[3:]))


def merge_softmax_parts(out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor,
                        finite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the attention outputs of query rows over two disjoint key sets: ``out (..., D)`` float32 with
    ``lse (...)`` their log-sum-exp; returns ``(out, lse)``. Rows without keys in both stay 0 / -inf.

    ``finite``: the caller knows every ``lse`` is finite or ``-inf`` in only one of the two parts (skips the guard
    for rows without keys)."""
    lse = torch.logaddexp(lse1, lse2)
    safe = lse if finite else torch.where(torch.isfinite(lse), lse, torch.zeros((), device=lse.device))
    out = out1 * torch.sub(lse1, safe).exp_().unsqueeze(-1)
    return out.addcmul_(out2, torch.sub(lse2, safe).exp_().unsqueeze(-1)), lse


def _math_forward(g: _Group, scale: float):
    scores = torch.matmul(g.q, g.k.transpose(-1, -2)).mul_(scale)
    bias = g.bias()
    if bias is not None:
        scores.add_(bias)
    row_max = scores.amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    probs = scores.sub_(row_max).exp_()
    total = probs.sum(-1, keepdim=True)
    out = torch.matmul(probs, g.v).div_(total.clamp_min(torch.finfo(torch.float32).tiny))
    return out, (row_max + total.log()).squeeze(-1)


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    counts: torch.Tensor,
    indices: torch.Tensor,
    kv_lengths: torch.Tensor | None,
    block_size: int,
    seq_len: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``out (B, S, H, D)`` in q's dtype and ``lse (B, H, S)`` float32 (natural log).

    Inputs are attended in float32, except bf16 on ATen's CPU flash kernel: it takes them as they are, as the stock
    dense CPU path does (scores and sums in float32, the probabilities rounded to bf16 for P @ V, each rectangle's
    output to bf16), about 2x faster on CPUs with bf16 matrix units; rectangles are merged in float32."""
    batch, s, heads, d = q.shape
    if q.numel() == 0:  # an empty batch, no heads (ATen's CPU flash kernel dies of a division by zero on 0 heads)
        out = torch.zeros_like(q, memory_format=torch.contiguous_format)
        return out, q.new_empty((batch, heads, s), dtype=torch.float32)
    n = counts.shape[0]
    flash = USE_CPU_FLASH and q.device.type == "cpu"
    compute = q.dtype if flash and q.dtype == torch.bfloat16 else torch.float32
    qb, kb, vb = (_to_blocks(x, n, block_size, compute) for x in (q, k, v))
    key_valid = _key_valid(batch, n, block_size, seq_len, kv_lengths, q.device)
    if kv_lengths is not None:
        kb, vb = _zero_invalid_keys(kb, k, key_valid), _zero_invalid_keys(vb, v, key_valid)
    out = torch.zeros(qb.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(qb.shape[:-1], _NEG_INF, device=q.device)
    for rows, keys, fresh in _groups(counts, indices, batch * heads, block_size, d, 0 if flash else 1):
        g = _Group(qb, kb, vb, rows, keys, key_valid)
        if flash:
            o, l = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                g.q, g.k, g.v, 0.0, False, attn_mask=g.bias(), scale=scale)
            o = o.float()
        else:
            o, l = _math_forward(g, scale)
        if not g.all_valid:
            keep = g.mask_rows()
            o = torch.where(keep, o, torch.zeros_like(o))
            l = torch.where(keep.squeeze(-1), l, torch.full_like(l, _NEG_INF))
        if fresh:
            g.put_rows(out, o)
            g.put_rows(lse, l)
        else:  # these query blocks have results from other rectangles: merge by log-sum-exp
            o, l = merge_softmax_parts(out[:, :, rows], lse[:, :, rows], g.as_blocks(o), g.as_blocks(l),
                                       finite=key_valid is None)
            out[:, :, rows], lse[:, :, rows] = o, l
    return _from_blocks(out, s).to(q.dtype), lse.reshape(batch, heads, n * block_size)[..., :s].contiguous()


def live_lse_grad(lse: torch.Tensor, grad_lse: torch.Tensor | None) -> torch.Tensor | None:
    """``grad_lse`` as float32 with the rows without keys (lse = -inf, no gradient flows) zeroed; ``None`` stays."""
    if grad_lse is None:
        return None
    return torch.where(torch.isfinite(lse), grad_lse.float(), torch.zeros((), device=lse.device))


def delta_rows(grad_out: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
               grad_lse: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """``(rowsum(dO * O) - dLSE, whether any dLSE flows)``: ``(B, H, S)`` float32; the lse gradient of rows without
    keys (lse = -inf) is dropped."""
    delta = (grad_out.float() * out.float()).sum(-1).transpose(1, 2)
    dlse = live_lse_grad(lse, grad_lse)
    if dlse is None:
        return delta, False
    return delta - dlse, bool(dlse.any())


def backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_lse: torch.Tensor | None,
    counts: torch.Tensor,
    indices: torch.Tensor,
    kv_lengths: torch.Tensor | None,
    block_size: int,
    seq_len: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`forward` for upstream ``grad_out`` and ``grad_lse`` (``(B, H, S)``, ``None``: zero);
    returns dq, dk, dv."""
    if q.numel() == 0:  # an empty batch, no heads (see forward)
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    batch, s, heads, d = q.shape
    n = counts.shape[0]
    qb, kb, vb, gb, ob = (_to_blocks(x, n, block_size) for x in (q, k, v, grad_out, out))
    delta, lse_grad_flows = delta_rows(grad_out, out, lse, grad_lse)
    # The CPU flash backward recomputes rowsum(dO * O) itself, so it only applies when dLSE is zero.
    flash = USE_CPU_FLASH and q.device.type == "cpu" and not lse_grad_flows
    lse_b = _rows_to_blocks(lse, n, block_size)
    delta_b = _rows_to_blocks(delta, n, block_size)
    key_valid = _key_valid(batch, n, block_size, seq_len, kv_lengths, q.device)
    if kv_lengths is not None:
        kb, vb = _zero_invalid_keys(kb, k, key_valid), _zero_invalid_keys(vb, v, key_valid)
    dq, dk, dv = torch.zeros_like(qb), torch.zeros_like(kb), torch.zeros_like(vb)
    for rows, keys, _ in _groups(counts, indices, batch * heads, block_size, d, 0 if flash else 2):
        g = _Group(qb, kb, vb, rows, keys, key_valid)
        go = g.take_rows(gb)
        l = g.take_rows(lse_b)
        if not g.all_valid:  # rows without any valid key: no gradient (lse = -inf would make exp() blow up)
            keep = g.mask_rows()
            go = torch.where(keep, go, torch.zeros_like(go))
            l = torch.where(keep.squeeze(-1), l, torch.zeros_like(l))
        if flash:
            o = g.take_rows(ob)
            gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                go, g.q, g.k, g.v, o, l, 0.0, False, attn_mask=g.bias(), scale=scale)
        else:
            scores = torch.matmul(g.q, g.k.transpose(-1, -2)).mul_(scale)
            bias = g.bias()
            if bias is not None:
                scores.add_(bias)
            probs = scores.sub_(l.unsqueeze(-1)).exp_()
            gv = torch.matmul(probs.transpose(-1, -2), go)
            dp = torch.matmul(go, g.v.transpose(-1, -2))
            ds = probs.mul_(dp.sub_(g.take_rows(delta_b).unsqueeze(-1))).mul_(scale)
            gq = torch.matmul(ds, g.k)
            gk = torch.matmul(ds.transpose(-1, -2), g.q)
        g.add_rows(dq, gq)
        g.scatter(dk, gk)
        g.scatter(dv, gv)
    return (
        _from_blocks(dq, s).to(q.dtype),
        _from_blocks(dk, s).to(k.dtype),
        _from_blocks(dv, s).to(v.dtype),
    )
