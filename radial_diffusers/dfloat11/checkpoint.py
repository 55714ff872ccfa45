"""DF11 checkpoints on disk: the ``dfloat11_config``, reading tensors by name, atomic safetensors writes.

Layout (official ``dfloat11`` 0.5.0, see ``shared/notes/dfloat11.md`` §1.5): a directory of ``*.safetensors`` files
and a ``config.json`` whose ``dfloat11_config`` holds ``version``, ``threads_per_block``, ``bytes_per_thread`` and
``pattern_dict``; or one ``.safetensors`` file (the official single-file mode, whose pattern comes from the caller, or
ours, which carries the ``dfloat11_config`` in its metadata). A loader dispatches on tensor names only: the unit of
module ``M`` is ``M.luts`` ... ``M.split_positions``; everything else is a plain tensor of the model.

Files written here also carry a CRC-32 of every tensor in their metadata (``dfloat11_crc32``), so corruption of our
own checkpoints is detected at load, and each unit file the CRC-32 of the unit's original BF16 weights
(``dfloat11_weights_crc32``), which ``verify="decode"`` compares with the decoded weights; official files have no
checksum and get the structural checks only. The official loader ignores the metadata.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._hub import is_hub_id
from .._io import atomic_path
from .codec import BYTES_PER_THREAD, THREADS_PER_BLOCK

__all__ = ["FORMAT_VERSION", "DF11Config", "Checkpoint", "open_checkpoint", "save_safetensors", "crc32",
           "weights_crc32"]

FORMAT_VERSION = "0.5.0"  # the official release whose layout we write
# The bitstream layout has not changed since 0.2.0 (0.1.x used 256 threads and a different table format).
_SUPPORTED = re.compile(r"^0\.[2-5](\.\d+)?$")
CRC_KEY = "dfloat11_crc32"
UNIT_CRC_KEY = "dfloat11_weights_crc32"  # {unit name: CRC-32 of its original BF16 weights, in stream order}
CONFIG_KEY = "dfloat11_config"
_DTYPES = {"U8": torch.uint8, "I64": torch.int64, "BF16": torch.bfloat16, "F16": torch.float16,
           "F32": torch.float32, "F64": torch.float64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@dataclass
class DF11Config:
    """The ``dfloat11_config`` of a checkpoint."""

    pattern_dict: dict[str, list[str]]
    threads_per_block: int = THREADS_PER_BLOCK
    bytes_per_thread: int = BYTES_PER_THREAD
    version: str = FORMAT_VERSION

    def to_dict(self) -> dict:
        return {"version": self.version, "threads_per_block": [self.threads_per_block],
                "bytes_per_thread": self.bytes_per_thread, "pattern_dict": self.pattern_dict}

    @classmethod
    def from_dict(cls, d, where: str) -> "DF11Config":
        """Parse and check a ``dfloat11_config`` (``where`` names its source in errors)."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: dfloat11_config must be a JSON object, got {type(d).__name__}")
        version = str(d.get("version", ""))
        if not _SUPPORTED.match(version):
            raise ValueError(
                f"{where}: unsupported DFloat11 version {version!r}; this loader reads the 0.2-0.5 format "
                "(official dfloat11 >= 0.2.0). Re-compress the model with radial_diffusers.dfloat11.compress"
            )
        tpb = d.get("threads_per_block", THREADS_PER_BLOCK)
        if isinstance(tpb, (list, tuple)):
            if len(tpb) != 1:
                raise ValueError(f"{where}: threads_per_block must be one number, got {tpb!r}")
            tpb = tpb[0]
        bpt = d.get("bytes_per_thread", BYTES_PER_THREAD)
        if not (isinstance(tpb, int) and not isinstance(tpb, bool) and tpb >= 8 and tpb % 8 == 0):
            raise ValueError(f"{where}: threads_per_block must be a positive multiple of 8, got {tpb!r}")
        if not (isinstance(bpt, int) and not isinstance(bpt, bool) and 4 <= bpt <= 8):
            raise ValueError(f"{where}: bytes_per_thread must be an integer in 4..8, got {bpt!r}")
        pattern = d.get("pattern_dict")
        if not isinstance(pattern, dict) or not pattern or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(a, str) for a in v)
            for k, v in pattern.items()
        ):
            raise ValueError(f"{where}: pattern_dict must map module regexes to lists of Linear paths, got "
                             f"{pattern!r}")
        for regex in pattern:
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"{where}: pattern_dict regex {regex!r} is not a valid regular expression ({exc}): "
                                 "the checkpoint's config is corrupted; fix the regex there or compress the model "
                                 "again") from None
        return cls(pattern_dict={k: list(v) for k, v in pattern.items()}, threads_per_block=tpb,
                   bytes_per_thread=bpt, version=version)


