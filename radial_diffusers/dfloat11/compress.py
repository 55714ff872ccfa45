"""Compress a Diffusers transformer into a DF11 checkpoint (official directory layout), block by block.

The source is a model in memory or a saved model (local folder or Hub id, a pipeline or its transformer). A saved
model is streamed from its safetensors shards: the model is built on the meta device from its config to find the
blocks, and each worker reads only the tensors of the block it encodes, so peak memory is about ``workers`` blocks
whatever the model size. Blocks are encoded in parallel threads (the numpy codec releases the GIL).

Output (``save_dir``): ``<block>.safetensors`` per unit (``blocks_7.safetensors``: the six DF11 buffers plus the
block's other tensors: biases, norms, modulation tables), ``diffusion_pytorch_model.safetensors`` (everything outside
the units) and ``config.json`` = the model's Diffusers config plus ``dfloat11_config``. The directory appears
atomically: it is assembled under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._hub import is_hub_id
from .._io import atomic_write_text, check_replaceable, refuse_replacing, replace_dir, taken
from .checkpoint import (CONFIG_KEY, FORMAT_VERSION, UNIT_CRC_KEY, DF11Config, _readable, save_safetensors,
                         weights_crc32)
from .codec import decode, encode
from .patterns import UnitSpec, default_pattern, find_units, has_peft_layers

__all__ = ["compress", "CompressResult"]

REST_FILE = "diffusion_pytorch_model.safetensors"  # diffusers.utils.SAFETENSORS_WEIGHTS_NAME


@dataclass
class CompressResult:
    """What :func:`compress` wrote."""

    path: Path
    units: int
    original_bytes: int  # BF16 bytes of the compressed Linear weights
    compressed_bytes: int  # their DF11 bytes (six buffers per unit)
    seconds: float

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / max(self.original_bytes, 1)


class _ModuleSource:
    """Tensors of a model in memory."""

    def __init__(self, model: nn.Module):
        from .loading import is_dfloat11

        if is_dfloat11(model):
            raise ValueError(f"{type(model).__name__} already holds DF11 weights; save its checkpoint directory "
                             "instead, or decompress(model) first")
        if has_peft_layers(model):
            raise ValueError("the model has PEFT (LoRA) layers: fuse or unload them first (pipe.fuse_lora(); "
                             "pipe.unload_lora_weights()), or compress the base model and keep the LoRA as an adapter")
        self.model = model
        self.state = model.state_dict()
        meta = [k for k, v in self.state.items() if v.device.type == "meta"]
        if meta:
            raise ValueError(f"the model has weights on the meta device (e.g. {meta[:3]}): load its weights first")
        self.config = json.loads(model.to_json_string()) if hasattr(model, "to_json_string") else None

    def keys(self) -> list[str]:
        return list(self.state)

    def get(self, key: str) -> torch.Tensor:
        return self.state[key].detach().cpu()

    def is_bf16(self, key: str) -> bool:
        return self.state[key].dtype == torch.bfloat16


def _variants(root: Path) -> list[str]:
    """The variants (``fp16`` ...) of the Diffusers safetensors weights in ``root``: ``<name>.<variant>.safetensors``,
    its shards ``<name>.<variant>-00001-of-00003.safetensors`` and index ``<name>.safetensors.index.<variant>.json``."""
    from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME

    stem = SAFETENSORS_WEIGHTS_NAME.removesuffix(".safetensors")
    weights = re.compile(rf"{re.escape(stem)}\.([^.]+?)(?:-\d+-of-\d+)?\.safetensors")
    index = re.compile(rf"{re.escape(SAFE_WEIGHTS_INDEX_NAME.removesuffix('.json'))}\.([^.]+)\.json")
    found = {m.group(1) for f in root.iterdir() for m in (weights.fullmatch(f.name), index.fullmatch(f.name)) if m}
    return sorted(found)


def _weight_files(root: Path, variant: str | None) -> list[Path]:
    """The safetensors files ``from_pretrained(root, variant=variant)`` reads: the files of the index's
    ``weight_map`` if the index exists, else the single weights file. Other files (other variants) are ignored."""
    from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME, _add_variant

    index = root / _add_variant(SAFE_WEIGHTS_INDEX_NAME, variant)
    single = root / _add_variant(SAFETENSORS_WEIGHTS_NAME, variant)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{index}: not a valid safetensors index (no weight_map: {type(exc).__name__}); "
                             "save the model again") from None
        files = [root / name for name in names]
        lost = [f.name for f in files if not f.is_file()]
        if lost:
            raise FileNotFoundError(f"{index} lists shards that are missing: {lost[:3]}; download or save the model "
                                    "again")
        return files
    if single.is_file():
        return [single]
    found = _variants(root)
    what = f"{single.name} (or {index.name})"
    if variant is None and found:
        raise FileNotFoundError(f"{root}: no {what}, only variant weights {found}: pass variant={found[0]!r} "
                                f"(CLI: --variant {found[0]}) to compress those")
    raise FileNotFoundError(f"{root}: no {what} to compress" + (f"; variants found: {found}" if found else ""))


class _ShardSource:
    """Tensors of a saved Diffusers model, read one at a time from the safetensors files ``from_pretrained`` would
    read (see :func:`_weight_files`)."""

    def __init__(self, path: str | os.PathLike, subfolder: str | None, variant: str | None = None):
        from safetensors import safe_open

        from .loading import empty_model

        root = _resolve_model_dir(path, subfolder)
        self.root = root
        self.model = empty_model(str(root))
        self.config = json.loads(self.model.to_json_string())
        self.files: dict[str, Path] = {}
        for shard in _weight_files(root, variant):
            with _readable(shard), safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    self.files.setdefault(key, shard)
        missing = [k for k in self.model.state_dict() if k not in self.files]
        if missing:
            raise ValueError(f"{root}: the shards lack {len(missing)} weights of {type(self.model).__name__}, e.g. "
                             f"{missing[:3]} (a legacy checkpoint layout? load it with from_pretrained and pass "
                             "the model instead)")

    def keys(self) -> list[str]:
        return [k for k in self.model.state_dict() if k in self.files]

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with _readable(self.files[key]), safe_open(str(self.files[key]), framework="pt") as f:
            return f.get_tensor(key)

    def is_bf16(self, key: str) -> bool:
        """From the shard's header: no tensor is read."""
        from safetensors import safe_open

        with _readable(self.files[key]), safe_open(str(self.files[key]), framework="pt") as f:
            return f.get_slice(key).get_dtype() == "BF16"


