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
from attention_reference import assert_padding_never_reaches_results, dense_masked_attention, random_block_mask

triton = pytest.importorskip("triton")  # only the optional dependency may skip this file: a broken kernel module fails
from triton.runtime.errors import OutOfResources  # noqa: E402

from radial_diffusers.attention import triton_kernels as tk  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(tk.torch, "empty", nan_empty)


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
    layout = rd.BlockLayout.from_block_mask(random_block_mask(n, dens, gen, empty, full), blk, s)
    q, k, v = (torch.randn(b, s, h, d, generator=gen).to(DEVICE, dtype).requires_grad_(True) for _ in range(3))
    kv = torch.randint(s // 2, s + 1, (b,), generator=gen).to(DEVICE) if pad else None
    out, lse = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton", return_lse=True)
    ref_out, ref_lse = dense_masked_attention(q, k, v, layout, kv)
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
    layout = rd.BlockLayout.from_block_mask(random_block_mask(4, 0.6, gen, full_rows=1), 16, 64)
    qkv = torch.randn(1, 64, 2, 3, 16, generator=gen).to(DEVICE)
    q, k, v = qkv.unbind(3)
    assert not q.is_contiguous()
    out = rd.block_sparse_attention(q, k, v, layout, backend="triton")
    ref, _ = dense_masked_attention(q, k, v, layout)
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
    layout = rd.BlockLayout.from_block_mask(random_block_mask(4, 0.6, gen, full_rows=1), 16, 64)
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
    monkeypatch.setattr(tk, "_INT32_LIMIT", 2**31)
    monkeypatch.setattr(tk, "_GRID_Y_LIMIT", 5)  # batch * heads = 6 > 5: split per batch element (2 heads each)
    split = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton")
    torch.testing.assert_close(split, whole)
    monkeypatch.setattr(tk, "_GRID_Y_LIMIT", 1)
    with pytest.raises(ValueError, match="at most 1 heads"):
        rd.block_sparse_attention(q, k, v, layout, backend="triton")


# ----------------------------------------------------------------------------------------------------------------
# broader coverage: block sizes x head dims, key padding edge values, strided views, lse gradients, compile,
# config selection and the 32-bit split
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def gen():
    """A fresh generator per test; the seed is printed so a failure can be replayed."""
    seed = torch.seed() % 2**31
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


def _loss_grads(out, lse, leaves, grad, grad_lse):
    """Gradients of <out, grad> + <lse, grad_lse> over finite lse entries (rows without keys excluded)."""
    lse_term = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)) * grad_lse.to(lse.dtype)
    return torch.autograd.grad((out * grad.to(out.dtype)).sum() + lse_term.sum(), leaves,
                               allow_unused=True, materialize_grads=True)


def _tols(dtype):
    if dtype == torch.float32:
        return dict(atol=2e-5, rtol=1e-4), dict(atol=5e-5, rtol=1e-4)
    return dict(atol=3e-3, rtol=3e-3), dict(atol=1e-2, rtol=1e-2)


def _check_against_dense(q, k, v, layout, leaves, kv=None, scale=None, dtype=torch.float32, gen=None, gtol=None,
                         tol=None):
    out, lse = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, scale=scale, backend="triton",
                                         return_lse=True)
    assert out.dtype == q.dtype and out.is_contiguous() and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    ref_out, ref_lse = dense_masked_attention(q, k, v, layout, kv, scale)
    default_tol, default_gtol = _tols(dtype)
    tol = default_tol if tol is None else tol
    gtol = default_gtol if gtol is None else gtol
    torch.testing.assert_close(out.double(), ref_out, **tol)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (lse[~finite] == float("-inf")).all()
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=1e-4, rtol=1e-4)
    grad = torch.randn(out.shape, generator=gen).to(out.device)
    grad_lse = torch.randn(lse.shape, generator=gen).to(lse.device)
    got = _loss_grads(out, lse, leaves, grad, grad_lse)
    want = _loss_grads(ref_out, ref_lse, leaves, grad.double(), grad_lse.double())
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), w.double(), **gtol)
    return out, lse, got


# every block size (twice or more) and every head_dim (padded to a power of two) in both dtypes; unaligned tail with
# a 1-token last block, key padding, batch > 1
SWEEP = [(16, 12, torch.float32), (16, 256, torch.float16), (32, 32, torch.float16), (32, 100, torch.float32),
         (64, 64, torch.float32), (64, 128, torch.float16), (64, 12, torch.float16), (128, 100, torch.float16),
         (128, 256, torch.float32), (128, 32, torch.float32), (32, 64, torch.float16), (16, 128, torch.float32)]


