"""The block-sparse attention op: layouts, PyTorch path vs dense masked SDPA, autograd, compile, errors."""

from __future__ import annotations


import pytest
import torch

import radial_diffusers as rd
from attention_reference import (assert_padding_never_reaches_results, assert_torch_path_matches_dense,
                                 dense_masked_attention, random_block_mask)
from radial_diffusers.attention import torch_ref


def _qkv(b, s, h, d, dtype=torch.float32, gen=None):
    return [torch.randn(b, s, h, d, generator=gen).to(dtype).requires_grad_(True) for _ in range(3)]


def test_layout_roundtrip_and_transpose():
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    mask = random_block_mask(13, 0.4, gen, empty_rows=2, full_rows=1)
    layout = rd.BlockLayout.from_block_mask(mask, block_size=16, seq_len=13 * 16 - 5)
    assert torch.equal(layout.block_mask(), mask)
    assert torch.equal(layout.counts, mask.sum(1).int())
    for i in range(13):
        cols = layout.indices[i, : layout.counts[i]].tolist()
        assert cols == torch.nonzero(mask[i]).flatten().tolist()
        assert (layout.indices[i, layout.counts[i] :] == -1).all()
    assert torch.equal(layout.t_counts, mask.sum(0).int())
    for j in range(13):  # the transposed layout: per key block, the query blocks attending to it, ascending
        rows = layout.t_indices[j, : layout.t_counts[j]].tolist()
        assert rows == torch.nonzero(mask[:, j]).flatten().tolist()
        assert (layout.t_indices[j, layout.t_counts[j] :] == -1).all()
    assert layout.density == pytest.approx(mask.float().mean().item())
    token = layout.token_mask()
    assert token.shape == (13 * 16 - 5,) * 2
    assert layout.to("cpu") is layout


@pytest.mark.parametrize("bad", ["rect", "seq", "block"])
def test_layout_errors(bad):
    mask = torch.ones(4, 4, dtype=torch.bool)
    with pytest.raises(ValueError):
        if bad == "rect":
            rd.BlockLayout.from_block_mask(torch.ones(4, 5, dtype=torch.bool), 16)
        elif bad == "seq":
            rd.BlockLayout.from_block_mask(mask, 16, seq_len=48)
        else:
            rd.BlockLayout.from_block_mask(mask, 24)


def test_hand_built_layout_must_agree_with_itself():
    good = rd.BlockLayout.from_block_mask(torch.rand(3, 3) < 0.6, 16, seq_len=40)
    fields = (good.counts, good.indices, good.t_counts, good.t_indices)
    assert rd.BlockLayout(16, 40, *fields).nnz == good.nnz
    for block, seq_len, parts in ((16, 100, fields), (16, 32, fields), (24, 40, fields),
                                  (16, 40, (good.counts[:2], *fields[1:])), (16, 40, (*fields[:3], good.indices[0]))):
        with pytest.raises(ValueError, match="inconsistent BlockLayout.*from_block_mask"):
            rd.BlockLayout(block, seq_len, *parts)


CASES = [
    # batch, n_blocks, block, seq_len, heads, head_dim, density, empty, full, kv padding
    (1, 6, 16, 96, 2, 12, 0.5, 0, 0, False),
    (2, 7, 16, 100, 3, 32, 0.35, 1, 1, True),  # unaligned tail, empty and full rows, per-sample key padding
    (2, 5, 32, 150, 1, 64, 0.6, 0, 2, True),
    (1, 4, 16, 64, 2, 128, 0.5, 1, 0, False),
]


