"""The radial attention mask as data: a boolean block mask for one video geometry.

The rule is the official ``gen_log_mask_shrinked`` (mit-han-lab/radial-attention, ``radial_attn/attn_mask.py``),
re-derived and vectorised: instead of building a ``tpf x tpf`` token tile for every pair of frames and shrinking
it, each distinct tile is summarised in closed form (per key column, the number of kept query rows inside a block is
the length of an interval intersection), computed once per distinct ``(band width, row offset, column offset)`` and
scattered to every frame pair that shares it.

Two additions make every geometry usable, both documented on :func:`radial_block_mask`: every query block keeps its
diagonal block, and on unaligned geometries (video tokens not a multiple of the block size, where upstream fails)
blocks that straddle frames are also judged on the union of the tiles they touch.

Token order is frame-major raster order ``(t, h, w)`` followed by the text tokens, exactly as Diffusers' patch
embeddings (and HunyuanVideo's ``[video, text]`` joint sequence) produce it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .families import get_family

__all__ = [
    "radial_block_mask",
    "MaskStats",
    "mask_stats",
    "save_mask_png",
    "latent_frames_for",
]

ADJACENT_RULES = ("full", "half")

# Frame-pair decimation threshold. Upstream hard-codes 128 tokens (independent of block_size; Wan2.2 uses B=64 with
# the same 128), so a frame distance is kept only if its undecayed band length reaches 128 or the distance is a
# multiple of 128 / band length.
_DECIMATION_THRESHOLD = 128
# Largest mask edge we build (a 46k x 46k bool mask is 2 GiB; HunyuanVideo 720x1280x509 at block 16 is 28.8k).
_MAX_BLOCKS = 46_341


def latent_frames_for(num_frames: int, temporal_compression: int = 4) -> int:
    """Latent frame count after a causal video VAE: ``(num_frames - 1) // temporal_compression + 1``."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return (num_frames - 1) // temporal_compression + 1


