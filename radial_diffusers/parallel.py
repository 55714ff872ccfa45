"""Radial attention under Diffusers' context parallelism (``transformer.enable_parallelism``): Ulysses, ring and
Diffusers' unified Ulysses x ring.

Diffusers shards the sequence over the ranks (the model's context-parallel plan: Diffusers' ``_cp_plan``, or one of
ours registered with the family) and runs attention through its templated context-parallel functions, which take a
``forward_op`` / ``backward_op`` pair. :func:`parallel_block_sparse_attention` hands them ours:

* Ulysses: after Diffusers' all-to-all the op sees the whole sequence with this rank's heads (the layout does not
  depend on the head, so one layout serves every rank), reordered into the mask's order where a joint text + video
  sequence was sharded as video and text chunks.
* Ring (and the ring stage of unified): the op sees this rank's query chunk and, one ring step at a time, every
  rank's key/value chunk; for each pair only the layout's kept blocks are computed
  (:mod:`radial_diffusers.attention.chunks`, a plan per pair built once per geometry). Our own ring
  (:class:`_RingAttention`) drives the steps and merges them by log-sum-exp; its backward routes each step's key/value
  gradients to their chunk's owner (Diffusers' 0.42 ring backward does so only for 2 ring ranks). Diffusers' uneven
  ("anything") ring still runs its own, step ``i`` holding ring rank ``(rank + i) % ring_degree``'s chunk as ours.

Private Diffusers API used (pinned in pyproject; ``tests/test_parallel.py`` names it when it moves):
``attention_dispatch._templated_context_parallel_attention`` (Ulysses, the uneven modes), ``SeqAllToAllDim`` (the
Ulysses stage of unified) and the order in which ``TemplatedRingAttention`` visits key/value chunks;
``hooks.context_parallel``'s hook-name templates and the hooks' ``metadata`` (reading back the installed plan).
"""

from __future__ import annotations

import torch

from .attention.chunks import RangePlan, joined, merge_partial, range_plan, shard_ranges
from .errors import UnsupportedModelError
from .layout import BlockLayout

__all__ = ["parallel_block_sparse_attention", "ring_can_run_native", "LSE_FLOOR", "check_ring_gradients",
           "MAX_RING_FOR_GRADIENTS", "runs_own_ring", "ring_gradients_right",
           "context_parallel_config", "check_parallel_model", "check_parallel_call",
           "enable_context_parallelism", "installed_cp_plan", "attend_locally", "text_padding",
           "prepare_range_plans", "ring_step_ranges", "hunyuan_video_plan", "cogvideox_plan", "mochi_plan",
           "ltx_video_plan", "kandinsky5_plan", "skyreels_v2_plan", "wan_vace_plan", "cp_plan_for"]

# The log-sum-exp returned for a query row with no attendable key in a ring step. Diffusers merges steps with
# ``prev - logsigmoid(prev - lse)``, which turns -inf - (-inf) into NaN; a finite floor far below any real
# log-sum-exp merges exactly (its weight is exp(-1e4) = 0 in float32) and is mapped back to -inf for the backward.
LSE_FLOOR = -1.0e4


def context_parallel_config(transformer):
    """The transformer's Diffusers ``ContextParallelConfig`` (set by ``enable_parallelism``), or ``None``."""
    config = getattr(transformer, "_parallel_config", None)
    return None if config is None else getattr(config, "context_parallel_config", None)


