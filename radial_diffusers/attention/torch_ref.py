"""Pure-PyTorch block-sparse attention over a BSR layout: the CPU path and the reference for the kernels.

Only kept blocks are computed: query blocks are processed in chunks of similar row counts; for each chunk the kept
key/value blocks are gathered (``(B, H, rows, count, block, D)``) and attended with an exact softmax in float32.
No ``S x S`` score matrix is ever formed. Padded slots (``indices == -1``), keys at or beyond ``seq_len`` and keys
beyond a sample's ``kv_lengths`` get probability 0. A query row with no attendable key outputs 0 with ``lse = -inf``.

Layout of tensors here: inputs are ``(B, S, H, D)``; internally ``(B, H, n_blocks, block, D)`` float32.
"""

from __future__ import annotations

import torch

# Upper bound on one chunk's score tensor, in elements (float32): 32 M elements = 128 MiB.
_CHUNK_ELEMENTS = 32 * 1024 * 1024


def _to_blocks(x: torch.Tensor, n_blocks: int, block: int) -> torch.Tensor:
    b, s, h, d = x.shape
    x = x.float()
    if n_blocks * block != s:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, n_blocks * block - s))
    return x.reshape(b, n_blocks, block, h, d).permute(0, 3, 1, 2, 4)


def _from_blocks(x: torch.Tensor, seq_len: int) -> torch.Tensor:
    b, h, n, block, d = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(b, n * block, h, d)[:, :seq_len]


def _key_valid(batch: int, n_blocks: int, block: int, seq_len: int, kv_lengths, device) -> torch.Tensor:
    """``(B, n_blocks, block)`` bool: may this key position be attended?"""
    pos = torch.arange(n_blocks * block, device=device).view(1, n_blocks, block)
    limit = torch.full((batch, 1, 1), seq_len, device=device, dtype=torch.long)
    if kv_lengths is not None:
        limit = torch.minimum(limit, kv_lengths.to(device=device, dtype=torch.long).view(batch, 1, 1))
    return pos < limit


def _chunks(counts: torch.Tensor, batch: int, heads: int, block: int):
    """Yield ``(rows, width)``: query-block rows grouped by similar count, each padded to the chunk's max count."""
    counts_cpu = counts.to("cpu", torch.long)
    order = torch.argsort(counts_cpu, descending=True, stable=True)
    sorted_counts = counts_cpu[order]
    per_row = batch * heads * block * block  # score elements per (row, key block)
    start, n = 0, order.numel()
    while start < n:
        width = int(sorted_counts[start])
        if width == 0:
            break
        rows = max(1, min(n - start, _CHUNK_ELEMENTS // max(per_row * width, 1)))
        yield order[start : start + rows].to(counts.device), width
        start += rows


def _gather(kb: torch.Tensor, vb: torch.Tensor, indices: torch.Tensor, rows, width, key_valid):
    idx = indices[rows, :width].long()
    slot_valid = idx >= 0
    idx = idx.clamp_min(0)
    b, h, _, block, d = kb.shape
    k = kb[:, :, idx].reshape(b, h, rows.numel(), width * block, d)
    v = vb[:, :, idx].reshape(b, h, rows.numel(), width * block, d)
    valid = key_valid[:, idx] & slot_valid[None, :, :, None]  # (B, rows, width, block)
    return idx, k, v, valid.reshape(b, 1, rows.numel(), 1, width * block)


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
    """Returns ``out (B, S, H, D)`` in q's dtype and ``lse (B, H, S)`` float32 (natural log)."""
    batch, s, heads, d = q.shape
    n = counts.shape[0]
    qb, kb, vb = (_to_blocks(x, n, block_size) for x in (q, k, v))
    key_valid = _key_valid(batch, n, block_size, seq_len, kv_lengths, q.device)
    out = torch.zeros_like(qb)
    lse = torch.full(qb.shape[:-1], float("-inf"), device=q.device)
    for rows, width in _chunks(counts, batch, heads, block_size):
        _, kg, vg, valid = _gather(kb, vb, indices, rows, width, key_valid)
        scores = torch.matmul(qb[:, :, rows], kg.transpose(-1, -2)).mul_(scale)
        scores.masked_fill_(~valid, float("-inf"))
        row_max = scores.amax(-1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        probs = scores.sub_(row_max).exp_()
        total = probs.sum(-1, keepdim=True)
        o = torch.matmul(probs, vg) / total.clamp_min(torch.finfo(torch.float32).tiny)
        out[:, :, rows] = torch.where(total > 0, o, torch.zeros_like(o))
        lse[:, :, rows] = (row_max + total.log()).squeeze(-1)
    return _from_blocks(out, s).to(q.dtype), lse.reshape(batch, heads, n * block_size)[..., :s].contiguous()


def backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    counts: torch.Tensor,
    indices: torch.Tensor,
    kv_lengths: torch.Tensor | None,
    block_size: int,
    seq_len: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the forward. ``delta (B, H, S)`` is ``rowsum(dO * O) - dLSE``; returns dq, dk, dv like q, k, v."""
    batch, s, heads, d = q.shape
    n = counts.shape[0]
    qb, kb, vb, gb = (_to_blocks(x, n, block_size) for x in (q, k, v, grad_out))
    pad = n * block_size - s

    def rows_view(x):  # (B, H, S) -> (B, H, n, block, 1)
        x = torch.nn.functional.pad(x.float(), (0, pad))
        return x.view(batch, heads, n, block_size, 1)

    lse_b = rows_view(lse)
    lse_b = torch.where(torch.isfinite(lse_b), lse_b, torch.full_like(lse_b, float("inf")))  # empty rows: p = 0
    delta_b = rows_view(delta)
    key_valid = _key_valid(batch, n, block_size, seq_len, kv_lengths, q.device)
    dq, dk, dv = torch.zeros_like(qb), torch.zeros_like(kb), torch.zeros_like(vb)
    for rows, width in _chunks(counts, batch, heads, block_size):
        idx, kg, vg, valid = _gather(kb, vb, indices, rows, width, key_valid)
        q_r, g_r = qb[:, :, rows], gb[:, :, rows]
        scores = torch.matmul(q_r, kg.transpose(-1, -2)).mul_(scale)
        scores.masked_fill_(~valid, float("-inf"))
        probs = scores.sub_(lse_b[:, :, rows]).exp_()
        flat_idx = idx.reshape(-1)
        dv_g = torch.matmul(probs.transpose(-1, -2), g_r)  # (B, H, rows, width*block, D)
        dv.index_add_(2, flat_idx, dv_g.view(batch, heads, -1, block_size, d))
        dp = torch.matmul(g_r, vg.transpose(-1, -2))
        ds = probs.mul_(dp.sub_(delta_b[:, :, rows])).mul_(scale)
        dq[:, :, rows] = torch.matmul(ds, kg)
        dk_g = torch.matmul(ds.transpose(-1, -2), q_r)
        dk.index_add_(2, flat_idx, dk_g.view(batch, heads, -1, block_size, d))
    return (
        _from_blocks(dq, s).to(q.dtype),
        _from_blocks(dk, s).to(k.dtype),
        _from_blocks(dv, s).to(v.dtype),
    )
