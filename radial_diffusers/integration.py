"""Install radial attention in a Diffusers pipeline or transformer, and the hook that drives it per step.

One :class:`RadialStepHook` (a ``diffusers.hooks.ModelHook``) on the transformer runs before every forward:

* reads the latent shape ``(F', H', W')`` (and HunyuanVideo's text length) and selects the cached block layout;
* tracks the denoising step from ``timestep``: with a pipeline, the index of ``t`` in ``pipe.scheduler.timesteps``;
  otherwise a counter (same ``t`` = same step, e.g. the CFG pass; smaller ``t`` = next step; larger = a new call);
* decides dense vs sparse for the step and sets each processor's ``use_sparse`` bool.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .attention.op import resolve_backend
from .config import RadialConfig, ResolvedPolicy
from .layout import BlockLayout
from .masks import mask_stats, radial_block_mask
from .processors import RadialHunyuanVideoAttnProcessor, RadialWanAttnProcessor

__all__ = ["apply_radial_attention", "remove_radial_attention", "RadialState", "HOOK_NAME"]

HOOK_NAME = "radial_step_tracker"
_STATE_ATTR = "_radial_state"


@dataclass
class RadialState:
    """Shared by the hook and the processors of one transformer; also the handle returned to the user.

    Attributes:
        model: ``"wan"`` or ``"hunyuan"``.
        config: the :class:`RadialConfig` in force (presets not yet filled in).
        step: current denoising step (0-based); ``num_steps``: schedule length if known.
        geometry: ``(F', H', W')`` of the last transformer call; ``text_tokens``: text tokens in the joint sequence.
        layout: block layout of the current geometry (on the activations' device).
        sparse_calls / dense_calls: attention calls per layer index, by branch (eager mode only).
    """

    model: str
    config: RadialConfig
    processors: list = field(default_factory=list)
    step: int = 0
    num_steps: int | None = None
    geometry: tuple[int, int, int] | None = None
    text_tokens: int = 0
    layout: BlockLayout | None = None
    backend: str = "torch"
    sparse_calls: Counter = field(default_factory=Counter)
    dense_calls: Counter = field(default_factory=Counter)
    record: bool = False
    trace: list = field(default_factory=list)
    _layouts: dict = field(default_factory=dict)
    _backends: dict = field(default_factory=dict)
    _originals: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, layer_idx: int, sparse: bool) -> None:
        if torch.compiler.is_compiling():
            return
        (self.sparse_calls if sparse else self.dense_calls)[layer_idx] += 1
        if self.record:
            self.trace.append((self.step, layer_idx, sparse))

    def reset_counters(self) -> None:
        self.sparse_calls.clear()
        self.dense_calls.clear()
        self.trace.clear()

    def block_mask(self, geometry: tuple[int, int, int] | None = None, text_tokens: int | None = None):
        """Block mask of ``geometry`` (default: the last call's) as a bool CPU tensor."""
        frames, h, w = geometry or self.geometry
        cfg = self.config.with_preset(self.model)
        return radial_block_mask(
            frames, h * w, model=self.model, block_size=cfg.block_size, decay_factor=cfg.decay_factor,
            text_tokens=self.text_tokens if text_tokens is None else text_tokens, adjacent=cfg.adjacent, sink=cfg.sink,
        )

    def stats(self, head_dim: int = 128):
        """:class:`~radial_diffusers.masks.MaskStats` of the last call's geometry."""
        frames, h, w = self.geometry
        seq = frames * h * w + self.text_tokens
        return mask_stats(self.block_mask(), self.config.block_size, seq, head_dim)

    def backend_for(self, device: torch.device) -> str:
        """The concrete attention backend for activations on ``device`` (``"auto"`` resolved per device)."""
        key = str(device)
        backend = self._backends.get(key)
        if backend is None:
            backend = self._backends[key] = resolve_backend(self.config.backend, device, self.config.block_size)
        return backend

    def layout_for(self, geometry: tuple[int, int, int], text_tokens: int, device: torch.device) -> BlockLayout:
        key = (geometry, text_tokens)
        layout = self._layouts.get(key)
        if layout is None:
            with self._lock:
                layout = self._layouts.get(key)
                if layout is None:
                    frames, h, w = geometry
                    layout = BlockLayout.from_block_mask(
                        self.block_mask(geometry, text_tokens), self.config.block_size, frames * h * w + text_tokens
                    )
                    self._layouts[key] = layout
        return layout.to(device)


class RadialStepHook(ModelHook):
    """Tracks the denoising step and latent geometry; sets the dense/sparse decision of every radial processor."""

    def __init__(self, state: RadialState, pipeline=None):
        super().__init__()
        self.state = state
        # The pipeline is held weakly and its scheduler read at call time, so a scheduler swapped after
        # apply_radial_attention() (e.g. a different flow shift) is the one whose timesteps are matched.
        self._pipeline = weakref.ref(pipeline) if pipeline is not None else None
        self._last_t: float | None = None
        self._timesteps_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._warned_for: int | None = None

    # -- step tracking -------------------------------------------------------------------------------------------
    def _scheduler_timesteps(self) -> torch.Tensor | None:
        pipeline = self._pipeline() if self._pipeline is not None else None
        scheduler = getattr(pipeline, "scheduler", None)
        ts = getattr(scheduler, "timesteps", None)
        if ts is None or not isinstance(ts, torch.Tensor) or ts.numel() == 0:
            return None
        # Keyed by the tensor itself (held, compared with `is`): an id alone can be reused by a new schedule.
        if self._timesteps_cache is None or self._timesteps_cache[0] is not ts:
            self._timesteps_cache = (ts, ts.detach().float().cpu().reshape(-1))
        return self._timesteps_cache[1]

    def _update_step(self, timestep) -> None:
        t = float(timestep.max()) if isinstance(timestep, torch.Tensor) else float(timestep)
        ts = self._scheduler_timesteps()
        step = None
        if ts is not None:
            diff = (ts - t).abs()
            i = int(diff.argmin())
            # Accept the nearest schedule entry if t is closer to it than half the gap to its neighbours: robust to
            # the pipeline casting t to the latents' dtype (bf16 rounds 1000-ish timesteps by up to 2).
            gaps = (ts[1:] - ts[:-1]).abs()
            near = [float(gaps[j]) for j in (i - 1, i) if 0 <= j < gaps.numel()]
            tolerance = 0.5 * min(near) if near else 1e-3 * max(1.0, abs(t))
            if float(diff[i]) < tolerance or float(diff[i]) == 0.0:
                step, self.state.num_steps = i, ts.numel()
        if step is None:  # bare transformer: count distinct decreasing timesteps
            if self._last_t is None or t > self._last_t:
                step = 0
            elif t < self._last_t:
                step = self.state.step + 1
            else:
                step = self.state.step
        self._last_t = t
        self.state.step = step

    # -- geometry ------------------------------------------------------------------------------------------------
    def _geometry(self, module, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        if hidden_states.ndim != 5:
            raise ValueError(f"expected video latents (B, C, F, H, W), got shape {tuple(hidden_states.shape)}")
        cfg = module.config
        if self.state.model == "wan":
            pt, ph, pw = cfg.patch_size
        else:
            pt, ph, pw = cfg.patch_size_t, cfg.patch_size, cfg.patch_size
        _, _, f, h, w = hidden_states.shape
        if f % pt or h % ph or w % pw:
            raise ValueError(
                f"latent shape (F={f}, H={h}, W={w}) is not divisible by the patch size ({pt}, {ph}, {pw}); "
                "choose height/width multiples of the VAE scale times the patch size (16 for Wan and HunyuanVideo)"
            )
        return f // pt, h // ph, w // pw

    def pre_forward(self, module, *args, **kwargs):
        state = self.state
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        text_tokens = 0
        if state.model == "hunyuan":
            ehs = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
            text_tokens = int(ehs.shape[1])
        for proc in state.processors:
            _check_not_parallel(proc)
        self._update_step(timestep)
        policy: ResolvedPolicy = state.config.resolve(state.model, state.num_steps)
        if policy.covers_schedule() and self._warned_for != policy.num_steps and state.step == 0:
            self._warned_for = policy.num_steps
            warnings.warn(
                f"radial attention: dense steps ({policy.dense_steps} first + {policy.last_dense_steps} last) cover the "
                f"whole {policy.num_steps}-step schedule, so every step runs dense attention; lower "
                "RadialConfig.dense_steps / last_dense_steps",
                stacklevel=2,
            )
        state.geometry = self._geometry(module, hidden_states)
        state.text_tokens = text_tokens
        state.layout = state.layout_for(state.geometry, text_tokens, hidden_states.device)
        state.backend = state.backend_for(hidden_states.device)
        sparse_step = not policy.dense_step(state.step)
        for proc in state.processors:
            proc.use_sparse = sparse_step and proc.layer_idx >= policy.dense_layers
        return args, kwargs


def _check_not_parallel(proc) -> None:
    if getattr(proc, "_parallel_config", None) is not None:
        raise NotImplementedError(
            "radial attention does not support Diffusers context parallelism yet (enable_parallelism() set a "
            "_parallel_config); remove_radial_attention() first or run on one device"
        )


def _supported_transformer(transformer) -> str:
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    if isinstance(transformer, WanTransformer3DModel):
        return "wan"
    if isinstance(transformer, HunyuanVideoTransformer3DModel):
        return "hunyuan"
    raise TypeError(
        f"radial attention supports WanTransformer3DModel and HunyuanVideoTransformer3DModel (WanPipeline, "
        f"WanImageToVideoPipeline, HunyuanVideoPipeline), got {type(transformer).__name__}"
    )


def _split_target(target):
    """(transformer, pipeline or None) from a pipeline or a transformer."""
    if isinstance(target, torch.nn.Module):
        return target, None
    transformer = getattr(target, "transformer", None)
    if transformer is None:
        raise TypeError(
            f"expected a Diffusers video pipeline (WanPipeline, WanImageToVideoPipeline, HunyuanVideoPipeline) or its "
            f"transformer, got {type(target).__name__}"
        )
    if getattr(target, "transformer_2", None) is not None:
        raise NotImplementedError(
            "pipelines with two transformers (Wan2.2 A14B) are not supported yet; apply radial attention to "
            "pipe.transformer only with apply_radial_attention(pipe.transformer, config)"
        )
    return transformer, target


def _attention_modules(transformer, model: str):
    """(layer index, attention module) pairs to receive radial processors, in layer order."""
    if model == "wan":
        return [(i, block.attn1) for i, block in enumerate(transformer.blocks)]
    dual = [(i, block.attn) for i, block in enumerate(transformer.transformer_blocks)]
    offset = len(dual)
    return dual + [(offset + i, block.attn) for i, block in enumerate(transformer.single_transformer_blocks)]


def apply_radial_attention(pipe_or_transformer, config: RadialConfig | None = None) -> RadialState:
    """Swap radial attention into a Wan2.1 (T2V/I2V) or HunyuanVideo pipeline or transformer.

    Installs a radial processor on Wan ``blocks[i].attn1`` (cross-attention and the I2V image branch stay stock) or
    on HunyuanVideo's dual and single blocks (never the token refiner), keeping each processor's attention backend,
    and registers the step-tracking hook on the transformer. Applying again replaces the previous installation.

    Args:
        pipe_or_transformer: ``WanPipeline``, ``WanImageToVideoPipeline``, ``HunyuanVideoPipeline`` (or any pipeline
            whose ``transformer`` is a Wan/HunyuanVideo transformer), or the transformer itself. With a pipeline the
            step index comes from its scheduler, so fractions and ``last_dense_steps`` work without more input.
        config: :class:`RadialConfig`; ``None`` uses the paper's preset for the model.

    Returns:
        The :class:`RadialState` (current layout, step, per-layer call counts, ``stats()`` of the mask).

    Example:
        >>> import radial_diffusers as rd
        >>> from radial_diffusers.tiny import tiny_wan_pipeline
        >>> pipe = tiny_wan_pipeline()
        >>> state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_steps=1))
        >>> video = pipe("a cat", num_frames=33, height=128, width=128, num_inference_steps=4).frames  # doctest: +SKIP
        >>> rd.remove_radial_attention(pipe)
    """
    config = RadialConfig() if config is None else config
    if not isinstance(config, RadialConfig):
        raise TypeError(f"config must be a radial_diffusers.RadialConfig, got {type(config).__name__}")
    transformer, pipeline = _split_target(pipe_or_transformer)
    model = _supported_transformer(transformer)
    if getattr(transformer, _STATE_ATTR, None) is not None:
        remove_radial_attention(transformer)

    if pipeline is None:
        config.resolve(model, None)  # fail now, not at the first forward, if the policy needs the step count
    modules = _attention_modules(transformer, model)
    for _, module in modules:
        _check_not_parallel(module.processor)
    state = RadialState(model=model, config=config)
    proc_cls = RadialWanAttnProcessor if model == "wan" else RadialHunyuanVideoAttnProcessor
    originals = []
    try:
        for layer_idx, module in modules:
            original = module.processor
            proc = proc_cls(state, layer_idx)
            backend = getattr(original, "_attention_backend", None)
            if backend is not None:
                proc._attention_backend = backend
            module.set_processor(proc)
            originals.append((module, original))
            state.processors.append(proc)
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.register_hook(RadialStepHook(state, pipeline), HOOK_NAME)
    except BaseException:
        for module, original in originals:
            module.set_processor(original)
        raise
    state._originals = originals
    setattr(transformer, _STATE_ATTR, state)
    return state


def remove_radial_attention(pipe_or_transformer) -> None:
    """Restore the processors that were in place before :func:`apply_radial_attention` and remove the hook.

    A no-op on a model without radial attention.
    """
    transformer, _ = _split_target(pipe_or_transformer)
    state = getattr(transformer, _STATE_ATTR, None)
    if state is None:
        return
    for (module, original), proc in zip(state._originals, state.processors):
        backend = proc.__dict__.get("_attention_backend")  # set_attention_backend() called after apply
        if backend is not None:
            original._attention_backend = backend
        module.set_processor(original)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(HOOK_NAME, recurse=False)
    setattr(transformer, _STATE_ATTR, None)