def check_parallel_model(transformer, family, modules, cp=None) -> None:
    """Raise :class:`~radial_diffusers.errors.UnsupportedModelError` if radial attention cannot run under the
    transformer's context parallelism (``cp``: a ``ContextParallelConfig`` about to be enabled; default: the one
    enabled): its family is not ``"multi-gpu"`` in the registry, or has no context-parallel plan (ours or Diffusers'
    ``_cp_plan``), or the Ulysses degree does not divide the attention heads, or (enabled already) the plan
    installed is not that plan (:func:`installed_cp_plan`): the ranks would hold other tokens than the radial
    processors expect. Nothing is changed either way."""
    cp = context_parallel_config(transformer) if cp is None else cp
    if cp is None:
        return
    name = type(transformer).__name__
    if "multi-gpu" not in family.features:
        why = f" ({family.cp_note})" if family.cp_note else ""
        raise UnsupportedModelError(
            f"{name} runs under context parallelism (enable_parallelism), which radial attention does not support "
            f"for {family.label} yet{why}; run it on one process, or without radial attention")
    expected = cp_plan_for(transformer, family) if family.cp_plan is not None else getattr(transformer, "_cp_plan",
                                                                                             None)
    if expected is None:
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
    if context_parallel_config(transformer) is not None and installed_cp_plan(transformer) != _normalized(expected):
        where = (f"enable_parallelism(cp_plan=radial_diffusers.parallel.{family.cp_plan.rpartition(':')[2]}"
                 "(transformer))") if family.cp_plan is not None else "enable_parallelism() with its own _cp_plan"
        raise UnsupportedModelError(
            f"{name} runs under a context-parallel plan other than the one radial attention shards {family.label} "
            f"by, so each rank's tokens would not be the ones the radial processors expect; enable it with "
            f"rd.enable_context_parallelism(pipe, ulysses=..., ring=...) or {where}")


def installed_cp_plan(transformer) -> dict:
    """The context-parallel plan ``enable_parallelism`` installed on ``transformer``, read back from Diffusers'
    split and gather hooks: ``{module id: {input: ContextParallelInput} or [ContextParallelOutput, ...]}``."""
    from diffusers.hooks.context_parallel import (_CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE,
                                                  _CONTEXT_PARALLEL_OUTPUT_HOOK_TEMPLATE)

    prefixes = (_CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE.format(""), _CONTEXT_PARALLEL_OUTPUT_HOOK_TEMPLATE.format(""))
    plan = {}
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook_name, hook in (registry.hooks.items() if registry is not None else ()):
            for prefix in prefixes:
                if hook_name.startswith(prefix):
                    plan[hook_name[len(prefix):]] = _normalized_entry(hook.metadata)
    return plan


def _normalized_entry(entry):
    """A plan entry as the hooks hold it: an output spec as a list."""
    return dict(entry) if isinstance(entry, dict) else list(entry) if isinstance(entry, (list, tuple)) else [entry]


def _normalized(plan: dict) -> dict:
    return {module_id: _normalized_entry(entry) for module_id, entry in plan.items()}


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

    from .families import TRANSFORMER_ATTRIBUTES, family_of

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
        t for t in (getattr(pipe_or_transformer, name, None) for name in TRANSFORMER_ATTRIBUTES)
        if t is not None]
    configs = []
    for transformer in transformers:
        if getattr(transformer, "_parallel_config", None) is not None:
            raise RuntimeError(f"{type(transformer).__name__} is already parallel (enable_parallelism was called)")
        family = family_of(transformer)
        cp = ContextParallelConfig(ulysses_degree=ulysses if ulysses > 1 else None,
                                   ring_degree=ring if ring > 1 else None, **config_kwargs)
        check_parallel_model(transformer, family, family.attention_modules(transformer), cp)
        _check_parallel_backend(transformer)
        configs.append((cp, cp_plan_for(transformer, family), family))
    no_accelerator = torch.accelerator.device_count() == 0
    count = torch.accelerator.device_count
    try:
        if no_accelerator:
            torch.accelerator.device_count = lambda: 1
        for transformer, (cp, plan, family) in zip(transformers, configs):
            try:
                transformer.enable_parallelism(config=cp, cp_plan=plan)
            except BaseException:
                # Diffusers records the config on the model before its own checks: a refused model stays usable
                _clear_parallel_config(transformer)
                raise
            attend_locally(transformer, family)
    finally:
        torch.accelerator.device_count = count
    return configs[0][0]


