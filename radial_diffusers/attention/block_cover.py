"""How the PyTorch path batches a block layout: a cover of its kept blocks by rectangles of query x key blocks.

ATen's CPU flash-attention kernel is about 1.5x faster per FLOP on 256-row query tiles than on 64-row ones (its
query split shrinks with the query length), and batching query blocks by identical key sets hands it one query
block per call where no two query blocks attend the same key blocks (the demo's radial mask at block 64). So the
kept blocks are covered, greedily, by rectangles ``rows x keys`` (sets of query blocks that all attend the same key
blocks, not necessarily contiguous), each computed as one dense attention call whose partial results are merged by
log-sum-exp. Every kept block lies in exactly one rectangle, so no masked block is ever computed.

Rectangles of the same shape are batched into buckets, and a bucket never holds one query block twice (its rows
are written with one indexed assignment).

    >>> import torch
    >>> mask = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    >>> [(r.tolist(), k.tolist()) for r, k in rectangle_cover(mask, max_rows=2, min_keys=1)]
    [([0, 1], [0, 1]), ([2], [1, 2])]
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from ..layout import dense_block_mask

__all__ = ["Bucket", "rectangle_cover", "plan_for"]

# Query rows per rectangle the greedy cover aims for: ATen's CPU flash kernel reaches most of its per-FLOP speed from
# 256-row query tiles on (measured on a 2-core Intel Xeon, fp32, head_dim 64: 160 GFLOP/s at 64 rows, 244 at 256,
# 273 for one dense 4352-row call); 512 leaves room for the rows a rectangle loses to its neighbours.
_TARGET_ROWS = 512
# A rectangle narrower than this many keys is not worth shrinking another to build (the kernel's key split is 512).
_TARGET_KEYS = 512
# Layouts with more (kept blocks x query blocks) than this are batched by identical key sets only: the greedy cover's
# work grows with that product (0.5-0.9 s once per layout for a 2048-block radial mask at block 64, 1.3e9; 3.5 s for
# an all-kept 2048-block mask, 8.6e9; a 2-core Intel Xeon).
_MAX_COVER_WORK = 1.5e9


def rectangle_cover(mask: torch.Tensor, max_rows: int, min_keys: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cover the kept blocks of ``mask`` by disjoint rectangles, greedily.

    Args:
        mask: ``(n, n)`` bool block mask (query blocks x key blocks), on CPU.
        max_rows: most query blocks per rectangle.
        min_keys: a query block joins a rectangle only if at least this many of its keys stay in it, or if it holds
            all of them (identical key sets always share a rectangle, up to ``max_rows``).

    Returns:
        ``[(rows, keys)]``: ascending int64 query-block and key-block ids; each kept block is in exactly one
        rectangle. Deterministic: seeds are the query blocks with the most uncovered keys (lowest id first), and a
        seed's rectangle grows by the query block sharing most of its keys while the rectangle's area does not
        shrink.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"rectangle_cover takes a bool block mask, got {mask.dtype}: pass mask.bool()")
    # NumPy, single-threaded: thousands of tiny steps, where torch's thread pool only adds wake-ups (and collapses
    # when the cores are busy).
    left = mask.numpy().copy()  # (query, key): the blocks no rectangle holds yet
    left_by_key = np.ascontiguousarray(left.T)  # key-major: the overlap of every row is a sum of gathered rows
    remaining = left.sum(1)
    rects = []
    while True:
        seed = int(np.argmax(remaining))
        if remaining[seed] <= 0:
            return rects
        rows, keys = [seed], np.flatnonzero(left[seed])
        while len(rows) < max_rows:
            overlap = left_by_key[keys].sum(0, dtype=np.int64)
            overlap[rows] = -1
            best = int(np.argmax(overlap))
            shared = int(overlap[best])
            if shared < min(min_keys, keys.size) or shared * (len(rows) + 1) < keys.size * len(rows):
                break
            rows.append(best)
            keys = keys[left[best, keys]]
        row_ids = np.array(sorted(rows), dtype=np.int64)
        left[np.ix_(row_ids, keys)] = False
        left_by_key[np.ix_(keys, row_ids)] = False
        remaining[row_ids] -= keys.size
        rects.append((torch.from_numpy(row_ids), torch.from_numpy(keys.astype(np.int64))))


def _identical_sets(mask: torch.Tensor, max_rows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rectangles of query blocks with identical key sets, at most ``max_rows`` each (the cover for layouts too
    large for the greedy)."""
    rows = torch.nonzero(mask.any(1)).flatten()
    if rows.numel() == 0:
        return []
    uniq, inverse = torch.unique(mask[rows], dim=0, return_inverse=True)
    rects = []
    for u in range(uniq.shape[0]):
        keys = torch.nonzero(uniq[u]).flatten()
        rects += [(chunk, keys) for chunk in rows[inverse == u].split(max_rows)]
    return rects


@dataclass(frozen=True)
class Bucket:
    """Rectangles of one shape: ``rows (G, m)`` query-block ids and ``keys (G, width)`` key-block ids.

    ``fresh``: no query block of this bucket appeared in an earlier bucket (its results can be written, not
    merged). Within a bucket every query block appears at most once.
    """

    rows: torch.Tensor
    keys: torch.Tensor
    fresh: bool


def _buckets(rects: list[tuple[torch.Tensor, torch.Tensor]], n: int, device) -> list[Bucket]:
    shapes: dict[tuple[int, int], list[tuple[np.ndarray, list]]] = {}
    for rows, keys in rects:
        groups = shapes.setdefault((rows.numel(), keys.numel()), [])
        rows_np = rows.numpy()
        for used, members in groups:  # the first group of this shape not holding these rows yet
            if not used[rows_np].any():
                break
        else:
            used, members = np.zeros(n, dtype=bool), []
            groups.append((used, members))
        used[rows_np] = True
        members.append((rows, keys))
    seen = torch.zeros(n, dtype=torch.bool)
    out = []
    # Largest rectangles first, then by width: the order only affects summation order, not the result's exactness.
    for (m, width), groups in sorted(shapes.items(), key=lambda kv: (-kv[0][0] * kv[0][1], -kv[0][1])):
        for _, members in groups:
            rows = torch.stack([r for r, _ in members])
            fresh = not bool(seen[rows].any())
            seen[rows] = True
            out.append(Bucket(rows.to(device), torch.stack([k for _, k in members]).to(device), fresh))
    return out


_PLANS: dict[tuple[int, int], tuple] = {}


def plan_for(counts: torch.Tensor, indices: torch.Tensor, block_size: int) -> list[Bucket]:
    """The buckets of a layout's rectangle cover, cached per layout tensors and block size (held weakly: a new
    tensor at a reused id is re-planned)."""
    key = (id(indices), block_size)
    entry = _PLANS.get(key)
    if entry is not None and entry[0]() is indices and entry[1]() is counts:
        return entry[2]
    mask = dense_block_mask(indices.cpu(), counts.shape[0])
    max_rows = max(1, _TARGET_ROWS // block_size)
    if float(mask.sum()) * mask.shape[0] > _MAX_COVER_WORK:
        rects = _identical_sets(mask, max_rows)
    else:
        rects = rectangle_cover(mask, max_rows, max(1, _TARGET_KEYS // block_size))
    plan = _buckets(rects, mask.shape[0], counts.device)
    if len(_PLANS) > 256:
        _PLANS.clear()
    _PLANS[key] = (weakref.ref(indices), weakref.ref(counts), plan)
    return plan