@pytest.mark.parametrize("case", CASES)
def test_forward_backward_match_dense_masked_sdpa(case, cpu_path, cover_targets):
    b, n, blk, s, h, d, dens, empty, full, pad = case
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    layout = rd.BlockLayout.from_block_mask(random_block_mask(n, dens, gen, empty, full), blk, s)
    q, k, v = _qkv(b, s, h, d, gen=gen)
    kv_lengths = torch.randint(s // 2, s + 1, (b,), generator=gen) if pad else None
    assert_torch_path_matches_dense(q, k, v, layout, kv_lengths)


@pytest.mark.parametrize("model,frames,tpf,text", [("wan", 6, 32, 0), ("hunyuan", 5, 48, 20), ("wan", 9, 40, 0)])
def test_radial_layouts_match_dense(model, frames, tpf, text, cpu_path, cover_targets):
    """Radial layouts (query blocks covered by rectangles, merged by log-sum-exp with the small targets) with text,
    per-sample padding and unaligned tails."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    s = frames * tpf + text
    mask = rd.radial_block_mask(frames, tpf, model=model, block_size=16, text_tokens=text)
    layout = rd.BlockLayout.from_block_mask(mask, 16, s)
    q, k, v = _qkv(2, s, 2, 16, gen=gen)
    kv_lengths = torch.tensor([s, s - text // 2]) if text else None
    out = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv_lengths, backend="torch")
    ref, _ = dense_masked_attention(q, k, v, layout, kv_lengths)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad.double())):
        torch.testing.assert_close(a.double(), b.double(), atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("heads,s", [(2, 72), (1, 80)])
def test_non_finite_keys_past_kv_lengths_do_not_reach_results(heads, s, cpu_path, cover_targets):
    """Non-finite keys / values past ``kv_lengths`` change nothing on the PyTorch path, whose block copies zero them
    (one head and whole blocks: the float32 block view of k is k's own storage, which must stay untouched). The
    Triton kernels run the same check in test_triton."""
    assert_padding_never_reaches_results("torch", torch.Generator().manual_seed(torch.seed() % 2**31), heads, s)


def test_all_dense_layout_equals_sdpa(cpu_path):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    q, k, v = _qkv(2, 200, 2, 16, gen=gen)
    out = rd.block_sparse_attention(q, k, v, rd.BlockLayout.dense(200, 64), backend="torch")
    ref = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    for a, c in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype, cpu_path):
    """Half inputs are attended in float32 and the output rounded once, so against float64 attention ``o`` of the
    same half inputs ``|out - o| <= u |o| + (1 + u) g max|v|`` (+ half the fp16 subnormal step): u = 2^-11 (fp16) or
    2^-8 (bf16) is the unit roundoff of the final rounding; g bounds the float32 error relative to max|v|, with
    u32 = 2^-24: ``(keys + 8) u32`` for the softmax sums and P @ V (8 for exp, max, scale, divide, rescaling) plus
    ``2 D u32 scale max(|q| @ |k|^T)`` for the scores (an error e in the scores moves o by at most 2 e max|v|).
    bf16 on ATen's flash kernel (as the stock dense CPU path) also rounds the probabilities and each rectangle's
    output to bf16: ``2 u max|v|`` more (the probabilities and the merge weights each sum to 1)."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    s, d, scale = 72, 32, 0.3
    layout = rd.BlockLayout.from_block_mask(random_block_mask(5, 0.5, gen, full_rows=1), 16, s)
    q, k, v = _qkv(1, s, 2, d, dtype, gen)
    out = rd.block_sparse_attention(q, k, v, layout, scale=scale, backend="torch")
    assert out.dtype == dtype
    ref, _ = dense_masked_attention(q, k, v, layout, scale=scale)
    info, u32 = torch.finfo(dtype), 2.0**-24
    u = info.eps / 2
    qa, ka = (x.detach().double().abs().transpose(1, 2) for x in (q, k))
    g = u32 * (s + 8 + 2 * d * scale * (qa @ ka.transpose(-1, -2)).max().item())
    subnormal = info.smallest_normal * u if dtype == torch.float16 else 0.0
    in_bf16 = dtype == torch.bfloat16 and cpu_path  # bf16 on the flash kernel
    atol = ((1 + u) * g + (2 * u if in_bf16 else 0.0)) * v.detach().abs().max().item() + subnormal
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=u)
    # the same inputs attended in float32 and rounded once: equal unless computed in bf16
    once = rd.block_sparse_attention(q.float(), k.float(), v.float(), layout, scale=scale, backend="torch").to(dtype)
    assert torch.equal(out, once) != in_bf16


def test_radial_layout_never_builds_dense_scores(monkeypatch):
    """The PyTorch path only multiplies kept blocks: no score tensor reaches S x S elements per head."""
    mask = rd.radial_block_mask(16, 64, model="wan", block_size=16)
    layout = rd.BlockLayout.from_block_mask(mask, 16)
    assert layout.density < 0.5
    s = layout.seq_len
    largest = []
    real_matmul = torch.matmul

    def spy(a, b):
        r = real_matmul(a, b)
        largest.append(r.numel())
        return r

    monkeypatch.setattr(torch_ref.torch, "matmul", spy)
    monkeypatch.setattr(torch_ref, "USE_CPU_FLASH", False)
    monkeypatch.setattr(torch_ref, "_GROUP_ELEMENTS", 16 * 8 * 64 * 4)
    q, k, v = (torch.randn(1, s, 1, 8) for _ in range(3))
    rd.block_sparse_attention(q, k, v, layout, backend="torch")
    assert max(largest) < s * s // 2


def test_strided_inputs(cpu_path):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    layout = rd.BlockLayout.from_block_mask(random_block_mask(4, 0.6, gen), 16, 64)
    base = torch.randn(1, 64, 3, 2, 16, generator=gen)
    q, k, v = base.unbind(2)  # non-contiguous (B, S, H, D) views
    out = rd.block_sparse_attention(q, k, v, layout, backend="torch")
    ref, _ = dense_masked_attention(q, k, v, layout)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


def test_input_errors():
    layout = rd.BlockLayout.dense(64, 16)
    q = torch.randn(1, 64, 2, 16)
    with pytest.raises(ValueError, match="seq_len"):
        rd.block_sparse_attention(q[:, :60], q[:, :60], q[:, :60], layout)
    with pytest.raises(ValueError, match=r"look like \(B, H, S, D\): pass q.transpose\(1, 2\)"):
        rd.block_sparse_attention(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2), layout)
    with pytest.raises(ValueError, match="4-D"):
        rd.block_sparse_attention(q[0], q[0], q[0], layout)
    with pytest.raises(TypeError, match="float"):
        rd.block_sparse_attention(q.long(), q.long(), q.long(), layout)
    with pytest.raises(ValueError, match="backend"):
        rd.block_sparse_attention(q, q, q, layout, backend="cuda-magic")
    with pytest.raises(ValueError, match="kv_lengths"):
        rd.block_sparse_attention(q, q, q, layout, kv_lengths=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="head_dim"):
        big = torch.randn(1, 64, 1, 300)
        rd.block_sparse_attention(big, big, big, layout)
    with pytest.raises(ValueError, match="head_dim"):
        empty = torch.randn(1, 64, 1, 0)
        rd.block_sparse_attention(empty, empty, empty, layout)
    for bad in ([64], (64,), torch.tensor([True]), torch.tensor([[64]])):
        with pytest.raises(ValueError, match=r"kv_lengths must be an integer tensor of shape \(1,\)"):
            rd.block_sparse_attention(q, q, q, layout, kv_lengths=bad)


