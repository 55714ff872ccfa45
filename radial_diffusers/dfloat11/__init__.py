"""DFloat11 (DF11): lossless BF16 weight compression (Huffman-coded exponents), official-compatible layout.

    import radial_diffusers as rd
    rd.dfloat11.compress(transformer_or_path, "model-df11")          # write a DF11 checkpoint
    rd.dfloat11.load_dfloat11(transformer, "model-df11")             # decode per block on the fly
    rd.dfloat11.decompress(transformer)                              # back to plain BF16 weights

The codec (``encode``/``decode``) needs only torch and numpy; the model functions import Diffusers when first used.
"""

from .codec import DF11Unit, decode, encode

__all__ = ["DF11Unit", "encode", "decode", "compress", "CompressResult", "load_dfloat11", "decompress",
           "is_dfloat11", "empty_model", "default_pattern", "DEFAULT_PATTERNS"]

_LAZY = {
    "compress": "compress", "CompressResult": "compress",
    "load_dfloat11": "loading", "decompress": "loading", "is_dfloat11": "loading", "empty_model": "loading",
    "default_pattern": "patterns", "DEFAULT_PATTERNS": "patterns",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
