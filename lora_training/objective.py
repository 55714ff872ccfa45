"""The noise schedule and target of a training step, read from the pipeline's own scheduler.

* Flow matching (``FlowMatchEulerDiscreteScheduler``, UniPC with flow sigmas: Wan, HunyuanVideo, LTX-Video, Mochi):
  ``x_t = (1 - s) x_0 + s noise`` at noise level ``s`` drawn uniformly or logit-normally, then shifted
  (``shift s / (1 + (shift - 1) s)``); timestep ``1000 s`` and target ``noise - x_0``. A scheduler with
  ``invert_sigmas`` (Mochi's) counts the other way: timestep ``1000 (1 - s)``, target ``x_0 - noise``, which is what
  its ``step`` integrates. With a two-expert pipeline the draw is conditioned on the expert's noise range (the
  same distribution, truncated: no rejection loop, so a resumed run replays it).
* DDPM-style (a ``prediction_type`` in the scheduler config: CogVideoX's DDIM): an integer timestep ``t`` from the
  same draw (``floor(1000 s)``, no shift), ``x_t`` and the target from the scheduler's own ``add_noise`` and
  ``get_velocity`` (``v_prediction``) or the noise (``epsilon``): the loss of Diffusers' CogVideoX LoRA script.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ConfigError

__all__ = ["Objective", "sample_levels", "flow_shift"]


def flow_shift(configured: float | None, scheduler, tokens: int | None = None) -> float:
    """The shift of the noise levels: ``configured`` (the ``flow_shift`` option), else the scheduler's
    (``flow_shift`` for UniPC / Wan, ``shift`` for FlowMatchEuler), else 1. A scheduler with ``use_dynamic_shifting``
    (LTX-Video's) shifts by the video's length, as its pipeline sets it for ``tokens`` latent tokens: ``mu`` linear
    from ``base_shift`` at ``base_image_seq_len`` tokens to ``max_shift`` at ``max_image_seq_len``, and the shift
    ``exp(mu)`` (``time_shift_type="linear"``: ``mu``).

    >>> from diffusers import FlowMatchEulerDiscreteScheduler
    >>> ltx = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
    ...                                       base_image_seq_len=1024, max_image_seq_len=4096)
    >>> round(flow_shift(None, ltx, tokens=16 * 16 * 24), 2)  # 121 frames at 512x768
    16.17
    """
    if configured is not None:
        return configured
    sc = getattr(scheduler, "config", {}) or {}
    if sc.get("use_dynamic_shifting"):
        if tokens is None:
            raise ValueError("a scheduler with use_dynamic_shifting needs the video's latent token count")
        lo, hi = sc.get("base_image_seq_len", 256), sc.get("max_image_seq_len", 4096)
        base, top = sc.get("base_shift", 0.5), sc.get("max_shift", 1.15)
        mu = base + (top - base) * (tokens - lo) / (hi - lo)
        return math.exp(mu) if sc.get("time_shift_type", "exponential") == "exponential" else mu
    return float(sc.get("flow_shift") or sc.get("shift") or 1.0)


def _shift(s: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * s / (1 + (shift - 1) * s)


def _unshift(sigma: float, shift: float) -> float:
    return sigma / (shift - (shift - 1) * sigma)


def sample_levels(n: int, g: torch.Generator, *, sampling: str, logit_mean: float, logit_std: float,
                  shift: float = 1.0, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """``n`` noise levels in ``[lo, hi]`` (float32): ``s`` uniform or ``sigmoid(N(logit_mean, logit_std))``, shifted;
    restricted to ``[lo, hi]`` by drawing ``s`` from the same distribution truncated to the pre-shift range (inverse
    CDF: one draw per level, deterministic under ``g``). The full range draws exactly as before truncation existed."""
    if (lo, hi) == (0.0, 1.0):
        if sampling == "uniform":
            s = torch.rand(n, generator=g)
        else:
            s = torch.sigmoid(logit_mean + logit_std * torch.randn(n, generator=g))
        return _shift(s, shift)
    a, b = _unshift(lo, shift), _unshift(hi, shift)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    if sampling == "uniform":
        s = a + (b - a) * u
    else:
        def cdf(x: float) -> torch.Tensor:
            if x <= 0.0:
                return torch.tensor(0.0, dtype=torch.float64)
            if x >= 1.0:
                return torch.tensor(1.0, dtype=torch.float64)
            z = (torch.logit(torch.tensor(x, dtype=torch.float64)) - logit_mean) / logit_std
            return torch.special.ndtr(z)

        ca, cb = cdf(a), cdf(b)
        z = torch.special.ndtri(ca + (cb - ca) * u)
        s = torch.sigmoid(logit_mean + logit_std * z)
    return _shift(s.clamp(a, b), shift).float().clamp(lo, hi)


@dataclass(frozen=True)
class Objective:
    """What one training step draws and regresses, for one scheduler (see the module docstring).

    Attributes:
        kind: ``"flow"``, ``"epsilon"`` or ``"v_prediction"``.
        num_train_timesteps: the scheduler's timestep scale (1000).
        invert: flow matching with ``invert_sigmas`` (Mochi).
        scheduler: the DDPM-style scheduler (its ``add_noise`` / ``get_velocity``); ``None`` for flow matching.
    """

    kind: str
    num_train_timesteps: int = 1000
    invert: bool = False
    scheduler: object = None

    @classmethod
    def from_scheduler(cls, scheduler) -> "Objective":
        config = getattr(scheduler, "config", {}) or {}
        steps = int(config.get("num_train_timesteps") or 1000)
        prediction = config.get("prediction_type")
        if prediction in (None, "flow_prediction") or config.get("use_flow_sigmas"):
            return cls("flow", steps, bool(config.get("invert_sigmas")))
        if prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(f"model: the pipeline's scheduler {type(scheduler).__name__} predicts {prediction!r}; "
                              "training supports flow matching, epsilon and v_prediction")
        return cls(prediction, steps, False, scheduler)

    @property
    def is_flow(self) -> bool:
        return self.kind == "flow"

    def draw(self, x0: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor):
        """``(x_t, timestep, target)`` for clean latents ``x0`` ``(B, C, F', H', W')`` (or any ``(B, ...)``), ``noise``
        like it and noise levels in [0, 1] (float32, on ``x0``'s device): ``levels`` ``(B,)``, one per sample, or
        ``(B, F')``, one per latent frame (diffusion forcing; flow matching only). ``timestep`` has ``levels``'
        shape."""
        b = x0.shape[0]
        view = (b,) + (1,) * (x0.dim() - 1)
        if levels.dim() == 2:
            if not self.is_flow or x0.dim() != 5 or levels.shape != x0.shape[:1] + x0.shape[2:3]:
                raise ValueError(f"per-frame noise levels {tuple(levels.shape)} need flow matching and latents "
                                 f"(B, C, F', H', W') with (B, F') = their shape; got {self.kind}, "
                                 f"{tuple(x0.shape)}")
            view = (b, 1, levels.shape[1], 1, 1)
        if self.is_flow:
            s = levels.view(view)
            xt = (1 - s) * x0 + s * noise
            if self.invert:
                return xt, (1 - levels) * self.num_train_timesteps, x0 - noise
            return xt, levels * self.num_train_timesteps, noise - x0
        t = (levels * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)
        sched = self.scheduler
        xt = sched.add_noise(x0, noise, t)
        target = noise if self.kind == "epsilon" else sched.get_velocity(x0, noise, t)
        return xt, t, target