def _validate(latent_frames, tokens_per_frame, model, block_size, decay_factor, text_tokens, adjacent):
    for name, value in (("latent_frames", latent_frames), ("tokens_per_frame", tokens_per_frame)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(text_tokens, (int, np.integer)) or text_tokens < 0:
        raise ValueError(f"text_tokens must be an int >= 0, got {text_tokens!r}")
    if adjacent not in ADJACENT_RULES:
        raise ValueError(
            f"adjacent must be 'full' (official HEAD rule) or 'half' (releases before 2025-11-11), got {adjacent!r}"
        )
    if not isinstance(block_size, (int, np.integer)) or block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16 (128 for Wan2.1/HunyuanVideo), got {block_size!r}")
    if not (isinstance(decay_factor, (int, float)) and math.isfinite(decay_factor) and decay_factor > 0):
        raise ValueError(f"decay_factor must be a finite number > 0, got {decay_factor!r}")


def _band_half_width(dist: int, tpf: int, rule: str, block_size: int, decay_factor: float, adjacent: str) -> int:
    """Largest integer token offset ``|k - l|`` inside the band for frames ``dist`` apart.

    Upstream compares ``|k - l| <= w`` with ``w`` a Python float promoted to float32 by torch, so the integer
    threshold is ``floor(float32(w))``; integer widths (``tpf``, ``tpf // 2``, ``block_size``) compare exactly.
    """
    if dist == 0 or (dist == 1 and (rule == "hunyuan" or adjacent == "full")):
        return tpf
    if dist == 1:
        return tpf // 2
    length = 2 ** tpf.bit_length() / 2 ** dist.bit_length() * decay_factor
    if length >= block_size:
        return int(math.floor(float(np.float32(length))))
    return block_size


def _pair_kept(dist: int, tpf: int) -> bool:
    """Frame decimation: is the frame pair at this distance kept at all (independent of the decay factor)?"""
    length = 2 ** tpf.bit_length() / 2 ** dist.bit_length()
    if length >= _DECIMATION_THRESHOLD:
        return True
    return dist % int(_DECIMATION_THRESHOLD / length) == 0


def _tile_blocks(half_width: int, row_offset: int, col_offset: int, tpf: int, block_size: int) -> np.ndarray:
    """Block tile of one frame pair: ``(nb, nb)`` bool with ``nb = ceil(tpf / block_size)``.

    The ``tpf x tpf`` token tile (``|k - l| <= half_width``) sits at ``(row_offset, col_offset)`` inside a canvas
    cropped to ``nb * B`` square (upstream crops both axes to the row count), which is cut into ``B x B`` blocks.
    A block is kept when more than 60% of its touched columns have more than a third of their rows kept
    (``5 * #high > 3 * #touched`` with ``high = 3 * count > B``; integer forms of upstream's float32 tests).
    """
    b = block_size
    nb = -(-tpf // b)
    rows0 = np.arange(nb, dtype=np.int64)[:, None, None] * b - row_offset  # first tile row of block row a
    lo_r = np.maximum(rows0, 0)
    hi_r = np.minimum(rows0 + b - 1, tpf - 1)
    cols = np.arange(nb * b, dtype=np.int64).reshape(1, nb, b) - col_offset  # tile column l of canvas column
    lo = np.maximum(lo_r, cols - half_width)
    hi = np.minimum(hi_r, cols + half_width)
    count = np.clip(hi - lo + 1, 0, None)
    count[:, (cols[0] < 0) | (cols[0] >= tpf)] = 0  # columns outside the tile
    touched = (count > 0).sum(-1)
    high = (3 * count > b).sum(-1)
    return 5 * high > 3 * touched


def _width_table(frames: int, tpf: int, rule: str, block_size: int, decay_factor: float, adjacent: str,
                 sink: bool) -> np.ndarray:
    """``(F, F)`` int64 band half-width per (query frame, key frame); -1 marks a dropped pair, ``tpf`` a full tile."""
    widths_by_dist = np.array(
        [
            _band_half_width(d, tpf, rule, block_size, decay_factor, adjacent) if _pair_kept(d, tpf) else -1
            for d in range(frames)
        ],
        dtype=np.int64,
    )
    idx = np.arange(frames)
    width = widths_by_dist[np.abs(idx[:, None] - idx[None, :])]
    if sink:
        width[:, 0] = tpf
    # |k - l| <= w with w >= tpf - 1 is the full tile; collapse such widths so full tiles share one cache entry.
    return np.minimum(width, tpf)


def _per_tile_blocks(mask: np.ndarray, width: np.ndarray, tpf: int, block_size: int, start: int = 0) -> None:
    """OR upstream's per-frame-pair block tiles into ``mask`` (in place): each distinct tile is computed once.
    ``start``: the token index of the first video token (the text length when the text comes first)."""
    b = block_size
    frames = width.shape[0]
    frame_start = start + np.arange(frames, dtype=np.int64) * tpf
    offset = frame_start % b  # token offset of each frame inside its first block
    first_block = frame_start // b
    ii, jj = np.meshgrid(np.arange(frames), np.arange(frames), indexing="ij")
    keys = np.stack([width.ravel(), offset[ii].ravel(), offset[jj].ravel()], axis=1)
    keep_pairs = keys[:, 0] >= 0
    keys, pair_i, pair_j = keys[keep_pairs], ii.ravel()[keep_pairs], jj.ravel()[keep_pairs]
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
    for u, (w, ro, co) in enumerate(uniq):
        a, c = np.nonzero(_tile_blocks(int(w), int(ro), int(co), tpf, b))
        if a.size == 0:
            continue
        sel = order[bounds[u] : bounds[u + 1]]
        rows = first_block[pair_i[sel]][:, None] + a[None, :]
        cols = first_block[pair_j[sel]][:, None] + c[None, :]
        mask[rows.ravel(), cols.ravel()] = True


# Elements per chunk of the temporaries in _union_rule_blocks (about 32 MiB per int64 array).
_UNION_CHUNK = 1 << 22


def _union_rule_blocks(width: np.ndarray, tpf: int, block_size: int, start: int = 0) -> np.ndarray:
    """The keep rule applied to the whole token mask inside every video block: ``(nv, nv)`` bool over the blocks
    ``start // B ..`` that hold video tokens (``start``: the first video token, after any leading text).

    Upstream reduces each frame pair's tile on its own, so a block that straddles frames is judged on each piece
    separately and can fail in all of them. Here the kept query rows of every frame pair touching a block are
    added up per key column first, with nothing cropped. For query block ``a`` and key frame ``j`` the count of key
    column ``l`` is ``sum_s |[k0_s, k1_s] & [l - w_s, l + w_s]|`` over the (at most ``span``) query frames ``s``
    whose rows ``k0_s..k1_s`` lie in block ``a``, with ``w_s`` their band half-width towards ``j`` (``-1``: pair
    dropped). That count vector depends only on the key ``(k0_s, k1_s, w_s)_s``, so it is computed once per
    distinct key, turned into prefix sums of "touched" and "high" columns, and each (block, key frame) pair adds
    its columns' sums to the key blocks they fall in. Cost ``O(nv * (nv + F) + keys * tpf)``.
    """
    b = block_size
    frames = width.shape[0]
    video = frames * tpf
    first = start // b
    nv = -(-(start + video) // b) - first
    span = -(-b // tpf) + 1  # most query frames one block of rows can touch

    block_lo = (first + np.arange(nv, dtype=np.int64)) * b - start  # first row of each block, in video coordinates
    row_lo = np.maximum(block_lo, 0)
    row_hi = np.minimum(block_lo + b, video) - 1  # last real video row of each block
    frame = (row_lo // tpf)[:, None] + np.arange(span)[None, :]  # (nv, span) query frame per slot
    in_block = frame <= (row_hi // tpf)[:, None]
    frame = np.minimum(frame, frames - 1)
    w = np.where(in_block[:, :, None], width[frame], -1)  # (nv, span, F): half-width towards each key frame
    used = w >= 0
    k0 = np.where(used, np.maximum(row_lo[:, None] - frame * tpf, 0)[:, :, None], 0)
    k1 = np.where(used, np.minimum(row_hi[:, None] - frame * tpf, tpf - 1)[:, :, None], 0)
    keys = np.concatenate([k0, k1, w], axis=1).transpose(0, 2, 1).reshape(nv * frames, 3 * span)
    pairs = np.nonzero(used.any(1).reshape(-1))[0]  # (block, key frame) pairs with any kept row
    uniq, inverse = np.unique(keys[pairs], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)

    cols = np.arange(tpf, dtype=np.int64)
    touched_sum = np.zeros((len(uniq), tpf + 1), dtype=np.int64)  # prefix sums over the key frame's columns
    high_sum = np.zeros((len(uniq), tpf + 1), dtype=np.int64)
    step = max(1, _UNION_CHUNK // (span * tpf))
    for s in range(0, len(uniq), step):
        u = uniq[s : s + step, :, None]
        uk0, uk1, uw = u[:, :span], u[:, span : 2 * span], u[:, 2 * span :]
        count = np.minimum(uk1, cols + uw) - np.maximum(uk0, cols - uw) + 1
        count = np.where(uw >= 0, np.clip(count, 0, None), 0).sum(1)
        np.cumsum(count > 0, axis=1, out=touched_sum[s : s + step, 1:])
        np.cumsum(3 * count > b, axis=1, out=high_sum[s : s + step, 1:])

    blocks_per_frame = -(-tpf // b) + 1  # key blocks one key frame can touch
    touched = np.zeros(nv * nv, dtype=np.int64)
    high = np.zeros(nv * nv, dtype=np.int64)
    step = max(1, _UNION_CHUNK // blocks_per_frame)
    for s in range(0, pairs.size, step):
        p = pairs[s : s + step, None]
        a, j, u = p // frames, p % frames, inverse[s : s + step, None]
        c = (start + j * tpf) // b - first + np.arange(blocks_per_frame)[None, :]  # key block, relative to first
        lo = np.clip((c + first) * b - start - j * tpf, 0, tpf)
        hi = np.clip((c + first + 1) * b - start - j * tpf, 0, tpf)
        ok = (hi > lo) & (c < nv)
        flat = (a * nv + c)[ok]
        touched += np.bincount(flat, (touched_sum[u, hi] - touched_sum[u, lo])[ok], nv * nv).astype(np.int64)
        high += np.bincount(flat, (high_sum[u, hi] - high_sum[u, lo])[ok], nv * nv).astype(np.int64)
    return (5 * high > 3 * touched).reshape(nv, nv)


@lru_cache(maxsize=64)
def _radial_block_mask_np(
    frames: int,
    tpf: int,
    rule: str,
    block_size: int,
    decay_factor: float,
    text_tokens: int,
    adjacent: str,
    sink: bool,
    text_first: bool = False,
) -> np.ndarray:
    b = block_size
    video = frames * tpf
    n_blocks = -(-(video + text_tokens) // b)
    if n_blocks > _MAX_BLOCKS:
        raise ValueError(
            f"the block mask would be {n_blocks} x {n_blocks} ({n_blocks**2 / 2**30:.1f} GiB): the geometry is too "
            f"large for block_size={b}; use a larger block_size"
        )
    mask = np.zeros((n_blocks, n_blocks), dtype=bool)
    # Text rows/columns are dense: from the block holding the first text token on, as upstream does with
    # video_token_num // B. Without text nothing is forced, so on unaligned geometries the partial tail block
    # follows the keep rule like every other block (its padded keys are masked by the attention op).
    start = text_tokens if text_first else 0  # the first video token
    if text_tokens:
        if text_first:  # the blocks holding any text token: [text, video]
            border = -(-text_tokens // b)
            mask[:border, :] = True
            mask[:, :border] = True
        else:  # from the block holding the first text token on: [video, text], as upstream (video_token_num // B)
            border = video // b
            mask[border:, :] = True
            mask[:, border:] = True

    width = _width_table(frames, tpf, rule, b, decay_factor, adjacent, sink)
    _per_tile_blocks(mask, width, tpf, b, start)
    if start % b or video % b:
        # Upstream is undefined here (its placement overruns the grid). Add what the rule gives on the union of the
        # tiles a block touches: the tokens of a block that straddles frames, or of the partial tail, attend to
        # each other although no single tile keeps the block.
        first, last = start // b, -(-(start + video) // b)
        mask[first:last, first:last] |= _union_rule_blocks(width, tpf, b, start)
    # Every query block attends at least to itself. Upstream's crop (each tile is cut to whole blocks of its own
    # rows) loses the diagonal block, and with it every key, of some rows even on aligned geometries (Wan
    # 544x960x61 at block 128: blocks 31, 47, 63, 79), which would switch attention off for those tokens.
    np.fill_diagonal(mask, True)
    return mask


def radial_block_mask(
    latent_frames: int,
    tokens_per_frame: int,
    *,
    model: str = "wan",
    block_size: int = 128,
    decay_factor: float = 1.0,
    text_tokens: int = 0,
    adjacent: str = "full",
    sink: bool | None = None,
    text_position: str | None = None,
) -> torch.Tensor:
    """Static radial block mask for one video geometry.

    Args:
        latent_frames: frames after the VAE and temporal patching (Wan/HunyuanVideo: ``(num_frames - 1) // 4 + 1``).
        tokens_per_frame: tokens per latent frame after patching, ``H' * W'`` (Wan: ``(H // 16) * (W // 16)``).
        model: a model family name (:func:`radial_diffusers.families.family_names`: ``"wan"``, ``"hunyuan"``, ...);
            selects the adjacent-frame band (the family's ``mask_rule``), the default sink and where the text sits.
        block_size: block edge in tokens, a power of two >= 16 (128 for Wan2.1/HunyuanVideo, 64 for Wan2.2).
        decay_factor: multiplies the band width for frames >= 2 apart (never below one block).
        text_tokens: text tokens in the joint sequence (HunyuanVideo, CogVideoX, Mochi); their rows and columns are dense.
        adjacent: Wan's band for neighbouring frames: ``"full"`` frame (official HEAD, 72788d4) or ``"half"``
            (``tpf // 2``, releases before 2025-11-11). HunyuanVideo always uses the full frame.
        sink: make key frame 0 visible to every query (``None``: the family's default, Wan True, HunyuanVideo False).
        text_position: ``"after"`` (``[video, text]``, HunyuanVideo, Mochi) or ``"before"`` (``[text, video]``,
            CogVideoX) the video; ``None``: the family's. The text rows and columns are dense wherever they sit.

    Returns:
        ``(n_blocks, n_blocks)`` bool CPU tensor, ``n_blocks = ceil((latent_frames * tokens_per_frame + text_tokens)
        / block_size)``; ``True`` = the query block (row) attends to the key block (column). Every row keeps its
        diagonal block, so no query token is left with nothing to attend to. A fresh tensor each call; built once
        per geometry.

    Exactness:
        * Aligned geometries (video and text token counts multiples of ``block_size``): equal to upstream
          ``gen_log_mask_shrinked`` block for block, wherever upstream keeps the diagonal. (A text count that is
          not a multiple only adds the padded, dense last text block.) Upstream crops each
          frame pair's tile to whole blocks of its own rows, which on some aligned geometries drops a block that
          straddles two frames from every tile and leaves that query row empty (Wan 544x960x61 at block 128:
          rows 31, 47, 63, 79; tokens per frame 2040 = 16 * 128 - 8). There the diagonal block is added, and
          nothing else changes.
        * Video token count not a multiple of ``block_size`` (upstream raises): the grid is padded to whole blocks (the padded keys are masked
          by the attention op, see ``BlockLayout.seq_len``). A block is kept when upstream's per-tile rule keeps it,
          when the same rule holds on the union of the tiles it touches (the kept query rows of all frame pairs in
          the block counted together per key column, uncropped), or when it is on the diagonal.
        * Text before the video (``text_position="before"``): the blocks holding any text token are dense rows and
          columns, and the video tiles start at token ``text_tokens``. With a text length that is a multiple of
          ``block_size`` this is the ``"after"`` mask with the text blocks moved to the front; otherwise the video
          blocks straddle the text boundary and the union rule above applies to them as well.

    Example:
        >>> m = radial_block_mask(18, 3840, model="wan", decay_factor=0.2, adjacent="half")  # Wan 768x1280x69
        >>> m.shape, round(1 - m.float().mean().item(), 6)  # issue #61 of the official repo: 0.7366323
        (torch.Size([540, 540]), 0.736632)
    """
    _validate(latent_frames, tokens_per_frame, model, block_size, decay_factor, text_tokens, adjacent)
    family = get_family(model)
    if text_position is None:
        text_position = family.text_position
    if text_position not in ("none", "before", "after"):
        raise ValueError(f"text_position must be 'before' or 'after' the video (or None: the family's), got "
                         f"{text_position!r}")
    if sink is None:
        sink = family.sink
    array = _radial_block_mask_np(
        int(latent_frames), int(tokens_per_frame), family.mask_rule, int(block_size), float(decay_factor),
        int(text_tokens), adjacent, bool(sink), text_position == "before",
    )
    return torch.from_numpy(array.copy())


@dataclass(frozen=True)
class MaskStats:
    """Cost summary of a block mask.

    ``density`` is kept blocks / all blocks (upstream prints ``1 - density`` as "sparsity"). FLOP counts are for one
    attention head of dimension ``head_dim`` per batch element, ``4 * q_len * k_len * head_dim`` (QK^T and PV,
    a multiply-add counted as 2), over the real ``seq_len`` tokens (padding excluded).
    """

    n_blocks: int
    kept_blocks: int
    density: float
    seq_len: int
    dense_flops: float
    sparse_flops: float

    @property
    def flops_saved(self) -> float:
        """Fraction of the dense attention FLOPs the mask skips (0..1)."""
        return 1.0 - self.sparse_flops / self.dense_flops

    @property
    def speedup_bound(self) -> float:
        """Upper bound on the attention speedup over dense: dense FLOPs / computed FLOPs."""
        return self.dense_flops / max(self.sparse_flops, 1.0)


def mask_stats(mask: torch.Tensor, block_size: int, seq_len: int | None = None, head_dim: int = 128) -> MaskStats:
    """Density and attention FLOPs of ``mask`` (a ``(n, n)`` block mask) for a sequence of ``seq_len`` tokens."""
    n = mask.shape[0]
    if mask.ndim != 2 or mask.shape[1] != n:
        raise ValueError(f"mask must be square (n_blocks, n_blocks), got shape {tuple(mask.shape)}")
    seq_len = n * block_size if seq_len is None else seq_len
    if not (n - 1) * block_size < seq_len <= n * block_size:
        raise ValueError(f"seq_len={seq_len} does not fit {n} blocks of {block_size}")
    sizes = torch.full((n,), block_size, dtype=torch.float64)
    sizes[-1] = seq_len - (n - 1) * block_size
    m = mask.to(torch.float64)
    computed = float(sizes @ m @ sizes)
    kept = int(mask.sum())
    return MaskStats(
        n_blocks=n,
        kept_blocks=kept,
        density=kept / (n * n),
        seq_len=seq_len,
        dense_flops=4.0 * seq_len * seq_len * head_dim,
        sparse_flops=4.0 * computed * head_dim,
    )


def save_mask_png(mask: torch.Tensor, path: str | Path, max_side: int = 2048) -> Path:
    """Write the block mask as data: a PNG of one pixel per block (white = computed), block-max-pooled down to at
    most ``max_side`` pixels. Written atomically (temporary file + rename). Returns the path.

    For a picture a person reads (frame grid, sink and text regions, title, legend), see
    :func:`radial_diffusers.mask_image.save_mask_picture`.
    """
    from PIL import Image

    from .mask_image import pool_blocks, write_png

    pooled, _ = pool_blocks(mask, max_side)
    return write_png(Image.fromarray(pooled.astype(np.uint8) * 255, mode="L"), path)
