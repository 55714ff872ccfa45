"""Fine-tuning data: find captioned videos on disk and decode fixed-size clips from them."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import imageio
import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")
VIDEO_KEYS = ("video", "file_name", "path")
CAPTION_KEYS = ("caption", "text", "prompt")


class ClipError(ValueError):
    """A video that cannot be used (unreadable, too short); the message says why."""


@dataclass(frozen=True)
class Clip:
    video: Path
    caption: str


@dataclass
class ScanReport:
    clips: list[Clip] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path or manifest line, reason)


def scan_dataset(root: str | Path, manifest: str | Path | None = None) -> ScanReport:
    """List the (video, caption) pairs of a dataset, with the reason each unusable entry was skipped.

    Without ``manifest``, every video under ``root`` (recursive, sorted by relative path; hidden files and
    folders ignored) is paired with the ``.txt`` file of the same stem next to it. With ``manifest``, a
    ``.jsonl`` file (one object per line) or ``.csv`` file (with a header) names each video (key ``video``,
    ``file_name`` or ``path``) and its caption (``caption``, ``text`` or ``prompt``). A relative manifest path
    is resolved against ``root``, relative video paths against the manifest's folder.

    Raises ``ValueError`` when ``root`` or the manifest is missing, or when no entry is usable.

    Example (``data/clips`` holding ``a.mp4`` + ``a.txt``, ...):
        >>> report = scan_dataset("data/clips")  # doctest: +SKIP
        >>> report.clips[0].caption, len(report.skipped)  # doctest: +SKIP
        ('a cat walks on the beach', 0)
    """
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise ValueError(f"dataset root {str(root)!r} {what}; pass the folder that holds the videos")
    if manifest is None:
        report, where = _scan_folder(root), f"folder {str(root)!r}"
    else:
        path = Path(manifest) if Path(manifest).is_absolute() else root / manifest
        if not path.is_file():
            raise ValueError(f"manifest {str(path)!r} does not exist; relative manifest paths are resolved "
                             f"against the dataset root {str(root)!r}")
        report, where = _scan_manifest(path), f"manifest {str(path)!r}"
    if not report.clips:
        if report.skipped:
            shown = "; ".join(f"{ref}: {why}" for ref, why in report.skipped[:5])
            more = ", ..." if len(report.skipped) > 5 else ""
            detail = f"{len(report.skipped)} skipped ({shown}{more})"
        else:
            detail = f"no video found (extensions {', '.join(VIDEO_EXTENSIONS)})"
        raise ValueError(f"no usable clip in {where}: {detail}; each video needs a non-empty caption "
                         f"(a <name>.txt beside it, or a manifest entry)")
    return report


def _scan_folder(root: Path) -> ScanReport:
    report = ScanReport()
    videos = [p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
              and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    for video in sorted(videos, key=lambda p: p.relative_to(root).as_posix()):
        rel, caption_file = video.relative_to(root).as_posix(), video.with_suffix(".txt")
        if not caption_file.is_file():
            report.skipped.append((rel, f"missing caption (expected {caption_file.name})"))
        elif not (caption := caption_file.read_text(encoding="utf-8-sig", errors="replace").strip()):
            report.skipped.append((rel, "empty caption"))
        else:
            report.clips.append(Clip(video, caption))
    return report


def _manifest_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """Yield (line number, row dict) per entry, or (line number, problem) for a malformed one."""
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8-sig", newline="") as fh:
        if suffix == ".jsonl":
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield lineno, f"not valid JSON ({exc.msg})"
                    continue
                yield lineno, row if isinstance(row, dict) else "not a JSON object"
        elif suffix == ".csv":
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            if not set(columns) & set(VIDEO_KEYS) or not set(columns) & set(CAPTION_KEYS):
                raise ValueError(f"manifest {str(path)!r} header {columns} needs a video column "
                                 f"({'/'.join(VIDEO_KEYS)}) and a caption column ({'/'.join(CAPTION_KEYS)})")
            for row in reader:
                yield reader.line_num, row
        else:
            raise ValueError(f"manifest {str(path)!r} has an unknown extension; use .jsonl or .csv")


def _scan_manifest(path: Path) -> ScanReport:
    report = ScanReport()
    for lineno, row in _manifest_rows(path):
        ref = f"{path.name}:{lineno}"
        if isinstance(row, str):
            report.skipped.append((ref, f"line {lineno}: {row}"))
            continue
        video = next((row[k] for k in VIDEO_KEYS if isinstance(row.get(k), str) and row[k].strip()), None)
        caption = next((row[k] for k in CAPTION_KEYS if isinstance(row.get(k), str)), None)
        if video is None:
            reason = "no video field"
        elif caption is None:
            reason = "no caption field"
        elif not caption.strip():
            reason = "empty caption"
        elif not (video_path := path.parent / video.strip()).is_file():
            reason = f"video not found: {video_path}"
        else:
            report.clips.append(Clip(video_path, caption.strip()))
            continue
        report.skipped.append((ref, f"line {lineno}: {reason}"))
    return report


def read_clip(path: str | Path, num_frames: int, height: int, width: int, fps: float | None = None) -> torch.Tensor:
    """Decode ``num_frames`` frames of a video, resized to cover ``height`` x ``width`` and center-cropped.

    With ``fps=None`` the first ``num_frames`` consecutive frames are taken; otherwise source frame
    ``round(i * src_fps / fps)`` for each output frame ``i`` (from frame 0; the source fps comes from the
    file, and consecutive frames are taken if it has none). Decoding stops at the last frame needed.

    Returns a uint8 tensor of shape ``(num_frames, height, width, 3)``, RGB. Raises ``ClipError`` for an
    unreadable or too short video and ``ValueError`` for bad arguments.

    Example:
        >>> clip = read_clip("data/clips/a.mp4", num_frames=33, height=480, width=832, fps=16)  # doctest: +SKIP
        >>> clip.shape, clip.dtype  # doctest: +SKIP
        (torch.Size([33, 480, 832, 3]), torch.uint8)
    """
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))
                            or not math.isfinite(fps) or fps <= 0):
        raise ValueError(f"fps must be None or a positive number, got {fps!r}")
    path = Path(path)
    if not path.is_file():
        raise ClipError(f"unreadable video: file not found: {path}")

    frames: dict[int, torch.Tensor] = {}
    count, src_fps = 0, None
    try:
        frame_iter, src_fps, close = _open(path)
        try:
            step = src_fps / fps if fps is not None and src_fps else 1.0
            indices = [round(i * step) for i in range(num_frames)]
            wanted, last = set(indices), indices[-1]
            for count, frame in enumerate(frame_iter, 1):
                if count - 1 in wanted:
                    frames[count - 1] = _resize_crop(np.asarray(frame), height, width)
                if count - 1 == last:
                    break
        finally:
            close()
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        raise ClipError(f"unreadable video: {lines[0] if lines else type(exc).__name__}") from exc
    if last not in frames:
        have = f"{count} frames" + (f" at {src_fps:g} fps" if src_fps else "")
        need = f"{num_frames} frames" + (f" at {fps:g} fps (source frames up to {last})" if fps else "")
        raise ClipError(f"too short: {have}, need {need}")
    return torch.stack([frames[i] for i in indices])


def _open(path: Path) -> tuple[Iterator[np.ndarray], float | None, Callable[[], None]]:
    """Return (frame iterator, source fps or None, close function)."""
    if path.suffix.lower() == ".gif":  # imageio's ffmpeg plugin refuses .gif; pillow gives per-frame ms
        duration = iio.immeta(path, plugin="pillow").get("duration")
        frames = iio.imiter(path, plugin="pillow")
        return frames, (1000.0 / duration if duration else None), frames.close
    reader = imageio.get_reader(path, "ffmpeg")
    src_fps = reader.get_meta_data().get("fps")
    ok = isinstance(src_fps, (int, float)) and math.isfinite(src_fps) and src_fps > 0
    return iter(reader), (float(src_fps) if ok else None), reader.close


def _resize_crop(frame: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(H, W[, C]) frame -> (height, width, 3) uint8: scale to cover, keep the aspect ratio, center-crop."""
    if frame.ndim == 2:
        frame = frame[:, :, None]
    frame = frame[:, :, :1].repeat(3, axis=2) if frame.shape[2] < 3 else frame[:, :, :3]
    x = torch.tensor(frame, dtype=torch.float32).permute(2, 0, 1)[None]
    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[0, :, top:top + height, left:left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
