"""Loading video pipelines and telling what they are: one way, through the model-family registry.

* :func:`model_source` — is a model name a built-in tiny model, a local folder or a Hub id (no loading);
* :func:`load_pipeline` — a pipeline from any of the three, optionally with DF11 transformer weights;
* :func:`detect_family` — the :class:`~radial_diffusers.families.ModelFamily` of a pipeline or transformer, by class;
* :func:`readable_pipeline` — a pipeline whose transformer calls radial attention can read (LTX-Video 0.9.7's
  ``LTXConditionPipeline`` runs as ``LTXPipeline``);
* :func:`image_to_video_pipeline` — the image-to-video pipeline of a text-to-video pipeline's components, where one
  checkpoint serves both (``Lightricks/LTX-2`` loads as ``LTX2Pipeline``);
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

import importlib
import inspect
from pathlib import Path

from ._empty import empty_model
from ._hub import is_cached, is_hub_id, looks_like_path, not_cached_reason
from .errors import ModelLoadError, UnsupportedModelError, first_sentences
from .families import (TRANSFORMER_ATTRIBUTES, ModelFamily, family_of, find_family, pipeline_transformer,
                       supported_summary, tiny_models)

__all__ = ["model_source", "load_pipeline", "detect_family", "is_image_to_video", "image_is_optional",
           "missing_dependency", "latent_geometry", "vae_compression", "geometry_problem", "frames_rule_problem",
           "family_before_loading", "experts", "empty_model", "tiny_names", "readable_pipeline",
           "image_to_video_pipeline"]


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


def load_pipeline(name: str, dtype=None, *, dfloat11: str | None = None, seed: int = 0,
                  revision: str | None = None):
    """A Diffusers pipeline from a tiny model name, a local folder or a Hub id (:func:`model_source`).

    Args:
        name: ``"tiny-wan"`` (any :func:`tiny_names`), a local pipeline folder, or a Hub id.
        dtype: the torch dtype to load in (tiny models are cast as ``from_pretrained(dtype=...)`` would: modules the
            model keeps in float32 stay float32); ``None``: float32 for tiny models, the checkpoint's otherwise.
        dfloat11: a DF11 checkpoint (folder or Hub id) for the transformer: its weights are BF16 decoded per block,
            and the original transformer weights are never read.
        seed: the random weights of a tiny model (a real checkpoint ignores it).
        revision: a branch, tag or commit of a Hub id (``from_pretrained(revision=...)``: Cosmos-Predict2.5's
            Diffusers weights are on ``diffusers/base/post-trained``).

    Raises:
        ModelLoadError: a missing path, a Hub id that is not cached offline, an unreadable checkpoint, a revision of
            something that is not a Hub id (one line).
    """
    kind = model_source(name)
    if revision is not None and kind != "hub":
        raise ModelLoadError(f"revision {revision!r}: a revision names a version of a Hub repository, and {name} is "
                             f"{'a tiny model' if kind == 'tiny' else 'a local folder'}; drop the revision")
    if revision is not None and dfloat11 is not None:
        raise ModelLoadError(f"revision {revision!r} with a DF11 checkpoint: download that revision to a folder "
                             f"first (hf download {name} --revision {revision} --local-dir DIR) and load the folder")
    if kind == "tiny":
        from .tiny import load_tiny

        pipe = load_tiny(name, seed, dtype=dtype)
        if dfloat11 is not None:
            _check_one_expert(name, len(experts(pipe)))
            # the DF11 checkpoint brings every transformer tensor (BF16, fp32 where the model keeps fp32)
            _load_dfloat11(pipe.transformer, dfloat11)
        return pipe
    if dfloat11 is not None:
        if kind == "hub" and not is_cached(name, "model_index.json"):
            _fetch_model_index(name)  # a few hundred bytes, which loading downloads first anyway
        _check_one_expert(name, _experts_in_index(name))
    transformer = {"transformer": _load_dfloat11(name, dfloat11)} if dfloat11 is not None else {}
    from diffusers import DiffusionPipeline

    # a saved tiny Cosmos pipeline names our pass-through guardrail; Diffusers loads components only from modules
    # already imported
    importlib.import_module(f"{__package__}._guardrail")

    try:  # Diffusers >= 0.42 takes ``dtype`` (``torch_dtype`` is deprecated); older ones only ``torch_dtype``
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401

        dtype_kwarg = {"dtype": dtype} if dtype is not None else {}
    except ImportError:  # pragma: no cover
        dtype_kwarg = {"torch_dtype": dtype} if dtype is not None else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(name, **dtype_kwarg, **transformer,
                                                 **({"revision": revision} if revision is not None else {}))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # OSError, huggingface_hub errors, bad configs
        if kind == "hub" and not is_cached(name, "model_index.json"):
            raise ModelLoadError(f"could not load model {name}: {not_cached_reason(name)}, or one of "
                                 f"{', '.join(tiny_names())}") from None
        first = first_sentences(str(exc).strip().removeprefix(f"Cannot load model {name}: ")) or type(exc).__name__
        raise ModelLoadError(f"could not load model {name}: {first}") from None
    if dfloat11 is not None:  # the index could not be read before (a layout it does not show): the pipeline tells
        _check_one_expert(name, sum(getattr(pipe, n, None) is not None for n in TRANSFORMER_ATTRIBUTES))
    return pipe


def _fetch_model_index(name: str) -> None:
    """Download a Hub pipeline's ``model_index.json`` into the cache. Where that fails (offline, no such repo,
    gated), loading, which downloads it first, would fail the same way after its own retries: say so now."""
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(name, "model_index.json")
    except Exception:
        raise ModelLoadError(f"could not load model {name}: {not_cached_reason(name)}, or one of "
                             f"{', '.join(tiny_names())}") from None


def family_before_loading(name: str) -> ModelFamily | None:
    """The family of a model name without loading it: a tiny model's, or the registered family of the transformer
    class named in a local folder's (or a cached Hub repo's) ``model_index.json``; ``None`` when that cannot be told
    offline (nothing is downloaded) or the class is not registered (loading then says so)."""
    import json

    models = tiny_models()
    if name in models:
        return models[name][0]
    index = _model_index(name)
    if index is None:
        return None
    try:
        entry = json.loads(index.read_text()).get("transformer") or [None, None]
    except (OSError, ValueError, AttributeError):
        return None
    from .families import families

    cls = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    return next((f for f in families() if cls in f.transformer_classes), None)


def _check_one_expert(name: str, count: int) -> None:
    if count > 1:
        raise ModelLoadError(f"a DF11 checkpoint replaces one transformer, and {name} has {count} experts "
                             "(transformer, transformer_2: Wan2.2 A14B); load it without dfloat11, or compress and "
                             "load each expert with the Python API (rd.dfloat11.compress / load_dfloat11 per "
                             "transformer)")


def _experts_in_index(name: str) -> int:
    """How many transformers (``transformer``, ``transformer_2``) a local or cached ``model_index.json`` lists (1 when
    it cannot be read offline)."""
    import json

    index = _model_index(name)
    try:
        entries = json.loads(index.read_text()) if index is not None else {}
    except (OSError, ValueError):
        return 1
    return max(1, sum(1 for k in ("transformer", "transformer_2") if (entries.get(k) or [None])[0] is not None))


def _model_index(name: str) -> Path | None:
    """The ``model_index.json`` of a local pipeline folder or of a Hub repo in the local cache (never downloaded)."""
    index = Path(name).expanduser() / "model_index.json"
    if index.is_file():
        return index
    if not is_hub_id(name):
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "model_index.json")
    return Path(cached) if isinstance(cached, str) else None


def detect_family(pipe_or_transformer) -> ModelFamily:
    """The registry entry of a pipeline (by its ``transformer``'s class) or of a transformer.

    Raises:
        UnsupportedModelError: the class has no entry (the message lists the supported ones); nothing is changed.
    """
    import torch

    if isinstance(pipe_or_transformer, torch.nn.Module):
        return family_of(pipe_or_transformer)
    transformer = pipeline_transformer(pipe_or_transformer)
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


def experts(pipe) -> dict:
    """The pipeline's transformers by attribute, as its family's entry names them (``{"transformer": ...}``; Wan2.2
    A14B also ``"transformer_2"``, the low-noise expert); unset ones are left out."""
    return {n: getattr(pipe, n) for n in detect_family(pipe).experts if getattr(pipe, n, None) is not None}


def readable_pipeline(pipe, *, image_to_video: bool):
    """``pipe`` as a pipeline whose transformer calls radial attention can read: the same object, or, for a pipeline
    class its family lists in ``pipeline_substitutes`` (LTX-Video's ``LTXConditionPipeline``, which passes
    ``video_coords`` instead of the latent grid), the substitute class (text- or image-to-video) built from the same
    components (nothing is copied or reloaded). The substitute samples its own way (``LTXPipeline``: its sigma
    schedule, no ``conditions`` / ``video`` inputs), and pipeline-level state is not carried over: call this before
    ``enable_model_cpu_offload``, ``set_progress_bar_config`` and the like.

    Raises:
        UnsupportedModelError: ``pipe``'s transformer belongs to no registered family.

    Example::

        >>> pipe = DiffusionPipeline.from_pretrained("Lightricks/LTX-Video-0.9.7-dev")  # doctest: +SKIP
        >>> pipe = readable_pipeline(pipe, image_to_video=False)  # an LTXPipeline of the same modules  # doctest: +SKIP
    """
    import diffusers

    substitutes = detect_family(pipe).substitutes_for(pipe)
    if substitutes is None:
        return pipe
    return getattr(diffusers, substitutes[1 if image_to_video else 0])(**pipe.components)


def image_to_video_pipeline(pipe):
    """The image-to-video pipeline of ``pipe``'s components, for a text-to-video pipeline whose checkpoint serves both
    tasks (its family's ``image_to_video``: ``LTXPipeline`` -> ``LTXImageToVideoPipeline``, ``LTX2Pipeline`` ->
    ``LTX2ImageToVideoPipeline``), built from the same modules (nothing is copied or reloaded); ``None`` for any
    other pipeline. Like :func:`readable_pipeline`, call it before setting pipeline-level state.

    Example::

        >>> pipe = DiffusionPipeline.from_pretrained("Lightricks/LTX-2")  # doctest: +SKIP
        >>> image_to_video_pipeline(pipe)  # an LTX2ImageToVideoPipeline of the same modules  # doctest: +SKIP
    """
    import diffusers

    target = detect_family(pipe).image_to_video_for(pipe)
    return None if target is None else getattr(diffusers, target)(**pipe.components)


def is_image_to_video(pipe) -> bool:
    """Whether the pipeline is image-to-video: its ``__call__`` takes an ``image`` and needs one (not so for a
    pipeline whose image is optional, :func:`image_is_optional`: Cosmos-Predict2.5 also runs text-to-video)."""
    return "image" in inspect.signature(pipe.__call__).parameters and not image_is_optional(pipe)


def missing_dependency(pipe, *, image: bool = False) -> str | None:
    """A package the loaded pipeline imports only if present but needs for this call (``image``: the call passes
    one), as an error message with the fix, or ``None``: its family's ``missing_dependency`` (Cosmos: torchvision).
    Diffusers would fail mid-call with a ``NameError``."""
    transformer = pipeline_transformer(pipe)
    family = find_family(transformer) if transformer is not None else None
    check = None if family is None else family.missing_dependency
    return None if check is None else check(pipe, image)


def image_is_optional(pipe) -> bool:
    """Whether the pipeline takes an ``image`` but runs text-to-video without one (its family's
    ``image_optional``: Cosmos-Predict2.5's text-, image- and video-to-world pipeline)."""
    if "image" not in inspect.signature(pipe.__call__).parameters:
        return False
    family = find_family(pipeline_transformer(pipe)) if pipeline_transformer(pipe) is not None else None
    return family is not None and type(pipe).__name__ in family.image_optional


def one_window(pipe, frames: int, call_kwargs: dict) -> str | None:
    """SkyReels-V2's diffusion-forcing pipelines denoise windows of ``base_num_frames`` (97) frames and refuse a
    longer video without ``overlap_history``. Radial attention is there to denoise a long video in one window: for a
    ``frames``-frame call of such a pipeline, this sets ``call_kwargs["base_num_frames"] = frames`` and returns a
    note saying so, unless the call already sets ``overlap_history`` or ``base_num_frames`` (the tiny DF model's
    demo sets ``overlap_history``: windows of 97 frames, 17 shared). ``None`` where nothing changed."""
    params = inspect.signature(pipe.__call__).parameters
    param = params.get("base_num_frames")
    # video-to-video extends its input by overlap_history always: one window is not its mode
    if param is None or "video" in params or "overlap_history" in call_kwargs or "base_num_frames" in call_kwargs:
        return None
    if not (isinstance(param.default, int) and frames > param.default):
        return None
    call_kwargs["base_num_frames"] = frames
    return (f"{type(pipe).__name__} denoises windows of base_num_frames={param.default} frames; the {frames} frames "
            "run as one window (radial attention over the whole video)")


def latent_geometry(pipe, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The token grid ``(F', H', W')`` of a ``frames x height x width`` call: the VAE's compression (the pipeline's
    ``vae_scale_factor_temporal`` / ``_spatial``, or LTX's ``vae_temporal`` / ``vae_spatial_compression_ratio``, else
    the family's) and the transformer's patch size applied; latent frames that do not fill a temporal patch are
    padded up to one, as CogVideoX 1.5's pipeline pads them (81 frames: 21 latent frames, 11 tokens of 2).

    Example:
        >>> latent_geometry(load_pipeline("tiny-hunyuan"), 33, 64, 64)  # doctest: +SKIP
        (9, 8, 8)
    """
    family = detect_family(pipe)
    pt, ph, pw = family.patch_size(pipeline_transformer(pipe).config)
    st, ss = vae_compression(pipe, family)
    return token_frames(frames, st, pt), height // ss // ph, width // ss // pw


def token_frames(frames: int, temporal: int, patch_t: int = 1) -> int:
    """Token frames of ``frames`` video frames: ``(frames - 1) // temporal + 1`` latent frames, padded up to whole
    temporal patches of ``patch_t`` (CogVideoX 1.5's pipeline pads them: 81 frames, 21 latent frames, 11 tokens)."""
    return -(-((frames - 1) // temporal + 1) // patch_t)


def vae_compression(pipe, family: ModelFamily | None = None) -> tuple[int, int]:
    """``(temporal, spatial)`` compression of the pipeline's VAE, as the pipeline itself reads it (the attribute
    names differ per family), else the family's registry values (``family``: the pipeline's, if known)."""
    family = family or detect_family(pipe)
    st = _first_attr(pipe, ("vae_scale_factor_temporal", "vae_temporal_compression_ratio",
                            "vae_temporal_scale_factor")) or family.vae_temporal
    ss = _first_attr(pipe, ("vae_scale_factor_spatial", "vae_spatial_compression_ratio",
                            "vae_spatial_scale_factor")) or family.vae_spatial
    return st, ss


def frames_rule_problem(frames: int, height: int, width: int, *, temporal: int, side: int, what: str,
                        patch_t: int = 1, side_why: str = "") -> tuple[int, str] | None:
    """The first of ``frames`` / ``height`` / ``width`` that breaks ``temporal * k + 1`` frames (and, with
    ``patch_t > 1``, whole temporal patches of latent frames) or sides in multiples of ``side``, as ``(index,
    reason)`` naming ``what`` (a pipeline or family), why (``side_why``: e.g. ``" (VAE 8x, patch 2)"``) and the
    nearest values that work; ``None`` if all fit."""
    if (frames - 1) % temporal:
        good = max(1, (frames - 1) // temporal * temporal + 1)
        return 0, (f"{what} needs {temporal}k+1 frames (its VAE compresses time {temporal}x); use {good} or "
                   f"{good + temporal}")
    if ((frames - 1) // temporal + 1) % patch_t:
        period = temporal * patch_t  # frames = temporal * (patch_t * m - 1) + 1
        below = ((frames - 1) // temporal + 1) // patch_t * patch_t
        good = [temporal * (n - 1) + 1 for n in (below, below + patch_t) if n >= patch_t]
        return 0, (f"{what} groups {patch_t} latent frames into one token, so the latent frames "
                   f"((frames - 1) / {temporal} + 1) must be a multiple of {patch_t} (frames every {period}); use "
                   f"{' or '.join(map(str, good))}")
    for i, value in ((1, height), (2, width)):
        if value % side:
            return i, (f"{what} needs multiples of {side}{side_why}; use {max(side, value // side * side)} or "
                       f"{value // side * side + side}")
    return None


def geometry_problem(pipe, frames: int, height: int, width: int, *, family: ModelFamily | None = None,
                     training: bool = False) -> tuple[int, str] | None:
    """The loaded pipeline's own rule for a ``frames x height x width`` call, from its VAE compression and the
    transformer's patch size (Wan: 4k+1 frames and multiples of 16; LTX-Video 8k+1 and 32; Mochi 6k+1), as
    ``(0 | 1 | 2, reason)`` for the first of frames / height / width that breaks it, or ``None``. ``training``: the
    latent frames must also fill whole temporal patches (CogVideoX 1.5; its pipeline pads them at inference, a
    training clip is not padded).

    Example:
        >>> geometry_problem(load_pipeline("tiny-wan"), 18, 64, 64)  # doctest: +SKIP
        (0, 'WanPipeline needs 4k+1 frames (its VAE compresses time 4x); use 17 or 21')
    """
    import math

    family = family or detect_family(pipe)
    st, ss = vae_compression(pipe, family)
    config = pipeline_transformer(pipe).config
    pt, ph, pw = family.patch_size(config)
    tile = family.side_tokens(config) if family.side_tokens is not None else 1
    pixels = ss * max(ph, pw) * tile
    side = math.lcm(pixels, family.pipeline_side)
    why = (f" (VAE {ss}x, patch {max(ph, pw)}" + (f", tiles of {tile}x{tile} tokens" if tile > 1 else "")
           + (f", its check of {family.pipeline_side}" if side != pixels else "") + ")")
    floor = family.min_frames_for(pipe)
    if floor is not None and frames < floor[0]:
        return 0, f"{type(pipe).__name__} needs at least {floor[0]} frames ({floor[1]}); use {floor[0]} or more"
    ceiling = family.max_frames(pipe) if family.max_frames is not None else None
    if ceiling is not None and frames > ceiling[0]:
        return 0, f"{type(pipe).__name__} makes at most {ceiling[0]} frames ({ceiling[1]}); use {ceiling[0]} or fewer"
    problem = frames_rule_problem(frames, height, width, temporal=st, side=side, what=type(pipe).__name__,
                                  patch_t=pt if training else 1, side_why=why)
    if problem is None and family.max_grid is not None:
        grid = (token_frames(frames, st, pt), height // ss // ph, width // ss // pw)
        for axis, (n, most) in enumerate(zip(grid, family.max_grid(config))):
            if n > most:
                top = (most * pt - 1) * st + 1 if axis == 0 else most * (ss * ph, ss * pw)[axis - 1]
                what = ("frames", "rows", "columns")[axis]
                return axis, (f"{type(pipe).__name__}'s transformer has positions for {most} token {what} and this "
                              f"call needs {n}; use {top} or fewer")
    return problem


def _first_attr(obj, names: tuple[str, ...]) -> int | None:
    return next((int(v) for v in (getattr(obj, n, None) for n in names) if v), None)
