"""Triton block-sparse kernels (forward, dQ, dK/dV) against the PyTorch path and dense masked attention.

On a CPU-only machine they run under ``TRITON_INTERPRET=1`` (tests/conftest.py) on small shapes; fp32 and fp16
(the interpreter's bf16 ``tl.dot`` is wrong; the kernels upcast under the interpreter anyway). Outputs are
poisoned with NaN before each launch so an unwritten element fails the comparison.
"""

from __future__ import annotations

import math

import pytest
import torch

import radial_diffusers as rd

triton = pytest.importorskip("triton")
tk = pytest.importorskip("radial_diffusers.attention.triton_kernels")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(tk.torch, "empty", nan_empty)


def _random_mask(n, density, gen, empty_rows=0, full_rows=0):
    mask = torch.rand(n, n, generator=gen) < density
    perm = torch.randperm(n, generator=gen)
    mask[perm[:empty_rows]] = False
    mask[perm[empty_rows : empty_rows + full_rows]] = True
    return mask


def _dense(q, k, v, layout, kv_lengths=None):
    b, s, h, d = q.shape
    mask = layout.token_mask().to(q.device)[None].expand(b, s, s).clone()
    if kv_lengths is not None:
        mask &= torch.arange(s, device=q.device)[None, None, :] < kv_lengths[:, None, None]
    qt, kt, vt = (x.double().transpose(1, 2) for x in (q, k, v))
    scores = (qt @ kt.transpose(-1, -2)) / math.sqrt(d)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.where(mask[:, None], torch.exp(scores - lse[..., None].clamp_min(-1e30)), 0.0)
    return (probs @ vt).transpose(1, 2), lse


# batch, n_blocks, block, seq_len, heads, head_dim, density, empty rows, full rows, kv padding, dtype
CASES = [
    (1, 4, 16, 64, 2, 12, 0.5, 1, 1, False, torch.float32),
    (2, 5, 16, 75, 1, 32, 0.4, 1, 0, True, torch.float32),   # unaligned tail + per-sample key padding
    (1, 3, 32, 96, 2, 64, 0.6, 0, 1, True, torch.float16),
    (1, 2, 64, 100, 1, 128, 0.75, 0, 1, False, torch.float32),
    (2, 4, 16, 60, 2, 16, 0.5, 1, 1, True, torch.float16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-blk{c[2]}-S{c[3]}-d{c[5]}-{str(c[10])[6:]}")
def test_triton_matches_reference(case):
    b, n, blk, s, h, d, dens, empty, full, pad, dtype = case
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    layout = rd.BlockLayout.from_block_mask(_random_mask(n, dens, gen, empty, full), blk, s)
    q, k, v = (torch.randn(b, s, h, d, generator=gen).to(DEVICE, dtype).requires_grad_(True) for _ in range(3))
    kv = torch.randint(s // 2, s + 1, (b,), generator=gen).to(DEVICE) if pad else None
    out, lse = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton", return_lse=True)
    ref_out, ref_lse = _dense(q, k, v, layout, kv)
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-3, rtol=3e-3)
    torch.testing.assert_close(out.double(), ref_out, **tol)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=1e-4, rtol=1e-4)

    grad, grad_lse = torch.randn_like(out), torch.randn_like(lse)
    got = torch.autograd.grad((out * grad).sum() + (lse.nan_to_num(0, 0, 0) * grad_lse).sum(), (q, k, v))
    want = torch.autograd.grad(
        (ref_out * grad.double()).sum() + (ref_lse.nan_to_num(0, 0, 0) * grad_lse.double()).sum(), (q, k, v))
    gtol = dict(atol=5e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), **gtol)


def test_triton_radial_layout_with_text_matches_torch_path():
    """A HunyuanVideo-style radial layout (text rows dense, unaligned video/text border) vs the PyTorch path."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    frames, tpf, text = 4, 24, 10
    s = frames * tpf + text
    layout = rd.BlockLayout.from_block_mask(
        rd.radial_block_mask(frames, tpf, model="hunyuan", block_size=16, text_tokens=text), 16, s)
    q, k, v = (torch.randn(2, s, 2, 16, generator=gen).to(DEVICE).requires_grad_(True) for _ in range(3))
    kv = torch.tensor([s, s - 6], device=DEVICE)
    a = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton")
    c = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="torch")
    torch.testing.assert_close(a, c, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(a)
    for x, y in zip(torch.autograd.grad(a, (q, k, v), g), torch.autograd.grad(c, (q, k, v), g)):
        torch.testing.assert_close(x, y, atol=5e-5, rtol=1e-4)


def test_triton_strided_inputs_no_copy():
    """BSHD views with arbitrary strides (e.g. a fused qkv projection split) are read in place."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    layout = rd.BlockLayout.from_block_mask(_random_mask(4, 0.6, gen, full_rows=1), 16, 64)
    qkv = torch.randn(1, 64, 2, 3, 16, generator=gen).to(DEVICE)
    q, k, v = qkv.unbind(3)
    assert not q.is_contiguous()
    out = rd.block_sparse_attention(q, k, v, layout, backend="triton")
    ref, _ = _dense(q, k, v, layout)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


def test_config_candidates_divide_block():
    for block in (16, 32, 64, 128):
        for d in (12, 64, 128, 256):
            for kind in ("fwd", "dq", "dkdv"):
                configs = tk.candidate_configs(kind, block, d)
                assert configs, (kind, block, d)
                assert all(block % bm == 0 and block % bn == 0 for bm, bn, _, _ in configs)
    assert tk.block_d(12) == 16 and tk.block_d(100) == 128 and tk.block_d(256) == 256


def test_batch_split_for_32bit_offsets(monkeypatch):
    """Tensors spanning >= 2**31 elements are launched one batch element at a time (same results)."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    layout = rd.BlockLayout.from_block_mask(_random_mask(4, 0.6, gen, full_rows=1), 16, 64)
    q, k, v = (torch.randn(3, 64, 2, 16, generator=gen).to(DEVICE).requires_grad_(True) for _ in range(3))
    kv = torch.tensor([64, 40, 50], device=DEVICE)
    whole = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton")
    g_whole = torch.autograd.grad(whole.sum(), (q, k, v))
    monkeypatch.setattr(tk, "_INT32_LIMIT", 64 * 2 * 16 + 1)  # one batch element fits, three do not
    split = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton")
    torch.testing.assert_close(split, whole)
    for a, b in zip(torch.autograd.grad(split.sum(), (q, k, v)), g_whole):
        torch.testing.assert_close(a, b)
    monkeypatch.setattr(tk, "_INT32_LIMIT", 100)
    with pytest.raises(ValueError, match="32-bit"):
        rd.block_sparse_attention(q, k, v, layout, backend="triton")