def _check_parallel_backend(transformer) -> None:
    """Refuse, before any expert changes, an attention backend Diffusers' context parallelism does not support (it
    checks the first attention processor's backend, or the active one)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is None or not hasattr(processor, "_attention_backend"):
            continue
        backend = processor._attention_backend
        backend = AttentionBackendName(backend) if backend is not None else (
            _AttentionBackendRegistry.get_active_backend()[0])
        if not _AttentionBackendRegistry._is_context_parallel_available(backend):
            raise ValueError(
                f"{type(transformer).__name__}'s attention backend {backend.value!r} does not support context "
                f"parallelism; call transformer.set_attention_backend() with one of "
                f"{sorted(_AttentionBackendRegistry._supports_context_parallel)} first (nothing was changed)")
        return


def _clear_parallel_config(transformer) -> None:
    transformer._parallel_config = None
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and "_parallel_config" in getattr(processor, "__dict__", {}):
            processor._parallel_config = None


#: The largest ring degree whose gradients Diffusers' ring attention routes right. Its backward (0.42) sends each
#: key/value gradient accumulator to the next ring rank while the key/value chunks travel the other way, so with 3 or
#: more ring ranks every dK / dV sums gradients of different chunks (with 2 both directions are the same rank).
MAX_RING_FOR_GRADIENTS = 2


def runs_own_ring(cp) -> bool:
    """Whether radial attention under ``cp`` runs our ring (:class:`_RingAttention`): ring and unified Ulysses x ring,
    but for Diffusers' uneven ("anything") ring."""
    return cp.ring_degree > 1 and not cp.ring_anything


def ring_gradients_right(cp) -> bool:
    """Whether gradients through ``cp``'s ring attention are right: our ring, or Diffusers' with at most
    :data:`MAX_RING_FOR_GRADIENTS` ring ranks."""
    return cp.ring_degree <= MAX_RING_FOR_GRADIENTS or runs_own_ring(cp)


def check_ring_gradients(cp) -> None:
    """Raise ``NotImplementedError`` for a backward through Diffusers' ring attention with more than
    :data:`MAX_RING_FOR_GRADIENTS` ring ranks (wrong key/value gradients): its uneven ("anything") ring. Ring and
    unified Ulysses x ring of any size run our own ring (:class:`_RingAttention`)."""
    if not ring_gradients_right(cp):
        raise NotImplementedError(
            f"gradients through Diffusers' uneven ring attention (ring_anything=True) with ring_degree="
            f"{cp.ring_degree}: its backward routes the key/value gradients of 3 or more ring ranks to the wrong "
            "chunks; train with equal shards (ring_anything=False: radial-diffusers runs its own ring), or with ring "
            f"<= {MAX_RING_FOR_GRADIENTS}")


def check_parallel_call(cp, seq_len: int, sharded: list[int]) -> None:
    """Raise ``ValueError`` before a transformer call whose sharded sequences (``sharded``: the token counts the
    model's plan splits, e.g. the video tokens, and the text tokens of a joint family) do not divide over the
    context-parallel ranks (Diffusers' equal shards assert it deep inside; its "anything" modes split unevenly and
    need no check). ``seq_len``: the attention sequence."""
    ranks = cp.ring_degree * cp.ulysses_degree
    uneven = [n for n in sharded if n % ranks]
    if cp.ulysses_anything or cp.ring_anything or not uneven:
        return
    raise ValueError(
        f"context parallelism over {ranks} ranks needs sequences that divide into {ranks} equal shards, but this "
        f"call shards {' and '.join(map(str, sharded))} tokens (the {seq_len}-token attention sequence); pick frames "
        f"/ height / width (or a text length) that make each a multiple of {ranks}, or enable "
        "ContextParallelConfig(ulysses_anything=True) (Ulysses) or ring_anything=True (ring), which shard unevenly")


def text_padding(cp, family, text_tokens: int) -> int:
    """Masked text tokens to append so that a joint family's ``text_tokens`` split evenly over the
    context-parallel ranks (0: they do, or the family's text has no key-padding mask to pad it with, or an uneven
    "anything" mode shards it as it is). Exact: padded keys are never attended and the transformer returns the video
    only (:meth:`~radial_diffusers.families.ModelFamily.pad_text`). HunyuanVideo-1.5's 1985 text tokens, for one,
    split evenly over 5 ranks only."""
    ranks = cp.ring_degree * cp.ulysses_degree
    if family.forward.text_mask is None or cp.ulysses_anything or cp.ring_anything:
        return 0
    return -text_tokens % ranks


