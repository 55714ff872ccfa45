"""DFloat11 (DF11): lossless BF16 weight compression (Huffman-coded exponents), official-compatible layout."""

from .codec import DF11Unit, decode, encode

__all__ = ["DF11Unit", "encode", "decode"]