def _resolve_model_dir(path: str | os.PathLike, subfolder: str | None) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        if not is_hub_id(path):
            raise FileNotFoundError(f"model {str(path)!r}: no such directory")
        try:
            from huggingface_hub import snapshot_download

            sub = subfolder or "transformer"
            # only the transformer (or a bare model repo's root files): fnmatch's "*" would cross "/" and fetch the
            # text encoders and the VAE too
            p = Path(snapshot_download(repo_id=path, allow_patterns=[
                f"{sub}/*", "config.json", "model_index.json", "diffusion_pytorch_model*.safetensors",
                "diffusion_pytorch_model.safetensors.index*.json"]))  # with the variants' indexes
        except Exception as exc:
            raise FileNotFoundError(f"model {path!r} is not a local path and could not be fetched from the Hub "
                                    f"({type(exc).__name__})") from None
    if subfolder:
        p = p / subfolder
    elif (p / "model_index.json").exists() and (p / "transformer").is_dir():
        p = p / "transformer"
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{p}: no config.json (give a Diffusers model folder, or a pipeline folder with a "
                                "transformer/ subfolder)")
    return p


def _keep_fp32(model: nn.Module, key: str) -> bool:
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    parts = key.split(".")
    return any(m in parts for m in keep)


def _prepare(key: str, t: torch.Tensor, model: nn.Module, cast: bool) -> torch.Tensor:
    """A non-unit tensor as it is written: as is, or with ``cast`` BF16 (float32 for ``_keep_in_fp32_modules``)."""
    if not cast or not t.is_floating_point():
        return t
    return t.float() if _keep_fp32(model, key) else t.to(torch.bfloat16)