def hunyuan_video_plan(transformer) -> dict:
    """HunyuanVideo's and HunyuanVideo-1.5's context-parallel plan (Diffusers 0.42 has none): the video and the text
    streams split on the sequence at the first block (each rank holds a chunk of both: the joint sequence the radial
    processors concatenate and :func:`shard_ranges` describes), the RoPE tables with the video, the output gathered
    at ``proj_out``. The key-padding mask stays whole: the radial processors read it as per-sample key counts of the
    whole sequence. HunyuanVideo-1.5 reorders each sample's text (valid tokens first) before its first block, so
    the split takes the reordered text.

    Raises:
        UnsupportedModelError: HunyuanVideo-I2V's ``image_condition_type="token_replace"``: its blocks modulate the
            first frame's tokens (``hidden_states[:, :first_frame_num_tokens]``) apart from the rest, which on a
            rank holding a later chunk would modulate that chunk's first tokens instead."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    if getattr(transformer.config, "image_condition_type", None) == "token_replace":
        raise UnsupportedModelError(
            f"{type(transformer).__name__} with image_condition_type='token_replace' (HunyuanVideo-I2V) modulates "
            "the first frame's tokens apart from the rest, which a sequence split over ranks would misplace; run it "
            "on one process (or image_condition_type='latent_concat')")
    first = "transformer_blocks.0" if len(transformer.transformer_blocks) else "single_transformer_blocks.0"
    stream = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    table = ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)
    return {first: {"hidden_states": stream, "encoder_hidden_states": stream}, "rope": {0: table, 1: table},
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3)}


def cogvideox_plan(transformer) -> dict:
    """CogVideoX's context-parallel plan (Diffusers 0.42 has none): the video and text streams split on the sequence
    at the first block (each rank holds a chunk of both, concatenated text first as the processor does), the
    RoPE tables (a transformer argument, from the pipeline) with the video, the output gathered at ``proj_out``
    (the final norms work per token)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    stream = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    table = ContextParallelInput(split_dim=0, expected_dims=2, split_output=False)
    return {"": {"image_rotary_emb": [table, table]},
            "transformer_blocks.0": {"hidden_states": stream, "encoder_hidden_states": stream},
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3)}


def mochi_plan(transformer) -> dict:
    """Mochi's context-parallel plan (Diffusers 0.42 has none): the video and text streams split on the sequence at
    the first block (each rank holds a chunk of both, video first), the RoPE tables ``(S, heads, D/2)`` with the
    video, the output gathered at ``proj_out``. The text mask stays whole: the radial processor reads whole-sequence
    key counts from it and zeroes this rank's padded text rows."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    stream = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    table = ContextParallelInput(split_dim=0, expected_dims=3, split_output=True)
    return {"transformer_blocks.0": {"hidden_states": stream, "encoder_hidden_states": stream},
            "rope": {0: table, 1: table}, "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3)}


def ltx_video_plan(transformer) -> dict:
    """LTX-Video's context-parallel plan: the video tokens split on the sequence at the transformer's input (with a
    per-token ``timestep`` ``(B, S)``, image-to-video's: a text-to-video ``(B,)`` one stays whole, with one Diffusers
    warning that it was not split), the RoPE tables with them, the output gathered at ``proj_out``. The text and its
    mask stay whole on every rank, so the cross-attention (``attn2``) attends locally, this rank's query chunk over
    the whole text, with no communication (:func:`attend_locally`). Diffusers' own ``_cp_plan`` splits the text and
    its mask too, and its cross-attention then fails under Ulysses (the mask keeps every head and the whole query
    sequence)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    table = ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)
    return {"": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
                 "timestep": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False)},
            "rope": {0: table, 1: table}, "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3)}


