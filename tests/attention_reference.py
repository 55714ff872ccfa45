"""Shared references for the attention tests: random block masks and float64 dense masked attention."""

from __future__ import annotations

import math

import torch


def random_block_mask(n: int, density: float, gen: torch.Generator, empty_rows: int = 0,
                      full_rows: int = 0) -> torch.Tensor:
    """``(n, n)`` bool block mask with about ``density`` kept blocks, plus forced empty and full rows."""
    mask = torch.rand(n, n, generator=gen) < density
    perm = torch.randperm(n, generator=gen)
    mask[perm[:empty_rows]] = False
    mask[perm[empty_rows : empty_rows + full_rows]] = True
    return mask


def dense_masked_attention(q, k, v, layout, kv_lengths=None, scale=None):
    """Float64 attention with the layout's expanded token mask (and per-sample key padding): ``(out, lse)``.

    ``q, k, v`` are ``(B, S, H, D)``; rows with no attendable key give ``out = 0`` and ``lse = -inf``.
    """
    b, s, h, d = q.shape
    scale = 1 / math.sqrt(d) if scale is None else scale
    mask = layout.token_mask().to(q.device)[None].expand(b, s, s).clone()
    if kv_lengths is not None:
        mask &= torch.arange(s, device=q.device)[None, None, :] < kv_lengths.to(q.device)[:, None, None]
    qt, kt, vt = (x.double().transpose(1, 2) for x in (q, k, v))
    scores = ((qt @ kt.transpose(-1, -2)) * scale).masked_fill(~mask[:, None], float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.where(mask[:, None], torch.exp(scores - lse[..., None].clamp_min(-1e30)), 0.0)
    return (probs @ vt).transpose(1, 2), lse