@pytest.mark.parametrize("blk,d,dtype", SWEEP, ids=[f"blk{b}-d{d}-{str(t)[6:]}" for b, d, t in SWEEP])
def test_triton_block_and_head_dim_sweep(blk, d, dtype, gen):
    s = 2 * blk + 1  # three blocks, the last holds one token
    mask = random_block_mask(3, 0.5, gen, empty_rows=0, full_rows=1)
    mask[2, 2] = True  # the 1-token block attends itself
    layout = rd.BlockLayout.from_block_mask(mask, blk, s)
    q, k, v = (torch.randn(2, s, 1, d, generator=gen).to(DEVICE, dtype).requires_grad_(True) for _ in range(3))
    kv = torch.tensor([s + 7, int(torch.randint(1, s, (1,), generator=gen))], device=DEVICE)
    _check_against_dense(q, k, v, layout, (q, k, v), kv=kv, scale=0.7 / math.sqrt(d), dtype=dtype, gen=gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_triton_kv_length_edges_match_dense_and_torch_path(dtype, gen):
    """kv_lengths 0, 1, inside and beyond S; batch 4 x 3 heads; empty and full block rows; scale != default.
    Rows with no attendable key: out == 0, lse == -inf, zero (finite) gradients."""
    s, blk, h, d = 45, 16, 3, 24
    layout = rd.BlockLayout.from_block_mask(random_block_mask(3, 0.5, gen, empty_rows=1, full_rows=1), blk, s)
    q, k, v = (torch.randn(4, s, h, d, generator=gen).to(DEVICE, dtype).requires_grad_(True) for _ in range(3))
    kv = torch.tensor([0, s + 50, 1, s // 2], device=DEVICE)
    out, lse, grads = _check_against_dense(q, k, v, layout, (q, k, v), kv=kv, scale=0.37, dtype=dtype, gen=gen)

    empty = ~torch.isfinite(lse).transpose(1, 2)  # (B, S, H) rows without a key
    assert empty[0].all() and empty.sum() > empty[0].numel()  # sample 0 (kv 0) plus the empty block row
    assert (out[empty] == 0).all()
    assert (grads[0][empty] == 0).all()
    assert (grads[1][0] == 0).all() and (grads[2][0] == 0).all()  # no key of sample 0 is attended
    assert (grads[1][3, s // 2 :] == 0).all() and (grads[2][3, s // 2 :] == 0).all()  # padded keys

    # the PyTorch path agrees (forward, lse and gradients incl. the lse term)
    o2, l2 = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, scale=0.37, backend="torch", return_lse=True)
    tol, gtol = _tols(dtype)
    torch.testing.assert_close(out.float(), o2.float(), **tol)
    assert torch.equal(torch.isfinite(lse), torch.isfinite(l2))
    torch.testing.assert_close(lse[torch.isfinite(lse)], l2[torch.isfinite(l2)], atol=1e-4, rtol=1e-4)
    g, gl = torch.randn_like(out), torch.randn_like(lse)
    for a, b in zip(_loss_grads(*rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, scale=0.37,
                                                           backend="triton", return_lse=True), (q, k, v), g, gl),
                    _loss_grads(o2, l2, (q, k, v), g, gl)):
        torch.testing.assert_close(a.float(), b.float(), **gtol)


def _large_logit_tol(q, k, v, scale):
    """Forward tolerance for fp32 logits of magnitude up to ``|s|max``: the exponent ``s - m`` is rounded to fp32,
    so each softmax weight carries a relative error of about ``|s|max * eps``, and the output, a weighted mean of v,
    up to twice that times ``|v|max``; doubled again for the rounding of the dot product itself. At scale 25 and
    d = 16 that is ~4e-4, where a wrong key or a lost rescale errs by O(|v|)."""
    s_max = float((torch.einsum("bqhd,bkhd->bhqk", q.detach(), k.detach()) * scale).abs().max())
    bound = 4 * torch.finfo(torch.float32).eps * s_max * float(v.detach().abs().max())
    return dict(atol=max(2e-5, bound), rtol=1e-4)


@pytest.mark.filterwarnings("error:overflow encountered in exp2:RuntimeWarning")
def test_triton_extreme_logits_are_stable(gen):
    """Online softmax with logits far from 0: all scores of a row around -1e3 (uniform attention) or spread over
    +-1e3 (near one-hot) must match the reference without overflow or NaN (fp32, interpreter; an exp2 that overflows
    fails the test: the backward masks a key's score before exp2)."""
    s, h, d = 40, 2, 16
    layout = rd.BlockLayout.from_block_mask(random_block_mask(3, 0.6, gen, full_rows=2), 16, s)
    noise = lambda: 0.1 * torch.randn(1, s, h, d, generator=gen)  # noqa: E731
    q = (8.0 + noise()).to(DEVICE).requires_grad_(True)
    k = (-8.0 + noise()).to(DEVICE).requires_grad_(True)
    v = torch.randn(1, s, h, d, generator=gen).to(DEVICE).requires_grad_(True)
    # backward recomputes p = exp(s - lse) with |s|, |lse| in the hundreds: fp32 rounding of the exponent costs
    # ~1e-4 relative in p (as in FlashAttention), more in dK of near one-hot rows
    gtol = dict(atol=1e-2, rtol=1e-2)
    _check_against_dense(q, k, v, layout, (q, k, v), kv=torch.tensor([33], device=DEVICE), gen=gen, gtol=gtol,
                         tol=_large_logit_tol(q, k, v, 1 / math.sqrt(d)))
    q, k, v = (torch.randn(1, s, h, d, generator=gen).to(DEVICE).requires_grad_(True) for _ in range(3))
    out, lse, _ = _check_against_dense(q, k, v, layout, (q, k, v), scale=25.0, gen=gen, gtol=gtol,
                                       tol=_large_logit_tol(q, k, v, 25.0))
    assert lse[torch.isfinite(lse)].abs().max() > 50


def test_triton_rows_without_keys_raw_lse_gradient(gen):
    """Backpropagating straight through lse (including its -inf rows) gives finite gradients, zero on those rows,
    and a loss on lse alone (out unused) matches the dense reference."""
    s, h, d = 40, 2, 16
    layout = rd.BlockLayout.from_block_mask(random_block_mask(3, 0.5, gen, empty_rows=1, full_rows=1), 16, s)
    q, k, v = (torch.randn(2, s, h, d, generator=gen).to(DEVICE).requires_grad_(True) for _ in range(3))
    kv = torch.tensor([0, 30], device=DEVICE)
    out, lse = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton", return_lse=True)
    empty = ~torch.isfinite(lse)
    assert empty.any() and (lse[empty] == float("-inf")).all()
    grads = torch.autograd.grad(lse, (q, k, v), torch.ones_like(lse), retain_graph=True)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][empty.transpose(1, 2)] == 0).all()
    # lse only
    got = torch.autograd.grad(torch.where(empty, 0.0, lse).sum(), (q, k, v), allow_unused=True,
                              materialize_grads=True)
    _, ref_lse = dense_masked_attention(q, k, v, layout, kv)
    want = torch.autograd.grad(torch.where(torch.isfinite(ref_lse), ref_lse, 0.0).sum(), (q, k, v),
                               allow_unused=True, materialize_grads=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), atol=5e-5, rtol=1e-4)