def _check_bf16(src, units: list[UnitSpec]) -> None:
    """Refuse a non-BF16 unit weight before any work starts (``cast_to_bf16`` not given)."""
    key = next((k for u in units for k in u.weight_keys() if not src.is_bf16(k)), None)
    if key is None:
        return
    raise ValueError(
        f"{key} is {src.get(key).dtype}, and DF11 is a BF16 format (it entropy-codes the 8-bit exponent of each BF16 "
        "weight and keeps sign and mantissa as they are), so only BF16 weights compress losslessly. Pass "
        "cast_to_bf16=True (CLI: --cast-bf16) to round the weights to BF16 first, as loading with "
        "torch_dtype=torch.bfloat16 does: each weight keeps 8 significant bits (FP32 has 24, FP16 11; "
        "_keep_in_fp32_modules stay FP32), and the DF11 checkpoint is bit-exact to that BF16 copy, not to "
        "the original weights"
    )


def _unit_weights(src, unit: UnitSpec) -> list[torch.Tensor]:
    """The unit's weights as BF16 (non-BF16 ones were refused by :func:`_check_bf16` unless casting)."""
    out = []
    for key in unit.weight_keys():
        w = src.get(key)
        if w.dtype != torch.bfloat16:
            if not w.is_floating_point():
                raise ValueError(f"{key} is {w.dtype}, not a floating-point weight")
            w = w.to(torch.bfloat16)
        out.append(w)
    return out


def _check_file_names(units: list[UnitSpec]) -> None:
    """Refuse units whose file names (``name.replace('.', '_')``) coincide, with each other or with the file of the
    non-unit tensors: one file would silently overwrite the other."""
    owner: dict[str, str] = {REST_FILE: "(the tensors outside the units)"}
    for unit in units:
        other = owner.setdefault(unit.file_name, unit.name)
        if other != unit.name:
            raise ValueError(f"DF11 units {other!r} and {unit.name!r} would both be written to {unit.file_name} (the "
                             "official layout names a unit's file after its module name with '.' replaced by '_'): "
                             "use a pattern that does not select both, or rename the modules")


