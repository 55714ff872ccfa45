"""Launch-config choice for the Triton attention kernels: deterministic, persisted, and safe under CUDA-graph capture.

A launch config is ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` (plus a warp-specialization flag for the Hopper
forward). Different configs sum the softmax in different
orders, so the choice decides the output bits; it is made once per *tuning key* and then kept:

* the key is (GPU model and capability, Triton version, kernel, kernel variant, block size, head_dim, element size,
  shape class), where the shape class buckets batch x heads, sequence length and the layout's widest row to powers
  of two, so one tuning serves every step of a video and neighbouring resolutions;
* on CUDA, with ``RADIAL_TRITON_AUTOTUNE`` not set to ``0`` / ``false`` / ``off`` / ``no``, the first call of a key
  times every candidate that fits (``triton.testing.do_bench``) and writes the winner to a JSON cache file
  (``RADIAL_TRITON_CACHE``, default ``$XDG_CACHE_HOME/radial_diffusers/triton_configs.json``, written atomically
  under a lock file beside it):
  later calls and later processes on the same GPU model and Triton version read it, so two runs launch the same
  kernels and give bitwise equal outputs (processes tuning one key at the same time adopt the entry written first);
* with autotuning off, under the interpreter, and inside CUDA-graph capture (``torch.cuda.graph``, the capture of
  ``torch.compile(mode="reduce-overhead")``), nothing is timed: a config already chosen for the key is used, else
  the fixed default (the first candidate that fits the device), which is remembered for the process but not written
  to the file. Warm up eagerly before capturing (as CUDA graphs need anyway): a process whose first call of a key is
  captured keeps the default while one that ran it eagerly first tunes.

Example:
    >>> from radial_diffusers.attention import triton_tuning
    >>> triton_tuning.shape_class(48, 75_600, 37)
    (64, 131072, 64)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch
import triton
from triton.runtime.errors import OutOfResources

Config = tuple[int, ...]
_OFF = ("0", "false", "off", "no")


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``: CPU tensors, nothing to tune)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune_enabled() -> bool:
    """Whether ``RADIAL_TRITON_AUTOTUNE`` allows timing candidates (default on)."""
    return os.environ.get("RADIAL_TRITON_AUTOTUNE", "1").strip().lower() not in _OFF


def capturing() -> bool:
    """Whether the current CUDA stream is being captured into a CUDA graph (timing would break the capture)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def cache_path() -> Path:
    """The persisted tuning file: ``RADIAL_TRITON_CACHE`` or ``$XDG_CACHE_HOME/radial_diffusers/triton_configs.json``."""
    explicit = os.environ.get("RADIAL_TRITON_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "radial_diffusers" / "triton_configs.json"


def _pow2(n: int) -> int:
    return 1 if n <= 1 else triton.next_power_of_2(int(n))


def shape_class(batch_heads: int, seq_len: int, max_blocks_per_row: int) -> tuple[int, int, int]:
    """Buckets (powers of two) of batch x heads, sequence length and kept blocks per row: calls in one bucket share
    a tuned config."""
    return _pow2(batch_heads), _pow2(seq_len), _pow2(max_blocks_per_row)


def device_kind() -> tuple:
    """What a tuned config depends on besides the shape: the GPU model and capability (``("cpu",)`` without one)."""
    if interpreting() or not torch.cuda.is_available():
        return ("cpu",)
    try:
        return (torch.cuda.get_device_name(), torch.cuda.get_device_capability())
    except (RuntimeError, AssertionError):  # CUDA reported but unusable
        return ("cuda",)


class TuningCache:
    """Chosen configs per key: in memory for the process, and (tuned ones only) in the JSON file at ``path``."""

    def __init__(self) -> None:
        self.memory: dict[tuple, Config] = {}
        self._file: dict[str, list[int]] | None = None
        self._file_path: Path | None = None

    @staticmethod
    def file_key(key: tuple) -> str:
        return "|".join(map(str, (triton.__version__, *key)))

    def _load(self) -> dict[str, list[int]]:
        path = cache_path()
        if self._file is None or self._file_path != path:
            self._file_path, self._file = path, {}
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):  # entries of another shape (a hand edit, an older format) are tuned again
                    self._file = {k: v for k, v in data.items() if _valid_entry(v)}
            except (OSError, ValueError):  # no file yet, or unreadable: tune again (and rewrite it)
                pass
        return self._file

    def persisted(self, key: tuple) -> Config | None:
        cfg = self._load().get(self.file_key(key))
        return None if cfg is None else tuple(cfg)

    def reload(self) -> None:
        """Forget the file's contents read so far (another process may have written since)."""
        self._file = None

    def persist(self, key: tuple, cfg: Config, offered: Sequence[Config] = ()) -> Config:
        """Merge ``key -> cfg`` into the file (re-read first, so entries of other processes survive) atomically, and
        return the config the file holds for ``key``: an entry another process wrote first wins (if it is one of
        the ``offered`` configs), so processes that tuned the same key at the same time all launch one config."""
        path = cache_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(path):  # the read-merge-write below is one step for every process that persists
                self.reload()
                entries = dict(self._load())
                first = entries.get(self.file_key(key))
                if first is not None and tuple(first) in offered:
                    return tuple(first)
                entries[self.file_key(key)] = list(cfg)
                _write_atomic(path, entries)
        except OSError as exc:  # a read-only home: keep the choice for this process, say why it is not kept
            import warnings

            warnings.warn(f"could not write the Triton tuning cache {path} ({exc}); set RADIAL_TRITON_CACHE to a "
                          "writable file to keep tuned configs across processes", stacklevel=3)
            return cfg
        self._file = entries
        return cfg