def crc32(t: torch.Tensor) -> int:
    """CRC-32 of a tensor's bytes (CPU, contiguous)."""
    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return zlib.crc32(memoryview(data)) & 0xFFFFFFFF


def weights_crc32(tensors) -> int:
    """CRC-32 of the bytes of ``tensors`` one after the other (a DF11 unit's weights in stream order)."""
    value = 0
    for t in tensors:
        data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        value = zlib.crc32(memoryview(data), value)
    return value & 0xFFFFFFFF


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                     *, with_crc: bool = True) -> Path:
    """Write ``tensors`` to ``path`` atomically (temporary file + rename), with per-tensor CRC-32s in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": "pt", **(metadata or {})}
    if with_crc:
        meta[CRC_KEY] = json.dumps({k: crc32(v) for k, v in tensors.items()}, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


@dataclass
class _Entry:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class Checkpoint:
    """An opened DF11 checkpoint: its config, the model config next to it (if any) and a name -> file index.

    Only the headers are read when it is opened; :meth:`load` reads a tensor's data.
    """

    root: Path
    files: list[Path]
    df11: DF11Config
    model_config: dict | None
    entries: dict[str, _Entry] = field(default_factory=dict)
    crcs: dict[str, int] = field(default_factory=dict)
    unit_crcs: dict[str, int] = field(default_factory=dict)  # unit name -> CRC-32 of its original BF16 weights

    def shape(self, key: str) -> tuple[int, ...]:
        return self.entries[key].shape

    def dtype(self, key: str) -> torch.dtype:
        return self.entries[key].dtype

    def load(self, key: str, *, verify: bool = True) -> torch.Tensor:
        """Read one tensor (CPU); with ``verify`` its CRC-32 is checked when the file carries one."""
        from safetensors import safe_open

        entry = self.entries[key]
        with _readable(entry.file):
            with safe_open(str(entry.file), framework="pt") as f:
                t = f.get_tensor(key)
        if verify and key in self.crcs and crc32(t) != self.crcs[key]:
            raise ValueError(
                f"{entry.file}: tensor {key!r} fails its CRC-32 check: the file is corrupted; download or compress "
                "it again"
            )
        return t


class _readable:
    """Turn safetensors' header/size errors into one clear ``ValueError`` naming the file."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (ValueError, KeyboardInterrupt)):
            return False
        if type(exc).__name__ == "SafetensorError" or isinstance(exc, (OSError, RuntimeError)):
            raise ValueError(f"{self.path}: not a readable safetensors file (truncated or corrupted?): {exc}") from exc
        return False