def test_kv_lengths_beyond_int32_mean_every_key():
    """Lengths are clamped to [0, S] before the int32 cast: 2**32 + 5 keeps every key, it does not wrap to 5."""
    layout = rd.BlockLayout.from_block_mask(rd.radial_block_mask(4, 32, block_size=16), 16)
    q, k, v = (torch.randn(3, 128, 2, 8) for _ in range(3))
    full = rd.block_sparse_attention(q, k, v, layout)
    for lengths in ([2**31, 2**32, 2**32 + 5], [128, 10**12, 2**40]):
        out = rd.block_sparse_attention(q, k, v, layout, kv_lengths=torch.tensor(lengths))
        torch.testing.assert_close(out, full, rtol=0, atol=0)
    out = rd.block_sparse_attention(q, k, v, layout, kv_lengths=torch.tensor([-2**32 + 5, 0, 128]))
    assert out[:2].eq(0).all() and torch.equal(out[2], full[2])  # negative: no key, as 0


@pytest.mark.parametrize("shape", [(0, 64, 2, 16), (2, 64, 0, 16)])
def test_empty_batch_or_no_heads(shape):
    layout = rd.BlockLayout.from_block_mask(rd.radial_block_mask(4, 16, block_size=16), 16)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    out, lse = rd.block_sparse_attention(q, k, v, layout, backend="torch", return_lse=True)
    assert out.shape == shape and lse.shape == (shape[0], shape[2], shape[1])
    out.sum().backward()
    assert q.grad.shape == shape


