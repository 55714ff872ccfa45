"""Radial attention processors: Wan2.1/2.2, LTX-Video, LTX-2, Kandinsky 5 and Cosmos (self-attention), HunyuanVideo
(dual and single blocks), CogVideoX, Mochi and HunyuanVideo-1.5 (joint text + video), SkyReels-V2 (self-attention,
with diffusion forcing's block-causal frame mask).

They subclass the stock Diffusers processors. Dense calls (a dense step, a dense layer, or a cross-attention call)
are the stock ``__call__`` itself, so they run on the user's attention backend and match stock output exactly (one
exception: on Kandinsky 5's NABLA checkpoints a dense self-attention call is full attention, not NABLA's; see
:class:`RadialKandinsky5AttnProcessor`).
Sparse calls repeat the stock q/k/v projection, QK-norm and RoPE code path and replace only the attention call with
:func:`radial_diffusers.block_sparse_attention` over the layout of the current geometry.

The step-tracking hook (``integration.py``) sets the shared state's ``layout`` before each transformer call and
decides dense vs sparse twice over: as a plain ``use_sparse`` bool per processor, which eager calls branch on, and as
the CPU bool scalar ``state._sparse_step``, which compiled calls read. Under ``torch.compile`` a processor never
branches in Python on the step or its layer: it always runs the shared q/k/v + RoPE path, then
``torch.cond(state._sparse_step & self._layer_sparse, radial, stock dispatch_attention_fn)`` for the attention
itself. One graph thus serves every step and every layer (dense layer 0 included) of a block type, and Dynamo never
recompiles between steps or layers; the graph holds both attention branches, only one runs.
"""

from __future__ import annotations

import functools

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import (CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0,
                                                  MochiAttnProcessor2_0)
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0
from diffusers.models.transformers.transformer_kandinsky import Kandinsky5AttnProcessor
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor
from diffusers.models.transformers.transformer_ltx2 import (LTX2PerturbedAttnProcessor, apply_interleaved_rotary_emb,
                                                            apply_split_rotary_emb)
from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2AttnProcessor
from diffusers.models.transformers.transformer_skyreels_v2 import _get_qkv_projections as _skyreels_qkv_projections
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

from .attention.op import block_sparse_attention
from .parallel import (MAX_RING_FOR_GRADIENTS, parallel_block_sparse_attention, ring_can_run_native,
                       runs_own_ring, shard_ranges)

__all__ = ["RadialWanAttnProcessor", "RadialHunyuanVideoAttnProcessor", "RadialCogVideoXAttnProcessor",
           "RadialLTXVideoAttnProcessor", "RadialMochiAttnProcessor", "RadialHunyuanVideo15AttnProcessor",
           "RadialSkyReelsV2AttnProcessor", "RadialLTX2AttnProcessor", "RadialKandinsky5AttnProcessor",
           "RadialCosmosAttnProcessor"]


def _layout_for(state, seq_len: int):
    layout = state.layout
    if layout is None or layout.seq_len != seq_len:
        got = None if layout is None else layout.seq_len
        raise RuntimeError(
            f"radial attention expected a sequence of {got} tokens for the latent geometry {state.geometry} but the "
            f"attention layer received {seq_len}; the transformer must be called through its forward (the radial "
            "hook reads the latent shape there), with the transformer radial attention was applied to. With "
            "gradient checkpointing, run each forward's backward before the next forward: the blocks recomputed in "
            "backward read the geometry and dense/sparse step of the latest forward"
        )
    return layout


def _compiling() -> bool:
    """Under torch.compile, where the branch is a ``torch.cond``. Under torch.export the hook fixes the branch for
    every step (it refuses a per-step policy), so processors branch in Python, as in eager mode."""
    return torch.compiler.is_compiling() and not torch.compiler.is_exporting()