def _valid_entry(value: object) -> bool:
    """A persisted config: 4 or 5 positive ints (``BLOCK_M, BLOCK_N, num_warps, num_stages[, warp_specialize]``)."""
    return (isinstance(value, list) and len(value) in (4, 5)
            and all(type(x) is int and x >= 0 for x in value) and all(x > 0 for x in value[:4]))


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path.lock`` (POSIX ``flock``; elsewhere none: the write stays atomic)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomic(path: Path, entries: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


CACHE = TuningCache()


def pick(kind: str, launch: Callable[[Config], None], candidates: Sequence[Config], key: tuple,
         *, on_cuda: bool) -> Config:
    """Launch ``launch`` with the config chosen for ``key`` (see the module docstring) and return it.

    ``candidates`` are in order of preference (the first is the fixed default); a candidate that raises
    ``OutOfResources`` does not fit this device and is skipped. ``on_cuda`` is False under the interpreter.
    """
    cfg = CACHE.memory.get(key)
    if cfg is not None:
        launch(cfg)
        return cfg
    capture = on_cuda and capturing()
    tune = on_cuda and autotune_enabled() and not capture and len(candidates) > 1
    if on_cuda:  # a file read, no CUDA work: safe under capture too
        if tune:
            CACHE.reload()  # another process may have tuned this key since the file was read
        cfg = CACHE.persisted(key)
        if cfg is not None and cfg in candidates:
            launch(cfg)
            CACHE.memory[key] = cfg
            return cfg
    best: tuple[float, Config] | None = None
    for candidate in candidates:
        try:
            if tune:
                ms = triton.testing.do_bench(lambda: launch(candidate), warmup=5, rep=20)
            else:
                launch(candidate)
                ms = 0.0
        except OutOfResources:
            continue
        if best is None or ms < best[0]:
            best = (ms, candidate)
        if not tune:
            break
    if best is None:
        raise RuntimeError(f"no Triton {kind} config fits this device for {key}")
    chosen = best[1]
    if tune:
        chosen = CACHE.persist(key, chosen, candidates)
        launch(chosen)
    CACHE.memory[key] = chosen
    return chosen
