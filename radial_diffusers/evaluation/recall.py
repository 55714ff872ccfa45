"""Attention recall measured inside the radial processors while a pipeline runs.

A :class:`RecallProbe` set on a :class:`~radial_diffusers.RadialState` (``state.probe = probe``) receives the real
``q`` and ``k`` of every self-attention call, dense steps and dense layers included (eager mode; the processors then
take their radial q/k path on dense calls too and run dense attention on it). For sampled query rows it records the
softmax mass inside the layout's kept blocks (:func:`~radial_diffusers.evaluation.metrics.attention_recall`), per
denoising step and layer. With no probe set the processors do no extra work: one attribute read per call.

``dense=True`` makes every probed call dense, so the run follows the dense trajectory (the recall the mask would have
had on dense attention); ``dense=False`` keeps the run's own dense / sparse choice and only watches.

Example:
    >>> import radial_diffusers as rd                                                  # doctest: +SKIP
    >>> state = rd.apply_radial_attention(pipe)                                        # doctest: +SKIP
    >>> state.probe = probe = RecallProbe(rows=64, dense=True)                         # doctest: +SKIP
    >>> pipe(prompt, num_frames=129, height=128, width=128)                            # doctest: +SKIP
    >>> probe.matrix()[0][:3]   # layer 0, steps 0-2                                   # doctest: +SKIP
    [0.91, 0.88, 0.87]
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..layout import BlockLayout
from .metrics import kept_mass, softmax_rows

__all__ = ["RecallProbe", "cells_mean"]


class RecallProbe:
    """Collects the recall of the radial layout per (denoising step, layer).

    Args:
        rows: query rows sampled per call and sample (uniformly over the valid rows; an exact softmax row costs one
            pass over the keys, so ``rows`` bounds the probe's cost at ``rows / S`` of a dense attention call).
        seed: seed of the row sampling; the rows of a (step, layer) are the same for every call and run.
        dense: run every probed call densely (the dense trajectory) instead of following the run's own policy.
        decays: other decay factors whose masks are measured on the same rows (what-if recall, for
            :func:`~radial_diffusers.evaluation.suggest.suggest_config`); their recall is in :meth:`matrix` with
            ``decay=``.
    """

    def __init__(self, rows: int = 64, seed: int = 0, dense: bool = False, decays: tuple[float, ...] = ()):
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.rows, self.seed, self.dense = int(rows), int(seed), bool(dense)
        self.decays = tuple(float(d) for d in decays)
        self._values: dict[tuple, list[float]] = defaultdict(list)  # (decay or None, step, layer) -> per call
        self._sparse: dict[tuple[int, int], bool] = {}
        self._layouts: dict[tuple, BlockLayout] = {}
        self.density: dict[float | None, float] = {}

    def _what_if(self, state, decay: float, device) -> BlockLayout:
        key = (decay, state.geometry, state.text_tokens, state.frames_per_block)
        layout = self._layouts.get(key)
        if layout is None:
            from ..masks import mask_stats

            frames, h, w = state.geometry
            seq = frames * h * w + state.text_tokens
            mask = state.block_mask(decay_factor=decay)
            layout = self._layouts[key] = BlockLayout.from_block_mask(mask, state.config.block_size, seq)
            self.density[decay] = mask_stats(mask, state.config.block_size, seq).density
        return layout.to(device)

    def observe(self, state, layer: int, q: torch.Tensor, k: torch.Tensor, layout: BlockLayout,
                kv_lengths: torch.Tensor | None, sparse: bool) -> None:
        """Record one attention call of ``state``'s transformer: ``q``, ``k`` ``(B, S, H, D)``; ``layout``: the
        call's layout; ``kv_lengths`` ``(B,)`` valid keys per sample (``None``: the layout's ``seq_len``);
        ``sparse``: whether the call ran the layout (else it ran dense)."""
        step = state.step
        if None not in self.density and state.geometry is not None:
            self.density[None] = state.stats().density
        layouts = {None: layout}
        for decay in self.decays:
            layouts[decay] = self._what_if(state, decay, q.device)
        with torch.no_grad():
            lengths = [layout.seq_len] * q.shape[0] if kv_lengths is None else [int(n) for n in kv_lengths.tolist()]
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 4099 + layer)
            kept: dict = defaultdict(list)
            for b, valid in enumerate(lengths):
                valid = min(valid, q.shape[1])
                rows = torch.randint(valid, (min(self.rows, valid),), generator=g)
                probs = softmax_rows(q[b:b + 1], k[b:b + 1], rows, valid)
                for decay, lay in layouts.items():
                    kept[decay].append(float(kept_mass(probs, lay, rows).mean()))
        for decay, values in kept.items():
            self._values[(decay, step, layer)].append(sum(values) / len(values))
        self._sparse[(step, layer)] = self._sparse.get((step, layer), False) or bool(sparse)

    @property
    def steps(self) -> int:
        return 1 + max((s for s, _ in self._sparse), default=-1)

    @property
    def layers(self) -> int:
        return 1 + max((l for _, l in self._sparse), default=-1)

    def _mean(self, step: int, layer: int, decay: float | None = None) -> float | None:
        values = self._values.get((decay, step, layer))
        return None if not values else sum(values) / len(values)

    def matrix(self, decay: float | None = None) -> list[list[float | None]]:
        """Recall as ``[layer][step]`` (the mean over the calls of that step, e.g. both CFG branches) of the run's
        mask, or of the what-if mask of ``decay`` (one of ``decays``); ``None`` where no call was seen."""
        if decay is not None and float(decay) not in self.decays:
            raise ValueError(f"decay {decay} was not measured; the probe measured {list(self.decays)}")
        d = None if decay is None else float(decay)
        return [[self._mean(s, l, d) for s in range(self.steps)] for l in range(self.layers)]

    def mean(self, cells=None, decay: float | None = None) -> float | None:
        """Mean recall over ``cells`` (an iterable of ``(step, layer)``; default every observed call)."""
        return cells_mean(self.matrix(decay), self._sparse if cells is None else cells)


def cells_mean(matrix: list[list[float | None]], cells) -> float | None:
    """The mean of ``matrix[layer][step]`` over ``cells`` (``(step, layer)`` pairs), unobserved cells left out."""
    values = [matrix[l][s] for s, l in cells if matrix[l][s] is not None]
    return sum(values) / len(values) if values else None
