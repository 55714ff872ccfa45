"""A block mask as a picture a person can read: cells per block, frame grid, sink and text regions, title, legend.

    from radial_diffusers.mask_image import MaskPictureInfo, save_mask_picture
    save_mask_picture(mask, "mask.png", MaskPictureInfo(block_size=128, latent_frames=18, tokens_per_frame=3840,
                                                        sink=True, title="wan 768x1280x69"))

Rows are query blocks, columns key blocks, in the sequence order of :func:`radial_diffusers.radial_block_mask`:
frame-major video tokens, then the text tokens. Large masks are reduced by block-max pooling (a cell is drawn as
computed when any block it covers is), so nothing computed disappears from the picture. PIL only, imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["MaskPictureInfo", "pool_blocks", "render_mask_picture", "save_mask_picture", "write_png"]

_TARGET_SIDE = 720  # pixels the mask area aims for: small masks are scaled up to about this
_MAX_CELL = 96  # pixels per block at most (a 5 x 5 mask stays a readable picture, not a poster)
_MIN_LABEL_GAP = 28  # pixels between frame labels

_BACKGROUND = (255, 255, 255)
_SKIPPED = (38, 38, 46)
_KEPT = (236, 236, 236)
_SINK = (255, 176, 64)  # computed blocks in the key columns of frame 0 (the attention sink)
_TEXT = (96, 170, 255)  # computed blocks in text rows or columns
_GRID = (140, 140, 150)
_INK = (20, 20, 24)


@dataclass(frozen=True)
class MaskPictureInfo:
    """What the picture explains about its mask (all optional: without a geometry there is no frame grid).

    Attributes:
        block_size: tokens per block.
        latent_frames: latent frames of the video part.
        tokens_per_frame: tokens per latent frame.
        text_tokens: text tokens in the joint sequence, after the video (HunyuanVideo) or before it
            (``text_first``, CogVideoX).
        sink: key frame 0 is the attention sink (Wan): its columns are marked.
        title: the first title line (e.g. ``"wan 768x1280x69"``); the picture adds the block counts and density.
        extra: more title lines (e.g. the speedup bound).
    """

    block_size: int | None = None
    latent_frames: int | None = None
    tokens_per_frame: int | None = None
    text_tokens: int = 0
    text_first: bool = False
    sink: bool = False
    title: str | None = None
    extra: tuple[str, ...] = ()

    @classmethod
    def of_radial(cls, cfg, geometry: tuple[int, int, int], *, text_tokens: int = 0, text_first: bool = False,
                  title: str | None = None, extra: tuple[str, ...] = ()) -> "MaskPictureInfo":
        """For the radial mask of ``cfg`` (a preset-resolved :class:`~radial_diffusers.RadialConfig`: its block
        size and sink) on the latent ``geometry`` ``(frames, height, width)`` in tokens."""
        frames, h, w = geometry
        return cls(block_size=cfg.block_size, latent_frames=frames, tokens_per_frame=h * w, text_tokens=text_tokens,
                   text_first=text_first, sink=bool(cfg.sink), title=title, extra=tuple(extra))

    @property
    def has_geometry(self) -> bool:
        return None not in (self.block_size, self.latent_frames, self.tokens_per_frame)


def pool_blocks(mask: torch.Tensor, max_side: int) -> tuple[np.ndarray, int]:
    """``(pooled bool array, factor)``: ``mask`` block-max-pooled by the smallest integer ``factor`` that brings its
    side to at most ``max_side`` (factor 1: the mask itself)."""
    m = mask.to(torch.bool)
    factor = max(1, -(-m.shape[0] // max_side))
    if factor > 1:
        m = torch.nn.functional.max_pool2d(m[None, None].float(), factor, ceil_mode=True)[0, 0] > 0
    return m.numpy(), factor


def write_png(image, path: str | Path) -> Path:
    """Save a PIL image as a PNG atomically (temporary file + rename); returns the path."""
    from ._io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _regions(info: MaskPictureInfo, n: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Per original block: (in a text row/column?, in a sink column?) and the frame boundaries in blocks."""
    text = np.zeros(n, dtype=bool)
    sink = np.zeros(n, dtype=bool)
    bounds: list[float] = []
    if info.has_geometry:
        video = info.latent_frames * info.tokens_per_frame
        first = info.text_tokens if info.text_first else 0  # the first video token
        starts = np.arange(n) * info.block_size
        if info.text_tokens:  # a block holding any text token
            text = starts < first if info.text_first else starts + info.block_size > video
        if info.sink:
            sink = (starts + info.block_size > first) & (starts < first + info.tokens_per_frame)
        bounds = [(first + f * info.tokens_per_frame) / info.block_size for f in range(info.latent_frames + 1)]
    return text, sink, bounds


def _pool_flags(flags: np.ndarray, factor: int, cells: int) -> np.ndarray:
    padded = np.zeros(cells * factor, dtype=bool)
    padded[: flags.size] = flags
    return padded.reshape(cells, factor).any(axis=1)


