"""Attention speed at one geometry: radial block-sparse attention against the dense attention Diffusers runs.

What ``radial-diffusers bench`` times. Every row runs on the same random ``q``, ``k``, ``v`` in one process, so the
ratios are side by side; the first call of each row is a warm-up (Triton compiles and tunes its kernels there,
FlexAttention compiles), then the median of ``repeats`` calls counts (CUDA: events around each call after a
synchronize; CPU: wall clock).

    >>> import torch, radial_diffusers as rd
    >>> from radial_diffusers.evaluation.attention_speed import time_attention
    >>> mask = rd.radial_block_mask(8, 64, model="wan", block_size=16, decay_factor=1.0)
    >>> layout = rd.BlockLayout.from_block_mask(mask, 16, 8 * 64)
    >>> rows = time_attention(layout, heads=1, head_dim=32, dtype=torch.float32, device=torch.device("cpu"),
    ...                       repeats=1)
    >>> [row.name for row in rows]
    ['dense (SDPA)', 'radial (torch)']
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..layout import BlockLayout

__all__ = ["Timing", "measure", "time_attention"]


@dataclass(frozen=True)
class Timing:
    """One row: ``forward_ms`` (median of one forward call, milliseconds), ``backward_ms`` (forward + backward, or
    ``None`` when not timed), ``flops``: the attention FLOPs one forward computes (``4 * S_q * S_k * head_dim`` per
    head over the blocks it computes, batch and heads included; a backward computes 2.5x these)."""

    name: str
    forward_ms: float
    backward_ms: float | None
    flops: float

    @property
    def tflops(self) -> float:
        """Forward TFLOP/s over the FLOPs this row computes (for radial rows: per computed block)."""
        return self.flops / (self.forward_ms * 1e-3) / 1e12

    @property
    def backward_tflops(self) -> float | None:
        """Forward + backward TFLOP/s (3.5x the forward FLOPs), or ``None``."""
        return None if self.backward_ms is None else 3.5 * self.flops / (self.backward_ms * 1e-3) / 1e12


def measure(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls (CUDA: events around each
    call after a synchronize; CPU: wall clock)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_attention(
    layout: BlockLayout,
    *,
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    batch: int = 1,
    backend: str = "auto",
    backward: bool = False,
    flex: bool = False,
    fp8: bool = False,
    repeats: int = 10,
    seed: int = 0,
) -> list[Timing]:
    """Time dense SDPA and radial attention on ``layout`` (its ``seq_len`` tokens) for random inputs.

    Args:
        layout: the radial block layout (:class:`~radial_diffusers.BlockLayout`).
        heads, head_dim, batch: the attention call's shape: ``q``, ``k``, ``v`` are ``(batch, seq_len, heads,
            head_dim)``, as Diffusers' processors pass them (SDPA gets the ``(batch, heads, seq_len, head_dim)``
            contiguous copy it prefers).
        dtype, device: of the inputs.
        backend: the radial row's backend (``"auto"``: Triton on CUDA, the PyTorch path on the CPU).
        backward: also time forward + backward of every row but the FP8 one (inference only) and a flex one at
            blocks other than 128 tokens (its backward tiles those only).
        flex: add a row for the ``flex`` backend (FlexAttention on the same layout; CUDA), unless ``backend`` is it.
        fp8: add a row for FP8 attention (``precision="fp8"``; sm_89 and newer).
        repeats: timed calls per row (the median counts).
        seed: of the random inputs.

    Returns:
        The rows: ``dense (SDPA)``, ``radial (<backend>)``, then ``radial (flex)`` / ``radial fp8 (<backend>)``.
    """
    from ..attention.op import block_sparse_attention, resolve_backend
    from ..masks import mask_stats

    backend = resolve_backend(backend, device, layout.block_size)
    stats = mask_stats(layout.block_mask().cpu(), layout.block_size, layout.seq_len, head_dim)
    layout = layout.to(device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(batch, layout.seq_len, heads, head_dim, generator=g).to(device=device, dtype=dtype)
               for _ in range(3))
    sdpa_inputs = [x.transpose(1, 2).contiguous() for x in (q, k, v)]
    dense, computed = stats.dense_flops * batch * heads, stats.sparse_flops * batch * heads

    def sdpa(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    # (name, call, inputs, FLOPs, differentiable)
    flex_trains = layout.block_size == 128  # FlexAttention's backward here tiles 128-token blocks only
    rows = [("dense (SDPA)", sdpa, sdpa_inputs, dense, True),
            (f"radial ({backend})", lambda q, k, v: block_sparse_attention(q, k, v, layout, backend=backend),
             (q, k, v), computed, backend != "flex" or flex_trains)]
    if flex and backend != "flex":
        rows.append(("radial (flex)", lambda q, k, v: block_sparse_attention(q, k, v, layout, backend="flex"),
                     (q, k, v), computed, flex_trains))
    if fp8:  # inference only: no backward through e4m3 scores
        rows.append((f"radial fp8 ({backend})",
                     lambda q, k, v: block_sparse_attention(q, k, v, layout, backend=backend, precision="fp8"),
                     (q, k, v), computed, False))
    out = []
    for name, fn, inputs, flops, differentiable in rows:
        with torch.no_grad():
            forward = measure(lambda: fn(*inputs), repeats, device)
        both = None
        if backward and differentiable:
            grads = [x.detach().clone().requires_grad_(True) for x in inputs]
            grad_out = torch.randn(fn(*inputs).shape, generator=g).to(device=device, dtype=dtype)

            def step():
                for x in grads:
                    x.grad = None
                fn(*grads).backward(grad_out)

            both = measure(step, repeats, device)
        out.append(Timing(name, forward * 1e3, None if both is None else both * 1e3, flops))
    return out