STRIDED = ["fused_qkv", "bhsd_transposed", "head_dim_strided", "channel_slices", "batch_broadcast", "seq_slices",
           "mixed", "nan_surroundings"]


@pytest.mark.parametrize("kind", STRIDED)
def test_triton_noncontiguous_views_forward_backward(kind, gen):
    """q/k/v views with arbitrary strides and storage offsets (read in place): forward, lse and gradients (into
    the base tensors) equal the dense reference; the output equals the PyTorch path's."""
    b, s, h, d = 2, 40, 2, 20
    layout = rd.BlockLayout.from_block_mask(random_block_mask(3, 0.5, gen, empty_rows=1, full_rows=1), 16, s)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE).requires_grad_(True)  # noqa: E731
    if kind == "fused_qkv":
        base = rand(b, s, 3, h, d)
        q, k, v = base.unbind(2)
        leaves = (base,)
    elif kind == "bhsd_transposed":
        leaves = tuple(rand(b, h, s, d) for _ in range(3))
        q, k, v = (x.transpose(1, 2) for x in leaves)
    elif kind == "head_dim_strided":
        leaves = tuple(rand(b, s, d, h) for _ in range(3))
        q, k, v = (x.transpose(2, 3) for x in leaves)
    elif kind == "channel_slices":
        base = rand(b, s, h, 3 * d + 5)
        q, k, v = base[..., :d], base[..., d : 2 * d], base[..., 2 * d + 5 :]
        leaves = (base,)
    elif kind == "batch_broadcast":
        leaves = tuple(rand(1, s, h, d) for _ in range(3))
        q, k, v = (x.expand(b, s, h, d) for x in leaves)
    elif kind == "seq_slices":
        base = rand(b, s + 7, h, d)
        q, k, v = base[:, 7:], base[:, :s], base[:, 3 : 3 + s]
        leaves = (base,)
    elif kind == "nan_surroundings":
        # NaN right after the head dim (up to the padded BLOCK_D) and after the last token: any load that is not
        # masked to [0, D) x [0, S) poisons the result
        leaves = []
        for _ in range(3):
            base = torch.full((b, s + 16, h, 32), float("nan"))
            base[:, :s, :, :d] = torch.randn(b, s, h, d, generator=gen)
            leaves.append(base.to(DEVICE).requires_grad_(True))
        leaves = tuple(leaves)
        q, k, v = (x[:, :s, :, :d] for x in leaves)
    else:  # each of q, k, v with its own strides
        leaves = (rand(b, s, 2, h, d), rand(b, h, s, d), rand(b, s, d, h))
        q, k, v = leaves[0][:, :, 1], leaves[1].transpose(1, 2), leaves[2].transpose(2, 3)
    assert not q.is_contiguous()
    kv = torch.tensor([29, s + 3], device=DEVICE)
    out, _, _ = _check_against_dense(q, k, v, layout, leaves, kv=kv, gen=gen)
    with torch.no_grad():
        o2 = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="torch")
    torch.testing.assert_close(out.detach(), o2, atol=2e-5, rtol=1e-4)


@pytest.mark.skipif(DEVICE != "cpu", reason="interpreter rounding")
def test_triton_bf16_inputs_under_interpreter(gen):
    """bf16 runs (upcast) under the interpreter: within one bf16 ulp of the fp32 kernel on the same values (the
    interpreter truncates fp32 -> bf16 where GPUs round to nearest), gradients in bf16 close to the reference."""
    s = 40
    layout = rd.BlockLayout.from_block_mask(random_block_mask(3, 0.5, gen, empty_rows=1, full_rows=1), 16, s)
    q, k, v = (torch.randn(2, s, 2, 32, generator=gen).bfloat16().requires_grad_(True) for _ in range(3))
    kv = torch.tensor([s, 21])
    out = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton")
    assert out.dtype == torch.bfloat16
    out32 = rd.block_sparse_attention(q.float(), k.float(), v.float(), layout, kv_lengths=kv, backend="triton")
    ulp = torch.finfo(torch.bfloat16).eps * out32.abs().clamp_min(2.0**-20)
    assert ((out.float() - out32).abs() <= ulp).all()
    ref, _ = dense_masked_attention(q, k, v, layout, kv)
    g = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, (q, k, v), g.bfloat16())
    want = torch.autograd.grad(ref, (q, k, v), g.double())
    for a, w in zip(got, want):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.double(), w.double(), atol=3e-2, rtol=2e-2)


