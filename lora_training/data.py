"""Videos + captions -> an encoded cache (VAE latents, text embeddings, I2V conditions), and the dataset over it.

``build_cache`` runs the pipeline's VAE and encoders once per clip, through the family's training adapter
(:mod:`radial_diffusers.training_adapters`), and writes sharded safetensors plus a ``manifest.json`` describing what
was encoded (model, geometry, fps, text length, the encoders' dtype). Training reads only the cache: the VAE and the
text/image encoders never run in the training step. A cache made for another model, geometry or dtype is refused
with a clear error; unreadable or too-short videos are reported and skipped.

Per sample (``i``: its index in the shard), the adapter's keys: ``i.latents`` (normalised VAE latents
``(C, F', H', W')`` as the pipeline's denoiser sees them), ``i.prompt_embeds`` ``(L, D)``, and what the family adds
(HunyuanVideo ``i.prompt_mask`` and ``i.pooled``; LTX-Video / Mochi ``i.prompt_mask``; Wan I2V ``i.condition``
(first-frame mask + condition latents) and ``i.image_embeds``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from radial_diffusers._io import atomic_write_text

from .video import ClipError, scan_dataset, read_clip

__all__ = ["CacheSpec", "build_cache", "LatentDataset", "collate", "text_kwargs", "pipeline_family",
           "is_image_to_video", "auxiliary_models", "encode_dtype"]

SHARD_SAMPLES = 32
CACHE_VERSION = 1


@dataclass(frozen=True)
class CacheSpec:
    """What a cache was encoded for; a cache is reused only for an identical spec."""

    model: str
    family: str
    i2v: bool
    num_frames: int
    height: int
    width: int
    fps: float | None
    max_sequence_length: int
    version: int = CACHE_VERSION
    data: str = ""  # fingerprint of the clip list (paths, sizes, mtimes, captions): new or edited clips re-encode
    dtype: str = ""  # the VAE's and encoders' dtype (build_cache fills it in): a bf16 cache is not an fp32 one


def pipeline_family(pipe) -> str:
    """The model family's name of a pipeline (by its transformer's class, :func:`radial_diffusers.pipelines.detect_family`)."""
    from radial_diffusers.pipelines import detect_family

    return detect_family(pipe).name


def is_image_to_video(pipe) -> bool:
    from radial_diffusers.pipelines import is_image_to_video as i2v

    return i2v(pipe)


def _auxiliary(pipe) -> dict[str, torch.nn.Module]:
    from radial_diffusers.pipelines import experts

    skip = set(experts(pipe))
    return {n: m for n, m in pipe.components.items() if n not in skip and isinstance(m, torch.nn.Module)}


def auxiliary_models(pipe) -> list[torch.nn.Module]:
    """The pipeline's models other than its transformers (VAE, text and image encoders)."""
    return list(_auxiliary(pipe).values())


def encode_dtype(pipe) -> str:
    """The dtype the VAE and the encoders run in: one name (``"bfloat16"``), or ``name=dtype`` pairs if they differ."""
    dtypes = {}
    for name, m in _auxiliary(pipe).items():
        dtype = getattr(m, "dtype", None) or next((p.dtype for p in m.parameters() if p.is_floating_point()), None)
        dtypes[name] = str(dtype).removeprefix("torch.")
    if len(set(dtypes.values())) == 1:
        return next(iter(dtypes.values()))
    return ",".join(f"{k}={v}" for k, v in sorted(dtypes.items()))


def text_kwargs(adapter, model: str, max_sequence_length: int | None) -> dict:
    """``encode_prompt`` keyword arguments that match how the pipeline encodes prompts at inference: a tiny model's
    call arguments, then ``max_sequence_length`` (the option, else the family's pipeline default)."""
    from radial_diffusers.families import tiny_models

    models = tiny_models()
    kwargs = models[model][1].kwargs() if model in models else {}
    if max_sequence_length is not None:
        kwargs["max_sequence_length"] = max_sequence_length
    kwargs.setdefault("max_sequence_length", adapter.default_text_length())
    return kwargs


def _fingerprint(report) -> str:
    h = hashlib.sha1()
    for clip in report.clips:
        st = Path(clip.video).stat()
        h.update(f"{Path(clip.video).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{clip.caption}\n".encode())
    return h.hexdigest()