def kandinsky5_plan(transformer) -> dict:
    """Kandinsky 5's context-parallel plan (Diffusers 0.42 has none): the video tokens split on the sequence at the
    first visual block (after the transformer ordered them, in tiles on NABLA checkpoints), the RoPE table at each
    self-attention's input (the blocks all receive the whole table), the tokens gathered at the last visual block's
    output (the transformer then restores their grid order). The text stays whole on every rank: the text encoder
    blocks and the cross-attention attend locally (``cp_local``).

    Raises:
        UnsupportedModelError: a transformer with one visual block, whose input is split and output gathered by the
            same module (no released checkpoint has fewer than 32)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    blocks = len(transformer.visual_transformer_blocks)
    if blocks < 2:
        raise UnsupportedModelError(
            f"{type(transformer).__name__} with {blocks} visual block(s): the context-parallel plan splits the video "
            "at the first visual block and gathers it after the last, which needs two or more; run it on one process")
    table = ContextParallelInput(split_dim=1, expected_dims=6, split_output=False)  # (B, S, 1, D/2, 2, 2)
    plan: dict = {"visual_transformer_blocks.0": {
        "visual_embed": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)}}
    plan.update({f"visual_transformer_blocks.{i}.self_attention": {"rotary_emb": table} for i in range(blocks)})
    plan[f"visual_transformer_blocks.{blocks - 1}"] = ContextParallelOutput(gather_dim=1, expected_dims=3)
    return plan


def wan_vace_plan(transformer) -> dict:
    """Wan VACE's context-parallel plan (Diffusers 0.42 has none): Diffusers' Wan plan (the RoPE tables and the video
    tokens split on the sequence at the first block, gathered at ``proj_out``), plus the control branch split at its
    first block: the control tokens (zero-padded to the video's length by the transformer) and the video tokens it
    adds to them. Each control block's hint is then this rank's chunk, added to the same chunk of the video in the
    main blocks. The text stays whole on every rank: the cross-attention attends locally (``cp_local``)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    table = ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)  # (1, S, 1, D) cos and sin
    tokens = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    return {"rope": {0: table, 1: table},
            "vace_blocks.0": {"hidden_states": tokens, "control_hidden_states": tokens},
            "blocks.0": {"hidden_states": tokens},
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3)}


def skyreels_v2_plan(transformer) -> dict:
    """SkyReels-V2's context-parallel plan (Diffusers 0.42 has none): as Diffusers' Wan plan, the RoPE tables and the
    video tokens split on the sequence at the first block, plus, for diffusion forcing, the per-token modulation
    ``temb`` ``(B, 6, S, D)`` split at every block's input (a per-sample ``(B, 6, D)`` stays whole: Diffusers logs
    once that it does not split it). The tokens are gathered at ``norm_out``'s output, not ``proj_out``'s: the
    output modulation between them is per token under diffusion forcing, computed whole. The text stays whole on
    every rank: the cross-attention attends locally (``cp_local``).

    Raises:
        UnsupportedModelError: a transformer without blocks (no released checkpoint has fewer than 30)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    blocks = len(transformer.blocks)
    if blocks < 1:
        raise UnsupportedModelError(f"{type(transformer).__name__} has no blocks to split the video over")
    table = ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)  # (1, S, 1, D) cos and sin
    per_token = ContextParallelInput(split_dim=2, expected_dims=4, split_output=False)
    plan: dict = {"rope": {0: table, 1: table}}
    plan.update({f"blocks.{i}": {"temb": per_token} for i in range(blocks)})
    plan["blocks.0"]["hidden_states"] = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    plan["norm_out"] = ContextParallelOutput(gather_dim=1, expected_dims=3)
    return plan


def cosmos_plan(transformer) -> dict:
    """Cosmos' context-parallel plan (Diffusers 0.42 has none): the RoPE tables ``(S, D)`` and the learnable position
    embedding ``(B, S, C)`` (Cosmos 1.0) split on the sequence where they are made, the video tokens at the first
    block, the modulation inputs of every block and of ``norm_out`` where they are per token (``(B, S, C)``: the
    pipelines' per-frame timesteps; a per-sample ``(B, C)`` stays whole, with one Diffusers log line that it was not
    split) and Transfer2.5's ControlNet residuals at the blocks they are added to; the tokens gathered at
    ``proj_out``. The text stays whole on every rank: the cross-attention attends
    locally (``cp_local``). Cosmos' stock processors take no parallel config, so a dense call runs radial attention's
    op over the all-kept layout (``ModelFamily.stock_cp``).

    Raises:
        UnsupportedModelError: a transformer without blocks."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    blocks = len(transformer.transformer_blocks)
    if blocks < 1:
        raise UnsupportedModelError(f"{type(transformer).__name__} has no blocks to split the video over")
    table = ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)  # cos and sin, (S, D)
    per_token = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    modulation = {"embedded_timestep": per_token, "temb": per_token}
    plan: dict = {"rope": {0: table, 1: table}}
    if transformer.learnable_pos_embed is not None:
        plan["learnable_pos_embed"] = {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)}
    # a block's controlnet_residual is None but where Transfer2.5's ControlNet feeds it (Diffusers' hook skips None)
    plan.update({f"transformer_blocks.{i}": dict(modulation, controlnet_residual=per_token) for i in range(blocks)})
    plan["transformer_blocks.0"]["hidden_states"] = per_token
    plan["norm_out"] = dict(modulation)
    plan["proj_out"] = ContextParallelOutput(gather_dim=1, expected_dims=3)
    return plan


