"""``block_sparse_attention``: one ``torch.library`` custom op (forward + backward) over a :class:`BlockLayout`.

The op is opaque to ``torch.compile`` (one node per call, with fake implementations for shape propagation), its
layout travels as tensors, and ``register_autograd`` wires the backward op, so it trains. Backends are chosen by
name at call time: ``"torch"`` (gather kept blocks, any device), ``"flex"`` (PyTorch FlexAttention on the same
layout), ``"triton"`` (CUDA kernels; CPU tensors under ``TRITON_INTERPRET=1``), ``"auto"`` (Triton on CUDA when
available, else the PyTorch path).
"""

from __future__ import annotations

import importlib
import math

import torch

from ..layout import BlockLayout
from . import torch_ref

__all__ = ["block_sparse_attention", "block_sparse_attention_backward", "BACKENDS", "PRECISIONS", "resolve_backend"]

BACKENDS = ("auto", "torch", "triton", "flex")
PRECISIONS = (None, "fp8")  # None: the inputs' dtype; "fp8": e4m3 QK^T (attention.fp8, inference only)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _backend_module(name: str):
    if name == "torch":
        return torch_ref
    if name == "flex":
        return importlib.import_module(".flex", __package__)
    if name == "triton":
        try:
            return importlib.import_module(".triton_kernels", __package__)
        except ModuleNotFoundError as exc:
            raise NotImplementedError(
                "backend='triton' is not available in this build (radial_diffusers.attention.triton_kernels is "
                f"missing: {exc}); use backend='torch' or 'flex'"
            ) from exc
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def check_backend_device(backend: str, device: torch.device, block_size: int | None = None) -> None:
    """Raise where the named ``backend`` cannot run on ``device`` (``"triton"`` / ``"flex"`` need CUDA; Triton also
    blocks of at least 16 tokens). Imports the backend's module: not for traced code."""
    if backend not in ("auto", "torch"):
        _backend_module(backend).check_device(device, block_size)


