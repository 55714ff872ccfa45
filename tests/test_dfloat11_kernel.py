"""DF11 Triton decode kernel: bit-exact against the CPU codec under TRITON_INTERPRET=1 (CPU tensors), the official
fixture, the torch.library custom op, and a GPU compile for sm_80 / sm_90 without a GPU (in a subprocess).

The interpreter is slow (about 0.3 s per program), so the units are small and mostly use small ``threads_per_block``
to get several blocks (cross-block output positions) out of a few thousand elements.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

if not torch.cuda.is_available():  # conftest does this too; the kernel module reads it at import time
    os.environ.setdefault("TRITON_INTERPRET", "1")

from radial_diffusers.dfloat11 import DF11Unit, decode, encode  # noqa: E402
from radial_diffusers.dfloat11 import kernel as K  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "dfloat11" / "official_v050_small.safetensors"
DEV = "cuda" if torch.cuda.is_available() else "cpu"
SENTINEL = 0x7FC1  # a NaN bit pattern that a DF11 unit can never produce (exponent 255)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().view(torch.int16)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _cauchy(shape, scale, g):
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    return (torch.tan(torch.pi * (u - 0.5)) * scale).clamp(-1e30, 1e30).float()


def _kernel_decode(unit: DF11Unit) -> torch.Tensor:
    """Decode through ``decode_unit_triton`` into a poisoned buffer; checks nothing is written past n_elements."""
    assert DEV == "cuda" or K._interpreter_active(), "CPU tensors without the interpreter would use the CPU codec"
    n = unit.n_elements
    buf = torch.full((n + 97,), SENTINEL, dtype=torch.int16, device=DEV)
    out = buf[:n].view(torch.bfloat16)
    bufs = [getattr(unit, k).to(DEV) for k in ("luts", "encoded_exponent", "sign_mantissa", "output_positions", "gaps")]
    res = K.decode_unit_triton(*bufs, n, unit.threads_per_block, unit.bytes_per_thread, out=out)
    assert res.data_ptr() == out.data_ptr() and res.dtype == torch.bfloat16 and res.shape == (n,)
    assert (buf[n:] == SENTINEL).all(), "the kernel wrote past n_elements"
    return res


def _assert_kernel_exact(tensors, **kw) -> DF11Unit:
    unit = encode(tensors, **kw)
    ref = torch.cat([_bits(t).reshape(-1) for t in decode(unit)])
    src = torch.cat([_bits(t).reshape(-1) for t in tensors])
    assert torch.equal(ref, src)
    got = _bits(_kernel_decode(unit))
    assert torch.equal(got, ref), f"{int((got != ref).sum())} of {ref.numel()} elements differ"
    return unit


def _dist(name, n, g):
    if name == "gaussian":
        return torch.randn(n, generator=g) * 0.02
    if name == "gaussian_wide":
        return torch.randn(n, generator=g) * torch.logspace(-6, 2, n)
    if name == "cauchy":
        return _cauchy((n,), 0.02, g)
    if name == "constant":
        return torch.full((n,), -0.0123)
    if name == "subnormal":
        return torch.randn(n, generator=g) * 1e-39
    if name == "uniform_bits":  # random bit patterns, exponent field uniform over 64 values (from tiny to huge)
        w = torch.randint(0, 1 << 16, (n,), generator=g, dtype=torch.int32)
        e = torch.randint(0, 64, (n,), generator=g, dtype=torch.int32) * 3 + 40
        w = ((w & 0x807F) | (e << 7)).to(torch.int16)
        return w.view(torch.bfloat16).float()
    raise AssertionError(name)


DISTS = ["gaussian", "gaussian_wide", "cauchy", "constant", "subnormal", "uniform_bits"]


@pytest.mark.parametrize("name", DISTS)
def test_distributions_bit_exact(name):
    g = _gen(10 + DISTS.index(name))
    tpb = 16 if name in ("constant", "subnormal") else 32  # (nearly) 1-bit codes: small blocks for several blocks
    unit = _assert_kernel_exact([_dist(name, 2000, g).bfloat16()], threads_per_block=tpb)
    assert unit.n_blocks >= 2


def test_several_tensors_per_unit():
    g = _gen(1)
    shapes = [(24, 16), (1,), (0, 3), (77,), (5, 3, 7), ()]
    tensors = [(torch.randn(s, generator=g) * (0.01 * (i + 1))).bfloat16() for i, s in enumerate(shapes)]
    tensors.append(_cauchy((600,), 0.05, g).bfloat16())
    unit = _assert_kernel_exact(tensors, threads_per_block=32)
    outs = K.decode_unit(unit)
    assert [tuple(o.shape) for o in outs] == [tuple(t.shape) for t in tensors]
    for a, b in zip(tensors, outs):
        assert torch.equal(_bits(a), _bits(b))


@pytest.mark.parametrize("n", [1, 2, 9])
def test_tiny_units(n):
    g = _gen(2)
    _assert_kernel_exact([(torch.randn(n, generator=g) * 3).bfloat16()], threads_per_block=8)
    _assert_kernel_exact([torch.full((n,), 1.0).bfloat16()], threads_per_block=8)  # one symbol + phantom


def test_long_codes_four_level_trie():
    """Fibonacci exponent counts: codes longer than 24 bits (4 trie lookups)."""
    g = _gen(3)
    # a long-code book forced through _code_lengths on a small sample (keeps the interpreter fast): the canonical
    # code with lengths 1, 2, ..., 27, 27 (Kraft sum exactly 1), frequent symbols on the short codes
    syms = np.arange(100, 128)
    lens = np.zeros(256, dtype=np.uint8)
    lens[syms[:-1]] = np.arange(1, 28)
    lens[syms[-1]] = 27
    counts = np.array([21, 13, 8, 5, 3, 2, 1, 1]) * 40
    exps = np.concatenate([np.repeat(syms[:8], counts), syms[8:], syms[-4:]])
    exps = exps[torch.randperm(exps.size, generator=g).numpy()].astype(np.int32)
    mant = torch.randint(0, 256, (exps.size,), generator=g, dtype=torch.int32).numpy()
    bits = ((mant & 0x80) << 8) | (exps << 7) | (mant & 0x7F)
    x = torch.from_numpy(bits.astype(np.uint16).view(np.int16)).view(torch.bfloat16)
    unit = _assert_kernel_exact([x], threads_per_block=16, _code_lengths=lens)
    assert int(unit.luts[-1].max()) > 24 and unit.luts.shape[0] - 1 >= 4


@pytest.mark.parametrize("tpb,bpt", [(24, 8), (16, 4), (16, 12), (512, 8)])
def test_launch_geometries(tpb, bpt):
    """Non-power-of-two blocks, short and long chunks, and the official 512 x 8 on a small tensor."""
    g = _gen(4)
    n = 14_000 if tpb == 512 else 1200
    x = torch.cat([torch.randn(n - 200, generator=g) * 0.02, _cauchy((200,), 1.0, g)]).bfloat16()
    unit = _assert_kernel_exact([x.reshape(-1, 8) if n % 8 == 0 else x], threads_per_block=tpb, bytes_per_thread=bpt)
    assert unit.n_blocks >= (2 if tpb == 512 else 3)


@pytest.mark.parametrize("prefix,tpb", [("", 512), ("tpb16.", 16), ("canon.", 512)])
def test_official_fixture(prefix, tpb):
    from safetensors.torch import load_file

    d = load_file(str(FIXTURE))
    src = [d[f"source.{i}"] for i in range(4)]
    shared = {n: d[n] for n in ("luts", "sign_mantissa", "split_positions")}
    if prefix.startswith("canon"):  # our encoder with the official code lengths (the canon.* arrays)
        shared["luts"] = encode(src, threads_per_block=tpb, _code_lengths=d["luts"][-1].numpy()).luts
    bufs = {n: d.get(prefix + n, shared.get(n)) for n in DF11Unit.BUFFER_NAMES}
    unit = DF11Unit.from_buffers(bufs, [s.shape for s in src], threads_per_block=tpb)
    assert unit.gaps.numel() == 5 * tpb * unit.n_blocks // 8  # official arrays: no padding byte
    got = _bits(_kernel_decode(unit))
    assert torch.equal(got, torch.cat([_bits(t).reshape(-1) for t in decode(unit)]))
    assert torch.equal(got, torch.cat([_bits(t).reshape(-1) for t in src]))


def test_out_none_and_poisoned_out_are_overwritten():
    g = _gen(5)
    x = (torch.randn(700, generator=g) * 0.1).bfloat16()
    unit = encode([x], threads_per_block=16)
    bufs = [getattr(unit, k).to(DEV) for k in ("luts", "encoded_exponent", "sign_mantissa", "output_positions", "gaps")]
    out = torch.full((700,), float("nan"), dtype=torch.bfloat16, device=DEV)
    K.decode_unit_triton(*bufs, 700, 16, 8, out=out)
    assert torch.equal(_bits(out), _bits(x))
    y = K.decode_unit_triton(*bufs, threads_per_block=16, bytes_per_thread=8)
    assert torch.equal(_bits(y), _bits(x))
    with pytest.raises(ValueError):
        K.decode_unit_triton(*bufs, 700, 16, 16)  # bytes_per_thread unsupported by the kernel
    with pytest.raises(ValueError):
        K.decode_unit_triton(*bufs, 700, 32, 8)  # wrong geometry: output_positions size mismatch


def test_cpu_fallback_without_interpreter(monkeypatch):
    """CPU tensors without TRITON_INTERPRET: the custom op falls back to the CPU codec (same bits)."""
    unit = _small_unit()
    monkeypatch.setattr(K, "_interpreter_active", lambda: False)
    args = [getattr(unit, k) for k in ("luts", "encoded_exponent", "sign_mantissa", "output_positions", "gaps")]
    out = K.decode_unit_triton(*args, unit.n_elements, unit.threads_per_block, unit.bytes_per_thread)
    assert torch.equal(_bits(out), torch.cat([_bits(t).reshape(-1) for t in decode(unit)]))


def _small_unit():
    g = _gen(6)
    return encode([(torch.randn(150, generator=g) * 0.02).bfloat16(), torch.ones(3, 4).bfloat16()], threads_per_block=8)


def _op_args(unit):
    bufs = [getattr(unit, k).to(DEV) for k in ("luts", "encoded_exponent", "sign_mantissa", "output_positions", "gaps")]
    return (*bufs, unit.n_elements, unit.threads_per_block, unit.bytes_per_thread)


def test_custom_op_opcheck():
    unit = _small_unit()
    args = _op_args(unit)
    out = torch.ops.radial_diffusers.df11_decode(*args)
    assert torch.equal(_bits(out), torch.cat([_bits(t).reshape(-1) for t in decode(unit)]))
    torch.library.opcheck(torch.ops.radial_diffusers.df11_decode.default, args)


def test_custom_op_one_graph_under_torch_compile():
    import torch._dynamo

    unit = _small_unit()
    args = _op_args(unit)
    w = torch.randn(12, 4, device=DEV).bfloat16()

    def block(luts, enc, sm, pos, gaps, x):
        flat = torch.ops.radial_diffusers.df11_decode(luts, enc, sm, pos, gaps, unit.n_elements,
                                                      unit.threads_per_block, unit.bytes_per_thread)
        a, b = torch.split(flat, [150, 12])
        return (x @ b.view(3, 4).t()).sum() + a.float().sum()

    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(block, fullgraph=True, backend=backend)
    got = compiled(*args[:5], w)
    assert len(graphs) == 1
    assert any("df11_decode" in str(n.target) for n in graphs[0].graph.nodes)
    assert torch.equal(got, block(*args[:5], w))
    torch._dynamo.reset()


_COMPILE_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["TRITON_INTERPRET"] = "0"
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from radial_diffusers.dfloat11 import kernel as K

    SIG = {"Luts": "*u8", "Enc": "*u8", "SM": "*u8", "OutPos": "*u8", "Gaps": "*u8", "Out": "*i16",
           "n_bytes": "i64", "n_gap_bytes": "i64", "n_elements": "i64", "n_luts": "i32"}
    for arch in (80, 90):
        for tpb, bpt in ((512, 8), (24, 4), (16, 12)):
            lanes = triton.next_power_of_2(tpb)
            cx = dict(TPB=tpb, LANES=lanes, BPT=bpt)
            sig = {**SIG, **{k: "constexpr" for k in cx}}
            assert list(sig) == list(K._df11_decode_kernel.arg_names), (list(sig), K._df11_decode_kernel.arg_names)
            c = triton.compile(ASTSource(fn=K._df11_decode_kernel, signature=sig, constexprs=cx),
                               target=GPUTarget("cuda", arch, 32),
                               options=dict(num_warps=max(1, min(16, lanes // 32))))
            assert len(c.asm["cubin"]) > 0 and f"sm_{arch}" in c.asm["ptx"]
            print("ok", arch, tpb, bpt, c.metadata.shared)
    """
)


def test_kernel_compiles_for_sm80_and_sm90():
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("ok ") == 6