class _RadialMixin:
    """Shared by every radial processor (listed before the stock processor class it extends)."""

    def __init__(self, state, layer_idx: int, dense: bool = False):
        super().__init__()
        self.state = state
        self.layer_idx = layer_idx
        self.use_sparse = False
        self.removed = False  # set by remove_radial_attention: from then on this processor is the stock one
        # A tensor, not a bool: a bool read inside a compiled block would specialize its graph per layer.
        with torch.inference_mode(False):
            self._layer_sparse = torch.tensor(not dense)

    # Whether q, k, v come from the attention's fused ``to_qkv``: a family whose QKV fusion swaps its processors
    # (CogVideoX's fuse_qkv_projections() installs a fused stock processor, see fusion_variant)
    fused = False
    # A twin's stock processor, the one it stands in for (see twin); None: the layer's processor before apply
    restores = None

    def fusion_variant(self, stock) -> bool | None:
        """Whether ``stock`` is this family's stock processor of fused QKV projections (``True``), its stock processor
        of separate ones (``False``), or neither (``None``: the default, for families whose fusion keeps their
        processors). Exact types: a user's own subclass is neither."""
        return None

    def twin(self, fused: bool, restores) -> "_RadialMixin":
        """A processor of this class, state, layer and settings (dense layer, attention backend, parallel config)
        reading fused QKV projections or not, standing in for the stock processor ``restores`` (put back on
        removal)."""
        twin = type(self)(self.state, self.layer_idx, dense=not bool(self._layer_sparse))
        twin.fused, twin.restores = fused, restores
        twin.take_settings(self)
        return twin

    def stock(self, original):
        """The stock processor to put back in this one's place on removal: the one it stands in for, else the
        layer's ``original``."""
        return original if self.restores is None else self.restores

    def take_settings(self, source) -> None:
        """Take the attention backend and parallel config set on processor ``source`` after it was built
        (``set_attention_backend``, ``enable_parallelism``)."""
        for name in ("_attention_backend", "_parallel_config"):
            if name in source.__dict__:
                setattr(self, name, source.__dict__[name])

    def _runs_stock(self, cross_attention: bool = False) -> bool:
        """Whether this call is the stock ``__call__``: a cross-attention call, or (eager) a dense step or layer that
        no recall probe watches. Counts it. Under compile, nothing per layer or per step is read in Python (it would
        be guarded): the radial path then runs and ``_attention`` picks the branch with ``torch.cond``. Under ring
        context parallelism on the native backend, which Diffusers' stock ring attention refuses (it needs a
        log-sum-exp), a dense call runs our op over the all-kept layout instead (same math, within float
        rounding)."""
        if self.removed:
            return True
        if cross_attention or not (_compiling() or self.use_sparse or self.state.probe is not None
                                   or self._dense_needs_our_op()):
            self.state.count(self.layer_idx, sparse=False)
            return True
        return False

    def _context_parallel(self):
        """The Diffusers ``ContextParallelConfig`` this processor runs under, or ``None``."""
        config = self._parallel_config
        return None if config is None else config.context_parallel_config

    def _dense_needs_our_op(self) -> bool:
        """Under context parallelism, whether a dense call runs our op over the all-kept layout: with ring attention
        on the native backend (Diffusers' ring refuses it), for a joint text + video family, whose shards hold
        video and text chunks that Diffusers' stock path would gather out of the mask's order, and for a family whose
        stock processor ignores the parallel config (Cosmos: ``ModelFamily.stock_runs_parallel``)."""
        cp = self._context_parallel()
        if cp is None:
            return False
        # a ring of more than 2 with gradients: Diffusers' ring backward is wrong there, ours is right
        ring_grads = cp.ring_degree > MAX_RING_FOR_GRADIENTS and runs_own_ring(cp) and torch.is_grad_enabled()
        return (cp.ring_degree > 1 and (ring_grads or not ring_can_run_native(self._attention_backend))) or (
            not self.state.family.stock_runs_parallel)

    def _begin_sparse(self) -> None:
        """Before the radial path (a sparse call, or a dense one a probe watches or ring attention needs): count the
        call (eager mode)."""
        if not _compiling():
            self.state.count(self.layer_idx, sparse=self.use_sparse)

    def _layout(self, seq_len: int):
        """The layout of the current geometry, checked against this call's sequence of ``seq_len`` tokens (this
        rank's shard under context parallelism)."""
        cp = self._context_parallel()
        if cp is None:
            return _layout_for(self.state, seq_len)
        layout = self.state.layout
        ranks = cp.ring_degree * cp.ulysses_degree
        position = self.state.family.text_position
        if layout is not None and seq_len in {
            sum(n for _, n in shard_ranges(layout.seq_len, self.state.text_tokens, position, ranks, i))
            for i in range(ranks)
        }:
            return layout
        return _layout_for(self.state, seq_len * ranks)

    def _token_positions(self, seq_len: int, device) -> torch.Tensor:
        """The positions in the layout's sequence of this call's ``seq_len`` tokens: ``arange`` on one process; under
        context parallelism, this rank's video and text chunks (:func:`~radial_diffusers.attention.chunks.shard_ranges`)."""
        cp = self._context_parallel()
        if cp is None:
            return torch.arange(seq_len, device=device)
        import torch.distributed as dist

        ranks = cp.ring_degree * cp.ulysses_degree
        index = dist.get_rank(cp._flattened_mesh.get_group())
        ranges = shard_ranges(self.state.layout.seq_len, self.state.text_tokens, self.state.family.text_position,
                              ranks, index)
        return torch.cat([torch.arange(start, start + n, device=device) for start, n in ranges])

    def _text_after_keys(self, layout, text_mask: torch.Tensor, seq_len: int, device,
                         not_prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """For a ``[video, text]`` joint sequence whose text mask ``(B, L_text)`` (the whole text, also under
        context parallelism; ``True`` = a real token) keeps each sample's valid tokens first: the per-sample valid
        key counts ``(B,)`` int32 of the layout's whole sequence, and ``(B, seq_len)`` bool, whether each of this
        call's ``seq_len`` tokens (this rank's chunks under context parallelism) is a real one. A mask that is not a
        prefix is a ``ValueError(not_prefix)``."""
        kv_lengths = layout.seq_len - self.state.text_tokens + _prefix_lengths(text_mask, not_prefix).to(device)
        return kv_lengths, self._token_positions(seq_len, device)[None, :] < kv_lengths[:, None]

    def _block_sparse(self, query, key, value, layout, kv_lengths=None) -> torch.Tensor:
        """The op over ``layout``, through Diffusers' context-parallel templates when the model is parallel."""
        precision = self.state.config.attention_precision
        if self._context_parallel() is not None:
            if precision is not None:
                raise NotImplementedError(f"attention_precision={precision!r} is not available under context "
                                          "parallelism yet; use attention_precision=None")
            return parallel_block_sparse_attention(query, key, value, layout, self._parallel_config,
                                                   kv_lengths=kv_lengths, backend=self.state.backend,
                                                   text_tokens=self.state.text_tokens,
                                                   text_position=self.state.family.text_position)
        return block_sparse_attention(query, key, value, layout, kv_lengths=kv_lengths, backend=self.state.backend,
                                      precision=precision)

    def _attention(self, query, key, value, layout, *, attention_mask=None, kv_lengths=None,
                   sparse=None) -> torch.Tensor:
        """Radial attention of ``(B, S, H, D)`` q/k/v; under ``torch.compile``, ``torch.cond`` between it and the
        stock ``dispatch_attention_fn`` call on the processor's backend, picked at run time by the hook's tensors.
        ``sparse``: the radial branch as a function of no arguments, when it is more than one op call over ``layout``.

        The condition is a CPU bool scalar, so choosing a branch never waits for the device. The stock branch is
        made contiguous: ``torch.cond`` outputs must be dense, the native backend returns a transposed view."""
        if not _compiling():
            probe = self.state.probe
            if probe is not None:  # eval: the layout's recall on this call's q and k (see evaluation/recall.py)
                if self._parallel_config is not None:
                    raise NotImplementedError("the recall probe (radial-diffusers eval) runs on one process; "
                                              "evaluate without enable_parallelism()")
                if layout is not None:
                    probe.observe(self.state, self.layer_idx, query, key, layout, kv_lengths, self.use_sparse)
                if not self.use_sparse or probe.dense:
                    return self._dense(query, key, value, attention_mask)
            if not self.use_sparse:  # a dense call that runs our op (see _dense_needs_our_op)
                layout = self.state.dense_layout()
        if sparse is None:
            sparse = functools.partial(self._block_sparse, query, key, value, layout, kv_lengths)
        if not _compiling():
            return sparse()
        if self._context_parallel() is not None and torch.is_grad_enabled() and query.requires_grad:
            raise NotImplementedError(
                "torch.compile of a radial attention step with gradients under context parallelism is not supported "
                "(Diffusers' context-parallel autograd functions keep tensors on their context, which a torch.cond "
                "branch cannot); run compiled inference under torch.no_grad(), or the training step eagerly")

        def stock():
            if self._dense_needs_our_op():  # as in eager mode: our op over the all-kept layout
                return self._block_sparse(query, key, value, self.state.dense_layout(), kv_lengths)
            return self._dense(query, key, value, attention_mask).contiguous()

        pred = torch.logical_and(self.state._sparse_step, self._layer_sparse)
        return torch.cond(pred, sparse, stock, ())

    def _dense(self, query, key, value, attention_mask=None) -> torch.Tensor:
        """Dense attention of the same q/k/v on the processor's backend (a probed dense call, and the stock branch
        under compile), ``(B, S, H, D)``."""
        return dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                     backend=self._attention_backend, parallel_config=self._parallel_config)


