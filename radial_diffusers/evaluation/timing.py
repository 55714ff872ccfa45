"""Per-step seconds of a pipeline call, measured from the transformer calls themselves."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch

from ..pipelines import detect_family, experts

__all__ = ["StepClock", "mean_after_first", "means_by_kind", "counted_steps"]


class StepClock:
    """Per-step seconds of one generation, from transformer pre-hooks (first call of each new timestep) and the VAE
    decode's start."""

    def __init__(self, pipe):
        self.pipe, self.marks, self.t, self.end = pipe, [], None, None

    @staticmethod
    def _now() -> float:
        # whenever CUDA is in use, not only when the transformer's weights sit there (offloading moves them in per call)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    def _pre(self, module, args, kwargs):
        call = detect_family(module).read_call(module, args, kwargs)
        t = float(torch.as_tensor(call.timestep).float().amax())
        if t != self.t:
            self.marks.append(self._now())
            self.t = t

    def _decode(self, module, args):
        if self.end is None:
            self.end = self._now()

    @contextlib.contextmanager
    def watch(self) -> Iterator["StepClock"]:
        handles = [m.register_forward_pre_hook(self._pre, with_kwargs=True) for m in experts(self.pipe).values()]
        vae = getattr(self.pipe, "vae", None)
        if vae is not None:
            handles.append(vae.decoder.register_forward_pre_hook(self._decode) if hasattr(vae, "decoder")
                           else vae.register_forward_pre_hook(self._decode))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def steps(self) -> list[float]:
        marks = self.marks + ([self.end] if self.end is not None else [])
        return [b - a for a, b in zip(marks, marks[1:])]


def means_by_kind(steps: list[float], sparse: list[bool]) -> tuple[float | None, float | None]:
    """``(sparse, dense)``: the mean seconds of the sparse and of the dense ``steps`` (``sparse[i]``: whether step ``i``
    ran sparse; ``None`` for a kind with no step counted). The first step of a run is warm-up and not counted, nor is
    the first sparse step when others follow it (on a GPU it compiles and tunes the Triton kernels).

    >>> means_by_kind([9.0, 2.0, 2.2, 7.0, 1.0, 1.2], [False, False, False, True, True, True])
    (1.1, 2.1)
    """
    return tuple(sum(v) / len(v) if v else None for v in counted_steps(steps, sparse))


def counted_steps(steps: list[float], sparse: list[bool]) -> tuple[list[float], list[float]]:
    """``(sparse, dense)``: the seconds of the steps :func:`means_by_kind` counts, by kind."""
    out = []
    for kind in (True, False):
        values = [t for i, (t, s) in enumerate(zip(steps, sparse)) if s is kind and i > 0]
        if kind and len(values) > 1 and not sparse[0]:  # the first sparse step (unless it was step 0)
            values = values[1:]
        out.append(values)
    return out[0], out[1]


def mean_after_first(steps: list[float]) -> float | None:
    """The mean of ``steps`` without the first (warm-up) step; ``None`` for fewer than two steps."""
    return sum(steps[1:]) / len(steps[1:]) if len(steps) > 1 else None
