"""Loading video pipelines and telling what they are: one way, through the model-family registry.

* :func:`model_source` — is a model name a built-in tiny model, a local folder or a Hub id (no loading);
* :func:`load_pipeline` — a pipeline from any of the three, optionally with DF11 transformer weights;
* :func:`detect_family` — the :class:`~radial_diffusers.families.ModelFamily` of a pipeline or transformer, by class;
* :func:`latent_geometry` — the token grid ``(F', H', W')`` a call at ``frames x height x width`` attends over;
* :func:`empty_model` — a Diffusers model built from its config on the meta device.

Used by the CLI and by ``lora_training``; nothing here imports either.

Example:
    >>> from radial_diffusers.pipelines import load_pipeline, detect_family, latent_geometry
    >>> pipe = load_pipeline("tiny-wan")
    >>> detect_family(pipe).name, latent_geometry(pipe, 33, 64, 64)
    ('wan', (9, 4, 4))
"""

from __future__ import annotations

import inspect
from pathlib import Path

from ._empty import empty_model
from ._hub import is_cached, is_hub_id, looks_like_path, not_cached_reason
from .errors import ModelLoadError, UnsupportedModelError, first_sentences
from .families import ModelFamily, family_of, supported_summary, tiny_models

__all__ = ["model_source", "load_pipeline", "detect_family", "is_image_to_video", "latent_geometry", "vae_compression",
           "empty_model", "tiny_names"]


def tiny_names() -> tuple[str, ...]:
    """The names of every registered family's tiny pipelines (``"tiny-wan"``, ...)."""
    return tuple(tiny_models())


def model_source(name: str) -> str:
    """``"tiny"``, ``"local"`` or ``"hub"`` for a model name, without loading anything.

    Raises:
        ModelLoadError: a path that does not exist, or a name that is neither a tiny model, a folder nor a Hub id.
    """
    tiny = tiny_names()
    if name in tiny:
        return "tiny"
    if Path(name).expanduser().exists():
        return "local"
    if looks_like_path(name):
        raise ModelLoadError(f"model path {name!r} does not exist: give an existing local pipeline directory, a hub "
                             f"id (org/name), or one of {', '.join(tiny)}")
    if name.startswith("tiny-") or not is_hub_id(name):
        raise ModelLoadError(f"unknown model {name!r}: give a hub id (org/name), a local pipeline directory, or one "
                             f"of {', '.join(tiny)}")
    return "hub"


def _load_dfloat11(model, path: str):
    from .dfloat11 import load_dfloat11

    try:
        return load_dfloat11(model, path, subfolder="transformer" if isinstance(model, str) else None)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise ModelLoadError(f"DF11 checkpoint {path}: {exc}") from None


def load_pipeline(name: str, dtype=None, *, dfloat11: str | None = None, seed: int = 0):
    """A Diffusers pipeline from a tiny model name, a local folder or a Hub id (:func:`model_source`).

    Args:
        name: ``"tiny-wan"`` (any :func:`tiny_names`), a local pipeline folder, or a Hub id.
        dtype: the torch dtype to load in (tiny models are cast as ``from_pretrained(dtype=...)`` would: modules the
            model keeps in float32 stay float32); ``None``: float32 for tiny models, the checkpoint's otherwise.
        dfloat11: a DF11 checkpoint (folder or Hub id) for the transformer: its weights are BF16 decoded per block,
            and the original transformer weights are never read.
        seed: the random weights of a tiny model (a real checkpoint ignores it).

    Raises:
        ModelLoadError: a missing path, a Hub id that is not cached offline, an unreadable checkpoint (one line).
    """
    kind = model_source(name)
    if kind == "tiny":
        from .tiny import load_tiny

        pipe = load_tiny(name, seed, dtype=dtype)
        if dfloat11 is not None:
            # the DF11 checkpoint brings every transformer tensor (BF16, fp32 where the model keeps fp32)
            _load_dfloat11(pipe.transformer, dfloat11)
        return pipe
    transformer = {"transformer": _load_dfloat11(name, dfloat11)} if dfloat11 is not None else {}
    from diffusers import DiffusionPipeline

    try:  # Diffusers >= 0.42 takes ``dtype`` (``torch_dtype`` is deprecated); older ones only ``torch_dtype``
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401

        dtype_kwarg = {"dtype": dtype} if dtype is not None else {}
    except ImportError:  # pragma: no cover
        dtype_kwarg = {"torch_dtype": dtype} if dtype is not None else {}
    try:
        return DiffusionPipeline.from_pretrained(name, **dtype_kwarg, **transformer)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # OSError, huggingface_hub errors, bad configs
        if kind == "hub" and not is_cached(name, "model_index.json"):
            raise ModelLoadError(f"could not load model {name}: {not_cached_reason(name)}, or one of "
                                 f"{', '.join(tiny_names())}") from None
        first = first_sentences(str(exc).strip().removeprefix(f"Cannot load model {name}: ")) or type(exc).__name__
        raise ModelLoadError(f"could not load model {name}: {first}") from None


def detect_family(pipe_or_transformer) -> ModelFamily:
    """The registry entry of a pipeline (by its ``transformer``'s class) or of a transformer.

    Raises:
        UnsupportedModelError: the class has no entry (the message lists the supported ones); nothing is changed.
    """
    import torch

    if isinstance(pipe_or_transformer, torch.nn.Module):
        return family_of(pipe_or_transformer)
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if transformer is None:
        raise UnsupportedModelError(f"{type(pipe_or_transformer).__name__} has no transformer; supported: "
                                    f"{supported_summary()}")
    try:
        return family_of(transformer)
    except UnsupportedModelError:
        raise UnsupportedModelError(
            f"{type(pipe_or_transformer).__name__} (transformer {type(transformer).__name__}) is not supported; "
            f"supported: {supported_summary()}"
        ) from None


def is_image_to_video(pipe) -> bool:
    """Whether the pipeline's ``__call__`` takes an ``image`` (image-to-video)."""
    return "image" in inspect.signature(pipe.__call__).parameters


def latent_geometry(pipe, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The token grid ``(F', H', W')`` of a ``frames x height x width`` call: the VAE's compression (the pipeline's
    ``vae_scale_factor_temporal`` / ``_spatial``, or LTX's ``vae_temporal`` / ``vae_spatial_compression_ratio``, else
    the family's) and the transformer's patch size applied.

    Example:
        >>> latent_geometry(load_pipeline("tiny-hunyuan"), 33, 64, 64)  # doctest: +SKIP
        (9, 8, 8)
    """
    family = detect_family(pipe)
    pt, ph, pw = family.patch_size(pipe.transformer.config)
    st, ss = vae_compression(pipe, family)
    return ((frames - 1) // st + 1) // pt, height // ss // ph, width // ss // pw


def vae_compression(pipe, family: ModelFamily | None = None) -> tuple[int, int]:
    """``(temporal, spatial)`` compression of the pipeline's VAE, as the pipeline itself reads it (the attribute
    names differ per family), else the family's registry values (``family``: the pipeline's, if known)."""
    family = family or detect_family(pipe)
    st = _first_attr(pipe, ("vae_scale_factor_temporal", "vae_temporal_compression_ratio",
                            "vae_temporal_scale_factor")) or family.vae_temporal
    ss = _first_attr(pipe, ("vae_scale_factor_spatial", "vae_spatial_compression_ratio",
                            "vae_spatial_scale_factor")) or family.vae_spatial
    return st, ss


def _first_attr(obj, names: tuple[str, ...]) -> int | None:
    return next((int(v) for v in (getattr(obj, n, None) for n in names) if v), None)
