"""Atomic file writes: write to a temporary file in the target folder, then rename over the target (folders:
build them complete next to the target, then :func:`replace_dir`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, NotWritableError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask() can only be read by setting it


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically, on error it is removed.

    Example:
        >>> with atomic_path("report.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600, and writers that recreate the file (safetensors) keep that: set the usual mode last
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_uint8(frames) -> "np.ndarray":
    """Video frames as uint8: float frames in [0, 1] (a pipeline's ``output_type="np"``) rounded, uint8 kept."""
    import numpy as np

    arr = np.asarray(frames)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_mp4(frames, path: str | Path, fps: int) -> Path:
    """Write ``(F, H, W, 3)`` frames (uint8, or float in [0, 1]) as an H.264 mp4, atomically."""
    import imageio

    with atomic_path(path) as tmp:
        imageio.mimwrite(tmp, list(to_uint8(frames)), fps=fps, codec="libx264", quality=8, macro_block_size=1)
    return Path(path)


def write_mp4_with_audio(frames, path: str | Path, fps: int, audio, sample_rate: int) -> Path:
    """Write ``(F, H, W, 3)`` frames as :func:`write_mp4` does, with ``audio`` ``(channels, samples)`` (a float
    waveform in [-1, 1], numpy or torch; 1-D: mono) at ``sample_rate`` Hz muxed in as AAC, atomically. The muxing
    runs imageio-ffmpeg's own ffmpeg binary; the video keeps its length whatever the audio's."""
    import subprocess
    import wave

    import imageio_ffmpeg
    import numpy as np

    samples = np.asarray(audio.detach().float().cpu() if hasattr(audio, "detach") else audio, dtype=np.float32)
    if samples.ndim == 1:  # mono
        samples = samples[None]
    if samples.ndim != 2 or not 1 <= samples.shape[0] <= 8 or samples.shape[1] == 0:
        raise ValueError(f"audio must be (channels, samples) with 1-8 channels and some samples, got shape "
                         f"{samples.shape} (a (samples, channels) waveform: pass its transpose)")
    samples = np.nan_to_num(samples, nan=0.0)  # a NaN sample would be a full-scale click
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").T  # (samples, channels), interleaved
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as folder:
        video, sound = Path(folder) / "video.mp4", Path(folder) / "audio.wav"
        write_mp4(frames, video, fps)
        with wave.open(str(sound), "wb") as w:
            w.setnchannels(pcm.shape[1])
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(pcm.tobytes())
        with atomic_path(path) as tmp:
            # -nostdin: ffmpeg otherwise reads the terminal, which stops a background job (tty input)
            cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-i", str(video), "-i",
                   str(sound), "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(tmp)]
            done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise RuntimeError(f"ffmpeg could not mux the audio into {path}: {done.stderr.strip()[-500:]}")
    return path


def export_video(frames, path: str | Path, fps: int, audio=None, sample_rate: int | None = None) -> Path:
    """Write a pipeline's video ``(F, H, W, 3)`` (uint8, or float in [0, 1]: ``output_type="np"``) as an H.264 mp4,
    atomically; ``audio`` ``(channels, samples)`` in [-1, 1] at ``sample_rate`` Hz (LTX-2's ``audio[0]`` and
    ``pipe.vocoder.config.output_sampling_rate``) is muxed in as AAC. Needs no PyAV: imageio-ffmpeg's ffmpeg.

    Example:
        >>> video, audio = pipe(prompt, output_type="np", return_dict=False)  # doctest: +SKIP
        >>> rd.export_video(video[0], "out.mp4", 24, audio[0], pipe.vocoder.config.output_sampling_rate)  # doctest: +SKIP
    """
    if audio is None:
        return write_mp4(frames, path, fps)
    if not sample_rate:
        raise ValueError("export_video: audio needs its sample_rate (LTX-2: pipe.vocoder.config.output_sampling_rate)")
    return write_mp4_with_audio(frames, path, fps, audio, sample_rate)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def replace_dir(src: str | Path, dest: str | Path) -> None:
    """Move the complete folder ``src`` to ``dest`` (same filesystem). An existing ``dest`` is renamed aside to
    ``.<name>.old`` first and removed last, so a crash in between leaves it there instead of losing it; ``src`` takes
    its permission bits (an empty folder made for the output keeps its mode, setgid included)."""
    src, dest = Path(src), Path(dest)
    if not dest.exists():
        os.replace(src, dest)
        return
    shutil.copymode(dest, src)
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dest, old)
    os.replace(src, dest)
    shutil.rmtree(old, ignore_errors=True)