class RadialWanAttnProcessor(_RadialMixin, WanAttnProcessor):
    """Wan ``blocks[i].attn1`` processor: block-sparse self-attention on sparse steps, stock otherwise."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self._runs_stock(cross_attention=encoder_hidden_states is not None):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if attention_mask is not None:
            raise ValueError("radial Wan self-attention does not take an attention_mask (stock Wan passes None)")
        self._begin_sparse()
        layout = self._layout(hidden_states.shape[1])
        query, key, value = _wan_qkv(attn, hidden_states, rotary_emb, _get_qkv_projections)
        return _wan_out(attn, self._attention(query, key, value, layout), query)


def _wan_qkv(attn, hidden_states: torch.Tensor, rotary_emb, projections):
    """Wan's self-attention q, k, v ``(B, S, H, D)``: ``projections`` (the model's ``_get_qkv_projections``, fused
    or not), RMS QK-norm across heads, interleaved RoPE, as the stock processor."""
    query, key, value = projections(attn, hidden_states, None)
    query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
    value = value.unflatten(2, (attn.heads, -1))
    if rotary_emb is not None:
        query = _wan_rotary(query, *rotary_emb)
        key = _wan_rotary(key, *rotary_emb)
    return query, key, value


def _wan_out(attn, out: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Wan's output projection of the attention output ``(B, S, H, D)``."""
    return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(query)))


