"""Low-bit weight quantization of the DiT backbone with torchao (optional extra: ``pip install radial-diffusers[quant]``).

    rd.quantize(pipe.transformer, "int8-weight")                      # in memory
    pipe = WanPipeline.from_pretrained(repo, torch_dtype=torch.bfloat16,                 # at load time
                                       quantization_config=rd.quantization_config("fp8-dynamic",
                                                                                  components=("transformer",)))

Schemes (each a torchao config applied to the ``nn.Linear`` layers that are not excluded):

========================  ===========================================================  =========================
scheme                    torchao config                                               runs on
========================  ===========================================================  =========================
``int8-weight``           ``Int8WeightOnlyConfig()`` (per row)                          any device
``int8-dynamic``          ``Int8DynamicActivationInt8WeightConfig()``                   any device
``fp8-weight``            ``Float8WeightOnlyConfig()`` (e4m3)                           any device
``fp8-dynamic``           ``Float8DynamicActivationFloat8WeightConfig(PerRow())``       CUDA, SM >= 8.9
``int4-weight``           ``Int4WeightOnlyConfig(group_size, "tile_packed_to_4d")``     CUDA, SM >= 8.0
``int4-weight-cpu``       ``IntxWeightOnlyConfig(int4, PerGroup(group_size))``           any device (int4 values
                                                                                       kept unpacked in int8)
========================  ===========================================================  =========================

Excluded by default (:data:`DEFAULT_EXCLUDE`, regexes over module names): the patch embedding, the time / text /
image embedders, every norm (including the adaptive-norm modulation Linears) and the final ``norm_out`` /
``proj_out``. PEFT adapter layers (``lora_A``, ``lora_B``, ``lora_embedding_*``, ``lora_magnitude_vector``, ...) are
never quantized: quantizing a model that already has LoRA adapters quantizes the base layers only and keeps the
adapters in full precision (the QLoRA order, quantize then add the adapter, gives the same model). Quantized Linears
keep their class, so radial attention processors and PEFT LoRA work on top. LoRA *training* needs one of
:data:`LORA_SCHEMES` (see :func:`check_lora_trainable`): the dynamic-activation schemes cut the input gradient, and
PEFT cannot wrap the CUDA ``int4-weight`` tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ._quantized import is_quantized
from .families import GENERIC_QUANT_EXCLUDE, find_family

__all__ = ["SCHEMES", "DEFAULT_EXCLUDE", "LORA_SCHEMES", "quantize", "quantization_config", "supported_schemes",
           "check_scheme", "check_lora_trainable", "lora_refusal", "quantized_scheme", "is_quantized"]

# For a model of no registered family; a family's own list is its registry entry's ``quant_exclude``.
DEFAULT_EXCLUDE = GENERIC_QUANT_EXCLUDE
_ATTR = "_radial_quant_scheme"
_GROUP_SIZES = (16, 32, 64, 128, 256)  # the int4 group sizes worth suggesting


@dataclass(frozen=True)
class Scheme:
    name: str
    weight_only: bool
    needs_cuda: bool
    min_capability: tuple[int, int] | None = None
    description: str = ""
    lora: bool = True  # a LoRA can be trained on this base (see lora_refusal)

    def config(self, group_size: int):
        import torchao.quantization as tq

        if self.name == "int8-weight":
            return tq.Int8WeightOnlyConfig()
        if self.name == "int8-dynamic":
            return tq.Int8DynamicActivationInt8WeightConfig()
        if self.name == "fp8-weight":
            return tq.Float8WeightOnlyConfig()
        if self.name == "fp8-dynamic":
            return tq.Float8DynamicActivationFloat8WeightConfig(granularity=tq.PerRow())
        if self.name == "int4-weight":
            return tq.Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")
        return tq.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=tq.PerGroup(group_size))


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("int8-weight", True, False, description="int8 weights, per-row scales"),
    Scheme("int8-dynamic", False, False, description="int8 weights and per-token int8 activations", lora=False),
    Scheme("fp8-weight", True, False, description="float8 e4m3 weights"),
    Scheme("fp8-dynamic", False, True, (8, 9), "float8 weights and activations (Ada/Hopper and newer)", lora=False),
    Scheme("int4-weight", True, True, (8, 0), "int4 weights, per-group scales, tinygemm packing", lora=False),
    Scheme("int4-weight-cpu", True, False, description="int4 weights per group, stored unpacked in int8"),
)}
#: The schemes a LoRA can be trained on (QLoRA-style, base frozen): weight-only, and a tensor PEFT can wrap.
LORA_SCHEMES: tuple[str, ...] = tuple(n for n, s in SCHEMES.items() if s.lora)


def _device_ok(scheme: Scheme, device: torch.device) -> tuple[bool, str]:
    if not scheme.needs_cuda:
        return True, ""
    if device.type != "cuda":
        return False, f"needs a CUDA GPU{f' with SM >= {scheme.min_capability[0]}.{scheme.min_capability[1]}' if scheme.min_capability else ''}"
    cap = torch.cuda.get_device_capability(device)
    if scheme.min_capability and cap < scheme.min_capability:
        return False, (f"needs SM >= {scheme.min_capability[0]}.{scheme.min_capability[1]}, this GPU is "
                       f"SM {cap[0]}.{cap[1]}")
    return True, ""


def supported_schemes(device: torch.device | str = "cpu") -> list[str]:
    """The schemes that run on ``device``."""
    dev = torch.device(device)
    return [n for n, s in SCHEMES.items() if _device_ok(s, dev)[0]]


def check_scheme(name: str, device: torch.device | str = "cpu") -> None:
    """Raise ``ValueError`` for a scheme that is unknown or does not run on ``device``, ``ImportError`` without
    torchao: what :func:`quantize` would refuse, checked before a model loads."""
    _scheme(name, torch.device(device))


def _scheme(name: str, device: torch.device) -> Scheme:
    if name not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    scheme = SCHEMES[name]
    ok, why = _device_ok(scheme, device)
    if not ok:
        raise ValueError(f"quantization scheme {name!r} is not supported on {device}: it {why}. Supported here: "
                         f"{', '.join(supported_schemes(device))}")
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ImportError("quantization needs torchao: pip install 'radial-diffusers[quant]' (or pip install "
                          "torchao)") from None
    return scheme


def _check_group_size(group_size) -> int:
    """``group_size`` checked: a positive int (the int4 schemes split each weight row into groups of this size)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive integer (e.g. {', '.join(map(str, _GROUP_SIZES))}; CLI: "
                         f"--group-size), got {group_size!r}")
    return group_size


