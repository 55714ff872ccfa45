"""Radial attention under Diffusers' context parallelism (``transformer.enable_parallelism``): Ulysses, ring and
Diffusers' unified Ulysses x ring.

Diffusers shards the sequence over the ranks (its ``_cp_plan`` hooks) and runs attention through its templated
context-parallel functions, which take a ``forward_op`` / ``backward_op`` pair. :func:`parallel_block_sparse_attention`
hands them ours:

* Ulysses: after Diffusers' all-to-all the op sees the whole sequence with this rank's heads; the layout does not
  depend on the head, so the op runs the full layout.
* Ring (and the ring stage of unified): the op sees this rank's query chunk and, one ring step at a time, every
  rank's key/value chunk. For each (query chunk, key chunk) pair only the layout's kept blocks inside it are
  computed, through a :class:`PairPlan` built once per geometry; Diffusers merges the steps by log-sum-exp, which
  the op returns. A pair with no kept block computes nothing.

A chunk boundary need not fall on a block boundary (Wan 480p, 81 frames: 32,760 tokens, 16,380 per rank on two):
the pair's queries are placed at their offset inside their first block (rows before it are zeros, their output
dropped), and its keys are split at the first block boundary into a head (the tail of a block column, placed at
the start of a one-column window) and the block-aligned rest; keys past the chunk's end are masked by
``kv_lengths``. Both parts run the ordinary square op and are merged by log-sum-exp.

Private Diffusers API used (pinned in pyproject; ``tests/test_parallel.py`` names it when it moves):
``attention_dispatch._templated_context_parallel_attention`` and the order in which ``TemplatedRingAttention``
visits key/value chunks (step ``i`` holds ring rank ``(rank + i) % ring_degree``'s chunk, forward and backward).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .attention.op import block_sparse_attention, block_sparse_attention_backward
from .errors import UnsupportedModelError
from .layout import BlockLayout

__all__ = ["parallel_block_sparse_attention", "PairPlan", "chunk_bounds", "ring_can_run_native", "LSE_FLOOR",
           "context_parallel_config", "check_parallel_model", "check_parallel_call",
           "enable_context_parallelism"]

# The log-sum-exp returned for a query row with no attendable key in a ring step. Diffusers merges steps with
# ``prev - logsigmoid(prev - lse)``, which turns -inf - (-inf) into NaN; a finite floor far below any real
# log-sum-exp merges exactly (its weight is exp(-1e4) = 0 in float32) and is mapped back to -inf for the backward.
LSE_FLOOR = -1.0e4


def chunk_bounds(total: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each of ``parts`` contiguous chunks of ``total`` tokens, as ``torch.tensor_split``
    splits them (Diffusers' equal shards, and its uneven "anything" shards)."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


@dataclass(frozen=True)
class _Window:
    """One square op call of a pair: ``length`` rows/keys; queries at ``q_offset``; keys ``[kv_start, kv_stop)``
    of the key chunk at the window's start; ``kv_global``: the global position of ``kv_start``."""

    layout: BlockLayout
    length: int
    q_offset: int
    kv_start: int
    kv_stop: int
    kv_global: int


