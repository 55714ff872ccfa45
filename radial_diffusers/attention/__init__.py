"""Block-sparse attention: one op, several backends (see :func:`block_sparse_attention`)."""

from .op import BACKENDS, block_sparse_attention, resolve_backend

__all__ = ["BACKENDS", "block_sparse_attention", "resolve_backend"]