@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager"])
def test_triton_op_under_torch_compile_fullgraph(compile_backend, gen):
    """The op with backend='triton' in a fullgraph torch.compile region (fused qkv views, key padding, lse in the
    loss): outputs and gradients bit-equal to eager."""
    b, s, h, d = 2, 40, 2, 12
    layout = rd.BlockLayout.from_block_mask(random_block_mask(3, 0.5, gen, empty_rows=1, full_rows=1), 16, s)
    kv = torch.tensor([s, 25], device=DEVICE)

    def f(qkv):
        q, k, v = qkv.unbind(2)
        out, lse = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton", return_lse=True,
                                             scale=0.3)
        return (out * 2).sin(), torch.where(torch.isfinite(lse), lse, 0.0)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    qkv = torch.randn(b, s, 3, h, d, generator=gen).to(DEVICE).requires_grad_(True)
    o1, l1 = f(qkv)
    o2, l2 = compiled(qkv)
    assert torch.equal(o1, o2) and torch.equal(l1, l2)
    g, gl = torch.randn_like(o1), torch.randn_like(l1)
    (g1,) = torch.autograd.grad((o1 * g).sum() + (l1 * gl).sum(), qkv)
    (g2,) = torch.autograd.grad((o2 * g).sum() + (l2 * gl).sum(), qkv)
    assert torch.equal(g1, g2)
    torch._dynamo.reset()


def test_triton_opcheck_with_strided_inputs(gen):
    """torch.library.opcheck on the op with backend='triton': schema, fake (shapes/strides of out and lse vs the
    kernel's), autograd registration and AOT dispatch with dynamic shapes, on fused-qkv views and key padding."""
    mask = random_block_mask(3, 0.5, gen, empty_rows=1, full_rows=1)
    layout = rd.BlockLayout.from_block_mask(mask, 16, 40).to(DEVICE)
    qkv = torch.randn(2, 40, 3, 2, 12, generator=gen).to(DEVICE).requires_grad_(True)
    q, k, v = qkv.unbind(2)
    args = (q, k, v, layout.counts, layout.indices, layout.t_counts, layout.t_indices,
            torch.tensor([40, 22], dtype=torch.int32, device=DEVICE), 16, 40, 0.3, "triton")
    torch.library.opcheck(torch.ops.radial_diffusers.block_sparse_attn.default, args)


def test_triton_needs_cuda_or_interpreter(monkeypatch):
    layout = rd.BlockLayout.dense(32, 16)
    q = torch.randn(1, 32, 1, 16)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        rd.block_sparse_attention(q, q, q, layout, backend="triton")


def test_triton_block_size_below_16_is_refused():
    """tl.dot needs tiles of at least 16: a block_size 8 layout raises (no silent wrong result)."""
    layout = rd.BlockLayout.from_block_mask(torch.ones(4, 4, dtype=torch.bool), 8, 30)
    q = torch.randn(1, 30, 1, 16, device=DEVICE)
    with pytest.raises((RuntimeError, ValueError), match="block_size"):
        rd.block_sparse_attention(q, q, q, layout, backend="triton")


# ----------------------------------------------------------------------------------------------------------------
# config selection
# ----------------------------------------------------------------------------------------------------------------


def test_candidate_configs_fit_block_head_dim_and_dtype():
    for kind in ("fwd", "dq", "dkdv"):
        assert tk.candidate_configs(kind, 128, 128, 2)[0] == tk.CONFIGS[kind][0]  # the H100 default comes first
        for block in (16, 32, 64, 128, 256):
            for d in (1, 12, 16, 32, 64, 100, 128, 200, 256):
                for es in (2, 4):
                    configs = tk.candidate_configs(kind, block, d, es)
                    assert configs, (kind, block, d, es)
                    limit = 64 if tk.block_d(d) * es >= 512 else 128
                    base = {(bm, bn, w) for bm, bn, w, _ in tk.CONFIGS[kind]}
                    for bm, bn, warps, stages in configs:
                        assert block % bm == 0 and block % bn == 0 and bm >= 16 and bn >= 16
                        assert bm <= limit and bn <= limit
                        assert (bm, bn, warps) in base
                        assert stages <= (1 if limit == 64 else 2 if es > 2 else 3)  # wide rows: single stage
                    assert len(set(configs)) == len(configs)
        assert tk.candidate_configs(kind, 8, 64) == []
    for d, bd in ((1, 16), (12, 16), (16, 16), (17, 32), (100, 128), (128, 128), (129, 256), (256, 256)):
        assert tk.block_d(d) == bd


