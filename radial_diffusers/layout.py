"""Block mask -> block-sparse row layout (BSR): per query block, how many key blocks it attends and which ones."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

__all__ = ["BlockLayout"]


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """Block-sparse layout of a square attention pattern over ``seq_len`` tokens in blocks of ``block_size``.

    Attributes:
        block_size: block edge in tokens (queries and keys).
        seq_len: number of real tokens; keys at positions ``>= seq_len`` (the padded tail) are never attended.
        counts: ``(n_blocks,)`` int32, number of key blocks each query block attends.
        indices: ``(n_blocks, max_count)`` int32, the attended key-block indices of each query block in ascending
            order, padded with ``-1`` after ``counts[i]``.
        t_counts, t_indices: the transposed layout (per key block, the query blocks attending to it), used by
            backward kernels that accumulate dK/dV per key block.

    Build one with :meth:`from_block_mask`; :meth:`to` returns a copy on another device, cached per device.

    Example:
        >>> import radial_diffusers as rd
        >>> mask = rd.radial_block_mask(8, 256, model="wan")
        >>> layout = rd.BlockLayout.from_block_mask(mask, block_size=128)
        >>> layout.n_blocks, layout.counts[:2].tolist()
        (16, [10, 10])
    """

    block_size: int
    seq_len: int
    counts: torch.Tensor
    indices: torch.Tensor
    t_counts: torch.Tensor
    t_indices: torch.Tensor
    _device_cache: dict = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def from_block_mask(
        cls, block_mask: torch.Tensor, block_size: int = 128, seq_len: int | None = None
    ) -> "BlockLayout":
        """Compress a ``(n_blocks, n_blocks)`` bool block mask (``True`` = computed) into a layout.

        ``seq_len`` defaults to ``n_blocks * block_size``; it must satisfy
        ``(n_blocks - 1) * block_size < seq_len <= n_blocks * block_size``.
        """
        if not isinstance(block_mask, torch.Tensor) or block_mask.ndim != 2 or block_mask.shape[0] != block_mask.shape[1]:
            shape = tuple(block_mask.shape) if isinstance(block_mask, torch.Tensor) else type(block_mask).__name__
            raise ValueError(f"block_mask must be a square 2-D tensor (n_blocks, n_blocks), got {shape}")
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        n = block_mask.shape[0]
        if n == 0:
            raise ValueError("block_mask is empty")
        seq_len = n * block_size if seq_len is None else int(seq_len)
        if not (n - 1) * block_size < seq_len <= n * block_size:
            raise ValueError(
                f"seq_len={seq_len} does not fit a {n}x{n} block mask with block_size={block_size}: "
                f"need {(n - 1) * block_size} < seq_len <= {n * block_size}"
            )
        # Layouts are cached and reused; built under inference mode their tensors could not be saved for backward.
        with torch.inference_mode(False):
            mask = block_mask.detach().to("cpu", torch.bool).clone()
            counts, indices = _compress(mask)
            t_counts, t_indices = _compress(mask.t())
        return cls(block_size, seq_len, counts, indices, t_counts, t_indices)

    @classmethod
    def dense(cls, seq_len: int, block_size: int = 128) -> "BlockLayout":
        """The layout that computes every block (plain attention over ``seq_len`` tokens)."""
        n = -(-seq_len // block_size)
        return cls.from_block_mask(torch.ones(n, n, dtype=torch.bool), block_size, seq_len)

    @property
    def n_blocks(self) -> int:
        return self.counts.shape[0]

    @property
    def device(self) -> torch.device:
        return self.counts.device

    @property
    def nnz(self) -> int:
        """Number of computed blocks."""
        return int(self.counts.sum())

    @property
    def density(self) -> float:
        """Computed blocks / all blocks."""
        return self.nnz / self.n_blocks**2

    def to(self, device: torch.device | str) -> "BlockLayout":
        """This layout's index tensors on ``device`` (built once per device, then reused)."""
        device = torch.device(device)
        if device == self.device:
            return self
        key = str(device)
        cached = self._device_cache.get(key)
        if cached is None:
            with self._lock, torch.inference_mode(False):
                cached = self._device_cache.get(key)
                if cached is None:
                    cached = BlockLayout(
                        self.block_size,
                        self.seq_len,
                        *(t.to(device) for t in (self.counts, self.indices, self.t_counts, self.t_indices)),
                    )
                    self._device_cache[key] = cached
        return cached

    def block_mask(self) -> torch.Tensor:
        """Expand back to the ``(n_blocks, n_blocks)`` bool block mask (on this layout's device)."""
        return dense_block_mask(self.indices, self.n_blocks)

    def token_mask(self) -> torch.Tensor:
        """``(seq_len, seq_len)`` bool token mask (``True`` = query row attends key column). For tests and small
        sequences only: it is quadratic in ``seq_len``."""
        b = self.block_size
        mask = self.block_mask().repeat_interleave(b, 0).repeat_interleave(b, 1)
        return mask[: self.seq_len, : self.seq_len].contiguous()


def dense_block_mask(indices: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """The ``(n_blocks, n_blocks)`` bool block mask of a BSR index table ``indices`` (``(n_blocks, width)``, ``-1`` in
    unused slots), on its device."""
    mask = torch.zeros(n_blocks, n_blocks + 1, dtype=torch.bool, device=indices.device)
    mask.scatter_(1, torch.where(indices >= 0, indices.long(), n_blocks), True)  # unused slots hit the spare column
    return mask[:, :n_blocks]


def _compress(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    counts = mask.sum(1, dtype=torch.int32)
    width = max(int(counts.max()), 1)
    # Stable sort puts the kept columns first, in ascending column order.
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width].to(torch.int32)
    slot = torch.arange(width, dtype=torch.int32)[None, :]
    indices = torch.where(slot < counts[:, None], order, torch.full_like(order, -1))
    return counts, indices.contiguous()