def attend_locally(transformer, family) -> None:
    """Run the attention modules that hold their keys whole on every rank under the family's plan
    (``family.cp_local``: LTX-Video's cross-attention over the text) without context parallelism: each rank
    attends its own query chunk, exactly as one process does for those rows. Diffusers' ``enable_parallelism`` gives
    every processor the parallel config; :func:`enable_context_parallelism` and the radial step hook call this
    after it (idempotent)."""
    if family.cp_local is None or context_parallel_config(transformer) is None:
        return
    for module in family.cp_local(transformer):
        if getattr(module.processor, "_parallel_config", None) is not None:
            module.processor._parallel_config = None


def cp_plan_for(transformer, family) -> dict | None:
    """The family's own context-parallel plan for ``transformer`` (``None``: Diffusers' ``_cp_plan``)."""
    if family.cp_plan is None:
        return None
    from .families import _resolve

    return _resolve(family.cp_plan)(transformer)


def ring_can_run_native(backend) -> bool:
    """Whether Diffusers' stock ring attention can run on ``backend`` (a processor's ``_attention_backend``): its
    native SDPA path returns no log-sum-exp, so ring attention refuses it; every other context-parallel backend
    returns one."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    name = AttentionBackendName(backend) if backend is not None else _AttentionBackendRegistry.get_active_backend()[0]
    return name != AttentionBackendName.NATIVE


def ring_step_ranges(seq_len: int, text_tokens: int, text_position: str, ring: int, ulysses: int, ring_rank: int,
                     step: int) -> tuple[tuple, tuple]:
    """The query and key ranges (:func:`joined`) of ring rank ``ring_rank``'s attention at ring step ``step``: its
    own chunk against ring rank ``(ring_rank + step) % ring``'s. A ring rank's chunk, after the Ulysses gather, is
    the shards of its Ulysses group (the flattened ranks ``r * ulysses ...``, in order; Diffusers' mesh is
    ``(ring, ulysses)``)."""
    def chunk(r: int) -> tuple:
        ranges = []
        for index in range(r * ulysses, (r + 1) * ulysses):
            ranges += shard_ranges(seq_len, text_tokens, text_position, ring * ulysses, index)
        return joined(ranges)

    return chunk(ring_rank), chunk((ring_rank + step) % ring)


def prepare_range_plans(layout: BlockLayout, cp, text_tokens: int = 0, text_position: str = "none") -> None:
    """Build, eagerly, the chunk plans every ring step of this rank uses over ``layout`` (kept on the layout): the
    step hook calls it once per geometry, so that a compiled forward only looks them up."""
    for step in range(cp.ring_degree):
        range_plan(layout, *ring_step_ranges(layout.seq_len, text_tokens, text_position, cp.ring_degree,
                                             cp.ulysses_degree, cp._ring_local_rank, step))


class _CPOp:
    """The ``forward_op`` / ``backward_op`` pair for one attention call; counts the ring steps it is driven through
    (Diffusers calls it once per step, in ring order)."""

    def __init__(self, layout: BlockLayout, kv_lengths, backend: str, parallel_config, text_tokens: int = 0,
                 text_position: str = "none"):
        cp = parallel_config.context_parallel_config
        self.layout, self.kv_lengths, self.backend = layout, kv_lengths, backend
        self.cp, self.ring, self.rank, self.ulysses = cp, cp.ring_degree, cp._ring_local_rank, cp.ulysses_degree
        self.text_tokens, self.text_position = text_tokens, text_position
        self._fwd_calls = self._bwd_calls = 0

    def _plan(self, step: int, q_len: int, k_len: int) -> RangePlan:
        q_ranges, k_ranges = ring_step_ranges(self.layout.seq_len, self.text_tokens, self.text_position, self.ring,
                                              self.ulysses, self.rank, step)
        want_q, want_k = sum(r[2] for r in q_ranges), sum(r[2] for r in k_ranges)
        if (want_q, want_k) != (q_len, k_len):
            raise RuntimeError(
                f"radial attention under context parallelism expected chunks of {want_q} query and {want_k} key "
                f"tokens of the {self.layout.seq_len}-token layout, got {q_len} and {k_len}: the model's "
                "context-parallel plan must shard exactly the sequence the radial mask covers")
        return range_plan(self.layout, q_ranges, k_ranges)

    def step_forward(self, step: int, query, key, value, scale=None):
        """Ring step ``step``: this rank's queries against ring rank ``(rank + step)``'s keys; ``out (B, Sq, H, D)``
        float32 and ``lse (B, H, Sq)`` (``-inf`` where no key is kept)."""
        return self._plan(step, query.shape[1], key.shape[1]).forward(query, key, value, self.kv_lengths, scale,
                                                                        self.backend)

    def step_backward(self, step: int, grad_out, query, key, value, out, lse, scale=None):
        """``(dq, dk, dv)`` of ring step ``step``, given the merged ``out`` and ``lse (B, H, Sq)`` of the rows."""
        plan = self._plan(step, query.shape[1], key.shape[1])
        if plan.empty:
            return torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)
        return plan.backward(grad_out.to(query.dtype), query, key, value, out.to(query.dtype), lse.contiguous(),
                             self.kv_lengths, scale, self.backend)

    def forward(self, ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
        if attn_mask is not None or dropout_p or is_causal or enable_gqa:
            raise ValueError("radial context-parallel attention takes no attn_mask, dropout, causal flag or GQA")
        step = self._fwd_calls
        self._fwd_calls += 1
        out, lse = self.step_forward(step, query, key, value, scale)
        if _save_ctx:  # ring attention hands the backward the merged output and log-sum-exp instead of ours
            ctx.save_for_backward(query, key, value, *((out.to(query.dtype), lse) if self.ring == 1 else ()))
            ctx.radial_scale = scale
        lse = lse.clamp_min(LSE_FLOOR).transpose(1, 2).contiguous()  # Diffusers' layout: (B, S, H)
        out = out.to(query.dtype)
        return (out, lse) if return_lse else out

    def backward(self, ctx, grad_out, *args, query=None, key=None, value=None, out=None, lse=None, **kwargs):
        check_ring_gradients(self.cp)
        saved = ctx.saved_tensors
        step = self._bwd_calls % self.ring
        self._bwd_calls += 1
        query = saved[0] if query is None else query
        key = saved[1] if key is None else key
        value = saved[2] if value is None else value
        out = saved[3] if out is None else out
        if lse is None:
            lse = saved[4]
        else:
            lse = lse.float().transpose(1, 2)
            lse = torch.where(lse <= LSE_FLOOR / 2, torch.full_like(lse, float("-inf")), lse)
        return self.step_backward(step, grad_out, query, key, value, out, lse, ctx.radial_scale)


def _waited(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed import _functional_collectives as funcol

    return tensor.wait() if isinstance(tensor, funcol.AsyncCollectiveTensor) else tensor


def _ring_chunks(key: torch.Tensor, value: torch.Tensor, cp) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every ring rank's ``(key, value)`` chunk, gathered (one all-gather of both)."""
    from torch.distributed import _functional_collectives as funcol

    both = torch.cat([key.reshape(-1), value.reshape(-1)])
    gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor  # the new name (torch >= 2.13)
    gathered = _waited(gather(both, 0, cp._ring_mesh.get_group()))
    n = key.numel()
    return [(c[:n].view(key.shape), c[n:].view(value.shape)) for c in gathered.chunk(cp.ring_degree)]