def _index_file(ckpt: Checkpoint, path: Path) -> None:
    from safetensors import safe_open

    with _readable(path):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for key in f.keys():
                sl = f.get_slice(key)
                dtype = _DTYPES.get(sl.get_dtype())
                if dtype is None:
                    raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {sl.get_dtype()}")
                entry = _Entry(path, tuple(int(d) for d in sl.get_shape()), dtype)
                old = ckpt.entries.get(key)
                if old is not None and (old.shape != entry.shape or old.dtype != entry.dtype):
                    raise ValueError(f"tensor {key!r} appears in {old.file.name} and {path.name} with different "
                                     "shapes or dtypes: the checkpoint is inconsistent")
                ckpt.entries.setdefault(key, entry)
    if CRC_KEY in meta:
        try:
            crcs = json.loads(meta[CRC_KEY])
        except json.JSONDecodeError:
            raise ValueError(f"{path}: corrupted {CRC_KEY} metadata") from None
        for key, value in crcs.items():
            if ckpt.entries.get(key) is not None and ckpt.entries[key].file == path:
                ckpt.crcs[key] = int(value)
    if UNIT_CRC_KEY in meta:
        try:
            unit_crcs = {str(k): int(v) for k, v in json.loads(meta[UNIT_CRC_KEY]).items()}
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            raise ValueError(f"{path}: corrupted {UNIT_CRC_KEY} metadata") from None
        for name, value in unit_crcs.items():
            entry = ckpt.entries.get(f"{name}.encoded_exponent")
            if entry is not None and entry.file == path:
                ckpt.unit_crcs[name] = value


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, allow_patterns=["*.safetensors", "*.json"]))
    except Exception as exc:  # offline, unknown repo, gated
        raise FileNotFoundError(
            f"DF11 checkpoint {repo_id!r} is not a local path and could not be fetched from the Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None



def open_checkpoint(path: str | os.PathLike, pattern: dict[str, list[str]] | None = None) -> Checkpoint:
    """Open a DF11 checkpoint: a directory, a single ``.safetensors`` file or a Hub repo id.

    ``pattern`` supplies the ``pattern_dict`` where the checkpoint has none (official single files); the official
    constants (512 threads, 8 bytes per thread) are assumed then. A checkpoint that carries a ``pattern_dict`` is read
    with it: a different ``pattern`` is a ``ValueError`` (the same one is accepted).
    """
    p = Path(path).expanduser()
    if not p.exists():
        if is_hub_id(path):
            p = _hub_snapshot(path)
        else:
            raise FileNotFoundError(f"DF11 checkpoint {str(path)!r}: no such file or directory")
    model_config = None
    file_config = None
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".safetensors" and f.is_file())
        if not files:
            raise FileNotFoundError(f"{p}: no .safetensors files: not a DF11 checkpoint directory")
        cfg_path = p / "config.json"
        if cfg_path.exists():
            cfg = _read_json(cfg_path)
            file_config = cfg.get(CONFIG_KEY)
            model_config = {k: v for k, v in cfg.items() if k != CONFIG_KEY} or None
        where = str(cfg_path)
        root = p
    else:
        if p.suffix != ".safetensors":
            raise ValueError(f"{p}: a DF11 checkpoint is a directory or a .safetensors file")
        files = [p]
        from safetensors import safe_open

        with _readable(p):
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
        if CONFIG_KEY in meta:
            file_config = json.loads(meta[CONFIG_KEY])
        if "model_config" in meta:
            model_config = json.loads(meta["model_config"])
        where = str(p)
        root = p.parent
    if file_config is None:
        if pattern is None:
            raise ValueError(
                f"{where}: no dfloat11_config found; this is not a DF11 checkpoint, or an official single file "
                "whose pattern must be given (pattern={module regex: [linear paths]})"
            )
        file_config = {"version": FORMAT_VERSION, "pattern_dict": pattern}
    elif pattern is not None:
        own = file_config.get("pattern_dict") if isinstance(file_config, dict) else None
        given = {k: list(v) for k, v in pattern.items()} if isinstance(pattern, dict) else pattern
        if own is not None and own != given:
            raise ValueError(
                f"{where}: the checkpoint carries its own pattern_dict {own!r}, and pattern={pattern!r} differs from it. "
                "The pattern is part of the format (which Linears each unit's stream holds, in which order), so a "
                "checkpoint is always read with its own; pattern= is only for official single files, which carry none"
            )
        if own is None:
            file_config = {**file_config, "pattern_dict": pattern}
    df11 = DF11Config.from_dict(file_config, where)
    if model_config is not None and "_class_name" not in model_config:
        model_config = None  # the official minimal config ({"dfloat11_config", "model_type": "llama"})
    ckpt = Checkpoint(root=root, files=files, df11=df11, model_config=model_config)
    for f in files:
        _index_file(ckpt, f)
    return ckpt