def taken(path: str | Path) -> bool:
    """Whether an output folder ``path`` is taken: it exists and is not an empty folder (an empty one, e.g. made by
    ``tempfile.TemporaryDirectory``, is written into as a new one is, as Diffusers' ``save_pretrained`` does)."""
    path = Path(path)
    return path.exists() and not (path.is_dir() and not any(path.iterdir()))


def refuse_replacing(out: str | Path, keep: str | Path, what: str, flag: str = "") -> None:
    """Raise :class:`~radial_diffusers.errors.ConfigError` when replacing the folder ``out`` would delete ``keep``
    (``out`` is it or holds it); ``what`` names ``keep`` in the message, ``flag`` the option that gave ``out``."""
    target, kept = Path(out).resolve(), Path(keep).resolve()
    if target == kept or target in kept.parents:
        raise ConfigError(f"{flag + ' ' if flag else ''}{out} is {what} or contains it ({kept}), which replacing it "
                          "would delete; choose another output folder")


def check_replaceable(out: str | Path, marker: str, what: str, flag: str = "", option: str = "--overwrite",
                      key: str | None = None) -> None:
    """Raise :class:`~radial_diffusers.errors.ConfigError` unless the existing ``out`` is a folder that ``option``
    (``--overwrite`` / ``overwrite=True``) may replace: an empty folder or an earlier output of the kind (it holds
    ``marker``, a JSON object with ``key`` where given: every saved model has a ``config.json``, a DF11 checkpoint's
    has ``dfloat11_config``), never a file, the current folder or a folder above it, or a folder of other files.
    ``what`` names the kind, ``flag`` the option that gave ``out``."""
    import json

    out = Path(out)
    named = f"{flag} {out}" if flag else str(out)
    refuse_replacing(out, Path.cwd(), "the current folder", flag)
    if not out.is_dir():
        raise ConfigError(f"{named} exists and is not a folder; choose a new folder")
    if not any(out.iterdir()):
        return
    ours = (out / marker).is_file()
    if ours and key is not None:
        try:
            ours = key in json.loads((out / marker).read_text())
        except (OSError, ValueError, TypeError):
            ours = False
    if not ours:
        why = f"no {marker}" if key is None or not (out / marker).is_file() else f"its {marker} has no {key}"
        raise ConfigError(f"{named} holds other files (it is not a {what}: {why}), which {option} would delete; "
                          "choose a new folder, or empty that one first")


def _probe_dir(folder: Path) -> str | None:
    """Why no file can be created in the existing folder ``folder`` (``None``: it can). Creates and removes a
    probe file: permission bits alone miss read-only mounts, immutable folders and root's rights."""
    try:
        fd, name = tempfile.mkstemp(prefix=".write-check-", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    os.unlink(name)
    return None


def check_writable(path: str | Path, flag: str) -> Path:
    """Check, before any work starts, that the output ``path`` (a file or folder, existing or not) can be written.

    The nearest existing folder at or above ``path``'s parent must accept new files (missing folders are created
    there, and atomic writes put a temporary file next to the target); an existing folder ``path`` must accept new
    files too. ``flag`` names the option in the message (``"--out"``, ``"output_dir"``).

    Raises:
        NotWritableError: one line, e.g. ``--out /data/v.mp4: cannot write in /data (Read-only file system); choose
            another location or make /data writable``.
    """
    path = Path(path).expanduser()
    target = path.absolute()
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotWritableError(f"{flag} {path}: {folder} is a file, not a folder; choose another location")
    checks = [folder]
    if target.is_dir():
        checks.append(target)
    for where in checks:
        why = _probe_dir(where)
        if why is not None:
            raise NotWritableError(f"{flag} {path}: cannot write in {where} ({why}); choose another location or "
                                   f"make {where} writable")
    return path
