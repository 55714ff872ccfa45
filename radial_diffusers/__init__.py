"""radial-diffusers: Radial Attention for long video generation with Hugging Face Diffusers.

    >>> import radial_diffusers as rd
    >>> state = rd.apply_radial_attention(pipe, rd.RadialConfig())   # doctest: +SKIP

``import radial_diffusers`` stays light: Diffusers is imported on first use of the integration names, and triton,
peft or torchao never at import time.
"""

from .attention import block_sparse_attention
from .config import RadialConfig
from .errors import RadialError
from .layout import BlockLayout
from .masks import MaskStats, mask_stats, radial_block_mask, save_mask_png

__version__ = "0.1.0"

_LAZY = {
    "apply_radial_attention": "integration",
    "remove_radial_attention": "integration",
    "RadialState": "integration",
    "RadialWanAttnProcessor": "processors",
    "RadialHunyuanVideoAttnProcessor": "processors",
    "quantize": "quant",
    "quantization_config": "quant",
    "evaluate": "evaluation",
    "suggest_config": "evaluation",
    "enable_context_parallelism": "parallel",
    "export_video": "_io",
}

__all__ = [
    "BlockLayout",
    "MaskStats",
    "RadialConfig",
    "RadialError",
    "block_sparse_attention",
    "mask_stats",
    "radial_block_mask",
    "save_mask_png",
    *_LAZY,
]


_SUBMODULES = ("dfloat11", "tiny", "quant", "families", "pipelines", "errors", "evaluation", "toy", "parallel")


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:  # rd.dfloat11.encode(...), rd.tiny.load_tiny(...)
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'radial_diffusers' has no attribute {name!r}")