def test_hopper_candidates_follow_the_tile_bytes():
    """The Hopper configs are offered by their shared-memory estimate: the forward's 4-stage 128 x 128 ring fits
    beside Q at head_dim 64, or at 128 with fp8 Q / K (1 byte), not at 128 in 16 bits; every offered config's
    estimate leaves the reserve free."""
    deep = (128, 128, 8, 4, 0)
    assert deep in tk.candidate_configs("fwd_tma", 128, 64, 2)
    assert deep in tk.candidate_configs("fwd_tma", 128, 128, 2, qk_element_size=1)
    assert deep not in tk.candidate_configs("fwd_tma", 128, 128, 2)
    tma, bwd = tk.triton_tma, tk.triton_tma_backward
    limit = tma.SHARED_BYTES - tma.SHARED_RESERVE
    for d in (64, 128, 256):
        for qk in (None, 1):
            for bm, bn, _, stages, ws in tk.candidate_configs("fwd_tma", 128, d, 2, qk):
                assert tma.shared_bytes(bm, bn, tk.block_d(d), 2, stages, ws, qk) <= limit
        for kind in ("dq_tma", "dkdv_tma"):
            offered = tk.candidate_configs(kind, 128, d, 2)
            assert offered and all(bwd.shared_bytes(kind, bm, bn, tk.block_d(d), 2, st, ws) <= limit
                                   for bm, bn, _, st, ws in offered)
    assert (64, 128, 8, 3, 0) == tk.candidate_configs("dkdv_tma", 128, 128, 2)[0]  # 64-row query tiles by default


@pytest.fixture
def fresh_tuning_cache(monkeypatch, tmp_path):
    """An empty in-memory tuning cache and a tuning file of this test's own."""
    monkeypatch.setattr(tk.triton_tuning, "CACHE", tk.triton_tuning.TuningCache())
    monkeypatch.setenv("RADIAL_TRITON_CACHE", str(tmp_path / "tuning.json"))
    return tk.triton_tuning.CACHE


class _FlakyKernel:
    """Wraps a jitted kernel: the first launch raises OutOfResources (as a too-large config would on a GPU)."""

    def __init__(self, kernel):
        self.kernel, self.configs = kernel, []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.configs.append((kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["num_warps"], kwargs["num_stages"]))
            if len(self.configs) == 1:
                raise OutOfResources(300_000, 232_448, "shared memory")
            return self.kernel[grid](*args, **kwargs)

        return run