class _RingAttention(torch.autograd.Function):
    """Ring attention of :class:`_CPOp` over the ring ranks, forward and backward, for a ring of any size.

    Forward: this rank's queries against every ring rank's key/value chunk (all-gathered), step ``i`` holding ring rank
    ``(rank + i)``'s, merged by log-sum-exp. Backward: the same steps; the dK / dV of step ``i`` belong to ring rank
    ``(rank + i)``'s chunk, so the accumulator travels to ring rank ``rank - 1`` after each step (which holds that
    chunk at its next step), and after the last step it reaches the chunk's owner. Diffusers' ring (0.42) sends it to
    ``rank + 1`` instead, which is the same rank only for a ring of 2."""

    @staticmethod
    def forward(ctx, query, key, value, op: "_CPOp", cp):
        ring, rank = cp.ring_degree, cp._ring_local_rank
        chunks = _ring_chunks(key, value, cp)
        out = lse = None
        for step in range(ring):
            o, l = op.step_forward(step, query, *chunks[(rank + step) % ring])
            out, lse = (o, l) if out is None else merge_partial(out, lse, o, l)
        out = out.to(query.dtype)
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.op, ctx.cp = op, cp
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from torch.distributed import _functional_collectives as funcol

        query, key, value, out, lse = ctx.saved_tensors
        op, cp = ctx.op, ctx.cp
        ring, rank, group = cp.ring_degree, cp._ring_local_rank, cp._ring_mesh.get_group()
        chunks = _ring_chunks(key, value, cp)
        to_previous = [(r - 1) % ring for r in range(ring)]
        dq = torch.zeros(query.shape, dtype=torch.float32, device=query.device)
        sent = None
        for step in range(ring):
            dq_step, dk, dv = op.step_backward(step, grad_out, query, *chunks[(rank + step) % ring], out, lse)
            dq += dq_step
            mine = torch.cat([dk.float().reshape(-1), dv.float().reshape(-1)])
            # what ring rank + 1 accumulated for the chunk this rank holds now, plus this rank's share of it
            total = mine if sent is None else _waited(sent) + mine
            sent = funcol.permute_tensor(total, to_previous, group=group)
        own = _waited(sent)  # every rank's share of this rank's own chunk
        n = key.numel()
        return (dq.to(query.dtype), own[:n].view(key.shape).to(key.dtype), own[n:].view(value.shape).to(value.dtype),
                None, None)


