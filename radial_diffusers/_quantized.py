"""Telling a torchao-quantized weight apart without importing torchao (shared by quantization and DF11 loading)."""

from __future__ import annotations

__all__ = ["is_quantized"]


def is_quantized(weight) -> bool:
    """Whether ``weight`` is a torchao quantized tensor (checked without importing torchao)."""
    return type(weight).__module__.startswith("torchao")
