"""CPU codec for the DFloat11 (DF11) lossless BF16 format.

A DF11 *unit* holds several BF16 tensors flattened and concatenated into one stream with one codebook:

* the 8-bit exponent of every weight is Huffman coded (canonical, length-limited to 32 bits, built with
  package-merge) into ``encoded_exponent`` (MSB-first, zero padded to a byte);
* sign and mantissa are stored raw, one byte per weight (``sign_mantissa``: sign in bit 7, mantissa in bits 6..0);
* the decode tables ``luts`` are a byte-indexed trie: table 0 is the root, an entry is either a symbol (< 240) or a
  pointer ``256 - table_index`` (240..255); the last row holds the code length of each symbol;
* ``gaps``: per decoding thread (``bytes_per_thread`` bytes of stream each) the bit offset of the first code that
  starts in its chunk, 5 bits big-endian, packed, padded with one extra byte (the CUDA kernel reads one byte past the
  end of the official array);
* ``output_positions``: per CUDA block (``threads_per_block`` threads) the index of the first element whose code starts
  in that block, plus ``n_elements`` at the end, as a little-endian ``uint32`` array viewed as ``uint8``;
* ``split_positions``: ``cumsum(numel)[:-1]`` (int64).

The layout is the one of the official ``dfloat11==0.5.0`` package (see ``shared/notes/dfloat11.md`` §1), so the
decoder here reads arrays written by the official encoder bit-exactly (tests/fixtures/dfloat11). Everything is
vectorised numpy: the encoder places every code with a cumulative sum and shifted 64-bit words, the decoder runs all
threads in lock-step (the Triton-style decoder of the notes, §2.2) over a 16-bit direct lookup table derived from the
trie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

__all__ = ["DF11Unit", "encode", "decode", "bf16_bytes", "code_lengths", "fitting_code_lengths", "canonical_codes",
           "build_luts"]

MAX_CODE_LEN = 32
MAX_SYMBOL = 240  # LUT values 240..255 are pointers to sub-tables
MAX_PREFIX_TABLES = 17  # pointer values 240..255 address tables 16..1
BYTES_PER_THREAD = 8
THREADS_PER_BLOCK = 512

_ENC_CHUNK = 1 << 20  # elements per encoder pass (cache-sized temporaries)
_DEC_LANES = 1 << 14  # decoding lanes (threads) per decoder pass


@dataclass
class DF11Unit:
    """One DF11 compression unit: several BF16 tensors sharing one Huffman codebook.

    The six array fields carry the names and dtypes of the official safetensors buffers (``M.luts`` etc.).
    """

    luts: torch.Tensor  # uint8 [n_prefix_tables + 1, 256]
    encoded_exponent: torch.Tensor  # uint8 [n_bytes]
    sign_mantissa: torch.Tensor  # uint8 [n_elements]
    output_positions: torch.Tensor  # uint8 [4 * (n_blocks + 1)], little-endian uint32 view
    gaps: torch.Tensor  # uint8 [ceil(5 * threads_per_block * n_blocks / 8) (+ padding)]
    split_positions: torch.Tensor  # int64 [n_tensors - 1]
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    dtypes: list[torch.dtype] = field(default_factory=list)
    threads_per_block: int = THREADS_PER_BLOCK
    bytes_per_thread: int = BYTES_PER_THREAD

    BUFFER_NAMES = ("luts", "encoded_exponent", "sign_mantissa", "output_positions", "gaps", "split_positions")

    @property
    def n_elements(self) -> int:
        return int(self.sign_mantissa.numel())

    @property
    def n_blocks(self) -> int:
        """Number of CUDA blocks of the official kernel launch: ``ceil(n_bytes / (bytes_per_thread * threads))``."""
        return math.ceil(self.encoded_exponent.numel() / (self.bytes_per_thread * self.threads_per_block))

    @property
    def nbytes(self) -> int:
        """Compressed size in bytes (all six buffers)."""
        return int(sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in self.BUFFER_NAMES))

    @property
    def original_nbytes(self) -> int:
        return 2 * self.n_elements

    @property
    def ratio(self) -> float:
        """Compressed bytes / original BF16 bytes."""
        return self.nbytes / max(self.original_nbytes, 1)

    def buffers(self) -> dict[str, torch.Tensor]:
        """The six official buffers, keyed by their official names."""
        return {n: getattr(self, n) for n in self.BUFFER_NAMES}

    @classmethod
    def from_buffers(
        cls,
        buffers: dict[str, torch.Tensor],
        shapes: Sequence[Sequence[int]],
        threads_per_block: int = THREADS_PER_BLOCK,
        bytes_per_thread: int = BYTES_PER_THREAD,
    ) -> "DF11Unit":
        """Build a unit from the six buffers (e.g. read from an official checkpoint) and the tensor shapes."""
        missing = [n for n in cls.BUFFER_NAMES if n not in buffers]
        if missing:
            raise ValueError(f"DF11 unit is missing buffers {missing}")
        shapes = [tuple(int(d) for d in s) for s in shapes]
        return cls(
            **{n: torch.as_tensor(buffers[n]) for n in cls.BUFFER_NAMES},
            shapes=shapes,
            dtypes=[torch.bfloat16] * len(shapes),
            threads_per_block=int(threads_per_block),
            bytes_per_thread=int(bytes_per_thread),
        )


# ----------------------------------------------------------------------------------------------------------------
# Codebook
# ----------------------------------------------------------------------------------------------------------------


def code_lengths(freq: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Optimal length-limited Huffman code lengths (package-merge) for a histogram.

    Returns ``uint8[len(freq)]`` with 0 for absent symbols. A single present symbol gets length 1 and a phantom
    partner (its low bit flipped) so that the code stays complete (Kraft sum exactly 1).
    """
    freq = np.asarray(freq, dtype=np.int64)
    lens = np.zeros(freq.shape[0], dtype=np.uint8)
    syms = np.flatnonzero(freq > 0)
    n = syms.size
    if n == 0:
        return lens
    if n == 1:
        s = int(syms[0])
        lens[s] = 1
        lens[s ^ 1] = 1
        return lens
    if n > (1 << max_len):
        raise ValueError(f"{n} symbols cannot have codes of at most {max_len} bits")
    order = np.lexsort((syms, freq[syms]))  # ascending frequency, ties by symbol value
    leaf_sym = syms[order]
    leaf_w = freq[leaf_sym]
    leaf_m = np.eye(n, dtype=np.int16)  # row i: leaf i (in sorted order)
    keep = 2 * n - 2
    cur_w, cur_m = leaf_w, leaf_m
    for _ in range(max_len - 1):
        k = cur_w.size // 2 * 2
        pkg_w = cur_w[0:k:2] + cur_w[1:k:2]
        pkg_m = cur_m[0:k:2] + cur_m[1:k:2]
        w = np.concatenate([leaf_w, pkg_w])
        m = np.concatenate([leaf_m, pkg_m])
        sel = np.argsort(w, kind="stable")[:keep]  # leaves before packages on ties
        cur_w, cur_m = w[sel], m[sel]
    depth = cur_m[:keep].sum(axis=0)
    lens[leaf_sym] = depth.astype(np.uint8)
    return lens