def _wan_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved-pair RoPE, the same arithmetic as the stock processor."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class RadialHunyuanVideoAttnProcessor(_RadialMixin, HunyuanVideoAttnProcessor2_0):
    """HunyuanVideo dual-/single-block processor: video tokens attend radially, text rows and columns densely.

    The joint sequence is ``[video, text]``; the transformer's key-padding mask (``True`` for video tokens and the
    valid prefix of the text) becomes per-sample ``kv_lengths`` for the op. The signature names
    ``image_rotary_emb`` explicitly: ``Attention.forward`` drops keyword arguments a processor does not declare.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ):
        if self._runs_stock():
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        self._begin_sparse()
        from diffusers.models.embeddings import apply_rotary_emb
        text_len = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        if attn.add_q_proj is None and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        query, key, value = _qkv(attn, hidden_states)

        if image_rotary_emb is not None:
            if attn.add_q_proj is None and text_len:
                query = torch.cat(
                    [apply_rotary_emb(query[:, :-text_len], image_rotary_emb, sequence_dim=1), query[:, -text_len:]],
                    dim=1,
                )
                key = torch.cat(
                    [apply_rotary_emb(key[:, :-text_len], image_rotary_emb, sequence_dim=1), key[:, -text_len:]],
                    dim=1,
                )
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            encoder_query, encoder_key, encoder_value = _added_qkv(attn, encoder_hidden_states)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)

        layout = self._layout(query.shape[1])
        # the transformer's key-padding mask covers the whole joint sequence, also under context parallelism
        kv_lengths = _kv_lengths(attention_mask, query.shape[0], layout.seq_len)
        hidden_states = self._attention(
            query, key, value, layout, attention_mask=attention_mask, kv_lengths=kv_lengths
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :-text_len], hidden_states[:, -text_len:]
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _project(x: torch.Tensor, heads: int, to_q, to_k, to_v, norm_q, norm_k):
    """``(B, L, H, D)`` q, k, v of ``x`` through the given projections, q and k through their norms (if any)."""
    return _split_heads(heads, to_q(x), to_k(x), to_v(x), norm_q, norm_k)


def _split_heads(heads: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, norm_q, norm_k):
    """``(B, L, H, D)`` q, k, v of projected ``(B, L, H * D)`` ones, q and k through their norms (if any)."""
    q, k, v = (t.unflatten(2, (heads, -1)) for t in (q, k, v))
    return (norm_q(q) if norm_q is not None else q), (norm_k(k) if norm_k is not None else k), v


def _qkv(attn, hidden_states: torch.Tensor, fused: bool = False):
    """q, k, v of ``hidden_states`` through the attention's own projections (``fused``: its fused ``to_qkv``) and
    norms."""
    if fused:
        return _split_heads(attn.heads, *attn.to_qkv(hidden_states).chunk(3, dim=-1), attn.norm_q, attn.norm_k)
    return _project(hidden_states, attn.heads, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)


def _added_qkv(attn, encoder_hidden_states: torch.Tensor):
    """The text stream's q, k, v through the attention's added projections and norms (joint attention)."""
    return _project(encoder_hidden_states, attn.heads, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                    attn.norm_added_q, attn.norm_added_k)


def _kv_lengths(attention_mask: torch.Tensor | None, batch: int, seq_len: int) -> torch.Tensor | None:
    """Key-padding mask ``(B, 1, 1, N)`` (True = attend, a prefix per sample) -> ``(B,)`` valid key counts."""
    if attention_mask is None:
        return None
    if attention_mask.dtype != torch.bool or attention_mask.numel() != batch * seq_len:
        raise ValueError(
            "radial HunyuanVideo attention expects the transformer's boolean key-padding mask of shape "
            f"(B, 1, 1, {seq_len}), got {attention_mask.dtype} {tuple(attention_mask.shape)}"
        )
    return _prefix_lengths(attention_mask.reshape(batch, seq_len),
                           "the key-padding mask is not a prefix per sample; radial attention needs padded keys at "
                           "the end of the sequence")


class RadialCogVideoXAttnProcessor(_RadialMixin, CogVideoXAttnProcessor2_0):
    """CogVideoX ``transformer_blocks[i].attn1``: the joint ``[text, video]`` sequence, the text rows and columns
    dense (the mask puts the text first, as the block concatenates it), the video radial.

    The stock path's q/k/v projections, QK-norm and video-only RoPE, in the ``(B, S, H, D)`` layout the op takes."""

    # The stock CogVideoX processor calls SDPA directly and has no backend: the compiled stock branch uses the default
    _attention_backend = None
    _parallel_config = None
    def fusion_variant(self, stock) -> bool | None:
        return {FusedCogVideoXAttnProcessor2_0: True, CogVideoXAttnProcessor2_0: False}.get(type(stock))

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self._runs_stock():
            stock = FusedCogVideoXAttnProcessor2_0.__call__ if self.fused else CogVideoXAttnProcessor2_0.__call__
            return stock(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ValueError("radial CogVideoX attention does not take an attention_mask (stock CogVideoX passes None)")
        self._begin_sparse()
        from diffusers.models.embeddings import apply_rotary_emb

        text_len = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        query, key, value = _qkv(attn, hidden_states, fused=self.fused)
        if image_rotary_emb is not None:
            query = torch.cat(
                [query[:, :text_len], apply_rotary_emb(query[:, text_len:], image_rotary_emb, sequence_dim=1)], dim=1)
            if not attn.is_cross_attention:
                key = torch.cat(
                    [key[:, :text_len], apply_rotary_emb(key[:, text_len:], image_rotary_emb, sequence_dim=1)], dim=1)

        layout = self._layout(query.shape[1])
        hidden_states = self._attention(query, key, value, layout)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_len, hidden_states.size(1) - text_len], dim=1)
        return hidden_states, encoder_hidden_states


