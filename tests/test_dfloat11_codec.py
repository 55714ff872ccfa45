"""DF11 CPU codec: bit-exact round trips, official-fixture decode, code validity, error paths.

These tests never import the official ``dfloat11``/``dahuffman`` packages; the official encoder's output is read from
tests/fixtures/dfloat11/official_v050_small.safetensors (see the README there).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from radial_diffusers.dfloat11 import DF11Unit, decode, encode
from radial_diffusers.dfloat11.codec import build_luts, canonical_codes, code_lengths

FIXTURE = Path(__file__).parent / "fixtures" / "dfloat11" / "official_v050_small.safetensors"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16)


def _assert_roundtrip(tensors, **kw) -> DF11Unit:
    unit = encode(tensors, **kw)
    out = decode(unit)
    assert len(out) == len(tensors)
    for a, b in zip(tensors, out):
        assert b.dtype == torch.bfloat16
        assert tuple(b.shape) == tuple(a.shape)
        assert torch.equal(_bits(a), _bits(b))
    return unit


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _cauchy(shape, scale, g):
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    return (torch.tan(torch.pi * (u - 0.5)) * scale).clamp(-1e30, 1e30).float()  # heavy tails, finite & encodable


# ---------------------------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(1,), (), (2,), (3, 5), (513,), (64, 64), (7, 11, 13), (1, 4097), (3000, 37), (2, 3, 4, 5)]
)
def test_roundtrip_gaussian_shapes(shape):
    g = _gen(1)
    _assert_roundtrip([(torch.randn(shape, generator=g) * 0.02).bfloat16()])


@pytest.mark.parametrize(
    "name",
    ["gaussian_wide", "cauchy", "constant", "zeros", "subnormal", "mixed_sign_tiny", "uniform_bits", "big_values"],
)
def test_roundtrip_distributions(name):
    g = _gen(2)
    n = 50_000
    if name == "gaussian_wide":
        x = torch.randn(n, generator=g) * torch.logspace(-6, 2, n)
    elif name == "cauchy":
        x = _cauchy((n,), 0.02, g)
    elif name == "constant":
        x = torch.full((n,), 0.0123)
    elif name == "zeros":
        x = torch.zeros(n)
    elif name == "subnormal":
        x = torch.randn(n, generator=g) * 1e-39  # BF16 subnormals (exponent field 0)
    elif name == "mixed_sign_tiny":
        x = torch.where(torch.rand(n, generator=g) < 0.5, -0.0, 0.0) + torch.randn(n, generator=g) * 1e-30
    elif name == "uniform_bits":
        # every encodable bit pattern (exponent < 240) with equal probability
        w = torch.randint(0, 1 << 16, (n,), generator=g, dtype=torch.int32)
        w = w[((w >> 7) & 0xFF) < 240].to(torch.int16)
        x = w.view(torch.bfloat16).float()
    else:
        x = torch.randn(n, generator=g) * 1e30  # exponents up to ~227
    _assert_roundtrip([x.bfloat16()])


def test_roundtrip_many_tensors_one_unit():
    g = _gen(3)
    shapes = [(64, 32), (1,), (0, 5), (128,), (17, 3), (200, 50), (), (9, 9, 9)]
    tensors = [(torch.randn(s, generator=g) * (0.01 * (i + 1))).bfloat16() for i, s in enumerate(shapes)]
    tensors.append(_cauchy((4000,), 0.05, g).bfloat16())
    unit = _assert_roundtrip(tensors)
    assert unit.split_positions.dtype == torch.int64
    assert unit.split_positions.tolist() == np.cumsum([t.numel() for t in tensors])[:-1].tolist()
    assert unit.shapes == [tuple(t.shape) for t in tensors]


def test_roundtrip_noncontiguous_and_empty():
    g = _gen(4)
    x = (torch.randn(40, 30, generator=g) * 0.1).bfloat16().t()  # non-contiguous
    _assert_roundtrip([x, torch.zeros(0, dtype=torch.bfloat16)])
    _assert_roundtrip([torch.zeros(0, 3, dtype=torch.bfloat16)])


def test_roundtrip_long_codes():
    """Fibonacci-like exponent counts: codes longer than 16 and 24 bits (3- and 4-level trie walks)."""
    fib = [1, 1]
    while len(fib) < 27:
        fib.append(fib[-1] + fib[-2])
    g = _gen(5)
    exps = np.repeat(np.arange(100, 100 + len(fib)), fib)
    perm = torch.randperm(exps.size, generator=g).numpy()
    exps = exps[perm].astype(np.int32)
    mant = torch.randint(0, 256, (exps.size,), generator=g, dtype=torch.int32).numpy()
    bits = ((mant & 0x80) << 8) | (exps << 7) | (mant & 0x7F)
    x = torch.from_numpy(bits.astype(np.uint16).view(np.int16)).view(torch.bfloat16)
    unit = _assert_roundtrip([x])
    lens = unit.luts[-1].numpy()
    assert lens.max() > 24
    assert unit.luts.shape[0] - 1 >= 4  # root + 8/16/24-bit prefix tables


@pytest.mark.parametrize("tpb", [8, 16, 512])
def test_roundtrip_threads_per_block(tpb):
    g = _gen(6)
    _assert_roundtrip([(torch.randn(30_000, generator=g) * 0.02).bfloat16()], threads_per_block=tpb)


@pytest.mark.slow
def test_roundtrip_over_2_pow_24():
    g = _gen(7)
    n = (1 << 24) + 12_345
    x = (torch.randn(n, generator=g) * 0.02).bfloat16()
    y = _cauchy((1000, 3), 0.01, g).bfloat16()
    unit = _assert_roundtrip([x, y])
    assert unit.n_elements == n + 3000
    assert 0.66 < unit.ratio < 0.69


# ---------------------------------------------------------------------------------------------------------------
# metadata / layout
# ---------------------------------------------------------------------------------------------------------------


def test_unit_metadata_layout():
    g = _gen(8)
    x = (torch.randn(100_000, generator=g) * 0.02).bfloat16()
    u = encode([x])
    assert u.threads_per_block == 512 and u.bytes_per_thread == 8
    for name in DF11Unit.BUFFER_NAMES:
        t = getattr(u, name)
        assert t.dtype == (torch.int64 if name == "split_positions" else torch.uint8), name
    n_blocks = -(-u.encoded_exponent.numel() // 4096)
    assert u.n_blocks == n_blocks
    assert u.output_positions.numel() == 4 * (n_blocks + 1)
    pos = u.output_positions.numpy().view("<u4")
    assert pos[0] == 0 and pos[-1] == x.numel() and np.all(np.diff(pos.astype(np.int64)) > 0)
    assert u.gaps.numel() == 5 * 512 * n_blocks // 8 + 1  # + 1 padding byte (the kernel reads one past the end)
    assert u.gaps[-1].item() == 0
    assert u.luts.shape[1] == 256 and 2 <= u.luts.shape[0] <= 18
    assert u.sign_mantissa.numel() == x.numel()
    assert u.nbytes == sum(t.numel() * t.element_size() for t in u.buffers().values())
    assert u.ratio == pytest.approx(u.nbytes / (2 * x.numel()))
    # trie pointers address existing tables only; symbols < 240
    tables = u.luts[:-1].numpy()
    ptr = tables[tables >= 240]
    assert np.all(256 - ptr.astype(int) < tables.shape[0])


def test_from_buffers_roundtrip():
    g = _gen(9)
    ts = [(torch.randn(33, 7, generator=g) * 0.03).bfloat16(), (torch.randn(5, generator=g)).bfloat16()]
    u = encode(ts)
    u2 = DF11Unit.from_buffers({k: v.clone() for k, v in u.buffers().items()}, [t.shape for t in ts])
    for a, b in zip(ts, decode(u2)):
        assert torch.equal(_bits(a), _bits(b))


# ---------------------------------------------------------------------------------------------------------------
# code construction
# ---------------------------------------------------------------------------------------------------------------


def _assert_prefix_code(lens, codes, max_len=32):
    syms = np.flatnonzero(lens)
    L = lens[syms].astype(np.int64)
    assert L.max() <= max_len
    c = codes[syms].astype(object)
    lo = np.array([int(ci) << (max_len - int(li)) for ci, li in zip(c, L)], dtype=object)
    hi = np.array([(int(ci) + 1) << (max_len - int(li)) for ci, li in zip(c, L)], dtype=object)
    order = np.argsort(lo.astype(np.float64), kind="stable")
    lo, hi = lo[order], hi[order]
    assert all(hi[i] <= lo[i + 1] for i in range(len(lo) - 1)), "codes overlap: not a prefix code"
    assert sum(int(h - l) for l, h in zip(lo, hi)) == 1 << max_len  # complete (Kraft sum 1)


def test_fibonacci_frequencies_length_limited():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    freq = np.zeros(256, dtype=np.int64)
    freq[60:100] = fib
    lens = code_lengths(freq)
    assert lens.max() == 32  # unconstrained Huffman would need depth 39
    codes = canonical_codes(lens)
    _assert_prefix_code(lens, codes)
    luts = build_luts(lens, codes)
    assert luts.shape[1] == 256 and luts.shape[0] - 1 <= 17
    # optimality sanity: no worse than the official heuristic's 32-bit code would be (Kraft-complete, <= 32)
    lens16 = code_lengths(freq, max_len=16)
    assert lens16.max() == 16
    _assert_prefix_code(lens16, canonical_codes(lens16), max_len=16)


def test_code_lengths_optimal_unconstrained():
    rng = np.random.default_rng(0)
    freq = np.zeros(256, dtype=np.int64)
    freq[:50] = rng.integers(1, 10_000, 50)
    lens = code_lengths(freq)
    # compare with a plain Huffman cost (sum of merged weights)
    import heapq

    h = list(freq[freq > 0])
    heapq.heapify(h)
    cost = 0
    while len(h) > 1:
        a, b = heapq.heappop(h), heapq.heappop(h)
        cost += a + b
        heapq.heappush(h, a + b)
    assert int((freq * lens).sum()) == cost
    _assert_prefix_code(lens, canonical_codes(lens))


def test_single_symbol_code_is_complete():
    freq = np.zeros(256, dtype=np.int64)
    freq[239] = 10
    lens = code_lengths(freq)
    assert lens[239] == 1 and lens.sum() == 2
    _assert_prefix_code(lens, canonical_codes(lens))


def test_too_many_prefix_tables_rejected():
    # 20 distinct 9-bit codes under 20 distinct first bytes would need 21 tables
    lens = np.zeros(256, dtype=np.uint8)
    codes = np.zeros(256, dtype=np.uint64)
    for i in range(20):
        lens[i] = 9
        codes[i] = i << 1
    with pytest.raises(ValueError, match="at most 17"):
        build_luts(lens, codes)


def _from_exponents(exps: np.ndarray, g: torch.Generator) -> torch.Tensor:
    """BF16 weights with the given exponent fields and random sign/mantissa bits."""
    sm = torch.randint(0, 256, (exps.size,), generator=g, dtype=torch.int32).numpy()
    bits = ((sm & 0x80) << 8) | (exps.astype(np.int32) << 7) | (sm & 0x7F)
    return torch.from_numpy(bits.astype(np.uint16).view(np.int16)).view(torch.bfloat16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_many_rare_exponents_encode_within_the_table_limit(seed):
    # a few dominant exponents plus many rare ones: the optimal 32-bit code needs far more than 17 prefix tables
    rng = np.random.default_rng(seed)
    n_dom, n_rare = int(rng.integers(1, 4)), int(rng.integers(120, 237))
    syms = rng.permutation(240)[: n_dom + n_rare]
    counts = np.r_[rng.integers(200_000, 400_000, n_dom), rng.integers(1, 60, n_rare)]
    exps = rng.permutation(np.repeat(syms, counts))
    freq = np.bincount(exps, minlength=256)
    full = code_lengths(freq)
    assert len({(d, int(c) >> (int(L) - 8 * d)) for L, c in zip(full, canonical_codes(full)) if L
                for d in range(1, (int(L) - 1) // 8 + 1)}) + 1 > 17  # the unrestricted code would not fit
    w = _from_exponents(exps, _gen(seed))
    unit = _assert_roundtrip([w[:1000].reshape(10, 100), w[1000:]])
    assert unit.luts.shape[0] - 1 <= 17 and int(unit.luts[-1].max()) <= 32
    lens = unit.luts[-1].numpy()
    _assert_prefix_code(lens, canonical_codes(lens))


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int16])
def test_non_bf16_rejected(dtype):
    with pytest.raises(TypeError, match="bfloat16"):
        encode([torch.zeros(4, dtype=dtype)])


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), 2.0**120])
def test_inf_nan_huge_rejected(bad):
    x = torch.zeros(100, dtype=torch.bfloat16)
    x[17] = bad
    with pytest.raises(ValueError, match="inf/NaN"):
        encode([x])


def test_empty_list_rejected():
    with pytest.raises(ValueError, match="at least one"):
        encode([])


def test_corrupted_unit_rejected():
    g = _gen(10)
    u = encode([(torch.randn(20_000, generator=g) * 0.02).bfloat16()])
    bad = DF11Unit(**{**u.__dict__, "output_positions": u.output_positions[:-4].clone()})
    with pytest.raises(ValueError, match="corrupted"):
        decode(bad)
    pos = u.output_positions.numpy().view("<u4").copy()
    pos[1] += 1
    bad = DF11Unit(**{**u.__dict__, "output_positions": torch.from_numpy(pos.view(np.uint8))})
    with pytest.raises(ValueError, match="corrupted"):
        decode(bad)
    with pytest.raises(ValueError):
        decode(DF11Unit(**{**u.__dict__, "shapes": [(19_999,)]}))


# ---------------------------------------------------------------------------------------------------------------
# official compatibility and size
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix,tpb", [("", 512), ("tpb16.", 16)])
def test_official_fixture_decodes_bit_exactly(prefix, tpb):
    from safetensors.torch import load_file

    d = load_file(str(FIXTURE))
    src = [d[f"source.{i}"] for i in range(4)]
    bufs = {n: d[prefix + n] for n in DF11Unit.BUFFER_NAMES}
    assert bufs["gaps"].numel() == 5 * tpb * (-(-bufs["encoded_exponent"].numel() // (8 * tpb))) // 8  # unpadded
    unit = DF11Unit.from_buffers(bufs, [s.shape for s in src], threads_per_block=tpb)
    if tpb == 16:
        assert unit.n_blocks > 10
    out = decode(unit)
    for a, b in zip(src, out):
        assert torch.equal(_bits(a), _bits(b))
    # our encoder on the same data: round trip, and no larger exponent stream than the official one
    ours = _assert_roundtrip(src, threads_per_block=tpb)
    assert ours.encoded_exponent.numel() <= bufs["encoded_exponent"].numel()


def test_reference_vector_a_size():
    """Notes §4, vector A: official encoded_exponent 339,706 B, gaps 26,560 B, 84 u32 positions, ratio 0.6748."""
    torch.manual_seed(0)
    a = (torch.randn(2**20) * 0.02).bfloat16()
    u = _assert_roundtrip([a])
    assert u.encoded_exponent.numel() <= 339_706
    assert u.gaps.numel() <= 26_560 + 1
    assert u.output_positions.numel() <= 4 * 84
    official_ratio_bytes = 339_706 + 2**20 + 4 * 84 + 26_560
    ours = u.encoded_exponent.numel() + u.sign_mantissa.numel() + u.output_positions.numel() + u.gaps.numel()
    # same formula as the notes; measured equal (1,415,178 B): our code saves the byte our gaps padding costs
    assert ours <= official_ratio_bytes
    assert u.luts[-1].max() <= 32


def test_reference_vector_b_size():
    torch.manual_seed(0)
    b = (torch.randn(2**16) * 0.05).bfloat16()
    u = _assert_roundtrip([b])
    assert u.encoded_exponent.numel() <= 21_059


@pytest.mark.parametrize("enc_chunk,dec_lanes", [(1, 8), (7, 16), (1000, 512), (4093, 1024)])
def test_pass_sizes_do_not_change_the_result(monkeypatch, enc_chunk, dec_lanes):
    """The encoder and decoder work in passes; tiny passes must give byte-identical units and exact decodes."""
    from radial_diffusers.dfloat11 import codec

    g = _gen(11)
    ts = [(torch.randn(9_000, generator=g) * 0.02).bfloat16(), _cauchy((3_000,), 0.05, g).bfloat16()]
    ref = encode(ts, threads_per_block=8)
    monkeypatch.setattr(codec, "_ENC_CHUNK", enc_chunk)
    monkeypatch.setattr(codec, "_DEC_LANES", dec_lanes)
    u = encode(ts, threads_per_block=8)
    for name in DF11Unit.BUFFER_NAMES:
        assert torch.equal(getattr(u, name), getattr(ref, name)), name
    for a, b in zip(ts, decode(u)):
        assert torch.equal(_bits(a), _bits(b))


@pytest.mark.parametrize("prefix,tpb", [("canon.", 512), ("canon_tpb16.", 16)])
def test_bitstream_layout_identical_to_official_encoder(prefix, tpb):
    """Given the same code (canonical, official code lengths), our encoder writes the official encoder's
    encoded_exponent, output_positions and gaps byte for byte (ours has one extra zero padding byte in gaps)."""
    from safetensors.torch import load_file

    d = load_file(str(FIXTURE))
    src = [d[f"source.{i}"] for i in range(4)]
    u = encode(src, threads_per_block=tpb, _code_lengths=d["luts"][-1].numpy())
    assert torch.equal(u.encoded_exponent, d[prefix + "encoded_exponent"])
    assert torch.equal(u.output_positions, d[prefix + "output_positions"])
    assert torch.equal(u.gaps[:-1], d[prefix + "gaps"]) and u.gaps[-1].item() == 0
    assert torch.equal(u.sign_mantissa, d["sign_mantissa"])
    assert torch.equal(u.split_positions, d["split_positions"])
    for a, b in zip(src, decode(u)):
        assert torch.equal(_bits(a), _bits(b))


def test_corrupted_stream_or_tables_rejected_cleanly():
    """Random corruption of the stream or tables gives a ValueError or a (wrong) decode, never a crash/hang."""
    g = _gen(12)
    x = (torch.randn(30_000, generator=g) * 0.02).bfloat16()
    u = encode([x])
    rng = np.random.default_rng(0)
    for trial in range(20):
        enc = u.encoded_exponent.clone()
        luts = u.luts.clone()
        if trial % 2:
            idx = torch.from_numpy(rng.integers(0, enc.numel(), 50))
            enc[idx] = torch.from_numpy(rng.integers(0, 256, 50).astype(np.uint8))
        else:
            luts[rng.integers(0, luts.shape[0]), rng.integers(0, 256, 8)] = torch.from_numpy(
                rng.integers(0, 256, 8).astype(np.uint8)
            )
        bad = DF11Unit(**{**u.__dict__, "encoded_exponent": enc, "luts": luts})
        try:
            (y,) = decode(bad)
        except ValueError:
            continue
        assert y.shape == x.shape


# ---------------------------------------------------------------------------------------------------------------
# the stream check of load_dfloat11(verify="decode") (the content check for checkpoints without CRC-32s)
# ---------------------------------------------------------------------------------------------------------------


def _official_units():
    from safetensors.torch import load_file

    d = load_file(str(FIXTURE))
    shapes = [d[f"source.{i}"].shape for i in range(4)]
    return [DF11Unit.from_buffers({n: d[p + n] for n in DF11Unit.BUFFER_NAMES}, shapes, threads_per_block=tpb)
            for p, tpb in (("", 512), ("tpb16.", 16))]


def _with(unit: DF11Unit, **buffers) -> DF11Unit:
    return DF11Unit(**{**unit.__dict__, **buffers})


def _flipped(t: torch.Tensor, index: int, mask: int) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[index] ^= mask
    return t


@pytest.mark.parametrize("chunk", [1 << 22, 5], ids=["one-pass", "5-element-passes"])
def test_stream_check_accepts_valid_units(monkeypatch, chunk):
    """No false alarm: official units (one and 18 CUDA blocks, EOF-padded) and ours over block counts, chunk sizes,
    a single symbol, long codes and an empty unit; 5-element passes exercise the carry between passes."""
    from radial_diffusers.dfloat11 import loading

    monkeypatch.setattr(loading, "_VERIFY_CHUNK", chunk)
    g = _gen(13)
    x = (torch.randn(6_000, generator=g) * 0.02).bfloat16()
    units = _official_units() + [
        encode([x], threads_per_block=8), encode([x], bytes_per_thread=5), encode([x], bytes_per_thread=4),
        encode([torch.zeros(300, dtype=torch.bfloat16)]), encode([x[:1]]), encode([x[:0]]),
    ]
    for unit in units:
        loading._verify_stream("u", unit)


def test_stream_check_finds_corruption_the_decoder_accepts():
    """Corruptions of an official unit that decode() accepts: a flipped bit of a used thread's gap and a code made one
    bit shorter (both decode to wrong weights), a stream byte too many; and most flipped exponent-stream bits."""
    from radial_diffusers.dfloat11.loading import _verify_stream

    unit = _official_units()[0]
    luts = unit.luts.clone()
    lens = luts[-1].int().masked_fill(luts[-1] == 0, 99)
    luts[-1, int(lens.argmin())] -= 1  # the most frequent symbol's code
    extra = torch.cat([unit.encoded_exponent, torch.zeros(1, dtype=torch.uint8)])
    cases = [("gaps", _with(unit, gaps=_flipped(unit.gaps, 15, 0x01)), True),  # thread 25 starts 4 bits late
             ("prefix code", _with(unit, luts=luts), True),
             ("bits follow", _with(unit, encoded_exponent=extra), False)]
    want = decode(unit)
    for match, bad, wrong_weights in cases:
        got = decode(bad)
        assert any(not torch.equal(_bits(a), _bits(b)) for a, b in zip(got, want)) == wrong_weights, match
        with pytest.raises(ValueError, match=f"corrupted DF11 unit u: .*{match}"):
            _verify_stream("u", bad)
    # single flipped bits of the exponent stream (each changes the weights here): the check sees those that move a
    # code boundary the metadata pins down. Measured: 72 of these 128 flips caught, 20 by decode() alone; the other 56
    # (a code turned into another of the same length, or a resync within the thread) are invisible to the format.
    flips = [_with(unit, encoded_exponent=_flipped(unit.encoded_exponent, i, 1 << bit))
             for i in range(64, 80) for bit in range(8)]
    caught, decoder_caught = (sum(_raises_value_error(fn, bad) for bad in flips)
                              for fn in (lambda u: _verify_stream("u", u), decode))
    assert caught >= 64 and caught > 2 * decoder_caught, (caught, decoder_caught)


def _raises_value_error(fn, *args) -> bool:
    try:
        fn(*args)
    except ValueError:
        return True
    return False