def test_out_of_resources_falls_back_to_next_config_end_to_end(fresh_tuning_cache, monkeypatch, gen):
    kernels = {name: _FlakyKernel(getattr(tk, name)) for name in ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel")}
    for name, k in kernels.items():
        monkeypatch.setattr(tk, name, k)
    s = 100
    layout = rd.BlockLayout.from_block_mask(random_block_mask(2, 0.5, gen, full_rows=1), 64, s)
    q, k, v = (torch.randn(1, s, 2, 16, generator=gen).to(DEVICE).requires_grad_(True) for _ in range(3))
    _check_against_dense(q, k, v, layout, (q, k, v), gen=gen)
    for kind, name in (("fwd", "_fwd_kernel"), ("dq", "_bwd_dq_kernel"), ("dkdv", "_bwd_dkdv_kernel")):
        cands = tk.candidate_configs(kind, 64, 16, 4)
        assert kernels[name].configs[:2] == cands[:2], kind
        key = (*tk.triton_tuning.device_kind(), kind, 64, 16, 4,
               tk.triton_tuning.shape_class(2, s, int(layout.indices.shape[1])))
        assert fresh_tuning_cache.memory[key] == cands[1]


# ----------------------------------------------------------------------------------------------------------------
# 32-bit offsets
# ----------------------------------------------------------------------------------------------------------------


class _GridSpy:
    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


def test_batch_split_launches_per_sample_with_strided_inputs_and_lse(monkeypatch, gen):
    """The per-batch split (fused-qkv views, key padding incl. 0, lse in the loss) launches one program row per
    sample and equals the unsplit result."""
    s, h, d = 48, 2, 16
    layout = rd.BlockLayout.from_block_mask(random_block_mask(3, 0.6, gen, empty_rows=1, full_rows=1), 16, s)
    qkv = torch.randn(3, s, 3, h, d, generator=gen).to(DEVICE).requires_grad_(True)
    kv = torch.tensor([s, 0, 30], device=DEVICE)

    def run():
        out, lse = rd.block_sparse_attention(*qkv.unbind(2), layout, kv_lengths=kv, backend="triton",
                                             return_lse=True)
        lse0 = torch.where(torch.isfinite(lse), lse, 0.0)
        return out, lse, torch.autograd.grad(out.square().sum() + lse0.sum(), qkv)[0]

    whole = run()
    spies = {name: _GridSpy(getattr(tk, name)) for name in ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel")}
    for name, spy in spies.items():
        monkeypatch.setattr(tk, name, spy)
    # one sample of the (strided) q/k/v views fits, the whole batch does not
    monkeypatch.setattr(tk, "_INT32_LIMIT", tk._max_offset(qkv[:1, :, 0]) + 1)
    split = run()
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b)
    for name, spy in spies.items():
        assert spy.grids and all(grid[1] == h for grid in spy.grids), name


def test_batch_one_spanning_int32_is_refused_in_forward(monkeypatch):
    layout = rd.BlockLayout.dense(32, 16)
    q = torch.randn(1, 32, 2, 16, device=DEVICE)
    monkeypatch.setattr(tk, "_INT32_LIMIT", 100)
    with pytest.raises(ValueError, match="32-bit"):
        rd.block_sparse_attention(q, q, q, layout, backend="triton")


def test_broadcast_inputs_split_when_output_spans_int32(monkeypatch):
    """Batch-broadcast q/k/v (stride 0) span few elements, but ``out`` (B, S, H, D) does: still split."""
    s, h, d = 32, 2, 16
    layout = rd.BlockLayout.dense(s, 16)
    x = torch.randn(1, s, h, d, device=DEVICE).expand(3, s, h, d)
    spy = _GridSpy(tk._fwd_kernel)
    monkeypatch.setattr(tk, "_fwd_kernel", spy)
    monkeypatch.setattr(tk, "_INT32_LIMIT", s * h * d + 1)  # one sample fits, the (3, S, H, D) output does not
    rd.block_sparse_attention(x, x, x, layout, backend="triton")
    assert all(grid[1] == h for grid in spy.grids)


def test_gpu_attention_bench_dry_run():
    """bench/attention.py (the GPU check) runs every code path on tiny CPU shapes: correctness of both backends,
    each Triton launch config forced in turn, and the forward / forward+backward timing tables."""
    from scripts import REPO, run_script

    out = run_script(REPO / "bench" / "attention.py", "--cpu-dry-run")  # kernels interpreted (tests/conftest.py)
    assert "FAIL" not in out and "every Triton launch config" in out
    assert "ours backend=triton        fwd+bwd" in out and "dense SDPA flash           fwd " in out


# ----------------------------------------------------------------------------------------------------------------
# the Hopper (TMA) forward, interpreted: same contract as the portable one
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tma_forward(monkeypatch):
    """Force the TMA kernels (the interpreter runs their descriptors and flat loops); each forward launch's config is
    recorded, and the portable kernels are taken away (they must not run)."""
    monkeypatch.setenv("RADIAL_TRITON_KERNEL", "tma")
    configs = []
    real = tk._fwd_tma_kernel

    class Spy:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                configs.append((kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["num_warps"], kwargs["num_stages"],
                                int(kwargs["WARP_SPECIALIZE"])))
                return real[grid](*args, **kwargs)
            return run

    monkeypatch.setattr(tk, "_fwd_tma_kernel", Spy())
    for name in ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel"):
        monkeypatch.setattr(tk, name, None)
    return configs


TMA_CASES = CASES + [(2, 3, 64, 129, 1, 256, 0.6, 0, 1, True, torch.float16),  # wide head, 1-token tail
                     (1, 4, 32, 128, 2, 24, 0.5, 1, 1, True, torch.float16)]   # head_dim 24: boxes wider than D


@pytest.mark.parametrize("variant", ["portable", "tma"])
def test_keys_past_kv_lengths_do_not_reach_results(variant, monkeypatch, gen):
    """Non-finite keys / values past ``kv_lengths`` change nothing: the portable kernels mask those loads; the
    Hopper kernels read the rows by TMA and zero them in the tiles that cross the limit (0 * NaN would be NaN)."""
    monkeypatch.setenv("RADIAL_TRITON_KERNEL", variant)
    assert_padding_never_reaches_results("triton", gen, device=DEVICE)


@pytest.mark.parametrize("case", TMA_CASES, ids=lambda c: f"B{c[0]}-blk{c[2]}-S{c[3]}-d{c[5]}-{str(c[10])[6:]}")
def test_tma_forward_matches_dense(case, tma_forward, gen):
    """Forward, lse and gradients (the TMA dQ and dK/dV kernels) vs float64 dense masked attention: unaligned tails
    (rows and keys past S zero-filled by the descriptors), per-sample key padding (the tiles crossing kv_limit
    masked, those past it skipped; dK/dV rows past it zeroed), empty and full rows."""
    b, n, blk, s, h, d, dens, empty, full, pad, dtype = case
    layout = rd.BlockLayout.from_block_mask(random_block_mask(n, dens, gen, empty, full), blk, s)
    q, k, v = (torch.randn(b, s, h, d, generator=gen).to(DEVICE, dtype).requires_grad_(True) for _ in range(3))
    kv = torch.randint(s // 2, s + 1, (b,), generator=gen).to(DEVICE) if pad else None
    _check_against_dense(q, k, v, layout, (q, k, v), kv=kv, dtype=dtype, gen=gen)
    assert tma_forward and all(blk % bm == 0 and blk % bn == 0 for bm, bn, *_ in tma_forward)


def test_tma_forward_every_config_and_key_limit_edges(tma_forward, monkeypatch, gen):
    """Every TMA config the tuner may pick (warp-specialized ones included: the interpreter runs their math), on
    kv_lengths 0, 1, one tile's edge and beyond S; each equals the portable kernel within fp16 rounding."""
    s, blk, h, d = 128 + 37, 128, 2, 32
    mask = random_block_mask(2, 0.6, gen, full_rows=1)
    mask[1, 1] = True
    layout = rd.BlockLayout.from_block_mask(mask, blk, s)
    q, k, v = (torch.randn(4, s, h, d, generator=gen).to(DEVICE, torch.float16) for _ in range(3))
    kv = torch.tensor([0, 1, 128, s + 9], device=DEVICE)
    ref, ref_lse = dense_masked_attention(q, k, v, layout, kv)
    finite = torch.isfinite(ref_lse)
    configs = tk.candidate_configs("fwd_tma", blk, d, 2)
    assert any(c[4] for c in configs) and any(not c[4] for c in configs)
    for cfg in configs:
        monkeypatch.setattr(tk.triton_tuning, "CACHE", tk.triton_tuning.TuningCache())
        monkeypatch.setattr(tk, "candidate_configs", lambda kind, *a, _c=cfg: [_c])
        out, lse = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton", return_lse=True)
        assert tma_forward[-1] == cfg
        torch.testing.assert_close(out.double(), ref, atol=3e-3, rtol=3e-3)
        assert torch.equal(torch.isfinite(lse), finite) and (out[0] == 0).all()
        torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=1e-4, rtol=1e-4)


def test_tma_kernels_read_fused_qkv_views(tma_forward, gen):
    """A fused qkv projection split into (B, S, H, D) views (unit-stride head_dim, 16-byte row strides) is read in
    place by the TMA descriptors: forward, lse and gradients equal the float64 reference."""
    s, h, d = 100, 2, 32
    layout = rd.BlockLayout.from_block_mask(random_block_mask(4, 0.6, gen, empty_rows=1, full_rows=1), 32, s)
    qkv = torch.randn(2, s, 3, h, d, generator=gen).to(DEVICE, torch.float16).requires_grad_(True)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous() and q.stride(-1) == 1
    kv = torch.tensor([s, 57], device=DEVICE)
    _check_against_dense(q, k, v, layout, (qkv,), kv=kv, dtype=torch.float16, gen=gen)
    assert tma_forward


def test_tma_descriptors_restride_size_one_dimensions(tma_forward, gen):
    """A size-1 dimension's stride never moves an address, and PyTorch leaves it arbitrary: 0 after ``expand``, 1
    after a permute. Such tensors are TMA-eligible, their descriptors get the span of the dimensions after it (never
    a zero or unaligned stride), and forward, lse and gradients equal the float64 reference."""
    s, d = 96, 32
    layout = rd.BlockLayout.from_block_mask(random_block_mask(3, 0.6, gen, empty_rows=1, full_rows=1), 32, s)
    base = [torch.randn(s, d, generator=gen).to(DEVICE, torch.float16).requires_grad_(True) for _ in range(3)]
    q = base[0].as_strided((1, s, 1, d), (0, d, 0, 1))  # batch and head: stride 0
    k = base[1].as_strided((1, s, 1, d), (7, d, 1, 1))  # odd strides: 14 and 2 bytes
    v = base[2][None, :, None]
    assert tk.triton_tma.ineligible((q, k, v), 0.125) is None
    assert tk.triton_tma.tma_strides(q) == (s * d, d, d, 1) == tk.triton_tma.tma_strides(k)
    assert tk.kernel_variant(q, k, v, 0.125) == "tma"
    broadcast = base[0][None, :, None].expand(2, s, 1, d)
    assert "broadcast" in tk.triton_tma.ineligible((broadcast,), 0.125)
    _check_against_dense(q, k, v, layout, base, dtype=torch.float16, gen=gen)
    assert tma_forward


@pytest.mark.parametrize("kind", ["dq_tma", "dkdv_tma"])
def test_tma_backward_every_config(kind, tma_forward, monkeypatch, gen):
    """Every dQ / dK/dV config of the TMA backward the tuner may pick, on key limits 0, 1, a tile edge and beyond S,
    with an lse gradient: q, k, v gradients equal the float64 reference."""
    s, blk, h, d = 128 + 37, 128, 2, 32
    mask = random_block_mask(2, 0.6, gen, full_rows=1)
    mask[1, 1] = True
    layout = rd.BlockLayout.from_block_mask(mask, blk, s)
    q, k, v = (torch.randn(4, s, h, d, generator=gen).to(DEVICE, torch.float16).requires_grad_(True) for _ in range(3))
    kv = torch.tensor([0, 1, 64, s + 9], device=DEVICE)
    ref, ref_lse = dense_masked_attention(q, k, v, layout, kv)
    grad, grad_lse = torch.randn(ref.shape, generator=gen), torch.randn(ref_lse.shape, generator=gen)
    want = _loss_grads(ref, ref_lse, (q, k, v), grad.double(), grad_lse.double())
    original = tk.candidate_configs
    for cfg in original(kind, blk, d, 2):
        monkeypatch.setattr(tk.triton_tuning, "CACHE", tk.triton_tuning.TuningCache())
        monkeypatch.setattr(tk, "candidate_configs", lambda k_, *a, _c=cfg: [_c] if k_ == kind else original(k_, *a)[:1])
        out, lse = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend="triton", return_lse=True)
        got = _loss_grads(out, lse, (q, k, v), grad.half(), grad_lse)
        for g, w in zip(got, want):
            assert torch.isfinite(g).all(), cfg
            torch.testing.assert_close(g.double(), w.double(), atol=1e-2, rtol=1e-2)
        assert (got[1][0] == 0).all() and (got[2][0] == 0).all()  # kv 0: no key of sample 0 gets a gradient