def _triton_ready(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        importlib.import_module(".triton_kernels", __package__)
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device, block_size: int | None = None) -> str:
    """Map ``"auto"`` to a concrete backend for ``device`` (and the layout's ``block_size``: the Triton kernels
    need blocks of at least 16 tokens); validate other names, and that a named backend runs on ``device`` (the
    radial step hook resolves it on a transformer's first call, a dense step included: a backend the device cannot
    run fails there, not at the first sparse step)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend != "auto":
        if not torch.compiler.is_compiling():  # a traced call: the radial step hook checked it when it built the plan
            check_backend_device(backend, device, block_size)
        return backend
    return "triton" if _triton_ready(device) and (block_size is None or block_size >= 16) else "torch"


@torch.library.custom_op("radial_diffusers::block_sparse_attn", mutates_args=())
def _bsa_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    counts: torch.Tensor,
    indices: torch.Tensor,
    t_counts: torch.Tensor,
    t_indices: torch.Tensor,
    kv_lengths: torch.Tensor | None,
    block_size: int,
    seq_len: int,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    mod = _backend_module(backend)
    if backend == "torch":
        return mod.forward(q, k, v, counts, indices, kv_lengths, block_size, seq_len, scale)
    return mod.forward(q, k, v, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len, scale)


@_bsa_forward.register_fake
def _(q, k, v, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len, scale, backend):
    b, s, h, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((b, h, s), dtype=torch.float32)


@torch.library.custom_op("radial_diffusers::block_sparse_attn_grads", mutates_args=())
def _bsa_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_lse: torch.Tensor | None,
    counts: torch.Tensor,
    indices: torch.Tensor,
    t_counts: torch.Tensor,
    t_indices: torch.Tensor,
    kv_lengths: torch.Tensor | None,
    block_size: int,
    seq_len: int,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mod = _backend_module(backend)
    if backend == "torch":
        return mod.backward(grad_out, q, k, v, out, lse, grad_lse, counts, indices, kv_lengths, block_size, seq_len,
                            scale)
    return mod.backward(
        grad_out, q, k, v, out, lse, grad_lse, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len,
        scale,
    )


@_bsa_backward.register_fake
def _(grad_out, q, k, v, out, lse, grad_lse, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len,
      scale, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, counts, indices, t_counts, t_indices, kv_lengths)
    ctx.block_size, ctx.seq_len, ctx.scale, ctx.backend = block_size, seq_len, scale, backend


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, counts, indices, t_counts, t_indices, kv_lengths = ctx.saved_tensors
    dq, dk, dv = _backward_impl(grad_out, grad_lse, q, k, v, out, lse, counts, indices, t_counts, t_indices,
                                kv_lengths, ctx.block_size, ctx.seq_len, ctx.scale, ctx.backend)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None


def _backward_impl(grad_out, grad_lse, q, k, v, out, lse, counts, indices, t_counts, t_indices, kv_lengths,
                   block_size: int, seq_len: int, scale: float, backend: str):
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    # Each backend folds the lse gradient into delta_i = sum_d dO_id * O_id - dLSE_i (the flash-attention backward's
    # dS = P * (dP - delta)); the Triton one computes it in a kernel, with no fp32 copies of dO and O.
    if backend == "flex":
        # FlexAttention differentiates itself; autograd is not recorded inside a custom op's implementation, so
        # its backward runs here, in the autograd function.
        from . import flex

        return flex.backward(grad_out, q, k, v, out, lse, grad_lse, counts, indices, t_counts, t_indices,
                             kv_lengths, block_size, seq_len, scale)
    return _bsa_backward(
        grad_out, q, k, v, out, lse, grad_lse, counts, indices, t_counts, t_indices, kv_lengths, block_size,
        seq_len, scale, backend,
    )


_bsa_forward.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("radial_diffusers::block_sparse_attn_fp8", mutates_args=())
def _bsa_forward_fp8(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    counts: torch.Tensor,
    indices: torch.Tensor,
    t_counts: torch.Tensor,
    t_indices: torch.Tensor,
    kv_lengths: torch.Tensor | None,
    block_size: int,
    seq_len: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    from . import fp8

    return fp8.forward(q, k, v, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len, scale)


@_bsa_forward_fp8.register_fake
def _(q, k, v, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len, scale):
    b, s, h, _ = q.shape
    return v.new_empty(q.shape), q.new_empty((b, h, s), dtype=torch.float32)


def _check_fp8(q, k, v, backend: str) -> None:
    """fp8 attention: the Triton kernels, 16-bit inputs, no gradient (inference only)."""
    if backend != "triton":
        raise ValueError(f"precision='fp8' runs on backend='triton' (or 'auto' on a CUDA GPU), got backend={backend!r}; "
                         "use precision=None with this backend")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"precision='fp8' quantizes 16-bit q/k (P @ V stays in their dtype); got {q.dtype}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError("precision='fp8' is inference-only (no backward through e4m3 scores): run under "
                                  "torch.no_grad() / inference_mode(), or train with precision=None")


def _check_inputs(q, k, v, layout, kv_lengths):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"{name} must be a 4-D tensor (batch, seq_len, heads, head_dim), got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"q, k, v must have the same shape (B, S, H, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.dtype != k.dtype or k.dtype != v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or k.device != v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not 1 <= q.shape[-1] <= 256:
        raise ValueError(f"head_dim must be in 1..256, got {q.shape[-1]}")
    if not isinstance(layout, BlockLayout):
        raise TypeError(f"layout must be a radial_diffusers.BlockLayout, got {type(layout).__name__}")
    if q.shape[1] != layout.seq_len:
        if q.shape[2] == layout.seq_len:
            raise ValueError(f"q, k, v are (B, S, H, D) as Diffusers passes them; these {tuple(q.shape)} look like "
                             "(B, H, S, D): pass q.transpose(1, 2) (and k, v alike)")
        raise ValueError(
            f"sequence length {q.shape[1]} does not match the layout's seq_len={layout.seq_len}; build the layout "
            "for this geometry (BlockLayout.from_block_mask(mask, block_size, seq_len=S))"
        )
    if kv_lengths is not None:
        if (not isinstance(kv_lengths, torch.Tensor) or kv_lengths.shape != (q.shape[0],)
                or kv_lengths.dtype.is_floating_point or kv_lengths.dtype.is_complex or kv_lengths.dtype == torch.bool):
            raise ValueError(f"kv_lengths must be an integer tensor of shape ({q.shape[0]},), got "
                             f"{getattr(kv_lengths, 'dtype', type(kv_lengths).__name__)} "
                             f"{tuple(getattr(kv_lengths, 'shape', ()))}; e.g. torch.tensor(lengths)")


def _prepare(q, k, v, layout: BlockLayout, kv_lengths, scale, backend: str):
    """Checked inputs of a call: ``(backend, layout on q's device, scale, kv_lengths as int32 on q's device)``."""
    _check_inputs(q, k, v, layout, kv_lengths)
    backend = resolve_backend(backend, q.device, layout.block_size)
    layout = layout.to(q.device)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if kv_lengths is not None:  # clamped before the int32 cast: 2**32 + 5 must not wrap to 5
        kv_lengths = kv_lengths.to(device=q.device, dtype=torch.long).clamp(0, q.shape[1]).to(torch.int32)
    return backend, layout, float(scale), kv_lengths


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    *,
    kv_lengths: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    return_lse: bool = False,
    precision: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention restricted to the blocks of ``layout``, differentiable in q, k and v.

    Args:
        q, k, v: ``(B, S, H, D)`` as Diffusers passes them to attention backends (any strides), float32, float16
            or bfloat16, ``S == layout.seq_len``, ``D <= 256``.
        layout: the block-sparse pattern (shared by batch and heads); moved to q's device if needed.
        kv_lengths: optional ``(B,)`` integer tensor; keys at positions ``>= kv_lengths[b]`` are masked for sample
            ``b`` (per-sample padding, e.g. HunyuanVideo's text tokens). Their k / v never reach a result, even
            non-finite ones (the torch and triton backends, fp8 included, zero them or skip them where they read
            them: ``0 * nan`` is nan); ``backend="flex"`` needs them finite (FlexAttention weighs them by 0).
        scale: softmax scale, default ``1 / sqrt(D)``.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"flex"``.
        return_lse: also return the log-sum-exp ``(B, H, S)`` float32 of each query row.
        precision: ``None`` (default): attend in the inputs' dtype. ``"fp8"``: QK^T in float8 e4m3 with per-block
            scales and K smoothed by its mean over tokens, P @ V in the inputs' 16-bit dtype (SageAttention-style;
            see :mod:`radial_diffusers.attention.fp8`). Inference only, ``backend="triton"`` on a GPU of compute
            capability 8.9 or 9.0; elsewhere a clear error.

    Returns:
        ``out``, a contiguous ``(B, S, H, D)`` tensor in q's dtype (and ``lse`` if asked). Rows with no attendable key give 0.

    Example:
        >>> import torch, radial_diffusers as rd
        >>> layout = rd.BlockLayout.from_block_mask(rd.radial_block_mask(4, 64, block_size=16), 16)
        >>> q = k = v = torch.randn(1, 256, 2, 32)
        >>> rd.block_sparse_attention(q, k, v, layout).shape
        torch.Size([1, 256, 2, 32])
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    backend, layout, scale, kv_lengths = _prepare(q, k, v, layout, kv_lengths, scale, backend)
    args = (q, k, v, layout.counts, layout.indices, layout.t_counts, layout.t_indices, kv_lengths,
            layout.block_size, layout.seq_len, float(scale))
    if precision == "fp8":
        _check_fp8(q, k, v, backend)
        out, lse = _bsa_forward_fp8(*args)
    else:
        out, lse = _bsa_forward(*args, backend)
    return (out, lse) if return_lse else out


def block_sparse_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    layout: BlockLayout,
    *,
    kv_lengths: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dq, dk, dv)`` of :func:`block_sparse_attention` for an upstream ``grad_out``, without autograd:
    for callers that drive attention from their own ``torch.autograd.Function`` (Diffusers' context-parallel
    templates, ring attention).

    ``out`` ``(B, S, H, D)`` and ``lse`` ``(B, H, S)`` float32 are the *normaliser's* output and log-sum-exp: those
    of this call, or, when this call is one part of a softmax split over key chunks (ring attention), the merged
    output and log-sum-exp of all parts, which gives this part's share of the gradient. Other arguments as in
    :func:`block_sparse_attention`.
    """
    backend, layout, scale, kv_lengths = _prepare(q, k, v, layout, kv_lengths, scale, backend)
    b, s, h, _ = q.shape
    for name, t, shape in (("grad_out", grad_out, q.shape), ("out", out, q.shape), ("lse", lse, (b, h, s))):
        if not isinstance(t, torch.Tensor) or t.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)} (q is (B, S, H, D) = {tuple(q.shape)}; lse is "
                             f"(B, H, S)), got {tuple(getattr(t, 'shape', ())) or type(t).__name__}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    # The kernels take dO and O in q's dtype (an fp32 upstream gradient of a 16-bit call is cast, as autograd would).
    grad_out, out = grad_out.to(q.dtype), out.to(q.dtype)
    return _backward_impl(grad_out, None, q, k, v, out, lse.float().contiguous(), layout.counts, layout.indices,
                          layout.t_counts, layout.t_indices, kv_lengths, layout.block_size, layout.seq_len,
                          scale, backend)