def _read_manifest(cache: Path) -> dict | None:
    path = cache / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def build_cache(adapter, spec: CacheSpec, data_dir: str | Path, cache_dir: str | Path, manifest: str | None = None,
                device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Encode every usable clip of ``data_dir`` into ``cache_dir`` (reused when its spec matches) with the family's
    training ``adapter`` (:class:`~radial_diffusers.training_adapters.TrainingAdapter`); returns the cache manifest
    (``samples``, ``skipped`` with reasons, ``spec``).

    Raises ``ValueError`` when the cache folder holds a cache made for another spec (delete it or change
    ``cache_dir``) or when no clip is usable.
    """
    from radial_diffusers.dfloat11.checkpoint import save_safetensors
    from tqdm.auto import tqdm

    pipe = adapter.pipe
    cache = Path(cache_dir)
    report = scan_dataset(data_dir, manifest)
    spec = replace(spec, data=_fingerprint(report), dtype=encode_dtype(pipe))
    existing = _read_manifest(cache)
    if existing is not None:
        if existing.get("spec") == asdict(spec):
            return existing
        old = existing.get("spec") or {}
        diff = [k for k in asdict(spec) if old.get(k) != asdict(spec)[k]]
        what = "the clips changed" if diff == ["data"] else f"it differs in {', '.join(diff)}"
        raise ValueError(f"{cache} holds a cache encoded for another run ({what}); delete it or set cache_dir to a "
                         "new folder")
    skipped = [{"video": v, "reason": r} for v, r in report.skipped]
    encoders = auxiliary_models(pipe)
    for m in encoders:
        m.to(device)
    kwargs = text_kwargs(adapter, spec.model, spec.max_sequence_length)
    samples: list[dict] = []
    shard: dict[str, torch.Tensor] = {}
    shard_id = 0

    def flush():
        nonlocal shard, shard_id
        if shard:
            save_safetensors(cache / f"shard-{shard_id:05d}.safetensors", shard)
            shard, shard_id = {}, shard_id + 1

    for clip in tqdm(report.clips, desc="Encoding clips", unit="clip", disable=not progress):
        try:
            frames = read_clip(clip.video, spec.num_frames, spec.height, spec.width, spec.fps)
        except ClipError as exc:
            skipped.append({"video": str(clip.video), "reason": str(exc)})
            continue
        tensors = {"latents": adapter.encode_video(frames, device),
                   **adapter.encode_text(clip.caption, kwargs, device)}
        if spec.i2v:
            tensors.update(adapter.encode_condition(frames, device))
        index = sum(1 for k in shard if k.endswith(".latents"))
        for key, value in tensors.items():
            shard[f"{index}.{key}"] = value.detach().cpu().contiguous()
        samples.append({"shard": f"shard-{shard_id:05d}.safetensors", "index": index, "video": str(clip.video),
                        "caption": clip.caption})
        if index + 1 == SHARD_SAMPLES:
            flush()
    flush()
    for m in encoders:
        m.to("cpu")
    if not samples:
        reasons = "; ".join(f"{s['video']}: {s['reason']}" for s in skipped[:3])
        raise ValueError(f"no usable clip in {data_dir}: {len(skipped)} skipped ({reasons})")
    result = {"spec": asdict(spec), "samples": samples, "skipped": skipped}
    atomic_write_text(cache / "manifest.json", json.dumps(result, indent=1) + "\n")
    return result


class LatentDataset(torch.utils.data.Dataset):
    """The encoded samples of a cache folder (dicts of CPU tensors, keys as in the module docstring)."""

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir)
        manifest = _read_manifest(self.root)
        if manifest is None:
            raise ValueError(f"{self.root} has no manifest.json: not an encoded cache (run the preprocessing first)")
        self.spec = CacheSpec(**manifest["spec"])
        self.samples = manifest["samples"]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        entry = self.samples[i]
        prefix = f"{entry['index']}."
        with safe_open(str(self.root / entry["shard"]), framework="pt") as f:
            return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """The sample order of an epoch: a permutation that depends only on (seed, epoch), so a resumed run replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def steps_per_epoch(n: int, batch: int, world: int) -> int:
    return max(1, math.ceil(n / (batch * world)))