def test_tma_scratch_allocator_keeps_the_users_own():
    """The Hopper kernels build descriptors on the device, which needs a Triton scratch allocator: one is installed
    when none is set, and a user's own (``triton.set_allocator``) is kept. Triton keeps it in a context variable, so
    each case runs in a fresh context."""
    import contextvars

    from triton.runtime import _allocation

    def installed(preset):
        if preset is not None:
            triton.set_allocator(preset)
        tk.triton_tma.ensure_allocator()
        return _allocation._allocator.get()

    def users_own(size, alignment, stream):
        raise AssertionError("not called here")

    assert contextvars.Context().run(installed, None) is tk.triton_tma._scratch
    assert contextvars.Context().run(installed, users_own) is users_own
    assert tk.triton_tma.available()


def test_tma_launches_install_the_scratch_allocator(tma_forward, monkeypatch, gen):
    """The interpreter builds descriptors without scratch, so this is the CPU check that both the forward's and the
    backward's Hopper launches ask for the allocator first (a GPU launch without one raises)."""
    calls = []
    monkeypatch.setattr(tk.triton_tma, "ensure_allocator", lambda: calls.append("ensure"))
    layout = rd.BlockLayout.from_block_mask(random_block_mask(2, 0.7, gen, full_rows=1), 32, 64)
    q, k, v = (torch.randn(1, 64, 1, 16, generator=gen).to(DEVICE, torch.float16).requires_grad_(True)
               for _ in range(3))
    out = rd.block_sparse_attention(q, k, v, layout, backend="triton")
    assert calls == ["ensure"] and tma_forward
    out.backward(torch.randn(out.shape, generator=gen).to(DEVICE, out.dtype))
    assert calls == ["ensure", "ensure"]