def parallel_block_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: BlockLayout,
    parallel_config,
    *,
    kv_lengths: torch.Tensor | None = None,
    backend: str = "auto",
    text_tokens: int = 0,
    text_position: str = "none",
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
        text_tokens, text_position: a joint text + video sequence (the registry's ``text_position``): the video and
            the text are sharded separately, each rank holding its chunk of both (:func:`shard_ranges`).

    Returns:
        This rank's ``(B, S_local, H, D)`` output, differentiable in q, k and v (through Diffusers' templated
        autograd functions and our backward).
    """
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    op = _CPOp(layout, kv_lengths, backend, parallel_config, text_tokens, text_position)
    cp = parallel_config.context_parallel_config
    if runs_own_ring(cp):
        if cp.ulysses_degree == 1:
            return _RingAttention.apply(query, key, value, op, cp)
        # unified Ulysses x ring, as Diffusers composes it (heads <-> sequence all-to-all in the Ulysses group, ring
        # over the ring group, back), with our ring in the middle
        from diffusers.models.attention_dispatch import SeqAllToAllDim

        group = cp._ulysses_mesh.get_group()
        query, key, value = (SeqAllToAllDim.apply(group, t, 2, 1) for t in (query, key, value))
        return SeqAllToAllDim.apply(group, _RingAttention.apply(query, key, value, op, cp), 1, 2)
    return _templated_context_parallel_attention(
        query, key, value, None, 0.0, False, None, False, False,
        forward_op=op.forward, backward_op=op.backward, _parallel_config=parallel_config)