def canonical_codes(lens: np.ndarray) -> np.ndarray:
    """Canonical code values (``uint64``) for code lengths; codes ordered by (length, symbol)."""
    lens = np.asarray(lens)
    codes = np.zeros(lens.shape[0], dtype=np.uint64)
    syms = np.flatnonzero(lens > 0)
    if syms.size == 0:
        return codes
    order = syms[np.lexsort((syms, lens[syms]))]
    kraft = sum(1 << (MAX_CODE_LEN - int(lens[s])) for s in order)
    if kraft > (1 << MAX_CODE_LEN):
        raise ValueError("code lengths violate the Kraft inequality: not a prefix code")
    code = 0
    prev = int(lens[order[0]])
    for s in order.tolist():
        L = int(lens[s])
        code <<= L - prev
        codes[s] = code
        code += 1
        prev = L
    return codes


def _prefixes(lens: np.ndarray, codes: np.ndarray) -> list[tuple[int, int]]:
    """The ``(depth, prefix)`` of every decode table, sorted: every byte-aligned proper prefix (8, 16, 24 bits) of
    every code gets a table; the root is the empty prefix ``(0, 0)``."""
    prefixes = {(0, 0)}
    for s in np.flatnonzero(np.asarray(lens) > 0).tolist():
        L, c = int(lens[s]), int(codes[s])
        for d in range(1, (L - 1) // 8 + 1):
            prefixes.add((d, c >> (L - 8 * d)))
    return sorted(prefixes)


def fitting_code_lengths(freq: np.ndarray) -> np.ndarray:
    """Optimal code lengths whose decode tables fit the format (at most ``MAX_PREFIX_TABLES`` prefix tables).

    Tries the length limit 32 (the format's maximum) and, while the canonical code needs more than 17 tables (many
    rare exponents: each distinct leading byte of the long codes costs one), the next smaller limit. Every limit is
    lossless and within the format; at 8 bits only the root table remains (at most 240 symbols fit in 256 codes),
    so any histogram of symbols < 240 gets a code. Lower limits cost a little compression on the rare symbols only.
    """
    for max_len in range(MAX_CODE_LEN, 7, -1):
        lens = code_lengths(freq, max_len)
        if len(_prefixes(lens, canonical_codes(lens))) <= MAX_PREFIX_TABLES:
            return lens
    raise AssertionError("unreachable: an 8-bit code needs the root table only")


def build_luts(lens: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The DF11 byte-trie decode tables plus the code-length row: ``uint8[n_prefix_tables + 1, 256]``."""
    lens = np.asarray(lens)
    syms = np.flatnonzero(lens > 0).tolist()
    if any(s >= MAX_SYMBOL for s in syms):
        raise ValueError("DF11 symbols must be < 240 (values 240..255 are LUT pointers)")
    if any(int(lens[s]) > MAX_CODE_LEN for s in syms):
        raise ValueError("DF11 codes must be at most 32 bits long")
    prefixes = _prefixes(lens, codes)
    if len(prefixes) > MAX_PREFIX_TABLES:
        raise ValueError(
            f"the code needs {len(prefixes)} prefix tables but DF11 allows at most {MAX_PREFIX_TABLES} "
            "(pointer values 240..255)"
        )
    index = {p: i for i, p in enumerate(prefixes)}
    luts = np.zeros((len(prefixes) + 1, 256), dtype=np.uint8)
    filled = np.zeros((len(prefixes), 256), dtype=bool)
    for s in syms:
        L, c = int(lens[s]), int(codes[s])
        depth = (L - 1) // 8
        for d in range(depth + 1):
            t = index[(d, c >> (L - 8 * d)) if d else (0, 0)]
            if d < depth:
                byte = (c >> (L - 8 * d - 8)) & 0xFF
                val = 256 - index[(d + 1, c >> (L - 8 * d - 8))]
                if filled[t, byte] and luts[t, byte] != val:
                    raise ValueError("not a prefix code (LUT conflict)")
                luts[t, byte] = val
                filled[t, byte] = True
            else:
                rem = L - 8 * d
                lo = (c & ((1 << rem) - 1)) << (8 - rem)
                hi = lo + (1 << (8 - rem))
                if filled[t, lo:hi].any():
                    raise ValueError("not a prefix code (LUT conflict)")
                luts[t, lo:hi] = s
                filled[t, lo:hi] = True
    luts[-1, : lens.shape[0]] = lens[:256]
    return luts


# ----------------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------------


def _pack5(values: np.ndarray) -> np.ndarray:
    """Pack 5-bit values big-endian (as ``np.packbits`` of their 5-bit binary strings); length multiple of 8."""
    v = values.astype(np.uint64).reshape(-1, 8)
    acc = np.zeros(v.shape[0], dtype=np.uint64)
    for j in range(8):
        acc |= v[:, j] << np.uint64(35 - 5 * j)
    out = np.empty((v.shape[0], 5), dtype=np.uint8)
    for j in range(5):
        out[:, j] = (acc >> np.uint64(32 - 8 * j)).astype(np.uint8)
    return out.reshape(-1)


def _unpack5(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`_pack5` for the first ``n`` values (``n`` multiple of 8); missing bytes read as zero."""
    nb = n // 8 * 5
    b = np.zeros(nb, dtype=np.uint8)
    m = min(nb, packed.size)
    b[:m] = packed[:m]
    b = b.reshape(-1, 5).astype(np.uint64)
    acc = np.zeros(b.shape[0], dtype=np.uint64)
    for j in range(5):
        acc |= b[:, j] << np.uint64(32 - 8 * j)
    out = np.empty((b.shape[0], 8), dtype=np.uint8)
    for j in range(8):
        out[:, j] = ((acc >> np.uint64(35 - 5 * j)) & np.uint64(31)).astype(np.uint8)
    return out.reshape(-1)


def _check_inputs(tensors) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    tensors = list(tensors)
    if not tensors:
        raise ValueError("encode() needs at least one tensor")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {i} is a {type(t).__name__}, not a torch.Tensor")
        if t.dtype != torch.bfloat16:
            raise TypeError(
                f"tensor {i} has dtype {t.dtype}; DF11 encodes bfloat16 only (cast explicitly with .bfloat16(); "
                "the result is then lossless relative to that cast)"
            )
    return tensors


def encode(
    tensors: Sequence[torch.Tensor],
    *,
    threads_per_block: int = THREADS_PER_BLOCK,
    bytes_per_thread: int = BYTES_PER_THREAD,
    _code_lengths: np.ndarray | None = None,
) -> DF11Unit:
    """Losslessly encode BF16 tensors (any shapes) into one DF11 unit with one codebook.

    ``threads_per_block`` / ``bytes_per_thread`` default to the official 0.5.0 constants (512 / 8). Every finite
    BF16 tensor (exponent field < 240) encodes: the code is length-limited further when the 32-bit one would need
    more decode tables than the format has (see :func:`fitting_code_lengths`).
    ``_code_lengths`` (testing only) overrides the package-merge code lengths (``uint8[256]``, canonical codes).
    """
    tensors = _check_inputs(tensors)
    tpb, bpt = int(threads_per_block), int(bytes_per_thread)
    if bpt < 4 or tpb < 8 or tpb % 8:
        raise ValueError("bytes_per_thread must be >= 4 and threads_per_block a positive multiple of 8")
    shapes = [tuple(t.shape) for t in tensors]
    numels = [t.numel() for t in tensors]
    n = int(sum(numels))
    if n >= 1 << 32:
        raise ValueError(f"a DF11 unit holds fewer than 2**32 weights (uint32 output_positions); got {n}")
    split = torch.tensor(np.cumsum(numels, dtype=np.int64)[:-1])

    w = torch.cat([t.detach().reshape(-1).cpu() for t in tensors]) if len(tensors) > 1 else tensors[0].detach()
    w = w.reshape(-1).cpu().contiguous().view(torch.int16).numpy().view(np.uint8).reshape(-1, 2)
    lo8, hi8 = w[:, 0], w[:, 1]  # little-endian bytes of each BF16
    exp = (hi8 << np.uint8(1)) | (lo8 >> np.uint8(7))
    sm = (hi8 & np.uint8(0x80)) | (lo8 & np.uint8(0x7F))

    freq = torch.bincount(torch.from_numpy(exp), minlength=256).numpy().astype(np.int64)
    if freq[MAX_SYMBOL:].any():
        bad = np.flatnonzero(freq[MAX_SYMBOL:]) + MAX_SYMBOL
        raise ValueError(
            f"{int(freq[MAX_SYMBOL:].sum())} weights have BF16 exponent field >= 240 (values {bad.tolist()}): "
            "inf/NaN and huge values (|w| >= 2**113) are not encodable in DF11 (LUT values 240..255 are pointers); "
            "replace or clip them before encoding"
        )
    if _code_lengths is None:
        lens = fitting_code_lengths(freq)
    else:
        lens = np.asarray(_code_lengths, dtype=np.uint8).reshape(256)
        if np.any((freq > 0) & (lens == 0)):
            raise ValueError("_code_lengths has no code for a symbol present in the data")
    codes = canonical_codes(lens)
    luts = build_luts(lens, codes)

    # left-justified 64-bit code words per symbol
    lj = np.zeros(256, dtype=np.uint64)
    present = lens > 0
    lj[present] = codes[present] << (np.uint64(64) - lens[present].astype(np.uint64))

    total_bits = int((freq * lens.astype(np.int64)).sum())
    n_bytes = (total_bits + 7) // 8
    n_words = (total_bits + 63) // 64
    chunk_bits = 8 * bpt  # one decoding thread per chunk
    n_threads_used = -(-n_bytes // bpt)
    n_blocks = -(-n_bytes // (bpt * tpb))
    # gaps[t] = offset of the first code starting in chunk t. A chunk without a code start can only be the last one
    # (codes are <= 32 bits); it gets the offset of the end of the data, where the official encoder puts its EOF code.
    gaps_v = np.zeros(n_blocks * tpb, dtype=np.uint8)
    if n_threads_used:
        gaps_v[n_threads_used - 1] = total_bits - (n_threads_used - 1) * chunk_bits
    block_starts = np.arange(n_blocks, dtype=np.int64) * (chunk_bits * tpb)
    outpos = np.full(n_blocks + 1, n, dtype=np.int64)  # first element whose code starts at/after each block start
    words = np.zeros(n_words + 1, dtype=np.uint64)
    prev_chunk = -1
    carry = 0  # bit position of the first code of the current pass
    prev_last = -1  # start bit of the last code of the previous pass
    for a in range(0, n, _ENC_CHUNK):
        b = min(n, a + _ENC_CHUNK)
        e = exp[a:b]
        le = lens[e]
        start = np.cumsum(le, dtype=np.int64)
        start -= le
        start += carry
        carry = int(start[-1]) + int(le[-1])
        bsel = np.flatnonzero((block_starts > prev_last) & (block_starts <= start[-1]))
        if bsel.size:
            outpos[bsel] = a + np.searchsorted(start, block_starts[bsel], side="left")
        prev_last = int(start[-1])
        cw = lj[e]
        off = (start & 63).astype(np.uint64)
        hi = cw >> off
        lo = (cw << (np.uint64(63) - off)) << np.uint64(1)
        wi = start >> 6
        seg = np.flatnonzero(wi[1:] != wi[:-1]) + 1
        seg = np.concatenate([[0], seg])
        wseg = wi[seg]
        words[wseg] |= np.bitwise_or.reduceat(hi, seg)
        words[wseg + 1] |= np.bitwise_or.reduceat(lo, seg)
        if chunk_bits == 64:
            cseg, cidx = seg, wseg
        else:
            ci = start // chunk_bits
            cseg = np.concatenate([[0], np.flatnonzero(ci[1:] != ci[:-1]) + 1])
            cidx = ci[cseg]
        if cidx[0] == prev_chunk:  # that chunk's first code was in the previous pass
            cseg, cidx = cseg[1:], cidx[1:]
        gaps_v[cidx] = (start[cseg] - cidx * chunk_bits).astype(np.uint8)
        prev_chunk = int(start[-1] // chunk_bits)
    stream = words[:n_words].astype(">u8").view(np.uint8)[:n_bytes]
    if n_threads_used and gaps_v.max() >= 32:
        raise AssertionError("internal error: DF11 gap >= 32")
    gaps = np.concatenate([_pack5(gaps_v), np.zeros(1, dtype=np.uint8)])  # + the byte the kernel over-reads

    if carry != total_bits:
        raise AssertionError("internal error: DF11 bit count mismatch")
    output_positions = outpos.astype("<u4").view(np.uint8)

    return DF11Unit(
        luts=torch.from_numpy(luts),
        encoded_exponent=torch.from_numpy(np.ascontiguousarray(stream)),
        sign_mantissa=torch.from_numpy(np.ascontiguousarray(sm)),
        output_positions=torch.from_numpy(np.ascontiguousarray(output_positions)),
        gaps=torch.from_numpy(gaps),
        split_positions=split,
        shapes=shapes,
        dtypes=[torch.bfloat16] * len(shapes),
        threads_per_block=tpb,
        bytes_per_thread=bpt,
    )


# ----------------------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------------------


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().contiguous().numpy()
    return np.asarray(t)


def _valid_lens(luts: np.ndarray) -> np.ndarray:
    """The code-length row with impossible lengths (> 32) zeroed (= invalid code)."""
    lens_row = luts[-1].copy()
    lens_row[lens_row > MAX_CODE_LEN] = 0
    return lens_row


def _direct_table(luts: np.ndarray) -> np.ndarray:
    """16-bit direct decode table from the trie: entry = symbol | length << 8 (length 0: longer than 16 bits or
    invalid; the symbol field then holds the pending LUT value)."""
    n_tab = luts.shape[0] - 1
    lens_row = _valid_lens(luts)
    idx = np.arange(1 << 16)
    v = luts[0][idx >> 8].astype(np.int64)
    deep = v >= MAX_SYMBOL
    t = 256 - v[deep]
    invalid = t >= n_tab  # pointer to a table that does not exist
    t[invalid] = 0
    v2 = luts[:n_tab][t, idx[deep] & 0xFF].astype(np.int64)
    v2[invalid] = 255  # unresolved: the slow path reports it if it lies inside the data
    v[deep] = v2
    ln = np.where(v < MAX_SYMBOL, lens_row[np.minimum(v, 255)], 0).astype(np.int64)
    return (v | (ln << 8)).astype(np.uint16)


def _words8(stream: np.ndarray, start: int, count: int) -> np.ndarray:
    """``W[i]`` = big-endian 64-bit word starting at byte ``start + i`` (zero past the end of ``stream``)."""
    buf = np.zeros(count + 8, dtype=np.uint8)
    m = max(0, min(count + 8, stream.size - start))
    buf[:m] = stream[start : start + m]
    out = np.zeros(count, dtype=np.uint64)
    for j in range(8):
        out |= buf[j : j + count].astype(np.uint64) << np.uint64(56 - 8 * j)
    return out


def decode_exponents(unit: DF11Unit) -> np.ndarray:
    """Decode the exponent stream of a unit into ``uint8[n_elements]`` (lock-step over all threads)."""
    luts = _np(unit.luts).astype(np.uint8)
    if luts.ndim != 2 or luts.shape[1] != 256 or luts.shape[0] < 2:
        raise ValueError(f"DF11 luts must have shape (n_tables + 1, 256), got {tuple(luts.shape)}")
    stream = _np(unit.encoded_exponent).astype(np.uint8, copy=False).reshape(-1)
    outpos = _np(unit.output_positions).astype(np.uint8, copy=False).reshape(-1)
    if outpos.size % 4:
        raise ValueError("DF11 output_positions must be a uint8 view of uint32 values")
    outpos = outpos.view("<u4").astype(np.int64)
    n = int(_np(unit.sign_mantissa).size)
    bpt, tpb = int(unit.bytes_per_thread), int(unit.threads_per_block)
    n_bytes = stream.size
    n_threads = -(-n_bytes // bpt)
    n_blocks = -(-n_bytes // (bpt * tpb))
    if outpos.size != n_blocks + 1 or (outpos.size and int(outpos[-1]) != n):
        raise ValueError(
            f"corrupted DF11 unit: output_positions has {outpos.size} entries (expected {n_blocks + 1}) "
            f"ending at {int(outpos[-1]) if outpos.size else None} (expected n_elements={n})"
        )
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    n_lanes_all = n_blocks * tpb
    gaps = _unpack5(_np(unit.gaps).astype(np.uint8, copy=False).reshape(-1), -(-n_lanes_all // 8) * 8)
    table = _direct_table(luts)
    n_tab = luts.shape[0] - 1
    lens_row = _valid_lens(luts)
    chunk_bits = 8 * bpt
    max_iter = chunk_bits  # every code is at least 1 bit long
    out = np.empty(n + chunk_bits * 2, dtype=np.uint8)
    done = 0  # codes decoded so far (stream order)
    lanes_per_pass = max(tpb, _DEC_LANES // tpb * tpb)
    u3, u7, u8, u48 = np.uint64(3), np.uint64(7), np.uint64(8), np.uint64(48)
    pad_bytes = max_iter * 4 + 16  # finished lanes keep stepping (<= 32 bits per step) without bound checks
    for l0 in range(0, n_threads, lanes_per_pass):
        l1 = min(n_threads, l0 + lanes_per_pass)
        g = l1 - l0
        W = _words8(stream, l0 * bpt, g * bpt + pad_bytes)
        base = np.arange(g, dtype=np.uint64) * np.uint64(chunk_bits)
        lim = base + np.uint64(chunk_bits)
        ab = base + gaps[l0:l1].astype(np.uint64)
        tile = np.empty((max_iter, g), dtype=np.uint8)
        cnt = np.zeros(g, dtype=np.int64)
        bad = None
        for k in range(max_iter):
            live = ab < lim
            if not live.any():
                break
            cnt += live
            x = W[ab >> u3] << (ab & u7)
            e = table[(x >> u48).astype(np.intp)]
            ln = e >> u8
            sym = e.astype(np.uint8)
            if not ln.all():
                # codes longer than 16 bits (or invalid entries): finish the trie walk on bytes 3 and 4
                j = np.flatnonzero(ln == 0)
                xj = x[j]
                v = sym[j].astype(np.int64)
                for sh in (np.uint64(40), np.uint64(32)):
                    deep = v >= MAX_SYMBOL
                    if not deep.any():
                        break
                    ti = 256 - v[deep]
                    okp = ti < n_tab
                    nv = np.full(ti.shape, 255, dtype=np.int64)
                    nv[okp] = luts[ti[okp], ((xj[deep][okp] >> sh) & np.uint64(255)).astype(np.intp)]
                    v[deep] = nv
                lj = np.where(v < MAX_SYMBOL, lens_row[np.minimum(v, 255)], 0).astype(np.uint16)
                invalid = lj == 0
                if invalid.any():
                    # invalid code: an error if it lies inside the data (checked below); garbage past the end
                    # of the data (official streams end with a truncated EOF code and zero bits) is ignored
                    jb = j[invalid]
                    jb = jb[live[jb]]
                    if jb.size:
                        if bad is None:
                            bad = np.full(g, -1, dtype=np.int64)
                        first = bad[jb] < 0
                        bad[jb[first]] = k
                    lj[invalid] = MAX_CODE_LEN  # keeps every step <= 32 bits (dead lanes stay inside the pad)
                ln = ln.copy()
                ln[j] = lj
                sym[j] = v.astype(np.uint8)
            tile[k] = sym
            ab += ln
        else:
            if (ab < lim).any():
                raise ValueError("corrupted DF11 unit: a thread did not finish its chunk")
        lane_start = done + np.cumsum(cnt) - cnt
        blk = lane_start[::tpb]  # passes start at block boundaries (lanes_per_pass is a multiple of tpb)
        exp_blk = outpos[l0 // tpb : l0 // tpb + blk.size]
        if not np.array_equal(blk, exp_blk):
            b = int(np.flatnonzero(blk != exp_blk)[0])
            raise ValueError(
                f"corrupted DF11 unit: block {l0 // tpb + b} starts at element {int(blk[b])}, "
                f"output_positions says {int(exp_blk[b])}"
            )
        kmax = int(cnt.max()) if g else 0
        sel = np.arange(kmax)[None, :] < cnt[:, None]
        syms = tile[:kmax].T[sel]
        if bad is not None:
            hit = (bad >= 0) & (lane_start + bad < n)
            if hit.any():
                raise ValueError("corrupted DF11 unit: invalid Huffman code inside the data")
        take = min(syms.size, n - done) if done < n else 0
        out[done : done + take] = syms[:take]
        done += syms.size
    if done < n:
        raise ValueError(f"corrupted DF11 unit: decoded {done} codes, expected {n}")
    return out[:n]


def bf16_bytes(unit: DF11Unit, exponents: np.ndarray) -> np.ndarray:
    """The unit's BF16 weights in stream order as little-endian bytes ``uint8[2 * n_elements]``, from its decoded
    ``exponents`` (:func:`decode_exponents`) and its sign / mantissa bytes."""
    sm = _np(unit.sign_mantissa).astype(np.uint8, copy=False).reshape(-1)
    bits = np.empty((sm.size, 2), dtype=np.uint8)
    bits[:, 1] = (sm & np.uint8(0x80)) | (exponents >> np.uint8(1))
    bits[:, 0] = (exponents << np.uint8(7)) | (sm & np.uint8(0x7F))
    return bits.reshape(-1)


def decode(unit: DF11Unit) -> list[torch.Tensor]:
    """Decode a DF11 unit back into its BF16 tensors, bit-exactly."""
    n = unit.n_elements
    shapes = [tuple(s) for s in unit.shapes]
    split = _np(unit.split_positions).astype(np.int64).reshape(-1)
    if not shapes:
        # official buffers carry no shapes: return flat pieces
        bounds = np.concatenate([[0], split, [n]])
        shapes = [(int(bounds[i + 1] - bounds[i]),) for i in range(len(bounds) - 1)]
    numels = [math.prod(s) for s in shapes]
    if sum(numels) != n:
        raise ValueError(f"DF11 unit shapes hold {sum(numels)} elements but the unit has {n}")
    if len(split) != len(shapes) - 1 or not np.array_equal(split, np.cumsum(numels, dtype=np.int64)[:-1]):
        raise ValueError("DF11 split_positions do not match the tensor shapes")
    flat = torch.from_numpy(bf16_bytes(unit, decode_exponents(unit)).view(np.int16)).view(torch.bfloat16)
    outs = []
    for piece, shape, dt in zip(torch.split(flat, numels), shapes, unit.dtypes or [torch.bfloat16] * len(shapes)):
        outs.append(piece.reshape(shape))
    return outs