def test_tma_forward_refuses_inputs_it_cannot_address(tma_forward):
    """Forced on inputs TMA cannot address (a head_dim that is not unit-stride), the TMA variant raises with the
    reason and the fix before launching anything."""
    layout = rd.BlockLayout.dense(32, 16)
    x = torch.randn(1, 32, 2, 16, 2, device=DEVICE)[..., 0]
    with pytest.raises(ValueError, match="not unit-stride.*RADIAL_TRITON_KERNEL=portable"):
        rd.block_sparse_attention(x, x, x, layout, backend="triton")
    assert tma_forward == []


# ----------------------------------------------------------------------------------------------------------------
# backward preamble and memory
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_delta_kernel_matches_the_formula(dtype, gen):
    """delta = rowsum(dO * O) - dLSE over strided dO / O, with dLSE dropped on rows whose lse is -inf."""
    b, s, h, d = 2, 70, 3, 40
    out = torch.randn(b, s, h, d, generator=gen).to(DEVICE, dtype)
    grad_out = torch.randn(b, s, 2 * h, d, generator=gen).to(DEVICE, dtype)[:, :, ::2]  # strided
    lse = torch.randn(b, h, s, generator=gen).to(DEVICE)
    lse[0, 1, 5:9] = float("-inf")
    grad_lse = torch.randn(b, h, s, generator=gen).to(DEVICE)
    want = (grad_out.double() * out.double()).sum(-1).transpose(1, 2)
    got = tk.delta(grad_out, out, lse, None)
    assert got.dtype == torch.float32 and got.shape == (b, h, s)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)
    want = want - torch.where(torch.isfinite(lse), grad_lse, 0.0).double()
    torch.testing.assert_close(tk.delta(grad_out, out, lse, grad_lse).double(), want, atol=1e-4, rtol=1e-5)


class _Allocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Records (dtype, numel, op) of every tensor an op creates (views, in-place ops and our custom ops, whose
    outputs are their implementations' tensors, excluded)."""

    def __init__(self):
        super().__init__()
        self.created = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if not func.is_view and not func._schema.is_mutable and func.namespace != "radial_diffusers":
            for t in torch.utils._pytree.tree_leaves(result):
                if isinstance(t, torch.Tensor):
                    self.created.append((t.dtype, t.numel(), func.__name__))
        return result


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's host-side copies are what is counted on CPU")
@pytest.mark.parametrize("split", [False, True], ids=["whole", "batch-split"])
def test_extra_memory_is_per_row_only(split, monkeypatch, gen):
    """Beyond inputs, outputs and gradients, forward and backward create nothing of (B, S, H, D) size: one output
    (no per-sample outputs concatenated when the batch is split), three gradients, and per-row float32 (lse, delta:
    B * H * S each). fp16 inputs: any float32 tensor of q's size would be a temporary of the old eager delta."""
    b, s, h, d = 3, 48, 2, 16
    if split:
        monkeypatch.setattr(tk, "_INT32_LIMIT", s * h * d + 1)  # one sample fits, three do not
    layout = rd.BlockLayout.from_block_mask(random_block_mask(3, 0.6, gen, full_rows=1), 16, s)
    q, k, v = (torch.randn(b, s, h, d, generator=gen).half() for _ in range(3))
    grad = torch.randn(b, s, h, d, generator=gen).half()
    big = b * s * h * d
    lay = layout
    with _Allocations() as fwd:  # the backend functions the op calls (its implementation runs below the mode)
        out, lse = tk.forward(q, k, v, lay.counts, lay.indices, lay.t_counts, lay.t_indices, None, 16, s, 0.25)
    with _Allocations() as bwd:
        tk.backward(grad, q, k, v, out, lse, torch.randn(lse.shape, generator=gen), lay.counts, lay.indices,
                    lay.t_counts, lay.t_indices, None, 16, s, 0.25)
    fwd_big = [c for c in fwd.created if c[1] >= big]
    assert fwd_big == [(torch.float16, big, "empty.memory_format")]  # the output, once
    assert max(c[1] for c in fwd.created if c[0] == torch.float32) == b * h * s  # lse
    bwd_big = [c for c in bwd.created if c[1] >= big]
    assert len(bwd_big) == 3 and {c[0] for c in bwd_big} == {torch.float16}  # dq, dk, dv
    assert max(c[1] for c in bwd.created if c[0] == torch.float32) <= b * h * s  # delta, lse grad