@dataclass(frozen=True)
class PairPlan:
    """The kept blocks of ``layout`` between the queries ``[q0, q0 + q_len)`` and the keys ``[k0, k0 + k_len)``
    (global token positions), as at most two windows of the square op (see the module docstring)."""

    windows: tuple[_Window, ...]
    q_len: int
    k_len: int
    whole: bool = False  # the whole sequence against itself (Ulysses): one call of the op on the layout

    @property
    def empty(self) -> bool:
        return not self.windows

    @classmethod
    def build(cls, layout: BlockLayout, q0: int, q_len: int, k0: int, k_len: int) -> "PairPlan":
        bs, seq = layout.block_size, layout.seq_len
        if not (0 <= q0 and q0 + q_len <= seq and 0 <= k0 and k0 + k_len <= seq):
            raise ValueError(f"chunks [{q0}, {q0 + q_len}) x [{k0}, {k0 + k_len}) do not fit a layout of {seq} tokens")
        if q0 == 0 and k0 == 0 and q_len == k_len == seq:
            return cls((_Window(layout, seq, 0, 0, seq, 0),), q_len, k_len, whole=True)
        mask = layout.to("cpu").block_mask()
        n = mask.shape[0]
        row0, q_off = divmod(q0, bs)
        row1 = -(-(q0 + q_len) // bs)
        col0, k_off = divmod(k0, bs)
        windows = []
        pieces = []  # (first block column, keys [start, stop) of the chunk)
        if k_off:
            head = min(k_len, bs - k_off)
            pieces.append((col0, 0, head))
            if head < k_len:
                pieces.append((col0 + 1, head, k_len))
        else:
            pieces.append((col0, 0, k_len))
        for col, start, stop in pieces:
            n_cols = -(-(stop - start) // bs)
            rows = mask[row0:row1, col:min(n, col + n_cols)]
            if not bool(rows.any()):
                continue
            length = max((row1 - row0) * bs, n_cols * bs)
            nb = -(-length // bs)
            window_mask = torch.zeros(nb, nb, dtype=torch.bool)
            window_mask[: rows.shape[0], : rows.shape[1]] = rows
            windows.append(_Window(BlockLayout.from_block_mask(window_mask, bs, nb * bs), nb * bs, q_off, start, stop,
                                   k0 + start))
        return cls(tuple(windows), q_len, k_len)

    def _inputs(self, w: _Window, q, k, v, kv_lengths):
        batch, _, heads, dim = q.shape
        qw = q.new_zeros(batch, w.length, heads, dim)
        qw[:, w.q_offset:w.q_offset + self.q_len] = q
        n = w.kv_stop - w.kv_start
        kw, vw = k.new_zeros(qw.shape), v.new_zeros(qw.shape)
        kw[:, :n] = k[:, w.kv_start:w.kv_stop]
        vw[:, :n] = v[:, w.kv_start:w.kv_stop]
        valid = torch.full((batch,), n, dtype=torch.int32, device=q.device)
        if kv_lengths is not None:  # keys at global positions >= kv_lengths[b] are padding
            valid = (kv_lengths.to(q.device, torch.int32) - w.kv_global).clamp(0, n)
        return qw, kw, vw, valid

    def forward(self, q, k, v, kv_lengths, scale, backend) -> tuple[torch.Tensor, torch.Tensor]:
        """``out (B, Lq, H, D)`` float32 and ``lse (B, H, Lq)`` of the pair (``-inf`` where no key is kept)."""
        if self.whole:
            out, lse = block_sparse_attention(q, k, v, self.windows[0].layout, kv_lengths=kv_lengths, scale=scale,
                                              backend=backend, return_lse=True)
            return out.float(), lse
        out = lse = None
        for w in self.windows:
            qw, kw, vw, valid = self._inputs(w, q, k, v, kv_lengths)
            o, l = block_sparse_attention(qw, kw, vw, w.layout, kv_lengths=valid, scale=scale, backend=backend,
                                          return_lse=True)
            o, l = o[:, w.q_offset:w.q_offset + self.q_len].float(), l[..., w.q_offset:w.q_offset + self.q_len]
            out, lse = (o, l) if out is None else merge_partial(out, lse, o, l)
        if out is None:
            batch, _, heads, dim = q.shape
            out = q.new_zeros(batch, self.q_len, heads, dim, dtype=torch.float32)
            lse = torch.full((batch, heads, self.q_len), float("-inf"), device=q.device)
        return out, lse

    def backward(self, grad_out, q, k, v, out, lse, kv_lengths, scale, backend):
        """``(dq, dk, dv)`` of this pair's share, given the merged ``out`` / ``lse (B, H, Lq)`` of the whole row."""
        if self.whole:
            return block_sparse_attention_backward(grad_out, q, k, v, out, lse, self.windows[0].layout,
                                                   kv_lengths=kv_lengths, scale=scale, backend=backend)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        for w in self.windows:
            qw, kw, vw, valid = self._inputs(w, q, k, v, kv_lengths)
            rows = slice(w.q_offset, w.q_offset + self.q_len)
            go, ow = grad_out.new_zeros(qw.shape), out.new_zeros(qw.shape)
            go[:, rows], ow[:, rows] = grad_out, out
            # rows outside the chunk: zero queries and zero upstream gradient; lse 0 keeps exp(s - lse) finite
            lw = lse.new_zeros(lse.shape[0], lse.shape[1], w.length)
            lw[..., rows] = lse
            gq, gk, gv = block_sparse_attention_backward(go, qw, kw, vw, ow, lw, w.layout, kv_lengths=valid,
                                                         scale=scale, backend=backend)
            n = w.kv_stop - w.kv_start
            dq += gq[:, rows]
            dk[:, w.kv_start:w.kv_stop] += gk[:, :n]
            dv[:, w.kv_start:w.kv_stop] += gv[:, :n]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def merge_partial(out1, lse1, out2, lse2):
    """Merge two softmax parts over disjoint keys: ``out (B, S, H, D)`` float32, ``lse (B, H, S)``; rows empty in
    both stay 0 / -inf."""
    lse = torch.logaddexp(lse1, lse2)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    w1 = torch.exp(lse1 - safe).transpose(1, 2)[..., None]
    w2 = torch.exp(lse2 - safe).transpose(1, 2)[..., None]
    return out1 * w1 + out2 * w2, lse


def context_parallel_config(transformer):
    """The transformer's Diffusers ``ContextParallelConfig`` (set by ``enable_parallelism``), or ``None``."""
    config = getattr(transformer, "_parallel_config", None)
    return None if config is None else getattr(config, "context_parallel_config", None)


def check_parallel_model(transformer, family, modules, cp=None) -> None:
    """Raise :class:`~radial_diffusers.errors.UnsupportedModelError` if radial attention cannot run under the
    transformer's context parallelism (``cp``: a ``ContextParallelConfig`` about to be enabled; default: the one
    enabled): its family is not ``"multi-gpu"`` in the registry, or has no context-parallel plan (ours or Diffusers'
    ``_cp_plan``), or the Ulysses degree does not divide the attention heads. Nothing is changed either way."""
    cp = context_parallel_config(transformer) if cp is None else cp
    if cp is None:
        return
    name = type(transformer).__name__
    if "multi-gpu" not in family.features:
        why = f" ({family.cp_note})" if family.cp_note else ""
        raise UnsupportedModelError(
            f"{name} runs under context parallelism (enable_parallelism), which radial attention does not support "
            f"for {family.label} yet{why}; run it on one process, or without radial attention")
    if family.cp_plan is None and getattr(transformer, "_cp_plan", None) is None:
        raise UnsupportedModelError(
            f"{name} runs under context parallelism (enable_parallelism) but neither radial-diffusers' {family.name} "
            "entry nor Diffusers has a context-parallel plan for it, so its sequence would not be sharded the way "
            "the radial mask expects; run it on one process")
    if cp.ulysses_degree > 1 and not cp.ulysses_anything:
        for _, module in modules:
            heads = getattr(module, "heads", None)
            if heads is not None and heads % cp.ulysses_degree:
                raise UnsupportedModelError(
                    f"{name}: ulysses_degree={cp.ulysses_degree} does not divide its {heads} attention heads; pick a "
                    f"Ulysses degree that divides {heads}, use ring attention (ring_degree) for the rest of the "
                    "ranks, or ContextParallelConfig(ulysses_anything=True)")


def enable_context_parallelism(pipe_or_transformer, *, ulysses: int = 1, ring: int = 1, **config_kwargs):
    """Shard a pipeline's transformer(s) over this process group with Diffusers' context parallelism
    (``transformer.enable_parallelism`` on every expert: Diffusers has no pipeline-level call), after checking
    that radial attention can run on it: call it before or after :func:`~radial_diffusers.apply_radial_attention`.

    ``torch.distributed`` must be initialised (``torchrun``) with ``ulysses * ring`` processes, or a multiple of
    it with a ``mesh=`` (a device mesh with ``"ring"`` and ``"ulysses"`` dimensions and others, e.g. data
    parallelism across sequence-parallel groups: sequence-parallel LoRA training). On a machine
    without an accelerator (gloo on CPU: tests, dry runs) Diffusers' device pick (``rank % device_count()``) would
    divide by zero; the CPU is used. ``config_kwargs`` go to ``ContextParallelConfig`` (``ulysses_anything``, ...).
    Every check runs before any expert changes. Returns the ``ContextParallelConfig``.

    Example (``torchrun --nproc-per-node 4 script.py``)::

        >>> torch.distributed.init_process_group("nccl")                      # doctest: +SKIP
        >>> rd.enable_context_parallelism(pipe, ulysses=2, ring=2)             # doctest: +SKIP
        >>> rd.apply_radial_attention(pipe)                                    # doctest: +SKIP
    """
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    from .families import family_of

    if ulysses < 1 or ring < 1 or ulysses * ring < 2:
        raise ValueError(f"ulysses and ring must be >= 1 with ulysses * ring >= 2, got ulysses={ulysses}, ring={ring}")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"context parallelism over {ulysses * ring} processes needs torch.distributed: launch with "
                           f"torchrun --nproc-per-node {ulysses * ring} and call "
                           "torch.distributed.init_process_group() first")
    world = dist.get_world_size()
    if world != ulysses * ring and not (config_kwargs.get("mesh") is not None and world % (ulysses * ring) == 0):
        raise ValueError(f"ulysses={ulysses} x ring={ring} = {ulysses * ring} processes, but this process group has "
                         f"{dist.get_world_size()}; launch torchrun with --nproc-per-node {ulysses * ring}")
    transformers = [pipe_or_transformer] if isinstance(pipe_or_transformer, torch.nn.Module) else [
        t for t in (getattr(pipe_or_transformer, name, None) for name in ("transformer", "transformer_2"))
        if t is not None]
    configs = []
    for transformer in transformers:
        if getattr(transformer, "_parallel_config", None) is not None:
            raise RuntimeError(f"{type(transformer).__name__} is already parallel (enable_parallelism was called)")
        family = family_of(transformer)
        cp = ContextParallelConfig(ulysses_degree=ulysses if ulysses > 1 else None,
                                   ring_degree=ring if ring > 1 else None, **config_kwargs)
        check_parallel_model(transformer, family, family.attention_modules(transformer), cp)
        configs.append(cp)
    no_accelerator = torch.accelerator.device_count() == 0
    count = torch.accelerator.device_count
    try:
        if no_accelerator:
            torch.accelerator.device_count = lambda: 1
        for transformer, cp in zip(transformers, configs):
            transformer.enable_parallelism(config=cp)
    finally:
        torch.accelerator.device_count = count
    return configs[0]


def check_parallel_call(cp, seq_len: int, sharded_len: int) -> None:
    """Raise ``ValueError`` before a transformer call whose sharded sequence (``sharded_len`` tokens, the one the
    model's plan splits) does not divide over the context-parallel ranks (Diffusers' equal shards assert it deep
    inside; its "anything" modes split unevenly and need no check). ``seq_len``: the attention sequence."""
    ranks = cp.ring_degree * cp.ulysses_degree
    if cp.ulysses_anything or cp.ring_anything or sharded_len % ranks == 0:
        return
    raise ValueError(
        f"context parallelism over {ranks} ranks needs a sequence that divides into {ranks} equal shards, but this "
        f"call has {sharded_len} tokens (the {seq_len}-token attention sequence); pick frames / height / width that "
        f"make it a multiple of {ranks}, or enable ContextParallelConfig(ulysses_anything=True) (Ulysses) or "
        "ring_anything=True (ring), which shard unevenly")


def ring_can_run_native(backend) -> bool:
    """Whether Diffusers' stock ring attention can run on ``backend`` (a processor's ``_attention_backend``): its
    native SDPA path returns no log-sum-exp, so ring attention refuses it; every other context-parallel backend
    returns one."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    name = AttentionBackendName(backend) if backend is not None else _AttentionBackendRegistry.get_active_backend()[0]
    return name != AttentionBackendName.NATIVE


class _CPOp:
    """The ``forward_op`` / ``backward_op`` pair for one attention call; counts the ring steps it is driven through
    (Diffusers calls it once per step, in ring order)."""

    def __init__(self, layout: BlockLayout, kv_lengths, backend: str, parallel_config):
        cp = parallel_config.context_parallel_config
        self.layout, self.kv_lengths, self.backend = layout, kv_lengths, backend
        self.ring, self.rank = cp.ring_degree, cp._ring_local_rank
        self._fwd_calls = self._bwd_calls = 0
        self.ring_chunks = chunk_bounds(layout.seq_len, self.ring)

    def _plan(self, step: int, q_len: int, k_len: int) -> PairPlan:
        q0, q1 = self.ring_chunks[self.rank]
        k0, k1 = self.ring_chunks[(self.rank + step) % self.ring]
        if (q1 - q0, k1 - k0) != (q_len, k_len):
            raise RuntimeError(
                f"radial attention under context parallelism expected ring chunks of {q1 - q0} query and "
                f"{k1 - k0} key tokens of the {self.layout.seq_len}-token layout, got {q_len} and {k_len}: the "
                "model's context-parallel plan must shard exactly the sequence the radial mask covers")
        return _pair_plan(self.layout, q0, q_len, k0, k_len)

    def forward(self, ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
        if attn_mask is not None or dropout_p or is_causal or enable_gqa:
            raise ValueError("radial context-parallel attention takes no attn_mask, dropout, causal flag or GQA")
        step = self._fwd_calls
        self._fwd_calls += 1
        plan = self._plan(step, query.shape[1], key.shape[1])
        out, lse = plan.forward(query, key, value, self.kv_lengths, scale, self.backend)
        if _save_ctx:
            ctx.save_for_backward(query, key, value, out.to(query.dtype), lse)
            ctx.radial_scale = scale
        lse = lse.clamp_min(LSE_FLOOR).transpose(1, 2).contiguous()  # Diffusers' layout: (B, S, H)
        out = out.to(query.dtype)
        return (out, lse) if return_lse else out

    def backward(self, ctx, grad_out, *args, query=None, key=None, value=None, out=None, lse=None, **kwargs):
        saved_q, saved_k, saved_v, saved_out, saved_lse = ctx.saved_tensors
        step = self._bwd_calls % self.ring
        self._bwd_calls += 1
        query = saved_q if query is None else query
        key = saved_k if key is None else key
        value = saved_v if value is None else value
        out = saved_out if out is None else out
        if lse is None:
            lse = saved_lse
        else:
            lse = lse.float().transpose(1, 2)
            lse = torch.where(lse <= LSE_FLOOR / 2, torch.full_like(lse, float("-inf")), lse)
        plan = self._plan(step, query.shape[1], key.shape[1])
        if plan.empty:
            return torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)
        return plan.backward(grad_out.to(query.dtype), query, key, value, out.to(query.dtype), lse.contiguous(),
                             self.kv_lengths, ctx.radial_scale, self.backend)


@functools.lru_cache(maxsize=256)
def _pair_plan_cached(layout_id: int, layout: BlockLayout, q0: int, q_len: int, k0: int, k_len: int) -> PairPlan:
    return PairPlan.build(layout, q0, q_len, k0, k_len)


def _pair_plan(layout: BlockLayout, q0: int, q_len: int, k0: int, k_len: int) -> PairPlan:
    return _pair_plan_cached(id(layout), layout, q0, q_len, k0, k_len)


def parallel_block_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: BlockLayout,
    parallel_config,
    *,
    kv_lengths: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Radial (block-sparse) attention of this rank's shard under Diffusers' context parallelism.

    Args:
        query, key, value: this rank's ``(B, S_local, H, D)`` shard, as a processor holds it under
            ``enable_parallelism`` (the sequence split over the ranks by the model's context-parallel plan).
        layout: the layout of the whole sequence (``layout.seq_len`` = the sum of the shards).
        parallel_config: the processor's ``_parallel_config`` (a Diffusers ``ParallelConfig`` with a context-
            parallel part: Ulysses, ring, or both).
        kv_lengths: optional ``(B,)`` count of valid keys of the whole sequence (padding at its end).
        backend: as in :func:`radial_diffusers.block_sparse_attention`.

    Returns:
        This rank's ``(B, S_local, H, D)`` output, differentiable in q, k and v (through Diffusers' templated
        autograd functions and our backward).
    """
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    op = _CPOp(layout, kv_lengths, backend, parallel_config)
    return _templated_context_parallel_attention(
        query, key, value, None, 0.0, False, None, False, False,
        forward_op=op.forward, backward_op=op.backward, _parallel_config=parallel_config)