class RadialLTXVideoAttnProcessor(_RadialMixin, LTXVideoAttnProcessor):
    """LTX-Video ``transformer_blocks[i].attn1`` (self-attention over the packed video tokens, frame-major as the
    pipeline packs them): block-sparse on sparse steps; cross-attention (``attn2``) keeps its stock processor."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self._runs_stock(cross_attention=encoder_hidden_states is not None):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ValueError("radial LTX-Video self-attention does not take an attention_mask (stock LTX passes None)")
        self._begin_sparse()
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        layout = self._layout(hidden_states.shape[1])
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        hidden_states = self._attention(query, key, value, layout)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


class RadialLTX2AttnProcessor(_RadialMixin, LTX2PerturbedAttnProcessor):
    """LTX-2 ``transformer_blocks[i].attn1``: the video self-attention over the packed video tokens (frame-major, as
    the pipelines pack them), block-sparse on sparse steps. The audio self-attention, both text cross-attentions and
    the audio-to-video / video-to-audio cross-attentions keep their stock processors.

    It extends ``LTX2PerturbedAttnProcessor``, which without perturbation arguments computes what
    ``LTX2AudioVideoAttnProcessor`` does, so one class serves both configs (``perturbed_attn``, LTX-2.3). Under
    spatio-temporal guidance a block whose every sample is perturbed skips attention (the stock call: the value
    projection); a partly perturbed batch blends the radial output with the value projection per sample as stock
    does. A call with a self-attention mask (IC-LoRA / HDR reference tokens) runs the stock attention: radial
    attention cannot honour an arbitrary mask. Per-head gates (``gated_attn``) apply as in stock."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        query_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        perturbation_mask: torch.Tensor | None = None,
        all_perturbed: bool | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if all_perturbed is None:
            all_perturbed = torch.all(perturbation_mask == 0) if perturbation_mask is not None else False
        # a wholly perturbed call computes no attention: the stock one returns the value projection
        if self._runs_stock(cross_attention=encoder_hidden_states is not None or attention_mask is not None
                            or bool(all_perturbed)):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                                    key_rotary_emb, perturbation_mask, all_perturbed)
        self._begin_sparse()
        layout = self._layout(hidden_states.shape[1])
        gate_logits = attn.to_gate_logits(hidden_states) if attn.to_gate_logits is not None else None
        value = attn.to_v(hidden_states)
        query = _ltx2_rotary(attn, attn.norm_q(attn.to_q(hidden_states)), query_rotary_emb)
        key = _ltx2_rotary(attn, attn.norm_k(attn.to_k(hidden_states)),
                           key_rotary_emb if key_rotary_emb is not None else query_rotary_emb)

        hidden_states = self._attention(query, key, value.unflatten(2, (attn.heads, -1)), layout)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        if perturbation_mask is not None:
            hidden_states = torch.lerp(value, hidden_states, perturbation_mask)
        if gate_logits is not None:  # stock: 2 * sigmoid, so zero-initialized gates are 1
            gates = 2.0 * torch.sigmoid(gate_logits)
            hidden_states = (hidden_states.unflatten(2, (attn.heads, -1)) * gates.unsqueeze(-1)).flatten(2, 3)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


