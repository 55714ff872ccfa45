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
``proj_out``. Quantized Linears keep their class, so radial attention processors and PEFT LoRA work on top;
LoRA *training* needs a weight-only scheme (see :func:`check_lora_trainable`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SCHEMES", "DEFAULT_EXCLUDE", "quantize", "quantization_config", "supported_schemes",
           "check_lora_trainable", "quantized_scheme", "is_quantized"]

DEFAULT_EXCLUDE = (
    r"(patch_embedding|x_embedder|condition_embedder|time_text_embed|context_embedder|norm_out|proj_out)(\..*)?",
    r"(.*\.)?norm[^.]*(\..*)?",  # norm1, norm2, norm1_context, norm (AdaLayerNorm*.linear modulation), ...
)
_ATTR = "_radial_quant_scheme"


@dataclass(frozen=True)
class Scheme:
    name: str
    weight_only: bool
    needs_cuda: bool
    min_capability: tuple[int, int] | None = None
    description: str = ""

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
    Scheme("int8-dynamic", False, False, description="int8 weights and per-token int8 activations"),
    Scheme("fp8-weight", True, False, description="float8 e4m3 weights"),
    Scheme("fp8-dynamic", False, True, (8, 9), "float8 weights and activations (Ada/Hopper and newer)"),
    Scheme("int4-weight", True, True, (8, 0), "int4 weights, per-group scales, tinygemm packing"),
    Scheme("int4-weight-cpu", True, False, description="int4 weights per group, stored unpacked in int8"),
)}


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


def is_quantized(weight) -> bool:
    """Whether ``weight`` is a torchao quantized tensor (checked without importing torchao)."""
    return type(weight).__module__.startswith("torchao")


def _excluded(fqn: str, patterns) -> bool:
    return any(re.fullmatch(p, fqn) for p in patterns)


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
    those it can), a model already quantized, or a Linear that is DFloat11-compressed (DF11 and quantization are
    alternatives per weight: exclude it or ``decompress`` first).

    Example:
        >>> import radial_diffusers as rd                                       # doctest: +SKIP
        >>> rd.quantize(pipe.transformer, "int8-weight")                        # doctest: +SKIP
    """
    from torchao.quantization import quantize_

    from .dfloat11.hooks import is_compressed_linear

    param = next((p for p in transformer.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    spec = _scheme(scheme, device)
    if quantized_scheme(transformer) is not None:
        raise ValueError(f"{type(transformer).__name__} is already quantized ({quantized_scheme(transformer)})")
    patterns = tuple(DEFAULT_EXCLUDE if exclude is None else exclude)
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"bad exclude regex {p!r}: {exc}") from None
    int4 = scheme.startswith("int4")
    targets: list[str] = []
    for fqn, module in transformer.named_modules():
        if not isinstance(module, nn.Linear) or _excluded(fqn, patterns):
            continue
        if is_compressed_linear(module):
            raise ValueError(f"{fqn} is DFloat11-compressed: DF11 and quantization are alternatives per weight. "
                             "Exclude it (exclude=[...]) or call radial_diffusers.dfloat11.decompress first")
        if int4 and module.in_features % group_size:
            continue
        targets.append(fqn)
    if not targets:
        raise ValueError(f"no Linear of {type(transformer).__name__} is left to quantize (all excluded"
                         f"{' or not divisible by group_size' if int4 else ''})")
    chosen = set(targets)
    quantize_(transformer, spec.config(group_size), filter_fn=lambda m, fqn: fqn in chosen)
    object.__setattr__(transformer, _ATTR, scheme)
    return transformer


def quantization_config(scheme: str, *, exclude: list[str] | tuple[str, ...] | None = None, group_size: int = 128,
                        device: torch.device | str | None = None, components: tuple[str, ...] | None = None):
    """A Diffusers config that quantizes at load time: ``TorchAoConfig`` for a model's ``from_pretrained``, or, with
    ``components`` (e.g. ``("transformer",)``), a ``PipelineQuantizationConfig`` for a pipeline's.

    ``device`` (default: CUDA if available) is only used to check that the scheme can run there; load with
    ``device_map`` on that device (int4-weight packs its weights only on CUDA). Exclusions are regexes as in
    :func:`quantize` (torchao ``FqnToConfig`` entries mapped to ``None``).

    Example:
        >>> from diffusers import WanTransformer3DModel                          # doctest: +SKIP
        >>> t = WanTransformer3DModel.from_pretrained(repo, subfolder="transformer", torch_dtype=torch.bfloat16,
        ...                                           quantization_config=rd.quantization_config("int8-weight"))
    """
    from diffusers import TorchAoConfig

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = _scheme(scheme, dev)
    from torchao.quantization import FqnToConfig

    patterns = tuple(DEFAULT_EXCLUDE if exclude is None else exclude)
    mapping = {f"re:{p}": None for p in patterns}
    mapping["_default"] = spec.config(group_size)
    config = TorchAoConfig(FqnToConfig(mapping))
    if components is None:
        return config
    from diffusers.quantizers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping={name: config for name in components})


def check_lora_trainable(transformer: nn.Module) -> None:
    """Raise ``ValueError`` unless LoRA gradients through ``transformer`` are correct: dynamic-activation schemes
    (torchao 0.18) return outputs detached from their input, which silently drops the gradient that flows through
    the quantized Linears (wrong LoRA gradients in every earlier layer)."""
    scheme = getattr(transformer, _ATTR, None)
    names = set()
    for m in transformer.modules():
        w = getattr(m, "weight", None) if isinstance(m, nn.Linear) else None
        if w is not None and is_quantized(w):
            act = (getattr(w, "act_quant_kwargs", None) or getattr(w, "activation_quantization", None)
                   or getattr(w, "input_quant_func", None))
            if act is not None:
                names.add(type(w).__name__)
    dynamic = (scheme is not None and not SCHEMES[scheme].weight_only) or bool(names)
    if dynamic:
        raise ValueError(
            f"LoRA training on a base quantized with activation quantization ({scheme or ', '.join(sorted(names))}) "
            "would give wrong gradients (torchao's dynamic schemes cut the input gradient). Use a weight-only scheme: "
            + ", ".join(n for n, s in SCHEMES.items() if s.weight_only)
        )
