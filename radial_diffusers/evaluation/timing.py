"""Per-step seconds of a pipeline call, measured from the transformer calls themselves."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch

from ..pipelines import detect_family, experts

__all__ = ["StepClock", "mean_after_first"]


class StepClock:
    """Per-step seconds of one generation, from transformer pre-hooks (first call of each new timestep) and the VAE
    decode's start."""

    def __init__(self, pipe):
        self.pipe, self.marks, self.t, self.end = pipe, [], None, None
        self.cuda = any(p.is_cuda for p in pipe.transformer.parameters())

    def _now(self) -> float:
        if self.cuda:
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


def mean_after_first(steps: list[float]) -> float | None:
    """The mean of ``steps`` without the first (warm-up) step; ``None`` for fewer than two steps."""
    return sum(steps[1:]) / len(steps[1:]) if len(steps) > 1 else None