def test_backward_api_equals_autograd_and_checks_its_inputs():
    """``block_sparse_attention_backward`` (the entry of context-parallel callers) gives autograd's gradients, casts
    an upstream gradient of another dtype to q's, and refuses mis-shaped ``grad_out`` / ``out`` / ``lse`` (a (B, S, H)
    lse, Diffusers' layout, would otherwise give wrong gradients silently)."""
    layout = rd.BlockLayout.from_block_mask(rd.radial_block_mask(4, 32, block_size=16), 16)
    q, k, v = (torch.randn(2, 128, 3, 8, requires_grad=True) for _ in range(3))
    lengths = torch.tensor([128, 77])
    out, lse = rd.block_sparse_attention(q, k, v, layout, kv_lengths=lengths, return_lse=True)
    g = torch.randn_like(out)
    want = torch.autograd.grad(out, (q, k, v), g)
    from radial_diffusers.attention.op import block_sparse_attention_backward as bwd
    got = bwd(g.double(), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), layout, kv_lengths=lengths)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    args = [g, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach()]
    for i, bad, name in ((0, g[:1], "grad_out"), (4, out[..., :4], "out"), (5, lse.transpose(1, 2), "lse"),
                         (5, lse[:, :, None], "lse")):
        wrong = list(args)
        wrong[i] = bad
        with pytest.raises(ValueError, match=rf"{name} must have shape"):
            bwd(*wrong, layout, kv_lengths=lengths)


def test_opcheck():
    layout = rd.BlockLayout.from_block_mask(rd.radial_block_mask(4, 32, block_size=16), 16)
    q, k, v = (torch.randn(2, 128, 2, 8, requires_grad=True) for _ in range(3))
    args = (q, k, v, layout.counts, layout.indices, layout.t_counts, layout.t_indices,
            torch.tensor([128, 100], dtype=torch.int32), 16, 128, 0.35, "torch")
    torch.library.opcheck(torch.ops.radial_diffusers.block_sparse_attn.default, args)


def test_compile_keeps_two_graphs():
    """A block that switches dense/sparse on a bool attribute compiles to at most 2 graphs over 4 steps."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    layout = rd.BlockLayout.from_block_mask(rd.radial_block_mask(4, 32, block_size=16), 16)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 48)
            self.use_sparse = False
            self.layout = layout

        def forward(self, x):
            q, k, v = self.proj(x).unflatten(-1, (3, 2, 8)).unbind(2)
            if self.use_sparse:
                o = rd.block_sparse_attention(q, k, v, self.layout, backend="torch")
            else:
                o = torch.nn.functional.scaled_dot_product_attention(
                    *(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
            return o.flatten(2)

    block = Block()
    counter = CompileCounter()
    compiled = torch.compile(block, backend=counter, fullgraph=True)
    x = torch.randn(1, 128, 16)
    for step in range(4):
        block.use_sparse = step >= 1
        y = compiled(x)
        y.sum().backward()
        eager = block(x)
        torch.testing.assert_close(y, eager)
    assert counter.frame_count <= 2


def test_inference_mode_then_training(cpu_path):
    """Scratch buffers and layouts made under inference_mode must not poison later eager / training calls: both calls
    match dense masked attention (and its gradients) on independent q, k, v."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    with torch.inference_mode():
        layout = rd.BlockLayout.from_block_mask(rd.radial_block_mask(4, 32, block_size=16), 16)
        x = [torch.randn(1, 128, 2, 8, generator=gen) for _ in range(3)]
        first = rd.block_sparse_attention(*x, layout, backend="torch")
    torch.testing.assert_close(first.double(), dense_masked_attention(*x, layout)[0], atol=2e-5, rtol=1e-4)
    q, k, v = _qkv(1, 128, 2, 8, gen=gen)
    out = rd.block_sparse_attention(q, k, v, layout, backend="torch")
    ref, _ = dense_masked_attention(q, k, v, layout)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad.double())):
        torch.testing.assert_close(a.double(), b.double(), atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("case", CASES[:3])
def test_flex_block_mask_matches_the_layout(case):
    """The FlexAttention BlockMask of a layout: eager FlexAttention (which applies only ``mask_mod``) equals dense
    masked attention, and the block lists split into full blocks and the partial blocks that straddle each sample's
    key limit."""
    from torch.nn.attention.flex_attention import flex_attention

    from radial_diffusers.attention import flex

    b, n, blk, s, h, d, dens, empty, full, pad = case
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    layout = rd.BlockLayout.from_block_mask(random_block_mask(n, dens, gen, empty, full), blk, s)
    q, k, v = _qkv(b, s, h, d, gen=gen)
    kv_lengths = torch.randint(1, s + 1, (b,), generator=gen).int() if pad else None
    mask = flex.block_mask_for(layout, b, kv_lengths)
    assert (flex.block_mask_for(layout, b, kv_lengths) is mask) == (kv_lengths is None)  # cached per layout
    with torch.inference_mode():  # built outside inference mode: a mask made at inference also serves training
        inference_mask = flex.block_mask_for(rd.BlockLayout.from_block_mask(layout.block_mask(), blk, s), b,
                                             None if kv_lengths is None else kv_lengths.clone())
    assert not inference_mask.kv_num_blocks.is_inference() and not inference_mask.full_kv_indices.is_inference()
    with torch.no_grad():  # eager FlexAttention has no CPU backward
        out, lse = flex_attention(*(x.detach().transpose(1, 2) for x in (q, k, v)), block_mask=mask, return_lse=True)
    ref, ref_lse = dense_masked_attention(q, k, v, layout, kv_lengths)
    torch.testing.assert_close(out.transpose(1, 2).double(), ref, atol=2e-5, rtol=1e-4)
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=2e-5, rtol=1e-5)
    limit = [s] * b if kv_lengths is None else kv_lengths.tolist()
    for i in range(b):
        for r in range(n):
            cols = layout.indices[r, : layout.counts[r]].tolist()
            n_full, n_part = int(mask.full_kv_num_blocks[i, 0, r]), int(mask.kv_num_blocks[i, 0, r])
            assert mask.full_kv_indices[i, 0, r, :n_full].tolist() == [c for c in cols if (c + 1) * blk <= limit[i]]
            assert mask.kv_indices[i, 0, r, :n_part].tolist() == [c for c in cols
                                                                 if c * blk < limit[i] < (c + 1) * blk]


