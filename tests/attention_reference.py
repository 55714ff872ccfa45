"""Shared references for the attention tests: random block masks, float64 dense masked attention, and stock SDPA
restricted to a radial token mask."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F


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


def assert_padding_never_reaches_results(backend: str, gen: torch.Generator, heads: int = 2, s: int = 72,
                                         device: str = "cpu") -> None:
    """Keys and values past a sample's ``kv_lengths`` (40 and 57: inside a block, and inside the last tile of one)
    never reach a result, even NaN / inf ones (an uninitialised buffer; ``0 * nan`` is nan): forward, lse and the
    gradients (with an lse gradient) equal those of zero padding, the padding gets zero gradients, and the caller's
    q / k / v are left as they were. float32, blocks of 16, head_dim 16."""
    import radial_diffusers as rd

    b, d, blk = 2, 16, 16
    layout = rd.BlockLayout.from_block_mask(random_block_mask(-(-s // blk), 0.7, gen, full_rows=2), blk, s)
    kv = torch.tensor([40, 57], device=device)
    q, k, v = (torch.randn(b, s, heads, d, generator=gen).to(device) for _ in range(3))
    pad = torch.arange(s, device=device)[None, :, None, None] >= kv[:, None, None, None]
    grad = torch.randn(b, s, heads, d, generator=gen).to(device)
    grad_lse = torch.randn(b, heads, s, generator=gen).to(device)
    results = []
    for fill_k, fill_v in ((0.0, 0.0), (float("nan"), float("inf"))):
        leaves = [q.clone().requires_grad_(True), torch.where(pad, fill_k, k).requires_grad_(True),
                  torch.where(pad, fill_v, v).requires_grad_(True)]
        before = [x.detach().clone() for x in leaves]
        out, lse = rd.block_sparse_attention(*leaves, layout, kv_lengths=kv, backend=backend, return_lse=True)
        loss = (out * grad).sum() + (torch.where(torch.isfinite(lse), lse, 0.0) * grad_lse).sum()
        results.append((out, lse, torch.autograd.grad(loss, leaves)))
        for x, x0 in zip(leaves, before):
            torch.testing.assert_close(x.detach(), x0, rtol=0, atol=0, equal_nan=True)
    (out, lse, grads), (out_d, lse_d, grads_d) = results
    assert torch.isfinite(out_d).all() and torch.equal(torch.isfinite(lse_d), torch.isfinite(lse))
    torch.testing.assert_close(out_d, out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse_d, lse)
    for g, g_d in zip(grads, grads_d):
        assert torch.isfinite(g_d).all()
        torch.testing.assert_close(g_d, g, atol=1e-6, rtol=1e-6)
    assert (grads_d[1][pad.expand_as(k)] == 0).all() and (grads_d[2][pad.expand_as(v)] == 0).all()


@contextlib.contextmanager
def sdpa_restricted_to(token_mask: torch.Tensor, *, self_attention_from: int | None = None,
                       calls: list | None = None):
    """Within the block, ``F.scaled_dot_product_attention`` calls see ``token_mask``'s leading ``(Lq, Lk)`` corner
    (the call's tokens are a prefix of the layout's sequence: Mochi's stock processor attends per sample over the
    video and that sample's valid text), AND-ed with the call's own boolean mask if it has one: the stock processors
    then compute the radial reference. ``self_attention_from``: restrict only self-attention calls (equal query and
    key lengths from that many tokens up to the mask's) and leave cross-attention and text refiners alone.
    ``calls``: each restricted call's ``(Lq, Lk)`` is appended. Diffusers' native backend passes the mask by
    keyword."""
    sdpa = F.scaled_dot_product_attention
    seq = token_mask.shape[0]

    def restricted(query, key, value, attn_mask=None, **kwargs):
        lq, lk = query.shape[-2], key.shape[-2]
        if self_attention_from is None or (lq == lk and self_attention_from <= lk <= seq):
            assert attn_mask is None or attn_mask.dtype == torch.bool, "a float mask on a restricted call"
            radial = token_mask[:lq, :lk].to(query.device)
            attn_mask = radial if attn_mask is None else attn_mask & radial
            if calls is not None:
                calls.append((lq, lk))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    F.scaled_dot_product_attention = restricted
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa
