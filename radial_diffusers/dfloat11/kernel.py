"""Triton decode kernel for DF11 units (official ``dfloat11==0.5.0`` layout, see codec.py and
shared/notes/dfloat11.md §2).

One Triton program per CUDA-style block of ``threads_per_block`` threads; each "thread" is a lane of a
``tl.arange`` vector that owns ``bytes_per_thread`` bytes of ``encoded_exponent``:

1. each lane loads its chunk plus 4 look-ahead bytes into two big-endian 64-bit registers and reads its 5-bit gap;
2. phase 1: all lanes walk the LUT trie in lock-step (masked) and count the codes that start in their chunk;
3. ``tl.cumsum`` of the counts plus ``output_positions[block]`` gives every lane's first output index;
4. phase 2: the lanes decode the same codes again and write BF16 bit patterns
   ``(sm & 0x80) << 8 | exp << 7 | (sm & 0x7F)`` straight to global memory (bounded by ``n_elements`` and
   ``output_positions[block + 1]``).

The lock-step loops run while any lane is live and at most ``8 * bytes_per_thread`` times (every code is at least one
bit long; an invalid code advances by 32 bits, so a corrupted unit cannot hang the kernel). Loads of the stream, the
gaps (official arrays lack the padding byte) and the LUTs (pointers to missing tables) are masked, so corrupted
input gives garbage output, never an out-of-bounds access. The kernel does not validate the unit: use the CPU codec's
``decode`` for that.

``decode_unit_triton`` launches the kernel; ``torch.ops.radial_diffusers.df11_decode`` is the same thing as a
``torch.library`` custom op with a fake implementation, so a ``torch.compile``-d block keeps one graph. Without CUDA
set ``TRITON_INTERPRET=1`` *before* importing this module to run the kernel on CPU tensors (slow; tests only);
CPU tensors without the interpreter fall back to the CPU codec.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Sequence

import torch

from .codec import DF11Unit, decode_exponents

try:  # triton is optional: without it the custom op falls back to the CPU codec
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "decode_unit_triton", "decode_unit", "df11_decode", "MAX_BYTES_PER_THREAD"]

MAX_BYTES_PER_THREAD = 12  # chunk + 4 look-ahead bytes must fit two 64-bit registers


def _interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


if HAS_TRITON:

    @triton.jit
    def _peek32(w0, w1, pos):
        """The 32 bits starting at bit ``pos`` (0 <= pos < 96) of the 128-bit big-endian window ``w0:w1``."""
        p = pos.to(tl.uint64)
        zero = tl.zeros_like(w0)
        hi = tl.where(p < 64, w0 << (p & 63), zero)
        lo = tl.where(p < 64, w1 >> ((64 - p) & 63), w1 << ((p - 64) & 63))
        lo = tl.where(p == 0, zero, lo)
        return ((hi | lo) >> 32) & 0xFFFFFFFF

    @triton.jit
    def _descend(Luts, n_luts, v, byte):
        """One trie step: a pointer entry (>= 240) is replaced by ``luts[256 - v, byte]`` (255 if the table is
        missing); a symbol stays."""
        deep = v >= 240
        ti = 256 - v
        ok = deep & (ti < n_luts - 1)
        nv = tl.load(Luts + tl.where(ok, ti, 0) * 256 + byte, mask=ok, other=255).to(tl.int32)
        return tl.where(deep, nv, v)

    @triton.jit
    def _walk(Luts, n_luts, bits32):
        """Walk the byte trie on a left-justified 32-bit window: (symbol, code length in 1..32).

        An entry < 240 is a symbol; 240..255 points to table ``256 - entry``. An unresolved or invalid code (pointer
        to a missing table, length 0 or > 32) gets length 32 so the lane still advances."""
        v = tl.load(Luts + (bits32 >> 24).to(tl.int32)).to(tl.int32)
        v = _descend(Luts, n_luts, v, ((bits32 >> 16) & 255).to(tl.int32))
        v = _descend(Luts, n_luts, v, ((bits32 >> 8) & 255).to(tl.int32))
        v = _descend(Luts, n_luts, v, (bits32 & 255).to(tl.int32))
        sym_ok = v < 240
        ln = tl.load(Luts + (n_luts - 1) * 256 + tl.where(sym_ok, v, 0), mask=sym_ok, other=0).to(tl.int32)
        ln = tl.where((ln >= 1) & (ln <= 32), ln, 32)
        return v, ln

    @triton.jit
    def _df11_decode_kernel(
        Luts,  # *u8 [n_luts, 256]
        Enc,  # *u8 [n_bytes]
        SM,  # *u8 [n_elements]
        OutPos,  # *u8 [4 * (n_blocks + 1)] little-endian u32
        Gaps,  # *u8 [n_gap_bytes] packed 5-bit big-endian
        Out,  # *i16 [n_elements] (BF16 bits)
        n_bytes,
        n_gap_bytes,
        n_elements,
        n_luts,
        TPB: tl.constexpr,  # threads per block of the format
        LANES: tl.constexpr,  # next power of two >= TPB
        BPT: tl.constexpr,  # bytes per thread
    ):
        CHUNK_BITS: tl.constexpr = 8 * BPT
        MAXC: tl.constexpr = 8 * BPT
        b = tl.program_id(0).to(tl.int64)
        lane = tl.arange(0, LANES)
        lane_ok = lane < TPB
        t = b * TPB + lane.to(tl.int64)

        # 5-bit gap of every lane (two bytes; masked: official arrays have no padding byte)
        bitpos = t * 5
        gb = bitpos >> 3
        g0 = tl.load(Gaps + gb, mask=lane_ok & (gb < n_gap_bytes), other=0).to(tl.int32)
        g1 = tl.load(Gaps + gb + 1, mask=lane_ok & (gb + 1 < n_gap_bytes), other=0).to(tl.int32)
        gap = (((g0 << 8) | g1) >> (11 - (bitpos & 7).to(tl.int32))) & 31

        # the lane's chunk + 4 look-ahead bytes as a big-endian 128-bit window w0:w1 (zero past the stream)
        base = t * BPT
        w0 = tl.zeros([LANES], dtype=tl.uint64)
        w1 = tl.zeros([LANES], dtype=tl.uint64)
        for j in tl.static_range(BPT + 4):
            idx = base + j
            by = tl.load(Enc + idx, mask=lane_ok & (idx < n_bytes), other=0).to(tl.uint64)
            if j < 8:
                w0 = w0 | (by << (56 - 8 * j))
            else:
                w1 = w1 | (by << (56 - 8 * (j - 8)))

        # output range of this block
        ob = OutPos + 4 * b
        blk_start = (tl.load(ob).to(tl.int64) | (tl.load(ob + 1).to(tl.int64) << 8)
                     | (tl.load(ob + 2).to(tl.int64) << 16) | (tl.load(ob + 3).to(tl.int64) << 24))
        blk_end = (tl.load(ob + 4).to(tl.int64) | (tl.load(ob + 5).to(tl.int64) << 8)
                   | (tl.load(ob + 6).to(tl.int64) << 16) | (tl.load(ob + 7).to(tl.int64) << 24))
        end = tl.minimum(blk_end, n_elements)

        # phase 1: count the codes that start in each lane's chunk
        pos = gap
        cnt = tl.zeros([LANES], dtype=tl.int32)
        live = lane_ok & (pos < CHUNK_BITS)
        it = 0
        while (it < MAXC) & (tl.max(live.to(tl.int32), axis=0) > 0):
            bits = _peek32(w0, w1, tl.where(live, pos, 0))
            v, ln = _walk(Luts, n_luts, bits)
            cnt += live.to(tl.int32)
            pos += tl.where(live, ln, 0)
            live = live & (pos < CHUNK_BITS)
            it += 1

        # each lane's first output index
        start = blk_start + (tl.cumsum(cnt, axis=0) - cnt).to(tl.int64)

        # phase 2: decode again and write BF16 bits
        pos = gap
        k = tl.zeros([LANES], dtype=tl.int32)
        live = lane_ok & (pos < CHUNK_BITS) & (k < cnt) & (start < end)
        it = 0
        while (it < MAXC) & (tl.max(live.to(tl.int32), axis=0) > 0):
            bits = _peek32(w0, w1, tl.where(live, pos, 0))
            v, ln = _walk(Luts, n_luts, bits)
            o = start + k.to(tl.int64)
            s = tl.load(SM + o, mask=live, other=0).to(tl.int32)
            val = ((s & 0x80) << 8) | ((v & 255) << 7) | (s & 0x7F)
            tl.store(Out + o, val.to(tl.int16), mask=live)
            k += live.to(tl.int32)
            pos += tl.where(live, ln, 0)
            live = live & (pos < CHUNK_BITS) & (k < cnt) & (start + k.to(tl.int64) < end)
            it += 1


def _check_args(luts, encoded_exponent, sign_mantissa, output_positions, gaps, n_elements, tpb, bpt):
    for name, x in (("luts", luts), ("encoded_exponent", encoded_exponent), ("sign_mantissa", sign_mantissa),
                    ("output_positions", output_positions), ("gaps", gaps)):
        if x.dtype != torch.uint8:
            raise TypeError(f"DF11 {name} must be uint8, got {x.dtype}")
    if luts.dim() != 2 or luts.shape[1] != 256 or luts.shape[0] < 2:
        raise ValueError(f"DF11 luts must have shape (n_tables + 1, 256), got {tuple(luts.shape)}")
    if not 4 <= bpt <= MAX_BYTES_PER_THREAD:
        raise ValueError(f"the Triton DF11 kernel supports 4 <= bytes_per_thread <= {MAX_BYTES_PER_THREAD}, got {bpt}")
    if tpb < 1:
        raise ValueError(f"threads_per_block must be positive, got {tpb}")
    if sign_mantissa.numel() < n_elements:
        raise ValueError(f"sign_mantissa has {sign_mantissa.numel()} entries, n_elements is {n_elements}")
    n_blocks = math.ceil(encoded_exponent.numel() / (bpt * tpb))
    if output_positions.numel() != 4 * (n_blocks + 1):
        raise ValueError(f"corrupted DF11 unit: output_positions has {output_positions.numel()} bytes, "
                         f"expected {4 * (n_blocks + 1)} for {n_blocks} blocks")
    return n_blocks


def _launch(luts, encoded_exponent, sign_mantissa, output_positions, gaps, n_elements, tpb, bpt, out):
    n_blocks = _check_args(luts, encoded_exponent, sign_mantissa, output_positions, gaps, n_elements, tpb, bpt)
    dev = encoded_exponent.device
    if out is None:
        out = torch.empty(n_elements, dtype=torch.bfloat16, device=dev)
    elif (out.dtype != torch.bfloat16 or out.numel() != n_elements or not out.is_contiguous()
          or out.device != dev):
        raise ValueError(f"out must be a contiguous bfloat16 tensor of n_elements={n_elements} elements on {dev}")
    if n_elements == 0 or n_blocks == 0:
        return out.view(-1)
    args = [x.contiguous().view(-1).to(dev) for x in (luts, encoded_exponent, sign_mantissa, output_positions, gaps)]
    if dev.type == "cpu" and not _interpreter_active():
        # no GPU and no interpreter: the CPU codec (same result, bit-exact)
        unit = DF11Unit(luts=args[0].view(-1, 256), encoded_exponent=args[1], sign_mantissa=args[2][:n_elements],
                        output_positions=args[3], gaps=args[4], split_positions=torch.zeros(0, dtype=torch.int64),
                        threads_per_block=tpb, bytes_per_thread=bpt)
        exp = torch.from_numpy(decode_exponents(unit)).to(torch.int32)
        sm = args[2][:n_elements].to(torch.int32)
        bits = ((sm & 0x80) << 8) | (exp << 7) | (sm & 0x7F)
        out.view(-1).view(torch.int16).copy_(bits.to(torch.int16))
        return out.view(-1)
    if not HAS_TRITON:
        raise RuntimeError("the DF11 Triton kernel needs triton")
    lanes = triton.next_power_of_2(tpb)
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _launch_kernel(args, out, n_elements, luts.shape[0], n_blocks, tpb, lanes, bpt)
    return out.view(-1)


def _launch_kernel(args, out, n_elements, n_luts, n_blocks, tpb, lanes, bpt):
    _df11_decode_kernel[(n_blocks,)](
        args[0], args[1], args[2], args[3], args[4], out.view(-1).view(torch.int16),
        args[1].numel(), args[4].numel(), n_elements, n_luts,
        TPB=tpb, LANES=lanes, BPT=bpt, num_warps=max(1, min(16, lanes // 32)),
    )


def decode_unit_triton(
    luts: torch.Tensor,
    encoded_exponent: torch.Tensor,
    sign_mantissa: torch.Tensor,
    output_positions: torch.Tensor,
    gaps: torch.Tensor,
    n_elements: int | None = None,
    threads_per_block: int = 512,
    bytes_per_thread: int = 8,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode the five DF11 buffers of one unit into a flat BF16 tensor of ``n_elements`` (default: the length of
    ``sign_mantissa``) with one kernel launch; ``out`` (contiguous BF16, ``n_elements``) is written in place if given.
    Runs on the device of ``encoded_exponent`` (CPU tensors: under ``TRITON_INTERPRET=1``, else the CPU codec)."""
    n = int(sign_mantissa.numel() if n_elements is None else n_elements)
    return _launch(luts, encoded_exponent, sign_mantissa, output_positions, gaps, n,
                   int(threads_per_block), int(bytes_per_thread), out)


@torch.library.custom_op("radial_diffusers::df11_decode", mutates_args=())
def df11_decode(
    luts: torch.Tensor,
    encoded_exponent: torch.Tensor,
    sign_mantissa: torch.Tensor,
    output_positions: torch.Tensor,
    gaps: torch.Tensor,
    n_elements: int,
    threads_per_block: int,
    bytes_per_thread: int,
) -> torch.Tensor:
    """Custom-op form of :func:`decode_unit_triton` (a fresh flat BF16 tensor), opaque to torch.compile."""
    return _launch(luts, encoded_exponent, sign_mantissa, output_positions, gaps, int(n_elements),
                   int(threads_per_block), int(bytes_per_thread), None)


@df11_decode.register_fake
def _(luts, encoded_exponent, sign_mantissa, output_positions, gaps, n_elements, threads_per_block, bytes_per_thread):
    return encoded_exponent.new_empty((n_elements,), dtype=torch.bfloat16)


def decode_unit(unit: DF11Unit, device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Decode a :class:`DF11Unit` with the kernel (one launch) into its tensors (views of one flat buffer)."""
    dev = torch.device(device) if device is not None else unit.encoded_exponent.device
    bufs = [getattr(unit, n).to(dev) for n in ("luts", "encoded_exponent", "sign_mantissa", "output_positions", "gaps")]
    flat = torch.ops.radial_diffusers.df11_decode(*bufs, unit.n_elements, unit.threads_per_block,
                                                  unit.bytes_per_thread)
    shapes: Sequence[tuple[int, ...]] = [tuple(s) for s in unit.shapes]
    if not shapes:  # official buffers carry no shapes: flat pieces at the split positions
        bounds = [0, *(int(p) for p in unit.split_positions.reshape(-1).tolist()), unit.n_elements]
        shapes = [(bounds[i + 1] - bounds[i],) for i in range(len(bounds) - 1)]
    numels = [math.prod(s) for s in shapes]
    return [p.view(s) for p, s in zip(torch.split(flat, numels), shapes)]
