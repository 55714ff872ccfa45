"""The model-family registry: everything that differs between video DiT families, as data, in one table.

One frozen :class:`ModelFamily` per transformer class (matched by class name over the MRO, so subclasses of a
registered class are found too, and a subclass registered under its own name wins). Masks, config presets,
integration, processors, DF11 patterns, quantization, the CLI and ``lora_training`` read from it; adding a family is
an entry here (or a :func:`register_family` call), its processor and its tiny builder, and no other edit.

This module imports no Diffusers and no torch: processors and tiny builders are named by ``"module:attribute"``
paths and imported on first use, and the attention-module finders only walk attributes.

Example:
    >>> from radial_diffusers.families import get_family, family_names
    >>> fam = get_family("wan")
    >>> fam.label, fam.text_position, fam.preset.dense_layers
    ('Wan2.1 / Wan2.2', 'none', 1)
    >>> "hunyuan" in family_names()
    True
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import UnsupportedModelError

__all__ = [
    "ModelFamily",
    "LATENT_LAYOUTS",
    "Preset",
    "ForwardArgs",
    "TinyModel",
    "CallInfo",
    "register_family",
    "unregister_family",
    "get_family",
    "get_preset",
    "checkpoint_geometry",
    "preset_names",
    "Variant",
    "family_names",
    "families",
    "family_of",
    "find_family",
    "pipeline_transformer",
    "TRANSFORMER_ATTRIBUTES",
    "tiny_models",
    "random_tiny_models",
    "get_tiny",
    "GENERIC_QUANT_EXCLUDE",
    "FEATURES",
    "markdown_table",
    "TEXT_POSITIONS",
    "MASK_RULES",
]

#: Where the text tokens sit in the joint attention sequence: no text (cross-attention only), before the video
#: tokens (CogVideoX), after them (HunyuanVideo, Mochi).
TEXT_POSITIONS = ("none", "before", "after")
#: The adjacent-frame band of the mask: ``"wan"`` honours ``RadialConfig.adjacent`` (official Wan rule, ``"full"``
#: or the pre-2025-11-11 ``"half"``), ``"hunyuan"`` always uses the full neighbouring frame.
MASK_RULES = ("wan", "hunyuan")
#: How a family's transformer takes its video latent (see :class:`ForwardArgs`).
LATENT_LAYOUTS = ("BCFHW", "BFCHW", "BFHWC", "tokens")
#: What a family can support, in the README table's column order.
FEATURES = ("inference", "training", "dfloat11", "quantization", "multi-gpu")
#: Quantization exclusions that fit every Diffusers video DiT: patch / time / text / image embedders, every norm
#: (including adaptive-norm modulation Linears) and the final ``norm_out`` / ``proj_out``.
GENERIC_QUANT_EXCLUDE: tuple[str, ...] = (
    r"(patch_embedding|patch_embed|x_embedder|condition_embedder|time_text_embed|time_embed|context_embedder"
    r"|caption_projection|norm_out|proj_out)(\..*)?",
    r"(.*\.)?norm[^.]*(\..*)?",  # norm1, norm2, norm1_context, norm (AdaLayerNorm*.linear modulation), ...
)


@dataclass(frozen=True)
class Preset:
    """Default radial options of a family: what ``None`` in :class:`~radial_diffusers.RadialConfig` means.

    ``dense_steps`` is an int or a fraction of the schedule; ``block_size`` the mask / kernel block in tokens;
    ``source`` says where the numbers come from (the official scripts, or "ours" with the reason)."""

    dense_layers: int
    dense_steps: int | float
    decay_factor: float
    source: str
    block_size: int = 128


@dataclass(frozen=True, eq=False)
class Variant:
    """A model of a family that shares its transformer class but has its own preset (Wan2.2 is a Wan transformer).

    ``detect(pipeline, transformer)`` tells it apart (``pipeline`` is ``None`` for a bare transformer); the first
    variant of a family whose ``detect`` is true gives the preset, else the family's own preset applies. ``tiny``:
    the name of the family's tiny model that is this variant (tests of its features). ``vae_spatial`` /
    ``mask_patch``: where the variant's released checkpoints differ from the family's (Wan2.2 TI2V-5B's 16x VAE,
    CogVideoX 1.5's temporal patch of 2), for ``radial-diffusers mask`` (no model); ``None``: the family's."""

    name: str
    label: str
    preset: Preset
    detect: Callable[[Any, Any], bool]
    pipelines: tuple[str, ...] = ()
    hub_ids: tuple[str, ...] = ()
    features: tuple[str, ...] = ("inference",)
    tiny: str = ""
    vae_spatial: int | None = None
    mask_patch: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class ForwardArgs:
    """How to read one transformer forward call, by argument *name* (positions come from the forward's signature).

    Attributes:
        latent: the video latent argument.
        layout: its layout: ``"BCFHW"`` (Wan, HunyuanVideo, Mochi), ``"BFCHW"`` (CogVideoX), ``"BFHWC"`` (channels
            last: Kandinsky 5) or ``"tokens"`` (packed
            ``(B, S, C)``: the latent grid is read from ``grid``, LTX-Video).
        grid: with ``layout="tokens"``: the names of the ``(frames, height, width)`` latent-grid arguments.
        timestep: the timestep argument (a scalar or ``(B,)`` / per-token tensor; the step hook uses its max).
        text: the argument whose dim 1 is the number of text tokens in the joint sequence, or a tuple of arguments
            whose dim-1 lengths add up to it (HunyuanVideo-1.5 joins its Qwen, ByT5 and image tokens; an argument
            passed as ``None`` counts 0); ``None``: the family has no text in self-attention.
        schedule_units: whether the timestep argument is the pipeline's schedule entry (up to a dtype cast). Cosmos'
            pipelines pass a sigma-like level instead (in bfloat16 neighbouring steps can round to one value): the hook
            then takes the step from the pipeline's own ``current_timestep`` while it runs.
        text_mask: the ``(B, L)`` key-padding mask argument of the (first) text argument (``True`` / 1 = a real
            token), when padded text tokens are never attended and only the video is returned: then appending
            masked tokens changes no output, and under context parallelism a text that does not split evenly over
            the ranks is padded so (:meth:`ModelFamily.pad_text`). ``None``: no such mask.
    """

    latent: str = "hidden_states"
    layout: str = "BCFHW"
    grid: tuple[str, str, str] | None = None
    timestep: str = "timestep"
    text: str | tuple[str, ...] | None = None
    text_mask: str | None = None
    schedule_units: bool = True

    def text_names(self) -> tuple[str, ...]:
        """The text argument names as a tuple (empty: no text in self-attention)."""
        return (self.text,) if isinstance(self.text, str) else tuple(self.text or ())

    def names(self) -> tuple[str, ...]:
        return (self.latent, self.timestep, *(self.grid or ()), *self.text_names())


@dataclass(frozen=True)
class TinyModel:
    """A tiny random pipeline of a family, built offline (tests, the demo, benchmarks).

    ``builder`` is ``"module:function"`` taking ``seed=``; ``call_kwargs`` the extra pipeline-call arguments it needs
    (e.g. a short ``max_sequence_length``); ``image_to_video``: its ``__call__`` takes ``image``; ``geometry``: a small
    ``(num_frames, height, width)`` call at which its mask at block 16 is genuinely sparse (tests, quick checks);
    ``trained``: the weights were trained and ship with the package (the toy model; ``seed`` is ignored), not a random
    test fixture."""

    name: str
    builder: str
    call_kwargs: tuple[tuple[str, Any], ...] = ()
    image_to_video: bool = False
    geometry: tuple[int, int, int] = (17, 128, 128)
    trained: bool = False

    def build(self, seed: int = 0):
        return _resolve(self.builder)(seed=seed)

    def kwargs(self) -> dict[str, Any]:
        """A fresh copy of the extra call arguments."""
        return copy.deepcopy(dict(self.call_kwargs))


@dataclass(frozen=True)
class CallInfo:
    """What the step hook reads from one forward call: the latent grid before patching ``(F, H, W)`` (latent
    frames, rows, columns), the number of text tokens in the joint sequence, the timestep argument, and the device
    of the latent (where the activations, and so the layout, live)."""

    latent_grid: tuple[int, int, int] | None  # None: a packed-token call that does not pass its grid
    text_tokens: int
    timestep: Any
    device: Any


@dataclass(frozen=True, eq=False)
class ModelFamily:
    """One video DiT family: what radial attention, DF11, quantization, the CLI and training need to know about it.

    Attributes:
        name: registry key (``"wan"``); also the ``model=`` of :func:`~radial_diffusers.radial_block_mask`.
        label: human name (``"Wan2.1"``).
        transformer_classes: transformer class names this entry serves (matched over the MRO).
        pipelines: pipeline class names that carry such a transformer (documentation and error messages).
        pipeline_substitutes: pipelines of the family's transformer whose calls radial attention cannot read, each
            mapped to the ``(text-to-video, image-to-video)`` pipeline classes built from the same components whose
            calls it can (LTX-Video: ``LTXConditionPipeline`` passes ``video_coords`` and prepends conditioning tokens
            instead of the latent grid; ``LTXPipeline`` / ``LTXImageToVideoPipeline`` pass the grid). See
            :func:`~radial_diffusers.pipelines.readable_pipeline`.
        image_to_video: text-to-video pipeline class names mapped to the image-to-video pipeline class built from the
            same components, for checkpoints that serve both (LTX-Video, LTX-2: one hub repository loads as the
            text-to-video pipeline); the CLI runs ``--image`` through it
            (:func:`~radial_diffusers.pipelines.image_to_video_pipeline`).
        image_optional: pipeline class names whose ``image`` is optional: they run text-to-video without one
            (Cosmos-Predict2.5's text-, image- and video-to-world pipeline).
        processor: ``"module:Class"`` of the radial attention processor; constructed as
            ``Class(state, layer_idx, dense=...)``.
        attention_modules: ``transformer -> [(layer index, attention module), ...]``, the modules that receive radial
            processors, in layer order (cross-attention and text-only modules are left out).
        patch_size: ``transformer.config -> (pt, ph, pw)``, the latent grid is divided by it into tokens.
        forward: how to read latent, timestep and text length from a forward call (:class:`ForwardArgs`).
        text_position: ``"none"``, ``"before"`` or ``"after"`` the video tokens in the joint sequence.
        mask_rule: ``"wan"`` or ``"hunyuan"`` (see :data:`MASK_RULES`); ``sink``: default attention sink (key frame 0).
        mask_text_tokens: typical text length of the joint sequence, the default of ``radial-diffusers mask``.
        mask_patch: the released checkpoints' patch size ``(pt, ph, pw)``, for ``radial-diffusers mask`` (no model).
        preset: the :class:`Preset`.
        vae_temporal / vae_spatial: the VAE's compression, used where a pipeline does not say
            (``pipe.vae_scale_factor_temporal`` / ``_spatial`` win).
        df11_pattern: default DF11 ``pattern_dict`` (``{module regex: [Linear paths]}``; absent paths are dropped).
        quant_exclude: module-name regexes quantization leaves alone.
        lora_targets: default PEFT ``target_modules`` regex for length-extension LoRA.
        tiny: the family's tiny random pipelines.
        default_fps: frame rate of the family's videos; ``pipeline_fps``: pipeline class names whose own frame rate
            differs (Cosmos 1.0's pipelines: 30), see :meth:`fps_for`.
        hub_ids: Diffusers-format checkpoints on the Hub (documentation, CLI help).
        cp_plan: ``"module:function"`` building the context-parallel plan for a transformer (``None``: Diffusers' own
            ``_cp_plan``). Radial attention runs under ``enable_parallelism`` only for a family whose features
            include ``"multi-gpu"``.
        cp_note: why a family is not (yet) ``"multi-gpu"``: the error a parallel model of it gets.
        min_steps: the fewest denoising steps its pipelines run (Mochi's schedule divides by zero below 2).
        pipeline_side: pixels the family's pipelines want height and width to be multiples of whatever the VAE
            (LTX-Video's ``check_inputs``: 32); 1: the VAE and patch decide.
        cp_local: ``transformer -> [attention modules]`` whose keys and values every rank holds whole under the
            family's plan (LTX-Video's cross-attention over the text): they attend locally, without context
            parallelism (:func:`~radial_diffusers.parallel.attend_locally`). ``None``: none.
        stock_cp: whether the family's stock attention processors take Diffusers' parallel config (Cosmos' do not:
            they attend within each rank's chunk). See :attr:`stock_runs_parallel`.
        cp_replicated: module-name regexes (``re.fullmatch``) of the modules whose parameter gradients under the
            family's plan are not the sum of the ranks' shard gradients: modules that run on the gathered sequence
            on every rank, and those feeding them too (Kandinsky 5's ``out_layer`` after the gather, and the time
            embeddings it reads). Sequence-parallel LoRA training sums shard gradients, so it refuses targets here.
        side_tokens: ``transformer.config -> n``: the latent tokens per side must be a multiple of ``n`` for the
            transformer itself (Kandinsky 5's NABLA checkpoints group them in 8 x 8 tiles); ``None``: any count.
        max_grid: ``transformer.config -> (F', H', W')``: the most tokens per axis the transformer's position tables
            hold (Cosmos: ``max_size``), or ``None``: no limit.
        max_frames: ``pipeline -> (most frames, why)`` where the pipeline itself fails beyond that (Cosmos 1.0's
            latent statistics per frame), else ``None``.
        missing_dependency: ``(pipeline, image: bool) -> message | None``: a package the pipeline imports only if
            present but needs for a call (with an ``image`` or not), named with the fix (Cosmos: torchvision).
        min_frames: pipeline class names mapped to ``(fewest frames, why)`` where a pipeline fails below that
            (Kandinsky 5's image-to-video normalises its first latent frames by the next ones).
        features: what works for the family, of :data:`FEATURES` (tested per family; the README table lists them).
        variants: models of the same transformer class with presets of their own (:class:`Variant`).
        experts: pipeline attributes holding the transformers that get radial attention (Wan2.2 A14B:
            ``transformer`` and ``transformer_2``, the high- and low-noise experts; absent ones are skipped).
        training: ``"module:Class"`` of the family's
            :class:`~radial_diffusers.training_adapters.TrainingAdapter` (how a clip is encoded and the transformer
            called in a LoRA training step); required by the ``"training"`` feature.
        frame_causal: ``transformer -> latent frames per causal block`` (1: none), for a family whose transformer
            passes a block-causal frame mask to self-attention (SkyReels-V2 diffusion forcing:
            ``config.num_frame_per_block``). The step hook reads it on every call (the pipelines rewrite it) and
            builds the layouts of radial AND that mask once per geometry; the processor combines them with the mask
            it receives. ``None``: the family's self-attention takes no mask.
    """

    name: str
    label: str
    transformer_classes: tuple[str, ...]
    pipelines: tuple[str, ...]
    processor: str
    attention_modules: Callable[[Any], list]
    patch_size: Callable[[Any], tuple[int, int, int]]
    preset: Preset
    forward: ForwardArgs = ForwardArgs()
    text_position: str = "none"
    mask_rule: str = "wan"
    sink: bool = True
    mask_text_tokens: int = 0
    mask_patch: tuple[int, int, int] = (1, 2, 2)
    vae_temporal: int = 4
    vae_spatial: int = 8
    df11_pattern: dict = field(default_factory=dict)
    quant_exclude: tuple[str, ...] = GENERIC_QUANT_EXCLUDE
    lora_targets: str = r".*\.(to_q|to_k|to_v|to_out\.0)"
    tiny: tuple[TinyModel, ...] = ()
    default_fps: int = 16
    pipeline_fps: dict[str, int] = field(default_factory=dict)
    hub_ids: tuple[str, ...] = ()
    cp_plan: Any = None
    cp_note: str = ""
    cp_local: Callable[[Any], list] | None = None
    cp_replicated: tuple[str, ...] = ()
    stock_cp: bool = True
    side_tokens: Callable[[Any], int] | None = None
    min_frames: dict[str, tuple[int, str]] = field(default_factory=dict)
    max_grid: Callable[[Any], tuple[int, int, int]] | None = None
    max_frames: Callable[[Any], tuple[int, str] | None] | None = None
    missing_dependency: Callable[[Any, bool], str | None] | None = None
    features: tuple[str, ...] = ("inference", "dfloat11", "quantization")
    variants: tuple[Variant, ...] = ()
    experts: tuple[str, ...] = ("transformer",)
    training: str | None = None
    frame_causal: Callable[[Any], int] | None = None
    pipeline_substitutes: dict[str, tuple[str, str]] = field(default_factory=dict)
    image_to_video: dict[str, str] = field(default_factory=dict)
    image_optional: tuple[str, ...] = ()
    min_steps: int = 1
    pipeline_side: int = 1

    def __post_init__(self) -> None:
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise ValueError(f"{self.name}: unknown features {sorted(unknown)}; valid: {FEATURES}")
        if self.text_position not in TEXT_POSITIONS:
            raise ValueError(f"{self.name}: text_position must be one of {TEXT_POSITIONS}, got {self.text_position!r}")
        if self.mask_rule not in MASK_RULES:
            raise ValueError(f"{self.name}: mask_rule must be one of {MASK_RULES}, got {self.mask_rule!r}")
        if self.forward.layout not in LATENT_LAYOUTS:
            raise ValueError(f"{self.name}: forward.layout must be one of {LATENT_LAYOUTS}, got "
                             f"{self.forward.layout!r}")
        if (self.forward.layout == "tokens") != (self.forward.grid is not None):
            raise ValueError(f"{self.name}: forward.grid names the latent grid arguments exactly when layout='tokens'")
        trains = "training" in self.features or any("training" in v.features for v in self.variants)
        if trains and self.training is None:
            raise ValueError(f"{self.name}: the 'training' feature needs a training adapter (ModelFamily.training)")
        if (self.text_position == "none") != (not self.forward.text_names()):
            raise ValueError(f"{self.name}: forward.text names the text argument exactly when text_position is not "
                             "'none'")

    @property
    def stock_runs_parallel(self) -> bool:
        """Whether the family's stock attention processors run right on its context-parallel plan's shards: not for
        a joint text + video family (each rank holds a video chunk and a text chunk, which Diffusers' stock
        attention would gather out of order), nor where they ignore the parallel config (``stock_cp``: Cosmos).
        Where they do not, a dense call under context parallelism runs our op over the all-kept layout."""
        return self.text_position == "none" and self.stock_cp

    def stock_parallel_problem(self) -> str:
        """Why the stock processors cannot run on the plan's shards ('' where they can)."""
        if self.text_position != "none":
            return (f"{self.label}'s plan gives each process a video chunk and a text chunk, which only radial "
                    "attention's processors put back in order")
        if not self.stock_cp:
            return (f"{self.label}'s stock attention processors do not take Diffusers' parallel config: each process "
                    "would attend within its own chunk of the video; only radial attention's processors attend "
                    "across the processes")
        return ""

    # -- pieces imported on first use ---------------------------------------------------------------------------
    def processor_class(self) -> type:
        return _resolve(self.processor)

    def preset_for(self, pipeline, transformer) -> str:
        """The preset key of a pipeline (or a bare transformer, ``pipeline=None``): its variant's name (``"wan2.2"``)
        if one applies, else the family's."""
        variant = self.variant_for(pipeline, transformer)
        return variant.name if variant is not None else self.name

    def variant_for(self, pipeline, transformer) -> Variant | None:
        """The first :class:`Variant` whose ``detect`` accepts the pipeline / transformer, else ``None``."""
        return next((v for v in self.variants if v.detect(pipeline, transformer)), None)

    def substitutes_for(self, pipeline) -> tuple[str, str] | None:
        """``(text-to-video, image-to-video)`` pipeline class names to run ``pipeline``'s components with, when its
        class (or a base class) is one whose calls radial attention cannot read (:attr:`pipeline_substitutes`); else
        ``None``."""
        return _by_pipeline_class(self.pipeline_substitutes, pipeline)

    def image_to_video_for(self, pipeline) -> str | None:
        """The image-to-video pipeline class name built from ``pipeline``'s components, when its class (or a base
        class) is a text-to-video pipeline whose checkpoints serve both tasks (:attr:`image_to_video`); else
        ``None``."""
        return _by_pipeline_class(self.image_to_video, pipeline)

    def fps_for(self, pipeline) -> int:
        """The frame rate of ``pipeline``'s videos: its class's in :attr:`pipeline_fps`, else :attr:`default_fps`."""
        fps = _by_pipeline_class(self.pipeline_fps, pipeline)
        return self.default_fps if fps is None else fps

    def min_frames_for(self, pipeline) -> tuple[int, str] | None:
        """``(fewest frames, why)`` of ``pipeline``'s class (or a base class) in :attr:`min_frames`, else ``None``."""
        return _by_pipeline_class(self.min_frames, pipeline)

    def matches(self, obj) -> bool:
        """Whether ``obj`` (a transformer or its class) is served by this entry (directly or by a subclass)."""
        cls = obj if isinstance(obj, type) else type(obj)
        return any(c.__name__ in self.transformer_classes for c in cls.__mro__)

    # -- reading a forward call ---------------------------------------------------------------------------------
    def check_forward(self, transformer) -> None:
        """Raise ``TypeError`` if the transformer's forward lacks an argument this entry reads (a registry bug)."""
        params = _forward_positions(type(transformer))
        missing = [n for n in self.forward.names() if n not in params]
        if missing:
            raise TypeError(f"family {self.name!r}: {type(transformer).__name__}.forward has no argument(s) "
                            f"{missing}; fix the registry entry's ForwardArgs")

    def read_call(self, transformer, args: tuple, kwargs: dict) -> CallInfo:
        """The latent grid, text length and timestep of one ``transformer.forward(*args, **kwargs)`` call."""
        positions = _forward_positions(type(transformer))
        spec = self.forward

        def get(name: str, required: bool = True):
            if name in kwargs:
                return kwargs[name]
            pos = positions[name]
            if pos is not None and pos < len(args):
                return args[pos]
            if not required:
                return None
            raise TypeError(f"{type(transformer).__name__}.forward was called without {name!r}")

        latent = get(spec.latent)
        if spec.layout == "tokens":
            sizes = [get(n, required=False) for n in spec.grid]
            grid = None if any(n is None for n in sizes) else tuple(int(n) for n in sizes)
            # a grid that is not the tokens' (LTXI2VLongMultiPromptPipeline passes 1 x 1 x 1 with video_coords): the
            # tokens cannot be placed in the mask either
            tokens = getattr(latent, "shape", (0, 0))[1]
            if grid is not None and math.prod(grid) != tokens * math.prod(self.patch_size(transformer.config)):
                grid = None
        else:
            if getattr(latent, "ndim", None) != 5:
                raise ValueError(f"expected video latents ({', '.join(spec.layout)}) for {self.label}, got shape "
                                 f"{tuple(getattr(latent, 'shape', ()))}")
            shape = latent.shape
            axes = {"BCFHW": (2, 3, 4), "BFCHW": (1, 3, 4), "BFHWC": (1, 2, 3)}[spec.layout]
            grid = tuple(shape[a] for a in axes)
        text = sum(int(x.shape[1]) for x in map(get, spec.text_names()) if x is not None)
        return CallInfo(latent_grid=grid, text_tokens=text, timestep=get(spec.timestep), device=latent.device)

    def pad_text(self, transformer, args: tuple, kwargs: dict, tokens: int) -> tuple[tuple, dict]:
        """A forward call's ``(args, kwargs)`` with ``tokens`` masked tokens (zeros, mask 0) appended to its first
        text argument and that argument's mask (``forward.text_mask``): the same video output (masked keys are
        never attended), a joint sequence ``tokens`` longer."""
        import torch

        text_name, mask_name = self.forward.text_names()[0], self.forward.text_mask
        if mask_name is None:
            raise ValueError(f"{self.label}'s text has no key-padding mask to pad it with")
        positions = _forward_positions(type(transformer))
        args = list(args)
        for name in (text_name, mask_name):
            at = positions.get(name)
            keyword = name in kwargs or at is None or at >= len(args)
            x = kwargs[name] if keyword else args[at]
            x = torch.cat([x, x.new_zeros((x.shape[0], tokens, *x.shape[2:]))], dim=1)
            if keyword:
                kwargs = dict(kwargs, **{name: x})
            else:
                args[at] = x
        return tuple(args), kwargs


def _by_pipeline_class(mapping: dict, pipeline):
    """``mapping``'s value for the first class in ``pipeline``'s MRO it names (by class name), else ``None``."""
    return next((mapping[c.__name__] for c in type(pipeline).__mro__ if c.__name__ in mapping), None)


def _forward_positions(cls: type) -> dict[str, int | None]:
    """``{argument name: position in *args}`` of ``cls.forward`` (``None`` for keyword-only), cached per class."""
    cached = _POSITIONS.get(cls)
    if cached is None:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]  # drop self
        cached = {}
        for i, p in enumerate(params):
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                cached[p.name] = i
            elif p.kind is p.KEYWORD_ONLY:
                cached[p.name] = None
        _POSITIONS[cls] = cached
    return cached


_POSITIONS: dict[type, dict[str, int | None]] = {}


def _resolve(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


# -- the registry ----------------------------------------------------------------------------------------------

_REGISTRY: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Add ``family`` to the registry (``replace=True`` overwrites an entry of the same name). Returns it.

    A tiny model name or transformer class already served by another entry is an error: every transformer class
    and tiny name belongs to one family."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"expected a ModelFamily, got {type(family).__name__}")
    if family.name in _REGISTRY and not replace:
        raise ValueError(f"a model family named {family.name!r} is registered already (pass replace=True)")
    for other in _REGISTRY.values():
        if other.name == family.name:
            continue
        shared = set(other.transformer_classes) & set(family.transformer_classes)
        if shared:
            raise ValueError(f"{sorted(shared)} already belong to family {other.name!r}")
        clash = {t.name for t in other.tiny} & {t.name for t in family.tiny}
        if clash:
            raise ValueError(f"tiny model name(s) {sorted(clash)} already belong to family {other.name!r}")
    _REGISTRY[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family from the registry (a no-op for an unknown name)."""
    _REGISTRY.pop(name, None)


def family_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def families() -> tuple[ModelFamily, ...]:
    return tuple(_REGISTRY.values())


def get_family(name: str | ModelFamily) -> ModelFamily:
    """The family registered as ``name`` (a :class:`ModelFamily` is returned as is)."""
    if isinstance(name, ModelFamily):
        return name
    family = _REGISTRY.get(name)
    if family is None:
        raise UnsupportedModelError(f"unknown model family {name!r}; supported: {', '.join(_REGISTRY)}")
    return family


def preset_names() -> tuple[str, ...]:
    """Every family name and variant name (the keys :func:`get_preset` takes)."""
    return (*_REGISTRY, *(v.name for f in _REGISTRY.values() for v in f.variants))


def get_preset(key: str) -> tuple[ModelFamily, Preset]:
    """``(family, preset)`` of a family name or a variant name (``"wan"``, ``"wan2.2"``)."""
    if key in _REGISTRY:
        return _REGISTRY[key], _REGISTRY[key].preset
    for family in _REGISTRY.values():
        for variant in family.variants:
            if variant.name == key:
                return family, variant.preset
    raise UnsupportedModelError(f"unknown model family or variant {key!r}; supported: {', '.join(preset_names())}")


def checkpoint_geometry(key: str) -> tuple[int, int, tuple[int, int, int]]:
    """``(vae_temporal, vae_spatial, mask_patch)`` of the released checkpoints of a family or variant key (a
    variant's own values where it has them): how frames x height x width become tokens without a model at hand."""
    family, _ = get_preset(key)
    variant = next((v for v in family.variants if v.name == key), None)
    spatial = variant.vae_spatial if variant is not None and variant.vae_spatial is not None else family.vae_spatial
    patch = variant.mask_patch if variant is not None and variant.mask_patch is not None else family.mask_patch
    return family.vae_temporal, spatial, patch


def find_family(obj) -> ModelFamily | None:
    """The family serving ``obj`` (a transformer or its class), or ``None``. The most derived registered class in
    the MRO decides, so a registered subclass is found before its base."""
    cls = obj if isinstance(obj, type) else type(obj)
    for c in cls.__mro__:
        for family in _REGISTRY.values():
            if c.__name__ in family.transformer_classes:
                return family
    return None


def family_of(obj) -> ModelFamily:
    """Like :func:`find_family`, but an unsupported class is an :class:`~radial_diffusers.errors.UnsupportedModelError`
    listing the supported transformer and pipeline classes."""
    family = find_family(obj)
    inner = getattr(obj, "_orig_mod", None)  # torch.compile(module) returns an OptimizedModule wrapping it
    if family is None and inner is not None and find_family(inner) is not None:
        raise UnsupportedModelError(
            f"got a torch.compile wrapper of a {type(inner).__name__}: apply radial attention before compiling "
            "(rd.apply_radial_attention(pipe), then torch.compile), or compile in place with "
            "pipe.transformer.compile(), which keeps the module")
    if family is None:
        name = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise UnsupportedModelError(f"{name} is not a supported video transformer; supported: {supported_summary()}")
    return family


#: Pipeline attributes that can hold a video transformer, in the order a pipeline's family is read from them (a
#: Wan2.2 pipeline may be built with ``transformer=None`` and only its low-noise expert ``transformer_2``).
TRANSFORMER_ATTRIBUTES = ("transformer", "transformer_2")


def pipeline_transformer(pipeline):
    """The first transformer a pipeline holds (``transformer``, else ``transformer_2``), or ``None``."""
    for name in TRANSFORMER_ATTRIBUTES:
        transformer = getattr(pipeline, name, None)
        if transformer is not None:
            return transformer
    return None


def supported_summary() -> str:
    """``"Wan2.1 (WanPipeline, ...), HunyuanVideo (...)"``: for error messages."""
    return "; ".join(f"{f.label} ({', '.join(f.pipelines + f.transformer_classes)})" for f in _REGISTRY.values())


def markdown_table() -> str:
    """The README's table of model families, rendered from the registry (a test keeps the README equal to it)."""
    head = ["family", "pipelines", "transformer", "preset (dense layers, dense steps, decay, block)", *FEATURES]

    def row(name: str, pipelines, classes, p: Preset, features) -> str:
        steps = f"{p.dense_steps:.2f} of the steps" if isinstance(p.dense_steps, float) else f"{p.dense_steps} steps"
        cells = [name, ", ".join(f"`{x}`" for x in pipelines), ", ".join(f"`{x}`" for x in classes),
                 f"{p.dense_layers}, {steps}, {p.decay_factor:g}, {p.block_size} ({p.source})",
                 *("yes" if feat in features else "no" for feat in FEATURES)]
        return "| " + " | ".join(cells) + " |"

    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in _REGISTRY.values():
        rows.append(row(f"`{f.name}` {f.label}", f.pipelines, f.transformer_classes, f.preset, f.features))
        rows += [row(f"`{v.name}` {v.label} (a `{f.name}` variant)", v.pipelines, f.transformer_classes, v.preset,
                     v.features) for v in f.variants]
    return "\n".join(rows)


def tiny_models() -> dict[str, tuple[ModelFamily, TinyModel]]:
    """``{tiny name: (family, TinyModel)}`` over every registered family."""
    return {t.name: (f, t) for f in _REGISTRY.values() for t in f.tiny}


def random_tiny_models() -> dict[str, tuple[ModelFamily, TinyModel]]:
    """:func:`tiny_models` without the trained ones: the random test fixtures."""
    return {n: ft for n, ft in tiny_models().items() if not ft[1].trained}


def get_tiny(name: str) -> tuple[ModelFamily, TinyModel]:
    models = tiny_models()
    if name not in models:
        raise UnsupportedModelError(f"unknown tiny model {name!r}; valid names: {', '.join(sorted(models))}")
    return models[name]


# -- the built-in families ------------------------------------------------------------------------------------


def _wan_attention(transformer) -> list:
    return [(i, block.attn1) for i, block in enumerate(transformer.blocks)]


def _wan_patch(config) -> tuple[int, int, int]:
    return tuple(int(p) for p in config.patch_size)


def _is_wan22_a14b(pipeline, transformer) -> bool:
    config = getattr(pipeline, "config", None) or {}
    return getattr(pipeline, "transformer_2", None) is not None or config.get("boundary_ratio") is not None


def _is_wan22_ti2v(pipeline, transformer) -> bool:
    config = getattr(pipeline, "config", None) or {}
    return bool(config.get("expand_timesteps")) or int(getattr(transformer.config, "in_channels", 0)) == 48


def _is_cogvideox15(pipeline, transformer) -> bool:
    return getattr(transformer.config, "patch_size_t", None) is not None


def _hunyuan_attention(transformer) -> list:
    dual = [(i, block.attn) for i, block in enumerate(transformer.transformer_blocks)]
    offset = len(dual)
    return dual + [(offset + i, block.attn) for i, block in enumerate(transformer.single_transformer_blocks)]


def _temporal_spatial_patch(config) -> tuple[int, int, int]:
    """``(patch_size_t, patch_size, patch_size)``: HunyuanVideo, LTX-Video, CogVideoX (``patch_size_t`` is ``None``
    in 1.0) and Mochi (no temporal patch)."""
    return int(getattr(config, "patch_size_t", None) or 1), int(config.patch_size), int(config.patch_size)


def _transformer_blocks_attn1(transformer) -> list:
    """``transformer_blocks[i].attn1``: CogVideoX, LTX-Video and Mochi."""
    return [(i, block.attn1) for i, block in enumerate(transformer.transformer_blocks)]


def _blocks_attn2(transformer) -> list:
    """``blocks[i].attn2``: SkyReels-V2's cross-attention over the text (and image)."""
    return [block.attn2 for block in transformer.blocks]


def _transformer_blocks_attn2(transformer) -> list:
    """``transformer_blocks[i].attn2``: LTX-Video's cross-attention over the text."""
    return [block.attn2 for block in transformer.transformer_blocks]


# The preset of the families the paper does not cover (CogVideoX, LTX-Video, Mochi): no official setting exists.
_OUR_PRESET = Preset(dense_layers=1, dense_steps=12 / 50, decay_factor=1.0,
                     source="ours (no official setting): the paper's dense-step fraction, Wan's dense first layer, "
                            "decay 1.0 = the undecayed band, the least aggressive")


_WAN22_A14B_PRESET = Preset(dense_layers=1, dense_steps=11 / 40, decay_factor=0.8, block_size=64,
                            source="official scripts/wan_22_t2v_inference.sh (768x1280x77, 40 steps; its processors "
                                   "run block 64)")
_WAN_MAX_SEQUENCE_LENGTH = 16  # = tiny.WAN_MAX_SEQUENCE_LENGTH (kept import-free)
# the tiny LTX-2 transformer has 2 blocks: spatio-temporal guidance on block 1 (the pipeline's default, 28, is absent)
_LTX2_TINY_KWARGS = (("max_sequence_length", 16), ("spatio_temporal_guidance_blocks", [1]))
# image_crf=0: no H.264 re-compression of the conditioning image (it needs PyAV, not a dependency)
_LTX2_I2V_TINY_KWARGS = (*_LTX2_TINY_KWARGS, ("image_crf", 0))
_HUNYUAN_TINY_KWARGS = (("prompt_template", {"template": "{}", "crop_start": 0}), ("max_sequence_length", 16))

WAN = register_family(ModelFamily(
    name="wan",
    label="Wan2.1 / Wan2.2",
    transformer_classes=("WanTransformer3DModel",),
    pipelines=("WanPipeline", "WanImageToVideoPipeline"),
    processor="radial_diffusers.processors:RadialWanAttnProcessor",
    attention_modules=_wan_attention,
    patch_size=_wan_patch,
    preset=Preset(dense_layers=1, dense_steps=12 / 50, decay_factor=0.2,
                  source="official scripts/wan_t2v_inference.sh"),
    forward=ForwardArgs(),
    text_position="none",
    mask_rule="wan",
    sink=True,
    df11_pattern={
        r"blocks\.\d+": [
            "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
            "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.add_k_proj", "attn2.add_v_proj", "attn2.to_out.0",
            "ffn.net.0.proj", "ffn.net.2",
        ],
    },
    lora_targets=r".*\.(to_q|to_k|to_v|to_out\.0)",
    tiny=(
        TinyModel("tiny-wan", "radial_diffusers.tiny:tiny_wan_pipeline",
                  (("max_sequence_length", _WAN_MAX_SEQUENCE_LENGTH),)),
        TinyModel("tiny-wan-i2v", "radial_diffusers.tiny:tiny_wan_i2v_pipeline",
                  (("max_sequence_length", _WAN_MAX_SEQUENCE_LENGTH),), image_to_video=True),
        TinyModel("tiny-wan2.2", "radial_diffusers.tiny:tiny_wan22_pipeline",
                  (("max_sequence_length", _WAN_MAX_SEQUENCE_LENGTH),)),
        TinyModel("tiny-wan2.2-ti2v", "radial_diffusers.tiny:tiny_wan22_ti2v_pipeline",
                  (("max_sequence_length", _WAN_MAX_SEQUENCE_LENGTH),), geometry=(33, 256, 256)),
        TinyModel("toy-wan", "radial_diffusers.toy.model:toy_wan_pipeline", (("max_sequence_length", 16),),
                  geometry=(33, 64, 64), trained=True),
    ),
    default_fps=16,
    hub_ids=("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers",
             "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"),
    experts=("transformer", "transformer_2"),
    features=("inference", "training", "dfloat11", "quantization", "multi-gpu"),
    training="radial_diffusers.training_adapters:WanTraining",
    variants=(
        Variant("wan2.2", "Wan2.2 A14B (two experts)", _WAN22_A14B_PRESET, _is_wan22_a14b,
                pipelines=("WanPipeline", "WanImageToVideoPipeline"),
                hub_ids=("Wan-AI/Wan2.2-T2V-A14B-Diffusers", "Wan-AI/Wan2.2-I2V-A14B-Diffusers"),
                features=("inference", "training", "quantization", "multi-gpu"), tiny="tiny-wan2.2"),
        # per-token timesteps (the hook steps on their max), 48-channel VAE with 16x spatial compression: the
        # geometry is read from the latent, never from assumptions about the VAE
        Variant("wan2.2-ti2v", "Wan2.2 TI2V-5B",
                Preset(dense_layers=1, dense_steps=11 / 40, decay_factor=0.8,
                       source="ours: the official Wan2.2 A14B settings (no official TI2V-5B setting)"),
                _is_wan22_ti2v, pipelines=("WanPipeline", "WanImageToVideoPipeline"),
                hub_ids=("Wan-AI/Wan2.2-TI2V-5B-Diffusers",),
                features=("inference", "training", "dfloat11", "quantization", "multi-gpu"), tiny="tiny-wan2.2-ti2v",
                vae_spatial=16),
    ),
))

HUNYUAN_VIDEO = register_family(ModelFamily(
    name="hunyuan",
    label="HunyuanVideo",
    transformer_classes=("HunyuanVideoTransformer3DModel",),
    pipelines=("HunyuanVideoPipeline",),
    processor="radial_diffusers.processors:RadialHunyuanVideoAttnProcessor",
    attention_modules=_hunyuan_attention,
    patch_size=_temporal_spatial_patch,
    preset=Preset(dense_layers=0, dense_steps=12 / 50, decay_factor=0.95,
                  source="official scripts/hunyuan_t2v_inference.sh"),
    forward=ForwardArgs(text="encoder_hidden_states", text_mask="encoder_attention_mask"),
    text_position="after",
    mask_rule="hunyuan",
    sink=False,
    mask_text_tokens=256,
    df11_pattern={
        r"transformer_blocks\.\d+": [
            "norm1.linear", "norm1_context.linear",
            "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
            "attn.to_out.0", "attn.to_add_out",
            "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
        ],
        r"single_transformer_blocks\.\d+": [
            "attn.to_q", "attn.to_k", "attn.to_v", "norm.linear", "proj_mlp", "proj_out",
        ],
    },
    # Also matches the text token refiner's attention, which the default leaves out: it never sees the long video.
    lora_targets=r"^(?!context_embedder\.).*\.(to_q|to_k|to_v|to_out\.0)",
    tiny=(TinyModel("tiny-hunyuan", "radial_diffusers.tiny:tiny_hunyuan_pipeline", _HUNYUAN_TINY_KWARGS,
                    geometry=(17, 64, 64)),),
    default_fps=24,
    hub_ids=("hunyuanvideo-community/HunyuanVideo",),
    cp_plan="radial_diffusers.parallel:hunyuan_video_plan",
    features=("inference", "training", "dfloat11", "quantization", "multi-gpu"),
    training="radial_diffusers.training_adapters:HunyuanVideoTraining",
))


COGVIDEOX = register_family(ModelFamily(
    name="cogvideox",
    label="CogVideoX",
    transformer_classes=("CogVideoXTransformer3DModel",),
    pipelines=("CogVideoXPipeline", "CogVideoXImageToVideoPipeline"),
    processor="radial_diffusers.processors:RadialCogVideoXAttnProcessor",
    attention_modules=_transformer_blocks_attn1,
    patch_size=_temporal_spatial_patch,
    preset=_OUR_PRESET,
    forward=ForwardArgs(layout="BFCHW", text="encoder_hidden_states"),
    text_position="before",
    mask_rule="hunyuan",
    sink=False,
    mask_text_tokens=226,
    df11_pattern={
        r"transformer_blocks\.\d+": [
            "norm1.linear", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "norm2.linear",
            "ff.net.0.proj", "ff.net.2",
        ],
    },
    quant_exclude=(*GENERIC_QUANT_EXCLUDE, r"(time_embedding|ofs_embedding)(\..*)?"),
    tiny=(TinyModel("tiny-cogvideox", "radial_diffusers.tiny:tiny_cogvideox_pipeline", (("max_sequence_length", 16),),
                    geometry=(17, 128, 128)),
          TinyModel("tiny-cogvideox1.5", "radial_diffusers.tiny:tiny_cogvideox15_pipeline",
                    (("max_sequence_length", 16),), geometry=(17, 128, 128))),
    default_fps=8,
    hub_ids=("THUDM/CogVideoX-2b", "THUDM/CogVideoX-5b", "THUDM/CogVideoX-5b-I2V"),
    variants=(
        # a temporal patch of 2 (the pipeline pads the latent frames to whole patches); the geometry is read from
        # the latent and the config at run time, so only `radial-diffusers mask` needs to know
        Variant("cogvideox1.5", "CogVideoX 1.5", _OUR_PRESET, _is_cogvideox15,
                pipelines=("CogVideoXPipeline", "CogVideoXImageToVideoPipeline"),
                hub_ids=("THUDM/CogVideoX1.5-5B", "THUDM/CogVideoX1.5-5B-I2V"),
                features=("inference", "training", "dfloat11", "quantization", "multi-gpu"), tiny="tiny-cogvideox1.5",
                mask_patch=(2, 2, 2)),
    ),
    cp_plan="radial_diffusers.parallel:cogvideox_plan",
    features=("inference", "training", "dfloat11", "quantization", "multi-gpu"),
    training="radial_diffusers.training_adapters:CogVideoXTraining",
))


# What LTX-Video and LTX-2 share: packed (B, S, C) video tokens, frame-major, whose latent grid the pipelines pass as
# num_frames / height / width; self-attention as transformer_blocks[i].attn1, the text through cross-attention; a
# x8 / x32 VAE with patch 1; key frame 0 (image-to-video's conditioning frame) as the sink; no official preset
_LTX_VIDEO_TOKENS = dict(
    attention_modules=_transformer_blocks_attn1,
    patch_size=_temporal_spatial_patch,
    preset=_OUR_PRESET,
    forward=ForwardArgs(layout="tokens", grid=("num_frames", "height", "width")),
    text_position="none",
    mask_rule="wan",
    sink=True,
    vae_temporal=8,
    vae_spatial=32,
    mask_patch=(1, 1, 1),
    pipeline_side=32,
    default_fps=24,
)

LTX_VIDEO = register_family(ModelFamily(
    name="ltx",
    label="LTX-Video",
    transformer_classes=("LTXVideoTransformer3DModel",),
    pipelines=("LTXPipeline", "LTXImageToVideoPipeline"),
    # LTX-Video 0.9.7's hub repos load as LTXConditionPipeline (see pipeline_substitutes; its own calls run the stock
    # attention, RadialStepHook._ungridded_call)
    pipeline_substitutes={"LTXConditionPipeline": ("LTXPipeline", "LTXImageToVideoPipeline")},
    image_to_video={"LTXPipeline": "LTXImageToVideoPipeline"},
    processor="radial_diffusers.processors:RadialLTXVideoAttnProcessor",
    **_LTX_VIDEO_TOKENS,
    df11_pattern={
        r"transformer_blocks\.\d+": [
            "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
            "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2",
        ],
    },
    quant_exclude=(*GENERIC_QUANT_EXCLUDE, r"proj_in(\..*)?"),
    tiny=(TinyModel("tiny-ltx", "radial_diffusers.tiny:tiny_ltx_pipeline", (("max_sequence_length", 16),),
                    geometry=(33, 32, 32)),),
    hub_ids=("Lightricks/LTX-Video", "Lightricks/LTX-Video-0.9.5", "Lightricks/LTX-Video-0.9.7-dev"),
    # ours, not Diffusers' _cp_plan (which splits the text and its mask, and then fails in the cross-attention)
    cp_plan="radial_diffusers.parallel:ltx_video_plan",
    cp_local=_transformer_blocks_attn2,
    features=("inference", "training", "dfloat11", "quantization", "multi-gpu"),
    training="radial_diffusers.training_adapters:LTXVideoTraining",
))


LTX2 = register_family(ModelFamily(
    name="ltx2",
    label="LTX-2",
    transformer_classes=("LTX2VideoTransformer3DModel",),
    pipelines=("LTX2Pipeline", "LTX2ImageToVideoPipeline"),
    image_to_video={"LTX2Pipeline": "LTX2ImageToVideoPipeline"},  # Lightricks/LTX-2 loads as LTX2Pipeline
    # one class for both block kinds (perturbed_attn: LTX-2.3's spatio-temporal guidance; see its docstring)
    processor="radial_diffusers.processors:RadialLTX2AttnProcessor",
    # the video self-attention (attn1); the audio self-attention never sees the long video. Calls whose tokens are
    # not the grid (keyframe / reference tokens appended: the condition, IC-LoRA and HDR pipelines) run the stock one
    **_LTX_VIDEO_TOKENS,
    df11_pattern={
        r"transformer_blocks\.\d+": [
            f"{attn}.{linear}"
            for attn in ("attn1", "audio_attn1", "attn2", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
            for linear in ("to_q", "to_k", "to_v", "to_out.0", "to_gate_logits")
        ] + ["ff.net.0.proj", "ff.net.2", "audio_ff.net.0.proj", "audio_ff.net.2"],
    },
    # the audio stream's own embedders and output, the audio-video cross-attention modulation, the prompt AdaLN
    # (LTX-2.3) and the per-head attention gates (heads wide) stay in their dtype
    quant_exclude=(*GENERIC_QUANT_EXCLUDE,
                   r"(proj_in|audio_proj_in|audio_caption_projection|audio_time_embed|av_cross_attn_\w+|prompt_adaln"
                   r"|audio_prompt_adaln|audio_norm_out|audio_proj_out)(\..*)?",
                   r".*\.to_gate_logits"),
    tiny=(TinyModel("tiny-ltx2", "radial_diffusers.tiny:tiny_ltx2_pipeline", _LTX2_TINY_KWARGS,
                    geometry=(33, 32, 32)),
          TinyModel("tiny-ltx2-i2v", "radial_diffusers.tiny:tiny_ltx2_i2v_pipeline", _LTX2_I2V_TINY_KWARGS,
                    image_to_video=True, geometry=(33, 32, 32))),
    hub_ids=("Lightricks/LTX-2",),
    cp_note=("no context-parallel plan: radial-diffusers has none for LTX2VideoTransformer3DModel yet (its audio "
             "stream attends to every video token through the video-to-audio cross-attention, which a plan that "
             "splits the video must gather for it; untested)"),
    features=("inference", "dfloat11", "quantization"),
))


MOCHI = register_family(ModelFamily(
    name="mochi",
    label="Mochi",
    min_steps=2,
    transformer_classes=("MochiTransformer3DModel",),
    pipelines=("MochiPipeline",),
    processor="radial_diffusers.processors:RadialMochiAttnProcessor",
    attention_modules=_transformer_blocks_attn1,
    patch_size=_temporal_spatial_patch,
    # the official repository's Mochi script is a stub that sets only these two (Mochi is a TODO in its README); no
    # decay factor is passed, so its default, 1.0, applies
    preset=Preset(dense_layers=0, dense_steps=12 / 64, decay_factor=1.0,
                  source="official scripts/mochi_t2v_inference.sh (warmup_timesteps=12 of Mochi's 64 steps, "
                         "warmup_layers=0; a stub, Mochi support is a TODO upstream)"),
    forward=ForwardArgs(text="encoder_hidden_states", text_mask="encoder_attention_mask"),
    text_position="after",
    mask_rule="hunyuan",
    sink=False,
    mask_text_tokens=256,
    vae_temporal=6,
    vae_spatial=8,
    # the last block (context_pre_only) has no text output path (to_add_out, ff_context) and norm1_context.linear_1
    # for norm1_context.linear: default_pattern gives it a unit of its own kind
    df11_pattern={
        r"transformer_blocks\.\d+": [
            "norm1.linear", "norm1_context.linear", "norm1_context.linear_1", "attn1.to_q", "attn1.to_k",
            "attn1.to_v", "attn1.add_q_proj", "attn1.add_k_proj", "attn1.add_v_proj", "attn1.to_out.0",
            "attn1.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
        ],
    },
    # not the caption attention-pool (time_embed.pooler: to_q and to_kv): it never sees the video
    lora_targets=r"^(?!time_embed\.).*\.(to_q|to_k|to_v|to_out\.0)",
    tiny=(TinyModel("tiny-mochi", "radial_diffusers.tiny:tiny_mochi_pipeline", (("max_sequence_length", 16),),
                    geometry=(49, 64, 64)),),
    default_fps=30,
    hub_ids=("genmo/mochi-1-preview",),
    cp_plan="radial_diffusers.parallel:mochi_plan",
    features=("inference", "training", "dfloat11", "quantization", "multi-gpu"),
    training="radial_diffusers.training_adapters:MochiTraining",
))


def _wan_vace_attention(transformer) -> list:
    """The main blocks' self-attention, then the VACE blocks' (the control tokens share the video's token grid, so
    the same layout serves them); layer indices continue, so ``dense_layers`` counts main blocks first."""
    main = _wan_attention(transformer)
    offset = len(main)
    return main + [(offset + i, block.attn1) for i, block in enumerate(transformer.vace_blocks)]


def _wan_vace_cross_attention(transformer) -> list:
    """``attn2`` of the main and the control blocks: the cross-attention over the text (and image)."""
    return [block.attn2 for block in [*transformer.blocks, *transformer.vace_blocks]]


WAN_VACE = register_family(ModelFamily(
    name="wan-vace",
    label="Wan VACE",
    transformer_classes=("WanVACETransformer3DModel",),
    pipelines=("WanVACEPipeline",),
    processor="radial_diffusers.processors:RadialWanAttnProcessor",
    attention_modules=_wan_vace_attention,
    patch_size=_wan_patch,
    preset=Preset(dense_layers=1, dense_steps=12 / 50, decay_factor=0.2,
                  source="Wan2.1's official settings (VACE is Wan2.1 with control blocks; no official VACE setting)"),
    forward=ForwardArgs(),
    text_position="none",
    mask_rule="wan",
    sink=True,
    df11_pattern={
        r"blocks\.\d+": WAN.df11_pattern[r"blocks\.\d+"],
        # proj_in: the first control block only (default_pattern gives it a unit of its own kind)
        r"vace_blocks\.\d+": [
            "proj_in", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
            "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2", "proj_out",
        ],
    },
    quant_exclude=(*GENERIC_QUANT_EXCLUDE, r"vace_patch_embedding(\..*)?"),
    tiny=(TinyModel("tiny-wan-vace", "radial_diffusers.tiny:tiny_wan_vace_pipeline",
                    (("max_sequence_length", _WAN_MAX_SEQUENCE_LENGTH),)),
          TinyModel("tiny-wan2.2-vace", "radial_diffusers.tiny:tiny_wan22_vace_pipeline",
                    (("max_sequence_length", _WAN_MAX_SEQUENCE_LENGTH),))),
    default_fps=16,
    hub_ids=("Wan-AI/Wan2.1-VACE-1.3B-diffusers", "Wan-AI/Wan2.1-VACE-14B-diffusers"),
    # Wan2.2 VACE-Fun A14B: WanVACEPipeline(transformer=..., transformer_2=..., boundary_ratio=...), the Wan2.2 A14B
    # experts with VACE control blocks
    experts=("transformer", "transformer_2"),
    variants=(
        Variant("wan2.2-vace", "Wan2.2 VACE-Fun A14B (two experts)", _WAN22_A14B_PRESET, _is_wan22_a14b,
                pipelines=("WanVACEPipeline",), hub_ids=("linoyts/Wan2.2-VACE-Fun-14B-diffusers",),
                features=("inference", "quantization", "multi-gpu"), tiny="tiny-wan2.2-vace"),
    ),
    cp_plan="radial_diffusers.parallel:wan_vace_plan",
    cp_local=_wan_vace_cross_attention,
    features=("inference", "dfloat11", "quantization", "multi-gpu"),
))


def _hunyuan15_attention(transformer) -> list:
    """``transformer_blocks[i].attn``: the dual-stream joint attention over ``[video, text]``. The token refiner's
    attention (``context_embedder.token_refiner``) keeps its stock processor: it never sees the video."""
    return [(i, block.attn) for i, block in enumerate(transformer.transformer_blocks)]


HUNYUAN_VIDEO_15 = register_family(ModelFamily(
    name="hunyuan1.5",
    label="HunyuanVideo-1.5",
    transformer_classes=("HunyuanVideo15Transformer3DModel",),
    pipelines=("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline"),
    processor="radial_diffusers.processors:RadialHunyuanVideo15AttnProcessor",
    attention_modules=_hunyuan15_attention,
    patch_size=_temporal_spatial_patch,
    preset=Preset(dense_layers=0, dense_steps=12 / 50, decay_factor=0.95,
                  source="ours: HunyuanVideo's official settings (same [video, text] joint attention; no official "
                         "HunyuanVideo-1.5 setting)"),
    # the joint text is [Qwen2.5-VL tokens, ByT5 glyph tokens, SigLIP image tokens] (each sample's valid ones first)
    forward=ForwardArgs(text=("encoder_hidden_states", "encoder_hidden_states_2", "image_embeds"),
                        text_mask="encoder_attention_mask"),
    text_position="after",
    mask_rule="hunyuan",
    sink=False,
    mask_text_tokens=1000 + 256 + 729,  # the pipeline's tokenizer_max_length + tokenizer_2_max_length + image tokens
    mask_patch=(1, 1, 1),
    vae_temporal=4,
    vae_spatial=16,
    df11_pattern={
        # the dual-stream blocks of HunyuanVideo, Linear for Linear
        r"transformer_blocks\.\d+": HUNYUAN_VIDEO.df11_pattern[r"transformer_blocks\.\d+"],
    },
    quant_exclude=(*GENERIC_QUANT_EXCLUDE, r"(image_embedder|context_embedder_2|cond_type_embed)(\..*)?"),
    lora_targets=HUNYUAN_VIDEO.lora_targets,  # not the text token refiner's attention: it never sees the video
    tiny=(
        TinyModel("tiny-hunyuan1.5", "radial_diffusers.tiny:tiny_hunyuan15_pipeline", geometry=(17, 128, 128)),
        # the image-to-video pipeline takes no height / width: a square image gives target_size x target_size (128)
        TinyModel("tiny-hunyuan1.5-i2v", "radial_diffusers.tiny:tiny_hunyuan15_i2v_pipeline", image_to_video=True,
                  geometry=(17, 128, 128)),
    ),
    default_fps=24,
    hub_ids=("hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v",
             "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v",
             "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_i2v",
             "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_i2v"),
    # HunyuanVideo's plan fits: the streams split at the first block, after the transformer has reordered the text
    cp_plan="radial_diffusers.parallel:hunyuan_video_plan",
    features=("inference", "training", "dfloat11", "quantization", "multi-gpu"),
    training="radial_diffusers.training_adapters:HunyuanVideo15Training",
))


def _skyreels_frames_per_block(transformer) -> int:
    """SkyReels-V2: the diffusion-forcing pipelines write ``causal_block_size`` into ``config.num_frame_per_block``
    (``_set_ar_attention``); above 1 the transformer passes a block-causal frame mask to every ``attn1``."""
    return int(getattr(transformer.config, "num_frame_per_block", 1) or 1)


_SKYREELS_TINY_KWARGS = (("max_sequence_length", _WAN_MAX_SEQUENCE_LENGTH),)

SKYREELS_V2 = register_family(ModelFamily(
    name="skyreels-v2",
    label="SkyReels-V2",
    transformer_classes=("SkyReelsV2Transformer3DModel",),
    pipelines=("SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline", "SkyReelsV2DiffusionForcingPipeline",
               "SkyReelsV2DiffusionForcingImageToVideoPipeline", "SkyReelsV2DiffusionForcingVideoToVideoPipeline"),
    processor="radial_diffusers.processors:RadialSkyReelsV2AttnProcessor",
    attention_modules=_wan_attention,  # blocks[i].attn1: Wan2.1's attention
    patch_size=_wan_patch,
    preset=Preset(dense_layers=1, dense_steps=12 / 50, decay_factor=0.2,
                  source="Wan2.1's official settings (SkyReels-V2 is a Wan2.1-architecture model; no official "
                         "SkyReels-V2 setting)"),
    # timestep: (B,) or, under diffusion forcing, per frame (B, F): the hook steps on its max (the noisiest frame),
    # so a call is dense while any of its frames is in the dense phase
    forward=ForwardArgs(),
    text_position="none",
    mask_rule="wan",
    sink=True,
    df11_pattern=WAN.df11_pattern,
    quant_exclude=(*GENERIC_QUANT_EXCLUDE, r"(fps_embedding|fps_projection)(\..*)?"),
    tiny=(
        TinyModel("tiny-skyreels-v2", "radial_diffusers.tiny:tiny_skyreels_v2_pipeline", _SKYREELS_TINY_KWARGS),
        TinyModel("tiny-skyreels-v2-i2v", "radial_diffusers.tiny:tiny_skyreels_v2_i2v_pipeline",
                  _SKYREELS_TINY_KWARGS, image_to_video=True),
        # the DF pipelines need overlap_history for a video longer than base_num_frames (97): a long-video demo
        TinyModel("tiny-skyreels-v2-df", "radial_diffusers.tiny:tiny_skyreels_v2_df_pipeline",
                  (*_SKYREELS_TINY_KWARGS, ("overlap_history", 17))),
    ),
    default_fps=24,
    hub_ids=("Skywork/SkyReels-V2-T2V-14B-540P-Diffusers", "Skywork/SkyReels-V2-T2V-14B-720P-Diffusers",
             "Skywork/SkyReels-V2-I2V-1.3B-540P-Diffusers", "Skywork/SkyReels-V2-I2V-14B-540P-Diffusers",
             "Skywork/SkyReels-V2-I2V-14B-720P-Diffusers", "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers",
             "Skywork/SkyReels-V2-DF-14B-540P-Diffusers", "Skywork/SkyReels-V2-DF-14B-720P-Diffusers"),
    cp_plan="radial_diffusers.parallel:skyreels_v2_plan",
    cp_local=_blocks_attn2,
    # after the gather at norm_out every rank runs the output modulation on the whole sequence: the gradients of
    # proj_out, the transformer's own scale_shift_table ("") and the time embedder that feeds it (a whole part, plus
    # each rank's through the blocks) are not the sum of the ranks' shard gradients
    cp_replicated=(r"proj_out(\..*)?", r"", r"condition_embedder\.time_embedder(\..*)?"),
    features=("inference", "training", "dfloat11", "quantization", "multi-gpu"),
    training="radial_diffusers.training_adapters:SkyReelsV2Training",
    frame_causal=_skyreels_frames_per_block,
))


def _kandinsky5_attention(transformer) -> list:
    """``visual_transformer_blocks[i].self_attention``: the video self-attention (the text encoder blocks'
    self-attention never sees the video; ``cross_attention`` attends the text)."""
    return [(i, block.self_attention) for i, block in enumerate(transformer.visual_transformer_blocks)]


def _kandinsky5_tile(config) -> int:
    """NABLA checkpoints order each frame's tokens in 8 x 8 tiles (``fractal_flatten``): sides of whole tiles."""
    return 8 if getattr(config, "attention_type", None) == "nabla" else 1


def _kandinsky5_whole_text(transformer) -> list:
    """The attention over the text, whole on every rank under :func:`~radial_diffusers.parallel.kandinsky5_plan`: the
    text encoder blocks' self-attention and the visual blocks' cross-attention."""
    return ([block.self_attention for block in transformer.text_transformer_blocks]
            + [block.cross_attention for block in transformer.visual_transformer_blocks])


_KANDINSKY5_ATTENTION_LINEARS = ["self_attention.to_query", "self_attention.to_key", "self_attention.to_value",
                                 "self_attention.out_layer"]
_KANDINSKY5_FF_LINEARS = ["feed_forward.in_layer", "feed_forward.out_layer"]
# the tiny pipelines' Qwen text after the template crop; the default negative prompt fits it untruncated
_KANDINSKY5_TINY_KWARGS = (("max_sequence_length", 32),)

KANDINSKY5 = register_family(ModelFamily(
    name="kandinsky5",
    label="Kandinsky 5.0 Video",
    transformer_classes=("Kandinsky5Transformer3DModel",),
    pipelines=("Kandinsky5T2VPipeline", "Kandinsky5I2VPipeline"),
    processor="radial_diffusers.processors:RadialKandinsky5AttnProcessor",
    attention_modules=_kandinsky5_attention,
    patch_size=_wan_patch,
    preset=_OUR_PRESET,
    # the latent comes channels last, (B, F, H, W, C) (C: the noise latent, then with visual_cond a condition latent
    # and a mask: zeros, the mask 1 on the image's frame 0 in image-to-video)
    forward=ForwardArgs(layout="BFHWC"),
    text_position="none",
    mask_rule="wan",
    sink=True,
    vae_temporal=4,
    vae_spatial=8,  # HunyuanVideo's VAE
    pipeline_side=16,  # check_inputs: height and width multiples of 16
    side_tokens=_kandinsky5_tile,
    # normalize_first_frame: the first 4 latent frames against the next ones, which must exist (else NaN frames)
    min_frames={"Kandinsky5I2VPipeline": (17, "it normalises its first 4 latent frames by the ones after them: "
                                              "with 4 or fewer latent frames its video is NaN")},
    # the modulation Linears are _keep_in_fp32_modules (FP32 in a BF16 model): DF11 is a BF16 format, they stay
    df11_pattern={
        r"visual_transformer_blocks\.\d+": [
            *_KANDINSKY5_ATTENTION_LINEARS, "cross_attention.to_query", "cross_attention.to_key",
            "cross_attention.to_value", "cross_attention.out_layer", *_KANDINSKY5_FF_LINEARS,
        ],
        r"text_transformer_blocks\.\d+": [*_KANDINSKY5_ATTENTION_LINEARS, *_KANDINSKY5_FF_LINEARS],
    },
    quant_exclude=(*GENERIC_QUANT_EXCLUDE,
                   r"(time_embeddings|text_embeddings|pooled_text_embeddings|visual_embeddings|out_layer)(\..*)?",
                   r".*\.(text_modulation|visual_modulation)(\..*)?"),
    # the visual blocks' attention (self and cross); the text encoder blocks never see the video
    lora_targets=(r"visual_transformer_blocks\.\d+\.(self_attention|cross_attention)"
                  r"\.(to_query|to_key|to_value|out_layer)"),
    tiny=(TinyModel("tiny-kandinsky5", "radial_diffusers.tiny:tiny_kandinsky5_pipeline", _KANDINSKY5_TINY_KWARGS),
          TinyModel("tiny-kandinsky5-i2v", "radial_diffusers.tiny:tiny_kandinsky5_i2v_pipeline",
                    _KANDINSKY5_TINY_KWARGS, image_to_video=True)),
    default_fps=24,
    hub_ids=("kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers",
             "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-10s-Diffusers",
             "kandinskylab/Kandinsky-5.0-T2V-Pro-sft-5s-Diffusers",
             "kandinskylab/Kandinsky-5.0-I2V-Pro-sft-5s-Diffusers"),
    # ours (Diffusers 0.42 has none); the text stays whole on every rank: its blocks and the cross-attention attend
    # locally
    cp_plan="radial_diffusers.parallel:kandinsky5_plan",
    cp_local=_kandinsky5_whole_text,
    # after the gather (the transformer restores the grid order of the whole sequence first), and what feeds it
    cp_replicated=(r"out_layer(\..*)?", r"time_embeddings(\..*)?", r"pooled_text_embeddings(\..*)?"),
    features=("inference", "training", "dfloat11", "quantization", "multi-gpu"),
    training="radial_diffusers.training_adapters:Kandinsky5Training",
))


_COSMOS_BLOCK_LINEARS = [
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
    "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "attn2.q_img", "attn2.k_img", "attn2.v_img",  # (Transfer2.5)
    # the blocks' adaptive-norm (adaLN-LoRA) Linears: BF16 in the released checkpoints, about 9% of a block
    "norm1.linear_1", "norm1.linear_2", "norm2.linear_1", "norm2.linear_2", "norm3.linear_1", "norm3.linear_2",
]


def _cosmos_max_grid(config) -> tuple[int, int, int]:
    """Cosmos' RoPE table has ``max(max_size / patch)`` positions (128 in the released checkpoints), shared by the
    three axes; Cosmos 1.0's learnable position embedding holds ``max_size / patch`` per axis."""
    axes = [int(m) // int(p) for m, p in zip(config.max_size, config.patch_size)]
    return tuple(axes) if config.extra_pos_embed_type == "learnable" else (max(axes),) * 3


def _cosmos_max_frames(pipeline) -> tuple[int, str] | None:
    """Cosmos 1.0's pipelines un-normalise the latents with the VAE's ``latents_mean`` / ``latents_std`` per channel
    and latent frame (16 x 16 values in the released VAE config and Diffusers' default: 16 latent frames, 121
    frames): a longer video fails in their decode. Predict2's and Predict2.5's Wan VAE holds one value per channel."""
    vae = getattr(pipeline, "vae", None)
    config = getattr(vae, "config", None)
    mean = getattr(config, "latents_mean", None)
    channels = getattr(config, "latent_channels", None) or getattr(config, "z_dim", None)
    if not mean or not channels or len(mean) <= channels:
        return None
    latent = len(mean) // channels
    frames = (latent - 1) * int(getattr(pipeline, "vae_scale_factor_temporal", 8)) + 1
    return frames, (f"its VAE's latent statistics (latents_mean / latents_std) cover {latent} latent frames, and the "
                    "pipeline fails decoding more")


def _cosmos_missing_dependency(pipeline, image: bool) -> str | None:
    """torchvision, which the released Cosmos transformers (``concat_padding_mask``) resize their padding mask with
    and Predict2.5's pipeline converts an ``image`` with, where it is not installed."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        return None
    fix = "which is not installed: pip install torchvision (the release built for your torch version)"
    transformer = pipeline_transformer(pipeline)
    if getattr(getattr(transformer, "config", None), "concat_padding_mask", False):
        return f"{type(transformer).__name__} with concat_padding_mask resizes its padding mask with torchvision, {fix}"
    if image and type(pipeline).__name__ in COSMOS.image_optional:
        return f"{type(pipeline).__name__} converts its image with torchvision, {fix}"
    return None


# Predict2 T5 tokens; Predict2.5 takes 32 (its chat template's system message fills the first 18)
_COSMOS_TINY_KWARGS = (("max_sequence_length", 16),)

COSMOS = register_family(ModelFamily(
    name="cosmos",
    label="Cosmos",
    transformer_classes=("CosmosTransformer3DModel",),
    pipelines=("Cosmos2VideoToWorldPipeline", "Cosmos2_5_PredictBasePipeline", "CosmosTextToWorldPipeline"),
    image_optional=("Cosmos2_5_PredictBasePipeline",),
    processor="radial_diffusers.processors:RadialCosmosAttnProcessor",
    attention_modules=_transformer_blocks_attn1,
    patch_size=_wan_patch,
    preset=_OUR_PRESET,
    # (B, C, F, H, W) latents; the pipelines add the condition mask channel themselves. Predict2 and Predict2.5 pass
    # a sigma-like level per frame, (B, 1, F, 1, 1), not their schedule's timestep (Cosmos 1.0 passes that, (B,))
    forward=ForwardArgs(schedule_units=False),
    text_position="none",
    mask_rule="wan",
    # video-to-world: the given frames lead the video
    sink=True,
    vae_temporal=4,
    vae_spatial=8,  # Wan2.1's VAE (Predict2, Predict2.5; Cosmos 1.0's is x8 x8, which its pipelines say)
    pipeline_side=16,  # check_inputs: height and width multiples of 16
    max_grid=_cosmos_max_grid,
    max_frames=_cosmos_max_frames,
    missing_dependency=_cosmos_missing_dependency,
    df11_pattern={r"transformer_blocks\.\d+": _COSMOS_BLOCK_LINEARS},
    quant_exclude=(*GENERIC_QUANT_EXCLUDE, r"(crossattn_proj|img_context_proj|learnable_pos_embed)(\..*)?"),
    tiny=(TinyModel("tiny-cosmos2", "radial_diffusers.tiny:tiny_cosmos2_pipeline", _COSMOS_TINY_KWARGS,
                    image_to_video=True),
          # Cosmos 1.0: x8 temporal VAE (8k+1 frames, at most 121: its per-frame latent statistics), learnable
          # position embedding, EDM timesteps per sample
          TinyModel("tiny-cosmos1", "radial_diffusers.tiny:tiny_cosmos1_pipeline", _COSMOS_TINY_KWARGS,
                    geometry=(25, 128, 128)),
          TinyModel("tiny-cosmos2.5", "radial_diffusers.tiny:tiny_cosmos25_pipeline", (("max_sequence_length", 32),))),
    default_fps=16,
    # Cosmos 1.0's pipelines condition the RoPE on fps, 30 by default (and Diffusers' example writes 30)
    pipeline_fps={"CosmosTextToWorldPipeline": 30, "CosmosVideoToWorldPipeline": 30},
    hub_ids=("nvidia/Cosmos-Predict2-2B-Video2World", "nvidia/Cosmos-Predict2-14B-Video2World"),
    # ours (Diffusers 0.42 has none); the text stays whole on every rank: the cross-attention attends locally
    cp_plan="radial_diffusers.parallel:cosmos_plan",
    cp_local=_transformer_blocks_attn2,
    stock_cp=False,  # CosmosAttnProcessor2_0 dispatches without the parallel config
    features=("inference", "training", "dfloat11", "quantization", "multi-gpu"),
    # Predict2.5 text-to-world (Predict2's video-to-world pipeline has no LoRA loader in Diffusers 0.42)
    training="radial_diffusers.training_adapters:Cosmos25Training",
))
