"""``RadialConfig``: the options of radial attention in a pipeline, with the paper's per-model presets."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .attention.op import BACKENDS, PRECISIONS
from .families import family_names, get_preset
from .masks import ADJACENT_RULES

__all__ = ["RadialConfig", "PRESETS", "ResolvedPolicy"]


class _Presets(Mapping):
    """``PRESETS[name]``: the preset of a registered family as a dict (``dense_layers``, ``dense_steps``,
    ``decay_factor``), read live from :mod:`radial_diffusers.families` (each entry's ``Preset.source`` says where the
    numbers come from: Wan2.1 and HunyuanVideo follow the official scripts, 12 dense steps of 50 expressed as a
    fraction so few-step schedules scale: 8 steps -> 2, 4 steps -> 1)."""

    def __getitem__(self, name: str) -> dict:
        p = get_preset(name)[1]
        return {"dense_layers": p.dense_layers, "dense_steps": p.dense_steps, "decay_factor": p.decay_factor}

    def __iter__(self):
        return iter(family_names())

    def __len__(self) -> int:
        return len(family_names())


PRESETS = _Presets()


def _check_steps(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be an int (steps) or a float in [0, 1] (fraction of the schedule), got {value!r}")
    if isinstance(value, float) and not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} as a float is a fraction of the schedule and must lie in [0, 1], got {value}; "
                         "pass an int for a number of steps")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class RadialConfig:
    """Options of :func:`radial_diffusers.apply_radial_attention`. ``None`` means the paper's preset for the model.

    Args:
        dense_layers: the first N attention layers stay dense (Wan preset 1, HunyuanVideo 0).
        dense_steps: the first denoising steps stay dense: an int, or a float fraction of the schedule (preset
            ``12 / 50`` = 0.24: 12 of 50 steps, 2 of 8, 1 of 4).
        last_dense_steps: the last steps stay dense (int or fraction); needs the step count (from the pipeline's
            scheduler, or ``num_inference_steps``).
        decay_factor: band-width decay (Wan preset 0.2, HunyuanVideo 0.95).
        block_size: mask/kernel block in tokens, a power of two >= 16 (preset: 128, Wan2.2 A14B 64, as the official
            code runs them).
        adjacent: Wan neighbour-frame band, ``"full"`` (official HEAD) or ``"half"`` (releases before 2025-11-11).
        sink: key frame 0 visible to all queries (``None``: Wan True, HunyuanVideo False).
        backend: attention backend for sparse steps: ``"auto"``, ``"torch"``, ``"triton"`` or ``"flex"``.
        attention_precision: ``None`` (the model's dtype) or ``"fp8"``: sparse steps compute QK^T in float8 e4m3
            (per-block scales, K smoothed; P @ V in the model's 16-bit dtype). Inference only, Triton kernels on a GPU
            of compute capability 8.9 / 9.0 (see :func:`radial_diffusers.block_sparse_attention`).
        num_inference_steps: the schedule length, when radial attention is applied to a bare transformer and a
            fraction or ``last_dense_steps`` needs it (a pipeline's scheduler provides it otherwise).

    Example:
        >>> cfg = RadialConfig(dense_steps=0.2, decay_factor=0.5, block_size=64)
        >>> cfg.resolve("wan", num_steps=50).dense_steps
        10
    """

    dense_layers: int | None = None
    dense_steps: int | float | None = None
    last_dense_steps: int | float = 0
    decay_factor: float | None = None
    block_size: int | None = None
    adjacent: str = "full"
    sink: bool | None = None
    backend: str = "auto"
    num_inference_steps: int | None = None
    attention_precision: str | None = None

    def __post_init__(self) -> None:
        if self.dense_layers is not None and (isinstance(self.dense_layers, bool) or not isinstance(
                self.dense_layers, int) or self.dense_layers < 0):
            raise ValueError(f"dense_layers must be an int >= 0, got {self.dense_layers!r}")
        _check_steps("dense_steps", self.dense_steps)
        _check_steps("last_dense_steps", self.last_dense_steps)
        if self.decay_factor is not None and not (
            isinstance(self.decay_factor, (int, float)) and math.isfinite(self.decay_factor) and self.decay_factor > 0
        ):
            raise ValueError(f"decay_factor must be a finite number > 0, got {self.decay_factor!r}")
        b = self.block_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 16 or b & (b - 1)):
            raise ValueError(f"block_size must be a power of two >= 16 (128 for Wan2.1/HunyuanVideo), got {b!r}")
        if self.adjacent not in ADJACENT_RULES:
            raise ValueError(f"adjacent must be one of {ADJACENT_RULES}, got {self.adjacent!r}")
        if self.sink is not None and not isinstance(self.sink, bool):
            raise ValueError(f"sink must be True, False or None, got {self.sink!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.attention_precision not in PRECISIONS:
            raise ValueError(f"attention_precision must be one of {PRECISIONS}, got {self.attention_precision!r}")
        n = self.num_inference_steps
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"num_inference_steps must be an int >= 1, got {n!r}")

    def with_preset(self, model: str) -> "RadialConfig":
        """A copy with every ``None`` option replaced by the preset of ``model``: a family name (``"wan"``) or a
        variant's (``"wan2.2"``), see :mod:`radial_diffusers.families`."""
        family, preset = get_preset(model)
        return replace(
            self,
            dense_layers=preset.dense_layers if self.dense_layers is None else self.dense_layers,
            dense_steps=preset.dense_steps if self.dense_steps is None else self.dense_steps,
            decay_factor=preset.decay_factor if self.decay_factor is None else self.decay_factor,
            block_size=preset.block_size if self.block_size is None else self.block_size,
            sink=family.sink if self.sink is None else self.sink,
        )

    def resolve(self, model: str, num_steps: int | None) -> "ResolvedPolicy":
        """Concrete dense/sparse policy for a schedule of ``num_steps`` steps (``None`` if unknown)."""
        cfg = self.with_preset(model)
        num_steps = num_steps if num_steps is not None else cfg.num_inference_steps
        return ResolvedPolicy(
            dense_layers=cfg.dense_layers,
            dense_steps=_to_steps("dense_steps", cfg.dense_steps, num_steps),
            last_dense_steps=_to_steps("last_dense_steps", cfg.last_dense_steps, num_steps),
            num_steps=num_steps,
        )


def _to_steps(name: str, value: int | float, num_steps: int | None) -> int:
    if isinstance(value, int):
        if name == "last_dense_steps" and value > 0 and num_steps is None:
            raise ValueError(
                "last_dense_steps needs the number of denoising steps: apply radial attention to the pipeline "
                "(its scheduler knows it) or pass RadialConfig(num_inference_steps=...)"
            )
        return value
    if num_steps is None:
        raise ValueError(
            f"{name}={value} is a fraction of the schedule, but the number of denoising steps is unknown: apply "
            "radial attention to the pipeline (its scheduler knows it), pass RadialConfig(num_inference_steps=...), "
            f"or give {name} as an int"
        )
    return int(math.floor(value * num_steps + 0.5))


@dataclass(frozen=True)
class ResolvedPolicy:
    """Dense-or-sparse decision per (step, layer), with all counts as ints."""

    dense_layers: int
    dense_steps: int
    last_dense_steps: int
    num_steps: int | None

    def dense_step(self, step):
        """Whether ``step`` runs dense attention: a bool for an int ``step``, a bool tensor for an integer tensor (the
        step-tracking hook evaluates it on a CPU scalar so a compiled forward never specializes on the step)."""
        dense = step < self.dense_steps
        if self.last_dense_steps > 0 and self.num_steps is not None:
            dense = dense | (step >= self.num_steps - self.last_dense_steps)
        return dense

    def varies_by_step(self) -> bool:
        """True when some steps run dense and others sparse (the decision depends on the step counter)."""
        return (self.dense_steps > 0 or self.last_dense_steps > 0) and not self.covers_schedule()

    def covers_schedule(self) -> bool:
        """True when every step of the schedule is dense (radial attention would never run)."""
        return self.num_steps is not None and self.dense_steps + self.last_dense_steps >= self.num_steps