def render_mask_picture(mask: torch.Tensor, info: MaskPictureInfo | None = None, *, max_side: int = 2048):
    """The annotated picture of a ``(n_blocks, n_blocks)`` block mask as a PIL RGB image.

    The mask area is about 720 pixels wide (at most 96 pixels per block, at least one; masks wider than ``max_side``
    blocks are block-max-pooled). Frame boundaries are grid lines labelled with the frame index on both
    axes; computed blocks in the attention-sink columns and in the text rows/columns are coloured; the title gives
    the geometry, the block counts and the density; a legend explains the colours.
    """
    from PIL import Image, ImageDraw

    info = info or MaskPictureInfo()
    n = int(mask.shape[0])
    cells, factor = pool_blocks(mask, max_side)
    side = cells.shape[0]
    px = min(side * _MAX_CELL, max(side, _TARGET_SIDE))  # cells may differ by a pixel: nearest-neighbour scaling

    text, sink, bounds = _regions(info, n)
    text_c, sink_c = _pool_flags(text, factor, side), _pool_flags(sink, factor, side)
    rgb = np.empty((side, side, 3), dtype=np.uint8)
    rgb[:] = _SKIPPED
    rgb[cells] = _KEPT
    rgb[cells & sink_c[None, :]] = _SINK
    rgb[cells & (text_c[None, :] | text_c[:, None])] = _TEXT
    grid = Image.fromarray(rgb, mode="RGB").resize((px, px), Image.NEAREST)

    font, small = _font(15), _font(12)
    probe = ImageDraw.Draw(grid)
    kept = int(mask.sum())
    lines = [info.title or "radial block mask"]
    if info.has_geometry:
        lines.append(f"{info.latent_frames} latent frames x {info.tokens_per_frame} tokens"
                     f"{f' + {info.text_tokens} text tokens' if info.text_tokens else ''}, block {info.block_size}")
    pooled = f"; {factor}x{factor} blocks per cell" if factor > 1 else ""
    lines.append(f"{n} x {n} blocks, {kept:,} computed: density {kept / (n * n):.4f} "
                 f"(sparsity {1 - kept / (n * n):.4f}){pooled}")
    lines.extend(info.extra)
    line_h = max(_text_size(probe, line, font)[1] for line in lines) + 6
    label_h = _text_size(probe, "0123456789", small)[1] + 6
    axis_w = _text_size(probe, "rows: query", small)[0]
    left = max(axis_w, _text_size(probe, str(info.latent_frames or 0), small)[0]) + label_h + 14
    top = 12 + line_h * len(lines) + label_h * 2 + 8

    legend = [(_KEPT, "computed block"), (_SKIPPED, "skipped block")]
    if sink.any():
        legend.append((_SINK, "computed, attention sink (key frame 0)"))
    if text.any():
        legend.append((_TEXT, "computed, text tokens (dense)"))
    if bounds:
        legend.append((_GRID, "frame boundary (labels: latent frame)"))
    legend_h = 16 + 20 * len(legend)
    width = max(left + px + 16, 12 + max(_text_size(probe, line, font)[0] for line in lines) + 12, 360)
    image = Image.new("RGB", (width, top + px + legend_h), _BACKGROUND)
    image.paste(grid, (left, top))
    draw = ImageDraw.Draw(image)

    for i, line in enumerate(lines):
        draw.text((12, 10 + i * line_h), line, fill=_INK, font=font)
    draw.text((left, top - label_h * 2 - 2), "columns: key frames", fill=_INK, font=small)
    draw.text((4, top - label_h * 2 - 2), "rows: query", fill=_INK, font=small)
    draw.text((4, top - label_h - 2), "frames", fill=_INK, font=small)

    if bounds:
        cell_px = px / side / factor  # pixels per original block
        spacing = (bounds[1] - bounds[0]) * cell_px
        every = max(1, int(np.ceil(_MIN_LABEL_GAP / max(spacing, 1e-9))))
        line_every = 1 if spacing >= 3 else every
        for f, b in enumerate(bounds):
            pos = int(round(b * cell_px))
            inner = 0 < f < len(bounds) - 1 and f % line_every == 0
            if inner or (f == len(bounds) - 1 and text.any()):  # and the video / text boundary
                draw.line([(left + pos, top), (left + pos, top + px - 1)], fill=_GRID)
                draw.line([(left, top + pos), (left + px - 1, top + pos)], fill=_GRID)
            if f < len(bounds) - 1 and f % every == 0:
                mid = int(round((b + 0.5 * (bounds[1] - bounds[0])) * cell_px))
                label = str(f)
                w, _ = _text_size(draw, label, small)
                draw.text((left + mid - w // 2, top - label_h), label, fill=_INK, font=small)
                draw.text((left - w - 6, top + mid - label_h // 2), label, fill=_INK, font=small)
        if text.any():
            pos = int(round(bounds[-1] * cell_px))
            if px - pos >= label_h:  # room for the label inside the text band
                w, _ = _text_size(draw, "text", small)
                draw.text((left + (pos + px) // 2 - w // 2, top - label_h), "text", fill=_INK, font=small)
                draw.text((left - w - 6, top + (pos + px) // 2 - label_h // 2), "text", fill=_INK, font=small)
    draw.rectangle([left - 1, top - 1, left + px, top + px], outline=_INK)

    y = top + px + 10
    for colour, name in legend:
        draw.rectangle([12, y + 2, 26, y + 14], fill=colour, outline=_INK)
        draw.text((34, y), name, fill=_INK, font=small)
        y += 20
    return image


def save_mask_picture(mask: torch.Tensor, path: str | Path, info: MaskPictureInfo | None = None, *,
                      max_side: int = 2048) -> Path:
    """Write :func:`render_mask_picture` of ``mask`` to ``path`` as a PNG, atomically; returns the path."""
    return write_png(render_mask_picture(mask, info, max_side=max_side), path)
