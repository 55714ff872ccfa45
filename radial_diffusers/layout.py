"""Block mask -> block-sparse row layout (BSR): per query block, how many key blocks it attends and which ones."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch

__all__ = ["BlockLayout", "FrameCausalLayout", "frame_causal_block_mask"]


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
        (16, [12, 12])
    """

    block_size: int
    seq_len: int
    counts: torch.Tensor
    indices: torch.Tensor
    t_counts: torch.Tensor
    t_indices: torch.Tensor
    _device_cache: dict = field(default_factory=dict, repr=False, compare=False)
    # context-parallel chunk plans of this layout (radial_diffusers.attention.chunks.range_plan)
    _range_plans: dict = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        # shapes only (no values, no device sync): a hand-built layout that disagrees with itself is refused here
        # rather than read out of bounds by a kernel
        n = self.counts.shape[0] if self.counts.ndim == 1 else 0
        b = self.block_size
        if not (n and b >= 1 and not b & (b - 1) and (n - 1) * b < self.seq_len <= n * b
                and self.indices.ndim == 2 and self.indices.shape[0] == n and self.t_counts.shape == (n,)
                and self.t_indices.ndim == 2 and self.t_indices.shape[0] == n):
            raise ValueError(
                f"inconsistent BlockLayout: block_size={b}, seq_len={self.seq_len}, counts {tuple(self.counts.shape)}, "
                f"indices {tuple(self.indices.shape)}, t_counts {tuple(self.t_counts.shape)}, t_indices "
                f"{tuple(self.t_indices.shape)}; build layouts with BlockLayout.from_block_mask(mask, block_size, "
                "seq_len)")

    # copy.deepcopy / pickling (a copied or saved model holding radial attention): the lock is made anew
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

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


def frame_causal_block_mask(n_blocks: int, block_size: int, seq_len: int, chunk: int) -> torch.Tensor:
    """``(n_blocks, n_blocks)`` bool: the tiles a block-causal mask over chunks of ``chunk`` tokens touches (query
    token ``q`` attends key token ``k`` iff ``k // chunk <= q // chunk``): tile ``(i, j)`` iff the chunk of key tile
    ``j``'s first token is at most the chunk of query tile ``i``'s last token. Exact (every token pair of a kept tile
    is allowed) when ``chunk`` is a multiple of ``block_size``; otherwise boundary tiles are partly masked."""
    _, first, last = _tile_chunks(n_blocks, block_size, seq_len, chunk)
    return first[None, :] <= last[:, None]


def _tile_chunks(n_blocks: int, block_size: int, seq_len: int, chunk: int):
    """Per tile: its first token, the chunk of its first token and the chunk of its last real token."""
    starts = torch.arange(n_blocks) * block_size
    return starts, starts // chunk, (torch.clamp(starts + block_size, max=seq_len) - 1) // chunk


@dataclass(frozen=True, eq=False)
class FrameCausalLayout:
    """The layouts that compute ``radial AND block-causal`` exactly: a radial layout intersected with a block-causal
    mask over chunks of ``chunk`` tokens (query ``q`` attends key ``k`` iff ``k // chunk <= q // chunk``; SkyReels-V2
    diffusion forcing: ``chunk = num_frame_per_block * H' * W'``). No token pair outside the intersection is
    attended and none inside is dropped:

    * aligned (``chunk % block_size == 0``): every tile lies in one chunk, so the causal mask is a block mask and
      ``layout`` is the AND of the two block masks: one call.
    * unaligned: ``chunks[c] = (start, end, layout_c)``, one call per chunk ``c``: ``layout_c`` keeps the radial
      tiles of the query tiles that hold rows ``[start, end)`` and of the key tiles that start below ``end``; the
      keys ``>= end`` of the last such tile are cut by ``kv_lengths = end``, and only rows ``[start, end)`` of the
      call are kept. Tiles on a chunk boundary are computed by two calls.

    The loop it stands for::

        for c, (start, end) in enumerate(chunk_bounds):
            out[:, start:end] = attention(q, k[:, :end], v[:, :end], radial mask)[:, start:end]
    """

    chunk: int
    layout: BlockLayout | None
    chunks: tuple[tuple[int, int, BlockLayout], ...] = ()
    _checked: list = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def build(cls, radial: BlockLayout, chunk: int) -> "FrameCausalLayout":
        """The exact intersection of ``radial`` (a video-only layout) with the block-causal mask of ``chunk``."""
        bs, seq = radial.block_size, radial.seq_len
        if chunk < 1 or seq % chunk:
            raise ValueError(f"a block-causal mask needs whole chunks: seq_len={seq} is not a multiple of {chunk}")
        mask = radial.block_mask().cpu()
        n = radial.n_blocks
        if chunk % bs == 0:
            return cls(chunk, BlockLayout.from_block_mask(mask & frame_causal_block_mask(n, bs, seq, chunk), bs, seq))
        starts, first, last = _tile_chunks(n, bs, seq, chunk)
        chunks = []
        for c in range(seq // chunk):
            rows = (first <= c) & (last >= c)  # query tiles holding rows of chunk c
            cols = starts < (c + 1) * chunk  # key tiles holding keys below its end
            chunks.append((c * chunk, (c + 1) * chunk,
                           BlockLayout.from_block_mask(mask & rows[:, None] & cols[None, :], bs, seq)))
        return cls(chunk, None, tuple(chunks))

    def to(self, device: torch.device | str) -> "FrameCausalLayout":
        """The same layouts on ``device`` (each :class:`BlockLayout` caches its copies per device)."""
        if self.layout is not None:
            return FrameCausalLayout(self.chunk, self.layout.to(device))
        return FrameCausalLayout(self.chunk, None, tuple((s, e, lay.to(device)) for s, e, lay in self.chunks))

    def is_mask(self, mask: torch.Tensor, rows_per_pass: int | None = None) -> bool:
        """Whether ``mask`` (``(..., S, S)`` bool, leading dims of size 1) is exactly this block-causal mask,
        compared in row slices (bounded memory). The last mask found equal is remembered by weak reference: a
        transformer passes one mask object to every layer of a forward, so it is compared once per forward (on a GPU,
        one synchronization per forward)."""
        last = self._checked[0]() if self._checked else None
        if last is mask:
            return True
        seq = mask.shape[-1]
        rows = mask.reshape(seq, seq)
        ids = torch.arange(seq, device=mask.device) // self.chunk
        step = rows_per_pass or max(1, (1 << 26) // seq)
        for lo in range(0, seq, step):
            if not torch.equal(rows[lo:lo + step], ids[None, :] <= ids[lo:lo + step, None]):
                return False
        self._checked[:] = [weakref.ref(mask)]
        return True

    def __getstate__(self) -> dict:  # pickling (torch.save of a model): the weak reference to the last mask is dropped
        return {**self.__dict__, "_checked": []}
