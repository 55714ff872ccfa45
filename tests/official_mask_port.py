"""Test-only reference: a deliberately naive, literal port of upstream ``gen_log_mask_shrinked``.

Upstream is mit-han-lab/radial-attention, ``radial_attn/attn_mask.py`` (Apache-2.0). This module re-states its
procedure step by step, with the same torch operations and therefore the same dtype promotions, so it can serve as
the oracle for :func:`radial_diffusers.masks.radial_block_mask`:

* for every (query frame i, key frame j) a dense ``tpf x tpf`` token tile is materialised;
* the band test is ``torch.abs(col - row) <= width`` with ``width`` exactly the Python ``int`` or ``float`` upstream
  produces (torch promotes the int64 distance and the float width to float32);
* frame decimation multiplies the tile by an all-ones / all-zeros ``tpf x tpf`` tensor, with the threshold
  hard-coded to 128 tokens whatever the block size;
* the tile is pasted into a zero canvas at (row remainder, column remainder), the canvas is cropped to
  ``nb * B`` square (upstream uses the row count for both axes) and shrunk with the float32 density tests
  (column density > 1/3, fraction of high-density columns > 0.6 with ``+ 1e-9`` in the denominator);
* the block tile is OR-ed into the ``(s // B, s // B)`` result, whose rows and columns from
  ``video_token_num // B`` on are dense (text tokens).

Parameters that upstream varies across commits are explicit: ``adjacent`` ("full" at HEAD 72788d4 for Wan,
"half" = ``tpf // 2`` before 2025-11-11) and ``sink`` (the all-ones tile for key frame 0: HEAD applies it to Wan
only, the first commit to every model).

Nothing here is vectorised or cached: the cost is ``O((F * tpf) ** 2)``, so keep geometries small (a few thousand
tokens). Never import this from the package.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["official_block_mask", "window_width", "pair_split_tile", "pair_tile", "shrink_strict"]

_SPLIT_THRESHOLD = 128  # upstream hard-codes 128 tokens here, independent of block_size


def window_width(dist: int, tpf: int, model: str, adjacent: str, decay_factor: float, block_size: int):
    """Band half-width for two frames ``dist`` apart, as the exact Python value upstream returns (int or float)."""
    if model == "wan":
        if dist < 1:
            return tpf
        if dist == 1:
            if adjacent == "full":
                return tpf
            if adjacent == "half":
                return tpf // 2
            raise ValueError(f"unknown adjacent rule {adjacent!r}")
    elif model == "hunyuan":
        if dist <= 1:
            return tpf
    else:
        raise ValueError(f"unknown model {model!r}")
    group = dist.bit_length()
    length = 2 ** tpf.bit_length() / 2**group * decay_factor  # Python float
    return length if length >= block_size else block_size


def pair_split_tile(dist: int, tpf: int) -> torch.Tensor:
    """All-True or all-False ``(tpf, tpf)`` tile: is the frame distance kept by the decimation rule?"""
    group = dist.bit_length()
    length = 2 ** tpf.bit_length() / 2**group  # no decay factor here
    if length >= _SPLIT_THRESHOLD:
        return torch.ones((tpf, tpf), dtype=torch.bool)
    factor = int(_SPLIT_THRESHOLD / length)
    if dist % factor == 0:
        return torch.ones((tpf, tpf), dtype=torch.bool)
    return torch.zeros((tpf, tpf), dtype=torch.bool)


def pair_tile(i: int, j: int, tpf: int, model: str, adjacent: str, decay_factor: float, block_size: int,
              sink: bool) -> torch.Tensor:
    """The ``(tpf, tpf)`` token tile of query frame ``i`` and key frame ``j``, as upstream builds it."""
    if sink and j == 0:
        return torch.ones((tpf, tpf), dtype=torch.bool)
    dist = abs(i - j)
    width = window_width(dist, tpf, model, adjacent, decay_factor, block_size)
    k = torch.arange(0, tpf)
    tile = torch.abs(k.view(1, -1) - k.view(-1, 1)) <= width
    return torch.logical_and(tile, pair_split_tile(dist, tpf))


def shrink_strict(canvas: torch.Tensor, block_size: int) -> torch.Tensor:
    """Token canvas -> block tile, cropping both axes to the row count's whole blocks (as upstream does)."""
    n = canvas.shape[0] // block_size
    blocks = canvas[: n * block_size, : n * block_size].reshape(n, block_size, n, block_size)
    density = blocks.sum(dim=1) / block_size  # (n, n, B): kept rows per column / B, float32
    touched = density > 0
    high = density > 1 / 3
    fraction = high.sum(dim=-1) / (touched.sum(dim=-1) + 1e-9)  # float32
    return fraction > 0.6


@contextlib.contextmanager
def _single_thread():
    """Run torch single-threaded: thousands of tiny ops stall badly on intra-op thread barriers of a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def official_block_mask(
    latent_frames: int,
    tokens_per_frame: int,
    *,
    model: str = "wan",
    block_size: int = 128,
    decay_factor: float = 1.0,
    text_tokens: int = 0,
    adjacent: str = "full",
    sink: bool | None = None,
    s: int | None = None,
    text_dense: bool = True,
) -> torch.Tensor:
    """The upstream block mask, computed the slow way. Returns an ``(s // B, s // B)`` bool tensor.

    ``s`` defaults to video + text tokens (upstream's ``s``); pass the padded length to reproduce a padded grid.
    ``sink=None`` follows HEAD (Wan True, HunyuanVideo False). ``text_dense=False`` skips upstream's forcing of
    rows/columns from ``video_token_num // B`` on (a no-op on aligned geometries without text; our padded rule
    forces them only when there is text).
    """
    with _single_thread():
        return _official_block_mask(latent_frames, tokens_per_frame, model, block_size, decay_factor, text_tokens,
                                    adjacent, sink, s, text_dense)


def _official_block_mask(latent_frames, tokens_per_frame, model, block_size, decay_factor, text_tokens, adjacent,
                         sink, s, text_dense=True):
    b = block_size
    tpf = tokens_per_frame
    video = latent_frames * tpf
    if s is None:
        s = video + text_tokens
    if sink is None:
        sink = model == "wan"

    result = torch.zeros((s // b, s // b), dtype=torch.bool)
    if text_dense:
        border = video // b
        result[border:] = True
        result[:, border:] = True

    nb = (tpf - 1) // b + 1
    for i in range(latent_frames):
        for j in range(latent_frames):
            tile = pair_tile(i, j, tpf, model, adjacent, decay_factor, b, sink)
            rem_r = (i * tpf) % b
            rem_c = (j * tpf) % b
            canvas = torch.zeros((rem_r + nb * b, rem_c + nb * b), dtype=torch.bool)
            canvas[rem_r : rem_r + tpf, rem_c : rem_c + tpf] = tile
            block_tile = shrink_strict(canvas, b)

            r0 = (i * tpf) // b
            c0 = (j * tpf) // b
            r1 = r0 + block_tile.shape[0]
            c1 = c0 + block_tile.shape[1]
            result[r0:r1, c0:c1] = torch.logical_or(result[r0:r1, c0:c1], block_tile)
    return result