def test_auto_backend_resolution(monkeypatch):
    from radial_diffusers.attention import op

    assert op.resolve_backend("auto", torch.device("cpu")) == "torch"
    assert op.resolve_backend("flex", torch.device("cuda")) == "flex"
    with pytest.raises(NotImplementedError, match="backend='flex' needs CUDA"):  # named, on a device it cannot run
        op.resolve_backend("flex", torch.device("cpu"))
    monkeypatch.setattr(op, "_triton_ready", lambda device: device.type == "cuda")
    assert op.resolve_backend("auto", torch.device("cuda"), 128) == "triton"
    assert op.resolve_backend("auto", torch.device("cuda"), 8) == "torch"  # below the kernels' 16-token tiles
    with pytest.raises(ValueError, match="unknown backend"):
        op.resolve_backend("cuda", torch.device("cpu"))


def test_flex_backend_needs_cuda_on_cpu():
    layout = rd.BlockLayout.dense(64, 16)
    x = torch.randn(1, 64, 1, 8)
    with pytest.raises(NotImplementedError, match="CUDA"):
        rd.block_sparse_attention(x, x, x, layout, backend="flex")


def test_flex_backward_refuses_the_eager_dense_fallback(monkeypatch):
    """When the compiled FlexAttention re-run records no autograd graph, the flex backward raises instead of
    differentiating eager FlexAttention (mask_mod over the whole S x S grid)."""
    import torch.nn.attention.flex_attention as fa

    from radial_diffusers.attention import flex

    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    layout = rd.BlockLayout.from_block_mask(random_block_mask(4, 0.5, gen, full_rows=1), 16, 64)
    q, k, v = (torch.randn(1, 64, 2, 8, generator=gen) for _ in range(3))
    out, lse = torch_ref.forward(q, k, v, layout.counts, layout.indices, None, 16, 64, 0.25)

    def no_autograd_run(*args):  # what the compiled call gives when it records no autograd
        with torch.no_grad():
            return out.clone(), lse.clone()

    def eager_flex(q, k, v, **kwargs):  # stands in for eager FlexAttention, which differentiates on CUDA
        eager_calls.append(1)
        return q * 1.0, q.sum(-1)

    eager_calls = []
    monkeypatch.setattr(flex, "_run", no_autograd_run)
    monkeypatch.setattr(fa, "flex_attention", eager_flex)
    grad_out = torch.randn_like(out)
    with pytest.raises(RuntimeError, match="recorded no autograd graph.*backend='torch'"):
        flex.backward(grad_out, q, k, v, out, lse, None, layout.counts, layout.indices, layout.t_counts,
                      layout.t_indices, None, 16, 64, 0.25)
    assert not eager_calls


def test_tests_importorskip_only_third_party_packages():
    """``pytest.importorskip`` of one of our own modules would turn a broken module into a skipped file."""
    import re
    from pathlib import Path

    own = re.compile(r"importorskip\(\s*[\"']radial_diffusers")
    offenders = [p.name for p in Path(__file__).parent.glob("*.py") if own.search(p.read_text(encoding="utf-8"))]
    assert not offenders, f"importorskip of a radial_diffusers module in {offenders}: import it plainly"