def compress(
    model_or_path: nn.Module | str | os.PathLike,
    save_dir: str | os.PathLike,
    pattern: dict[str, list[str]] | None = None,
    *,
    subfolder: str | None = None,
    variant: str | None = None,
    cast_to_bf16: bool = False,
    workers: int | None = None,
    overwrite: bool = False,
    verify: bool = True,
    progress: bool = True,
) -> CompressResult:
    """Losslessly compress a transformer's block Linears to DF11 and write the official directory layout.

    Args:
        model_or_path: a model in memory (BF16 weights), or a local folder / Hub id of a saved model or pipeline
            (streamed from its shards; ``subfolder`` picks the model inside a pipeline, default ``transformer``).
            The weight files are the ones ``from_pretrained`` reads: ``diffusion_pytorch_model.safetensors`` or the
            shards its ``.index.json`` lists; with ``variant`` (e.g. ``"fp16"``), those of that variant
            (``diffusion_pytorch_model.fp16.safetensors`` ...). A folder with only variant weights needs ``variant``.
        save_dir: output directory (must not exist or be empty unless ``overwrite``; never the source folder or a folder
            containing it).
        pattern: ``{module regex: [Linear paths]}``; default: :func:`default_pattern` (Wan2.1, HunyuanVideo).
        cast_to_bf16: cast FP16/FP32 sources to BF16 first (``_keep_in_fp32_modules`` stay FP32, as Diffusers loads
            them); without it a non-BF16 weight is an error. The output is lossless relative to that cast.
        workers: parallel encoding threads (default ``min(4, cpu_count)``; each holds about one block).
        verify: decode every unit after encoding and compare bit for bit.
        progress: show a progress bar.

    Each unit file records the CRC-32 of the unit's BF16 weights in its metadata (``load_dfloat11(...,
    verify="decode")`` compares it with the decoded weights).

    Raises:
        ValueError: before anything is written, for a bad pattern, non-BF16 weights (without ``cast_to_bf16``), two
            units with the same file name, ``save_dir`` that is or contains the source, or an unreadable source
            file (named); ``FileExistsError`` / ``FileNotFoundError`` for the output / missing source weights.

    Returns:
        A :class:`CompressResult` (path, unit count, BF16 and DF11 bytes of the compressed weights, seconds).

    Example:
        >>> from radial_diffusers.tiny import load_tiny                          # doctest: +SKIP
        >>> t = load_tiny("tiny-wan").transformer.to(torch.bfloat16)             # doctest: +SKIP
        >>> compress(t, "wan-df11").ratio                                        # doctest: +SKIP
        0.73...
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    save_dir = Path(save_dir).expanduser()
    if taken(save_dir) and not overwrite:
        raise FileExistsError(f"{save_dir} exists; choose a new directory or pass overwrite=True (CLI: --overwrite)")
    if save_dir.exists() and not save_dir.is_dir():
        raise FileExistsError(f"{save_dir} exists and is not a directory")
    if not isinstance(model_or_path, nn.Module) and Path(model_or_path).expanduser().exists():
        local = Path(model_or_path).expanduser()  # a model folder, or a pipeline's and the model in it
        inner = [local / (subfolder or "transformer")] if (local / "model_index.json").is_file() else []
        for source in (local, *inner):
            refuse_replacing(save_dir, source, "the source model folder")
    if save_dir.exists():  # overwrite=True replaces an earlier DF11 output or an empty folder, nothing else
        check_replaceable(save_dir, "config.json", "DF11 checkpoint folder", option="overwrite=True",
                          key=CONFIG_KEY)
    save_dir = save_dir.resolve()  # "sub/.." and the like: the temporary folder is made beside the real one
    if variant is not None and (not isinstance(variant, str) or not variant):
        raise ValueError(f"variant must be a non-empty string such as 'fp16', got {variant!r}")
    if isinstance(model_or_path, nn.Module):
        if variant is not None:
            raise ValueError("variant= selects the weight files of a saved model; a model in memory has none (pass "
                             "the folder, or load it with from_pretrained(..., variant=...) first)")
        src = _ModuleSource(model_or_path)
    else:
        src = _ShardSource(model_or_path, subfolder, variant)
        refuse_replacing(save_dir, src.root, "the source model folder")  # e.g. the pipeline root
    model = src.model
    pattern = default_pattern(model) if pattern is None else pattern
    units = find_units(model, pattern)
    _check_file_names(units)
    if not cast_to_bf16:
        _check_bf16(src, units)
    cfg = DF11Config(pattern_dict={k: list(v) for k, v in pattern.items()}, version=FORMAT_VERSION)
    workers = max(1, int(workers) if workers is not None else min(4, os.cpu_count() or 1))

    unit_keys = {k for u in units for k in u.weight_keys()}
    by_unit: dict[str, list[str]] = {u.name: [] for u in units}
    rest: list[str] = []
    for key in src.keys():
        if key in unit_keys:
            continue
        owner = next((u.name for u in units if key.startswith(u.name + ".")), None)
        (by_unit[owner] if owner is not None else rest).append(key)

    save_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = save_dir.parent / f".{save_dir.name}.partial-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    sizes: list[tuple[int, int]] = []
    meta = {"dfloat11_writer": "radial_diffusers", "dfloat11_version": FORMAT_VERSION}

    def work(unit: UnitSpec) -> tuple[int, int]:
        weights = _unit_weights(src, unit)
        unit_meta = {**meta, UNIT_CRC_KEY: json.dumps({unit.name: weights_crc32(weights)})}
        packed = encode(weights)
        if verify:
            for w, d in zip(weights, decode(packed)):
                if not torch.equal(w.contiguous().view(torch.int16), d.view(torch.int16)):
                    raise RuntimeError(f"internal error: DF11 round trip of {unit.name} is not bit-exact")
        tensors = {f"{unit.name}.{b}": t for b, t in packed.buffers().items()}
        for key in by_unit[unit.name]:
            tensors[key] = _prepare(key, src.get(key), model, cast_to_bf16)
        save_safetensors(tmp / unit.file_name, tensors, unit_meta)
        return packed.original_nbytes, packed.nbytes

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with tqdm(total=len(units) + 1, desc="DF11 compress", unit="block", disable=not progress) as bar:
            for future in as_completed([pool.submit(work, unit) for unit in units]):
                sizes.append(future.result())
                bar.update(1)
            pool.shutdown()
            save_safetensors(tmp / REST_FILE, {k: _prepare(k, src.get(k), model, cast_to_bf16) for k in rest}, meta)
            config = dict(src.config or {})
            config[CONFIG_KEY] = cfg.to_dict()
            atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
            bar.update(1)
        replace_dir(tmp, save_dir)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # stop queued blocks; running ones finish, then clean up
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CompressResult(save_dir, len(units), sum(a for a, _ in sizes), sum(b for _, b in sizes),
                          time.perf_counter() - t0)