def _refuse_save(model: nn.Module, *args, **kwargs):
    raise RuntimeError(
        f"{type(model).__name__}.save_pretrained() after radial_diffusers.quantize(): a model quantized in memory "
        "cannot be saved (its config does not record the torchao scheme, so the files would not reload). Nothing was "
        "written. Quantize while loading instead and save that model: from_pretrained(..., quantization_config="
        "rd.quantization_config(scheme)), or the CLI `radial-diffusers quantize MODEL OUT --scheme ...`"
    )


def _excluded(fqn: str, patterns) -> bool:
    return any(re.fullmatch(p, fqn) for p in patterns)


def _patterns(exclude, module: nn.Module | None = None) -> tuple[str, ...]:
    """``exclude`` checked, or the default: the exclusions of ``module``'s family, else :data:`DEFAULT_EXCLUDE`."""
    if exclude is None:
        family = find_family(module) if module is not None else None
        exclude = family.quant_exclude if family is not None else DEFAULT_EXCLUDE
    patterns = tuple(exclude)
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"bad exclude regex {p!r}: {exc}") from None
    return patterns


def _adapter_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module-name prefixes (``"blocks.0.attn1.to_q.lora_A."``) of the PEFT adapter modules of ``model``: every child
    of a tuner layer except its ``base_layer`` (lora_A, lora_B, lora_embedding_A/B, lora_magnitude_vector,
    lora_dropout, and the other tuners' equivalents)."""
    out = []
    for fqn, module in model.named_modules():
        if callable(getattr(module, "get_base_layer", None)):
            for child, _ in module.named_children():
                if child != "base_layer":
                    out.append(f"{fqn}.{child}." if fqn else f"{child}.")
    return tuple(out)


def _plan_targets(model: nn.Module, patterns, scheme: str, group_size: int, *, check_dfloat11: bool = False
                  ) -> tuple[list[str], list[str]]:
    """(Linears to quantize, Linears skipped because ``group_size`` does not divide their input size).

    Skipped without a word: excluded names (matched with ``.base_layer`` removed, so an exclusion names a Linear
    whether or not PEFT wraps it) and PEFT adapter layers. Raises ``ValueError`` when nothing is left, or when a
    Linear to quantize already holds a torchao-quantized weight (or, with ``check_dfloat11``, a DF11 one).
    """
    from .dfloat11.hooks import is_compressed_linear

    int4 = scheme.startswith("int4")
    adapters = _adapter_prefixes(model)
    targets: list[str] = []
    indivisible: list[str] = []
    for fqn, module in model.named_modules():
        if not isinstance(module, nn.Linear) or (fqn + ".").startswith(adapters):
            continue
        if _excluded(".".join(part for part in fqn.split(".") if part != "base_layer"), patterns):
            continue
        if check_dfloat11 and is_compressed_linear(module):
            raise ValueError(f"{fqn} is DFloat11-compressed: DF11 and quantization are alternatives per weight. "
                             "Exclude it (exclude=[...]) or call radial_diffusers.dfloat11.decompress first")
        weight = module.__dict__.get("_parameters", {}).get("weight")
        if is_quantized(weight):
            raise ValueError(f"{fqn} is already torchao-quantized ({type(weight).__name__}): a weight is quantized "
                             f"once. Exclude it (exclude=[..., {re.escape(fqn)!r}]) or start from the unquantized "
                             "model")
        if int4 and module.in_features % group_size:
            indivisible.append(fqn)
            continue
        targets.append(fqn)
    if not targets:
        raise ValueError(_nothing_left(model, indivisible, group_size))
    return targets, indivisible


def _nothing_left(model: nn.Module, indivisible: list[str], group_size: int) -> str:
    """Why :func:`_plan_targets` found nothing to quantize, with the group sizes that would work."""
    what = f"no Linear of {type(model).__name__} is left to quantize"
    if not indivisible:
        return f"{what}: the exclusions match every Linear (exclude=...)"
    sizes = sorted({model.get_submodule(fqn).in_features for fqn in indivisible})
    works = [g for g in _GROUP_SIZES if any(size % g == 0 for size in sizes)]
    fix = (f"use a group size that divides one of them: {', '.join(map(str, works))}" if works
           else "no usual group size divides them; use int8-weight or fp8-weight")
    return (f"{what}: group_size={group_size} (CLI: --group-size) divides none of the input sizes "
            f"({', '.join(map(str, sizes))}) of its {len(indivisible)} quantizable Linears; {fix}")


def quantized_scheme(model: nn.Module) -> str | None:
    """The scheme :func:`quantize` applied to ``model`` (or that its Linears carry), else ``None``."""
    name = getattr(model, _ATTR, None)
    if name is not None:
        return name
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is not None:
        quant_type = getattr(config, "quant_type", None) or (config.get("quant_type") if isinstance(config, dict)
                                                             else None)
        return f"torchao:{type(quant_type).__name__ if not isinstance(quant_type, dict) else 'config'}"
    return None


def quantize(transformer: nn.Module, scheme: str, *, exclude: list[str] | tuple[str, ...] | None = None,
             group_size: int = 128) -> nn.Module:
    """Quantize the Linear weights of ``transformer`` in place with torchao; returns it.

    Args:
        transformer: a Diffusers transformer (any ``nn.Module``), on the device it will run on.
        scheme: one of :data:`SCHEMES` (``int8-weight``, ``int8-dynamic``, ``fp8-weight``, ``fp8-dynamic``,
            ``int4-weight``, ``int4-weight-cpu``).
        exclude: regexes over module names (``re.fullmatch``) left in their dtype; default :data:`DEFAULT_EXCLUDE`.
            Pass ``[*rd.quant.DEFAULT_EXCLUDE, "blocks\\.0\\..*"]`` to add to the defaults.
        group_size: group size of the int4 schemes; a Linear whose input size it does not divide stays unquantized.

    Raises ``ValueError`` (before anything changes) for an unknown scheme, a scheme the device cannot run (naming
    those it can), a ``group_size`` that is not a positive int, a model already quantized (by this function, at load
    time, or a Linear quantized with torchao's ``quantize_`` directly), or a Linear that is DFloat11-compressed (DF11
    and quantization are alternatives per weight: exclude it or ``decompress`` first).

    The quantized model's ``save_pretrained`` raises a clear ``RuntimeError`` without writing anything (its config
    would not say how to reload the torchao weights): quantize at load time (:func:`quantization_config`) to save.

    Example:
        >>> import radial_diffusers as rd                                       # doctest: +SKIP
        >>> rd.quantize(pipe.transformer, "int8-weight")                        # doctest: +SKIP
    """
    import functools

    _check_group_size(group_size)
    param = next((p for p in transformer.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    spec = _scheme(scheme, device)
    if quantized_scheme(transformer) is not None:
        raise ValueError(f"{type(transformer).__name__} is already quantized ({quantized_scheme(transformer)})")
    patterns = _patterns(exclude, transformer)
    targets, _ = _plan_targets(transformer, patterns, scheme, group_size, check_dfloat11=True)
    chosen = set(targets)
    from torchao.quantization import quantize_  # after _scheme: without torchao, its error names the extra

    quantize_(transformer, spec.config(group_size), filter_fn=lambda m, fqn: fqn in chosen)
    object.__setattr__(transformer, _ATTR, scheme)
    if hasattr(transformer, "save_pretrained"):  # refused before anything is written (partial: deepcopy rebinds it)
        object.__setattr__(transformer, "save_pretrained", functools.partial(_refuse_save, transformer))
    return transformer


def _structure(model, component: str | None) -> nn.Module:
    """The module whose Linears :func:`quantization_config` inspects: ``model`` itself, a pipeline's component, or a
    model built on the meta device from a config dict / local folder / Hub id (only ``config.json`` is read)."""
    from ._empty import empty_model

    if isinstance(model, nn.Module):
        return model
    if isinstance(model, dict):
        return empty_model(model)
    if hasattr(model, "components") and isinstance(getattr(model, "components"), dict):  # a DiffusionPipeline
        module = model.components.get(component or "transformer")
        if not isinstance(module, nn.Module):
            raise ValueError(f"the pipeline has no {component or 'transformer'!r} model to quantize")
        return module
    try:
        return empty_model(model, component)
    except (OSError, ValueError) as exc:
        raise ValueError(f"model={str(model)!r}: cannot read the config of the model to quantize"
                         f"{f' (subfolder {component!r})' if component else ''}: {str(exc).splitlines()[0]}") from None


def quantization_config(scheme: str, *, exclude: list[str] | tuple[str, ...] | None = None, group_size: int = 128,
                        device: torch.device | str | None = None, components: tuple[str, ...] | None = None,
                        model=None):
    """A Diffusers config that quantizes at load time: ``TorchAoConfig`` for a model's ``from_pretrained``, or, with
    ``components`` (e.g. ``("transformer",)``), a ``PipelineQuantizationConfig`` for a pipeline's.

    ``device`` (default: CUDA if available) is only used to check that the scheme can run there; load with
    ``device_map`` on that device (int4-weight packs its weights only on CUDA). Exclusions are regexes as in
    :func:`quantize` (torchao ``FqnToConfig`` entries mapped to ``None``).

    ``model`` (recommended for the int4 schemes): the model that will be loaded, so the config skips exactly the
    Linears :func:`quantize` skips, i.e. also those whose input size ``group_size`` does not divide (exact-name
    entries mapped to ``None``). Give the module itself (it may be on the meta device), its config dict, or the local
    folder / Hub id ``from_pretrained`` will read (only ``config.json`` is read; with ``components``, the pipeline
    folder / Hub id or a pipeline object, and each component's config is read from its subfolder). Without it such
    Linears cannot be known in advance: torchao then fails on them during ``from_pretrained`` with an
    ``AssertionError`` ("... to be divisible by block_size ..."). With it, a model left with nothing to quantize is a
    ``ValueError`` here.

    Example:
        >>> from diffusers import WanPipeline, WanTransformer3DModel                # doctest: +SKIP
        >>> t = WanTransformer3DModel.from_pretrained(                               # doctest: +SKIP
        ...     repo, subfolder="transformer", torch_dtype=torch.bfloat16,
        ...     quantization_config=rd.quantization_config("int8-weight"))
        >>> config = rd.quantization_config(                                         # doctest: +SKIP
        ...     "int4-weight-cpu", model=repo, components=("transformer",))
        >>> pipe = WanPipeline.from_pretrained(                                      # doctest: +SKIP
        ...     repo, quantization_config=config, torch_dtype=torch.bfloat16)
    """
    import warnings

    from diffusers import TorchAoConfig

    _check_group_size(group_size)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = _scheme(scheme, dev)
    from torchao.quantization import FqnToConfig

    _patterns(exclude)  # a bad regex fails before any model is read

    def config_for(component: str | None):
        structure = _structure(model, component) if model is not None else None
        patterns = _patterns(exclude, structure)
        mapping = {f"re:{p}": None for p in patterns}
        if structure is not None:
            _, skipped = _plan_targets(structure, patterns, scheme, group_size)
            mapping.update({fqn: None for fqn in skipped})
        mapping["_default"] = spec.config(group_size)
        with warnings.catch_warnings():  # "_default is deprecated" (torchao 0.18): Diffusers 0.42 resolves it itself
            warnings.filterwarnings("ignore", message=".*_default is deprecated.*")
            return TorchAoConfig(FqnToConfig(mapping))

    if components is None:
        return config_for(None)
    from diffusers.quantizers import PipelineQuantizationConfig

    if isinstance(model, nn.Module) and len(components) > 1:
        raise ValueError("model= is one module but several components are listed: pass the pipeline (object, folder "
                         "or Hub id) instead")
    return PipelineQuantizationConfig(quant_mapping={
        name: config_for(None if isinstance(model, nn.Module) else name) for name in components})


def _refusal(kind: str, what: str) -> str:
    """Why a LoRA cannot be trained on ``what``: ``kind`` "dynamic" (activation quantization) or "int4" (CUDA int4)."""
    allowed = ", ".join(LORA_SCHEMES)
    if kind == "dynamic":
        return (f"{what} quantizes activations, and torchao's dynamic schemes cut the input gradient (LoRA "
                f"gradients would be silently wrong); use a weight-only scheme that allows LoRA: {allowed}")
    return (f"{what} stores torchao's CUDA int4 tensor, which PEFT cannot wrap in a LoRA layer; use a scheme that "
            f"allows LoRA: {allowed} (int4-weight-cpu is the int4 scheme for LoRA training)")


def lora_refusal(scheme: str) -> str | None:
    """Why a LoRA cannot be trained on a base quantized with ``scheme`` (``None`` when it can: :data:`LORA_SCHEMES`).

    For configuration checks made before the model is loaded; :func:`check_lora_trainable` checks a model.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    spec = SCHEMES[scheme]
    if spec.lora:
        return None
    return _refusal("int4" if spec.weight_only else "dynamic", scheme)


def _int4_packed(weight) -> bool:
    """A torchao CUDA int4 tensor (Int4Tensor, Int4TilePackedTo4dTensor, Int4PreshuffledTensor, ...)."""
    return is_quantized(weight) and type(weight).__name__.startswith("Int4")


def check_lora_trainable(transformer: nn.Module) -> None:
    """Raise ``ValueError`` unless a LoRA can be trained on ``transformer``'s quantized base (one of
    :data:`LORA_SCHEMES`): dynamic-activation schemes (torchao 0.18) return outputs detached from their input, which
    silently drops the gradient that flows through the quantized Linears (wrong LoRA gradients in every earlier
    layer), and the CUDA ``int4-weight`` tensor is one PEFT cannot wrap. Call it before adding the adapters."""
    scheme = getattr(transformer, _ATTR, None)
    if scheme is not None and scheme in SCHEMES:
        why = lora_refusal(scheme)
        if why is not None:
            raise ValueError(f"LoRA training on this base is not supported: {why}")
    dynamic, int4 = set(), set()
    for m in transformer.modules():
        w = m.__dict__.get("_parameters", {}).get("weight") if isinstance(m, nn.Linear) else None
        if w is None or not is_quantized(w):
            continue
        act = (getattr(w, "act_quant_kwargs", None) or getattr(w, "activation_quantization", None)
               or getattr(w, "input_quant_func", None))
        if act is not None:
            dynamic.add(type(w).__name__)
        elif _int4_packed(w):
            int4.add(type(w).__name__)
    for kind, names in (("dynamic", dynamic), ("int4", int4)):
        if names:
            raise ValueError("LoRA training on this base is not supported: "
                             + _refusal(kind, f"this base ({', '.join(sorted(names))})"))