def _ltx2_rotary(attn, x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """LTX-2's RoPE (``attn.rope_type``) on ``x`` ``(B, S, H * D)``, returned per head ``(B, S, H, D)``: the values of
    the stock processor's. Split RoPE with per-head ``(B, H, S, r)`` cos / sin (the released configs) is applied on
    the ``(B, S, H, D)`` view with the tables transposed, not on Diffusers' ``(B, H, S, D)`` copy: the same
    elementwise arithmetic, and under ``torch.compile`` Inductor's stride bookkeeping of that copy fails inside the
    ``torch.cond`` branches (an "expected ... stride" assertion)."""
    heads = x.unflatten(2, (attn.heads, -1))
    if freqs is None or attn.rope_type not in ("interleaved", "split"):
        return heads
    if attn.rope_type == "split" and freqs[0].ndim == 4:
        cos, sin = freqs
        return apply_split_rotary_emb(heads, (cos.transpose(1, 2), sin.transpose(1, 2)))
    rotate = apply_interleaved_rotary_emb if attn.rope_type == "interleaved" else apply_split_rotary_emb
    return rotate(x, freqs).unflatten(2, (attn.heads, -1))


class RadialMochiAttnProcessor(_RadialMixin, MochiAttnProcessor2_0):
    """Mochi ``transformer_blocks[i].attn1``: joint attention over ``[video, text]`` with separate text projections.

    The stock processor attends, per sample, over the video and that sample's valid text tokens (its attention mask,
    a prefix) and returns zeros for the padded text rows; here one batched call does the same with per-sample
    ``kv_lengths`` (padded text keys never attended) and the padded text rows zeroed."""

    # The stock Mochi processor calls SDPA directly and has no backend: the compiled stock branch uses the default
    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self._runs_stock():
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        self._begin_sparse()
        video_len, text_len = hidden_states.shape[1], encoder_hidden_states.shape[1]

        query, key, value = _qkv(attn, hidden_states)
        e_query, e_key, e_value = _added_qkv(attn, encoder_hidden_states)
        if image_rotary_emb is not None:
            query = _interleaved_rotary(query, *image_rotary_emb)
            key = _interleaved_rotary(key, *image_rotary_emb)
        query = torch.cat([query, e_query], dim=1)
        key = torch.cat([key, e_key], dim=1)
        value = torch.cat([value, e_value], dim=1)

        layout = self._layout(query.shape[1])
        valid, valid_rows = self._text_after_keys(
            layout, attention_mask.reshape(attention_mask.shape[0], -1).bool(), video_len + text_len, query.device,
            "radial Mochi attention needs the text attention mask to be a prefix per sample (padding at the end)")
        # under torch.compile the stock branch is dense attention with the same key-padding mask
        out = self._attention(query, key, value, layout, attention_mask=valid_rows[:, None, None, :],
                              kv_lengths=valid)
        out = out * valid_rows[..., None, None]  # the stock processor returns zeros for the padded text rows
        out = out.flatten(2, 3).to(query.dtype)

        hidden_states, encoder_hidden_states = out.split_with_sizes((video_len, text_len), dim=1)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _interleaved_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Mochi's interleaved-pair RoPE in float32, the same arithmetic as the stock processor."""
    x_even, x_odd = x[..., 0::2].float(), x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    return torch.stack([cos, sin], dim=-1).flatten(-2)


def _prefix_lengths(mask: torch.Tensor, not_prefix: str) -> torch.Tensor:
    """``(B, L)`` bool mask (True = a real token, a prefix per sample) -> ``(B,)`` int32 lengths; a mask that is not
    a prefix is a ``ValueError(not_prefix)`` (checked on CPU tensors outside compile, where it costs no sync)."""
    lengths = mask.sum(-1, dtype=torch.int32)
    if not torch.compiler.is_compiling() and mask.device.type == "cpu":
        prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
        if not torch.equal(prefix, mask):
            raise ValueError(not_prefix)
    return lengths


class RadialHunyuanVideo15AttnProcessor(_RadialMixin, HunyuanVideo15AttnProcessor2_0):
    """HunyuanVideo-1.5 ``transformer_blocks[i].attn``: joint attention over ``[video, text]`` with separate text
    projections, the video radial, the text rows and columns dense.

    The transformer passes the text mask ``(B, L_text)`` with each sample's valid tokens first (it reorders the text
    as [valid image, valid ByT5, valid Qwen, padding]); the stock processor prepends ``True`` for the video and lets
    a token attend only where query *and* key are valid, so a padded text row attends to nothing and SDPA returns
    zeros for it. Here the valid keys are per-sample ``kv_lengths`` and the padded rows are zeroed: the same output.
    Under ``torch.compile`` the stock branch is dense attention over the valid keys, its padded rows zeroed alike."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ):
        if self._runs_stock():
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if encoder_hidden_states is None or attention_mask is None:
            raise ValueError("radial HunyuanVideo-1.5 attention expects the joint text and its (B, L_text) mask, as "
                             "HunyuanVideo15Transformer3DModel passes them")
        self._begin_sparse()
        from diffusers.models.embeddings import apply_rotary_emb

        video_len, text_len = hidden_states.shape[1], encoder_hidden_states.shape[1]
        query = attn.norm_q(attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)))
        key = attn.norm_k(attn.to_k(hidden_states).unflatten(2, (attn.heads, -1)))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if image_rotary_emb is not None:  # the video tokens only
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        e_query, e_key, e_value = _added_qkv(attn, encoder_hidden_states)
        query = torch.cat([query, e_query], dim=1)
        key = torch.cat([key, e_key], dim=1)
        value = torch.cat([value, e_value], dim=1)

        batch, seq_len = query.shape[:2]
        layout = self._layout(seq_len)
        # the mask covers the whole text, also under context parallelism (this rank holds a chunk of it)
        text_mask = attention_mask.reshape(batch, -1).bool()
        if text_mask.shape[1] != self.state.text_tokens:
            raise ValueError(f"radial HunyuanVideo-1.5 attention expects a (B, {self.state.text_tokens}) text mask, "
                             f"got {tuple(attention_mask.shape)}")
        kv_lengths, valid = self._text_after_keys(
            layout, text_mask, seq_len, query.device, "radial HunyuanVideo-1.5 attention needs each sample's valid "
                                                      "text tokens first (HunyuanVideo15Transformer3DModel reorders "
                                                      "them so)")
        # Under torch.compile the stock branch masks the keys only, (B, 1, 1, S), not stock's (B, 1, S, S) query-and-
        # key mask (S^2 bytes per sample: 2.6 GB at 480p x 121 frames): the valid rows are the same, and the padded
        # rows are zeroed below in either branch.
        out = self._attention(query, key, value, layout, attention_mask=valid[:, None, None, :],
                              kv_lengths=kv_lengths)
        out = out * valid[..., None, None]  # padded text rows: zeros, as stock SDPA gives a row with no valid key
        out = out.flatten(2, 3).to(query.dtype)

        hidden_states, encoder_hidden_states = out.split_with_sizes((video_len, text_len), dim=1)
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


class RadialSkyReelsV2AttnProcessor(_RadialMixin, SkyReelsV2AttnProcessor):
    """SkyReels-V2 ``blocks[i].attn1`` (Wan2.1's self-attention): block-sparse on sparse steps, stock otherwise.

    Under diffusion forcing with ``num_frame_per_block > 1`` the transformer passes a block-causal frame mask
    ``(1, 1, S, S)`` (query frame ``i`` attends key frame ``j`` iff ``j // nfpb <= i // nfpb``); the sparse call then
    attends ``radial AND block-causal`` exactly, through the :class:`~radial_diffusers.layout.FrameCausalLayout` the
    step hook built for the geometry (``state.causal``): one call when a causal chunk is a whole number of blocks,
    else one call per chunk. This processor only reads that state; it refuses any other mask (``ValueError``)."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self._runs_stock(cross_attention=encoder_hidden_states is not None):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        causal = None if attention_mask is None else _frame_causal_for(self.state, attention_mask)
        self._begin_sparse()
        layout = self._layout(hidden_states.shape[1])
        query, key, value = _wan_qkv(attn, hidden_states, rotary_emb, _skyreels_qkv_projections)
        if causal is None:
            out = self._attention(query, key, value, layout)
        elif causal.layout is not None:  # aligned: the AND of the two block masks, one call
            out = self._attention(query, key, value, causal.layout, attention_mask=attention_mask)
        else:
            sparse = functools.partial(_chunked_causal_attention, query, key, value, causal, self.state.backend,
                                       self.state.config.attention_precision)
            out = self._attention(query, key, value, None, attention_mask=attention_mask, sparse=sparse)
        return _wan_out(attn, out, query)


def _frame_causal_for(state, attention_mask: torch.Tensor):
    """The hook's ``state.causal`` for a self-attention ``attention_mask``, after checking that the mask is the
    transformer's block-causal frame mask (its values outside ``torch.compile``; see ``FrameCausalLayout.is_mask``)."""
    frames, h, w = state.geometry
    seq = frames * h * w
    if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != (1, 1, seq, seq):
        raise ValueError(
            "radial SkyReels-V2 self-attention takes only the transformer's block-causal frame mask (bool, "
            f"(1, 1, {seq}, {seq})), got {attention_mask.dtype} {tuple(attention_mask.shape)}")
    causal = state.causal
    if causal is None:
        raise ValueError(
            "radial SkyReels-V2 self-attention got an attention_mask but transformer.config.num_frame_per_block="
            f"{state.frames_per_block} does not make a block-causal mask over {frames} latent frames; only the "
            "transformer's own diffusion-forcing mask (causal_block_size > 1) can be combined with radial attention")
    if not torch.compiler.is_compiling() and not causal.is_mask(attention_mask):
        raise ValueError(
            "radial SkyReels-V2 self-attention got an attention_mask that is not the block-causal frame mask of "
            f"num_frame_per_block (chunks of {causal.chunk} tokens); radial attention cannot honour an arbitrary mask")
    return causal


def _chunked_causal_attention(query, key, value, causal, backend: str, precision: str | None = None) -> torch.Tensor:
    """Radial AND block-causal when a causal chunk is not a whole number of blocks: per chunk ``[start, end)``, its
    layout with the keys cut at ``end`` (``kv_lengths``); only the chunk's rows are kept (each call's full output is
    freed as soon as its rows are copied)."""
    parts = []
    for start, end, layout in causal.chunks:
        kv = torch.full((query.shape[0],), end, dtype=torch.int32, device=query.device)
        out = block_sparse_attention(query, key, value, layout, kv_lengths=kv, backend=backend, precision=precision)
        parts.append(out[:, start:end].clone())
    return torch.cat(parts, dim=1)


class RadialKandinsky5AttnProcessor(_RadialMixin, Kandinsky5AttnProcessor):
    """Kandinsky 5 ``visual_transformer_blocks[i].self_attention``: the video self-attention, block-sparse on sparse
    steps. The text encoder blocks' self-attention and the visual blocks' cross-attention keep their stock processors.

    The transformer orders the video tokens frame-major. With NABLA configs (``attention_type="nabla"``, the Pro and
    10-second Lite checkpoints) the pipeline passes ``sparse_params`` and the tokens of each frame are in 8 x 8
    tiles (``fractal_flatten``) instead of raster order: the radial mask then applies to that order (it depends only
    on each token's frame and index within it), and radial attention replaces NABLA: a sparse call is radial, a dense
    one (dense step or layer, or a mask that keeps every block) is full attention, never NABLA's."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        rotary_emb: torch.Tensor | None = None,
        sparse_params: dict | None = None,
    ) -> torch.Tensor:
        if self._runs_stock(cross_attention=encoder_hidden_states is not None):
            # under radial attention a dense self-attention call is full attention (see the class docstring); a
            # removed processor (remove_radial_attention) and cross-attention are the stock call as made
            if not self.removed and encoder_hidden_states is None:
                sparse_params = None
            return super().__call__(attn, hidden_states, encoder_hidden_states, rotary_emb, sparse_params)
        self._begin_sparse()
        layout = self._layout(hidden_states.shape[1])
        shape = (*hidden_states.shape[:-1], attn.num_heads, -1)
        query = attn.to_query(hidden_states).reshape(shape)
        key = attn.to_key(hidden_states).reshape(shape)
        value = attn.to_value(hidden_states).reshape(shape)
        query = attn.query_norm(query.float()).type_as(query)
        key = attn.key_norm(key.float()).type_as(key)
        if rotary_emb is not None:
            query = _kandinsky5_rotary(query, rotary_emb)
            key = _kandinsky5_rotary(key, rotary_emb)
        out = self._attention(query, key, value, layout)
        return attn.out_layer(out.flatten(-2, -1))


def _kandinsky5_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Kandinsky 5's RoPE, the stock processor's arithmetic: rotation matrices ``rope`` ``(..., D/2, 2, 2)`` applied
    to the pairs of ``x`` ``(B, S, H, D)`` in float32, the result rounded through bfloat16 (as stock does, also for
    float32 models) and returned in ``x``'s dtype."""
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2).to(torch.float32)
    return (rope * pairs).sum(dim=-1).reshape(x.shape).to(torch.bfloat16).type_as(x)


class RadialCosmosAttnProcessor(_RadialMixin, CosmosAttnProcessor2_0):
    """Cosmos ``transformer_blocks[i].attn1`` (``CosmosTransformer3DModel``: Cosmos 1.0, Predict2, Predict2.5 and
    Transfer2.5): the video self-attention, block-sparse on sparse steps. The tokens are frame-major after the
    ``(1, 2, 2)`` patch embedding; the text enters through the cross-attention (``attn2``), which keeps its stock
    processor. q and k get the stock per-head RMS norm and real-valued RoPE (``image_rotary_emb``: cos, sin)."""

    # the stock processor has neither (it dispatches on the default backend, one process): the mixin reads them
    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self._runs_stock(cross_attention=encoder_hidden_states is not None):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ValueError("radial Cosmos self-attention does not take an attention_mask (stock Cosmos passes None)")
        self._begin_sparse()
        layout = self._layout(hidden_states.shape[1])
        heads = (attn.heads, -1)
        # (B, H, S, D) as the stock processor, where the norms and RoPE apply; the op takes (B, S, H, D)
        query = attn.norm_q(attn.to_q(hidden_states).unflatten(2, heads).transpose(1, 2))
        key = attn.norm_k(attn.to_k(hidden_states).unflatten(2, heads).transpose(1, 2))
        value = attn.to_v(hidden_states).unflatten(2, heads).transpose(1, 2)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
            key = apply_rotary_emb(key, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
        # (the stock processor's repeat_interleave of k / v along head_dim is by a factor of 1: Attention gives q, k
        # and v the same heads and head_dim)
        out = self._attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), layout)
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(query)))
