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


def assert_torch_path_matches_dense(q, k, v, layout, kv_lengths=None) -> None:
    """The PyTorch path's ``out`` and ``lse`` (rows without keys: ``-inf`` where the reference has it) and the
    gradients through both, on fresh random upstream gradients, equal :func:`dense_masked_attention`'s.
    ``q, k, v``: ``(B, S, H, D)`` float32 leaves that require grad."""
    import radial_diffusers as rd

    out, lse = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv_lengths, backend="torch", return_lse=True)
    ref, ref_lse = dense_masked_attention(q, k, v, layout, kv_lengths)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=2e-5, rtol=1e-5)

    grad = torch.randn_like(out)
    grad_lse = torch.randn_like(lse)
    got = torch.autograd.grad((out * grad).sum() + (lse.nan_to_num(0, 0, 0) * grad_lse).sum(), (q, k, v))
    want = torch.autograd.grad(
        (ref * grad.double()).sum() + (ref_lse.nan_to_num(0, 0, 0) * grad_lse.double()).sum(), (q, k, v)
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), atol=5e-5, rtol=1e-4)
