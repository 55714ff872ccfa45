"""Install radial attention in a Diffusers pipeline or transformer, and the hook that drives it per step.

One :class:`RadialStepHook` on the transformer runs before every forward:

* reads the latent grid ``(F', H', W')``, the text length and the timestep from the call, by argument name as the
  family's registry entry says (:class:`~radial_diffusers.families.ForwardArgs`), and selects the cached layout
  (for a family whose transformer passes a block-causal frame mask, ``ModelFamily.frame_causal``, the layouts of
  radial AND that mask, built here once per geometry and frames per block, never by a processor);
* tracks the denoising step from ``timestep``: with a pipeline, the index of ``t`` in ``pipe.scheduler.timesteps``;
  otherwise a counter (same ``t`` = same step, e.g. the CFG pass; a move in the call's direction = next step; a
  move against it = a new call);
* decides dense vs sparse for the step and sets each processor's ``use_sparse`` bool.

The hook is written to be traced by ``torch.compile(transformer, fullgraph=True)`` as well as run eagerly (under
``compile_repeated_blocks`` it runs eagerly, outside the compiled blocks):

* everything that depends only on shapes and the config (geometry check, block layout, backend, step policy) is
  built by one :func:`torch.compiler.assume_constant_result` function, :func:`_plan_key`: Dynamo runs it once while
  tracing and keeps its result, guarded by the shapes it came from, so the layout cache and its lock are never traced;
* the step and the dense/sparse decision are tensor arithmetic on CPU scalars of :class:`RadialState`
  (``_t_last``, ``_step``, ``_sparse_step``), updated in place: a compiled forward reads them as inputs and never
  specializes on the step, so denoising steps of one geometry never recompile;
* compiled processors select their branch with ``torch.cond`` on ``_sparse_step`` and a per-layer flag (see
  ``processors.py``); eager processors read the plain ``use_sparse`` bool.
"""

from __future__ import annotations

import contextlib
import copy
import operator
import threading
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass, field, replace

import torch

from .attention.op import check_backend_device, resolve_backend
from .config import RadialConfig, ResolvedPolicy
from .errors import ConfigError, UnsupportedModelError
from .families import (TRANSFORMER_ATTRIBUTES, ModelFamily, checkpoint_geometry, family_of, get_family,
                       pipeline_transformer)
from .layout import BlockLayout, FrameCausalLayout, frame_causal_block_mask
from .masks import mask_stats, radial_block_mask
from .parallel import (attend_locally, check_parallel_call, check_parallel_model, check_ring_gradients,
                       context_parallel_config, prepare_range_plans, ring_gradients_right, text_padding)

__all__ = ["apply_radial_attention", "remove_radial_attention", "RadialState"]

_STATE_ATTR = "_radial_state"


def _cpu_scalar(value, dtype):
    # Built outside inference mode: the hook updates these in place on every call, also outside inference mode.
    with torch.inference_mode(False):
        return torch.tensor(value, dtype=dtype)


@dataclass
class RadialState:
    """Shared by the hook and the processors of one transformer; also the handle returned to the user.

    Attributes:
        model: the model family's name (``"wan"``, ``"hunyuan"``, ...); ``family``: its registry entry.
        config: the :class:`RadialConfig` in force (presets not yet filled in, but for the block size).
        step: current denoising step (0-based; read from a CPU tensor the hook updates, also under
            ``torch.compile``); ``num_steps``: schedule length if known.
        geometry: ``(F', H', W')`` of the last transformer call; ``text_tokens``: text tokens in the joint sequence.
        layout: block layout of the current geometry (on the activations' device).
        frames_per_block: latent frames per causal block of the last call (the family's ``frame_causal``; 1 = no
            block-causal mask); ``causal``: with ``frames_per_block > 1``, the :class:`FrameCausalLayout` of
            ``radial AND block-causal`` for the current geometry (built by the hook, read by the processors).
        sparse_calls / dense_calls: attention calls per layer index, by branch (eager mode only).
        preset: the preset in force, the family's or a variant's (``"wan2.2"``).
        experts: with a two-expert pipeline (Wan2.2 A14B), the state of each expert (``transformer`` first, then
            ``transformer_2``); :func:`apply_radial_attention` returns the first. Every expert keeps its own
            processors, layouts and counters; all follow the pipeline's scheduler, so the step index and the
            dense-step policy are those of the whole schedule whichever expert runs, and ``dense_layers`` apply per
            expert.
    """

    model: str
    config: RadialConfig
    preset: str = ""  # the preset's key: the family (``"wan"``) or a variant of it (``"wan2.2"``); "" = the family
    processors: list = field(default_factory=list)
    num_steps: int | None = None
    geometry: tuple[int, int, int] | None = None
    text_tokens: int = 0
    layout: BlockLayout | None = None
    frames_per_block: int = 1
    causal: FrameCausalLayout | None = None
    backend: str = "torch"
    sparse_calls: Counter = field(default_factory=Counter)
    dense_calls: Counter = field(default_factory=Counter)
    record: bool = False
    trace: list = field(default_factory=list)
    # A recall probe (``evaluation.recall.RecallProbe``) that every self-attention call reports its q and k to
    # (eager mode); None: no probe, no cost.
    probe: object = field(default=None, repr=False)
    patch_size: tuple[int, int, int] = (1, 1, 1)
    # Step tracking as CPU scalars (see the module docstring): the last timestep (NaN before the first call), the
    # step, and whether the step is sparse.
    _t_last: torch.Tensor = field(default_factory=lambda: _cpu_scalar(float("nan"), torch.float32), repr=False)
    _step: torch.Tensor = field(default_factory=lambda: _cpu_scalar(0, torch.int64), repr=False)
    # direction of the timesteps in this call without a scheduler: 0 until they first change, then -1 or +1
    _t_dir: torch.Tensor = field(default_factory=lambda: _cpu_scalar(0.0, torch.float32), repr=False)
    _sparse_step: torch.Tensor = field(default_factory=lambda: _cpu_scalar(False, torch.bool), repr=False)
    _layouts: dict = field(default_factory=dict, repr=False)
    _plans: dict = field(default_factory=dict, repr=False)
    _backends: dict = field(default_factory=dict, repr=False)
    _originals: list = field(default_factory=list, repr=False)
    # every radial processor this state installed (state.processors holds those in place): all run the stock path
    # once radial attention is removed
    _installed: list = field(default_factory=list, repr=False)
    # the attn_processors key of each layer ("transformer_blocks.0.attn1.processor"), in the order of _originals
    _keys: list = field(default_factory=list, repr=False)
    experts: tuple = field(default=(), repr=False)
    _transformer: object = field(default=None, repr=False)
    _hook_handle: object = field(default=None, repr=False)  # torch.utils.hooks.RemovableHandle of the step hook
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.config.block_size is None:  # layouts, backends and stats read it: the preset's, resolved once
            self.config = replace(self.config, block_size=self.config.with_preset(self.preset_key).block_size)

    @property
    def step(self) -> int:
        return int(self._step)

    @property
    def family(self) -> ModelFamily:
        return get_family(self.model)

    @property
    def preset_key(self) -> str:
        return self.preset or self.model

    @step.setter
    def step(self, value: int) -> None:
        self._step.fill_(int(value))

    def count(self, layer_idx: int, sparse: bool) -> None:
        if torch.compiler.is_compiling():
            return
        (self.sparse_calls if sparse else self.dense_calls)[layer_idx] += 1
        if self.record:
            self.trace.append((self.step, layer_idx, sparse))

    # copy.deepcopy and pickling (torch.save of a whole model): the weak reference to the transformer travels as the
    # transformer itself (the copy's state points at the copied model), the lock is made anew, and a copy of one
    # expert is that expert alone (the other experts' states would pull their transformers along)
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_transformer"] = self._transformer() if self._transformer is not None else None
        state["experts"] = bool(self.experts)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        transformer = state.pop("_transformer")
        self.__dict__.update(state)
        self._transformer = weakref.ref(transformer) if transformer is not None else None
        self.experts = (self,) if state["experts"] else ()
        self._lock = threading.Lock()

    def installed(self, processor) -> bool:
        """Whether ``processor`` is one this state installed (in place now or not)."""
        return any(processor is p for p in self._installed)

    def reset_counters(self) -> None:
        self.sparse_calls.clear()
        self.dense_calls.clear()
        self.trace.clear()

    def block_mask(self, geometry: tuple[int, int, int] | None = None, text_tokens: int | None = None,
                   frames_per_block: int | None = None, decay_factor: float | None = None):
        """Block mask of ``geometry`` (default: the last call's) as a bool CPU tensor: the radial mask, AND-ed with
        the block-causal frame mask where one applies (``frames_per_block > 1``, default: the last call's), i.e. the
        tiles the attention computes. ``decay_factor``: another decay than the config's (what-if masks of eval).

        Raises:
            RuntimeError: no ``geometry`` given and no transformer call has set one yet."""
        frames, h, w = geometry or self._last_geometry("block_mask")
        cfg = self.config.with_preset(self.preset_key)
        text_tokens = self.text_tokens if text_tokens is None else text_tokens
        decay = cfg.decay_factor if decay_factor is None else decay_factor
        mask = radial_block_mask(
            frames, h * w, model=self.model, block_size=cfg.block_size, decay_factor=decay,
            text_tokens=text_tokens, adjacent=cfg.adjacent, sink=cfg.sink,
        )
        nfpb = self.frames_per_block if frames_per_block is None else frames_per_block
        if nfpb > 1:
            seq = frames * h * w + text_tokens
            mask &= frame_causal_block_mask(mask.shape[0], cfg.block_size, seq, nfpb * h * w)
        return mask

    def _last_geometry(self, what: str) -> tuple[int, int, int]:
        if self.geometry is None:
            raise RuntimeError(
                f"RadialState.{what}(): no transformer call has set the latent geometry yet: run the pipeline once "
                f"(block_mask also takes geometry=(frames, height, width) in tokens; rd.mask_stats takes a mask)"
            )
        return self.geometry

    def stats(self, head_dim: int = 128):
        """:class:`~radial_diffusers.masks.MaskStats` of the last call's geometry.

        Raises:
            RuntimeError: no transformer call has set a geometry yet."""
        frames, h, w = self._last_geometry("stats")
        seq = frames * h * w + self.text_tokens
        return mask_stats(self.block_mask(), self.config.block_size, seq, head_dim)

    def backend_for(self, device: torch.device) -> str:
        """The concrete attention backend for activations on ``device`` (``"auto"`` resolved per device)."""
        key = str(device)
        backend = self._backends.get(key)
        if backend is None:
            backend = resolve_backend(self.config.backend, device, self.config.block_size)
            if torch.compiler.is_compiling():  # resolve_backend leaves the device check to this, the plan's eager build
                check_backend_device(backend, device, self.config.block_size)
            self._backends[key] = backend
        return backend

    def dense_layout(self, layout: BlockLayout | None = None) -> BlockLayout:
        """The all-kept layout of the sequence of ``layout`` (default: the current one; on its device): dense calls
        that run the op under context parallelism use it (see ``_dense_needs_our_op`` in the processors)."""
        layout = self.layout if layout is None else layout
        key = ("dense", layout.seq_len, layout.block_size, str(layout.device))
        dense = self._layouts.get(key)
        if dense is None:
            dense = self._layouts[key] = BlockLayout.dense(layout.seq_len, layout.block_size).to(layout.device)
        return dense

    def layout_for(self, geometry: tuple[int, int, int], text_tokens: int, device: torch.device) -> BlockLayout:
        key = (geometry, text_tokens)
        layout = self._layouts.get(key)
        if layout is None:
            with self._lock:
                layout = self._layouts.get(key)
                if layout is None:
                    frames, h, w = geometry
                    layout = BlockLayout.from_block_mask(
                        self.block_mask(geometry, text_tokens, frames_per_block=1), self.config.block_size,
                        frames * h * w + text_tokens,
                    )
                    self._layouts[key] = layout
        return layout.to(device)

    def causal_for(self, geometry: tuple[int, int, int], frames_per_block: int, device) -> FrameCausalLayout:
        """The layouts of ``radial AND block-causal`` (chunks of ``frames_per_block`` frames) for ``geometry``."""
        key = ("frame-causal", geometry, frames_per_block)
        causal = self._layouts.get(key)
        if causal is None:
            radial = self.layout_for(geometry, 0, "cpu")
            with self._lock:
                causal = self._layouts.get(key)
                if causal is None:
                    causal = FrameCausalLayout.build(radial, frames_per_block * geometry[1] * geometry[2])
                    self._layouts[key] = causal
        return causal.to(device)


@dataclass(frozen=True, eq=False)
class _Plan:
    """What one transformer call needs that depends only on shapes, device and config (see :func:`_plan_key`)."""

    geometry: tuple[int, int, int]
    text_tokens: int
    layout: BlockLayout
    backend: str
    policy: ResolvedPolicy
    frames_per_block: int = 1
    causal: FrameCausalLayout | None = None
    # the layout keeps every block (a short or small video): the stock processor computes the same attention with
    # the dense kernel, so no step of this geometry runs the block-sparse op
    full: bool = False


@torch.compiler.assume_constant_result
def _plan_key(state: RadialState, latent_shape: tuple[int, int, int], text_tokens: int, device: torch.device,
              num_steps: int | None, frames_per_block: int = 1) -> tuple:
    """Build (once) the :class:`_Plan` of a call into ``state._plans`` and return its key: geometry check, block
    layout (and, with ``frames_per_block > 1``, the layouts of radial AND the block-causal frame mask), backend and
    step policy, a function of the arguments only. ``torch.compile`` runs it once at trace time and keeps the key (a
    tuple of Python constants), then reads the plan from the dict; the shapes it came from are guarded, so a new
    geometry retraces. The layout cache and its lock are never traced."""
    key = (tuple(latent_shape), int(text_tokens), str(device), num_steps, int(frames_per_block))
    if key in state._plans:
        return key
    with _real_tensors():
        state._plans[key] = _build_plan(state, latent_shape, text_tokens, device, num_steps, frames_per_block)
    return key


@torch.compiler.assume_constant_result
def _prepare_parallel(state: RadialState, plan: "_Plan", cp) -> bool:
    """Build (once per geometry, eagerly: also when ``torch.compile`` traces the call) the chunk plans of this
    rank's ring steps over the call's layout and its all-kept twin, so that a compiled forward only looks them up.
    Called on every call, eager ones too: regionally compiled blocks (``compile_repeated_blocks``) trace the op
    while the hook runs eagerly."""
    with _real_tensors():
        for layout in (plan.layout, state.dense_layout(plan.layout)):
            prepare_range_plans(layout, cp, plan.text_tokens, state.family.text_position)
    return True


@contextlib.contextmanager
def _real_tensors():
    """Plans and layouts are cached: build them from real tensors even while ``torch.export`` (non-strict) runs the
    call under fake-tensor and tracing modes (there a mask would be data-dependent and a cached layout fake)."""
    if not torch.compiler.is_exporting():
        yield
        return
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        yield


def _build_plan(state: RadialState, latent_shape, text_tokens: int, device: torch.device, num_steps,
                frames_per_block: int = 1) -> _Plan:
    f, h, w = latent_shape
    pt, ph, pw = state.patch_size
    family = state.family
    if f % pt or h % ph or w % pw:
        raise ConfigError(
            f"latent grid (F={f}, H={h}, W={w}) is not divisible by the patch size ({pt}, {ph}, {pw}) of "
            f"{family.label}; choose height/width multiples of the VAE's spatial compression times the patch size "
            f"({checkpoint_geometry(state.preset_key)[1] * ph} for {state.preset_key}'s released checkpoints)"
        )
    geometry = (f // pt, h // ph, w // pw)
    causal = None
    if frames_per_block > 1:
        if geometry[0] % frames_per_block:
            raise ConfigError(
                f"{family.label}: {geometry[0]} latent frames are not a multiple of transformer.config."
                f"num_frame_per_block={frames_per_block} (the diffusion-forcing causal_block_size), so the "
                f"transformer's block-causal frame mask has no whole blocks; choose num_frames so that the latent "
                f"frames ((num_frames - 1) // {family.vae_temporal} + 1) are a multiple of {frames_per_block}, or pass "
                "causal_block_size=1"
            )
        if text_tokens:
            raise NotImplementedError(f"{family.label}: a block-causal frame mask over a joint text sequence")
        causal = state.causal_for(geometry, int(frames_per_block), device)
    layout = state.layout_for(geometry, int(text_tokens), device)
    return _Plan(
        geometry=geometry,
        text_tokens=int(text_tokens),
        layout=layout,
        backend=state.backend_for(device),
        policy=state.config.resolve(state.preset_key, num_steps),
        frames_per_block=int(frames_per_block),
        causal=causal,
        full=layout.nnz == layout.n_blocks ** 2,
    )


def _match_step(t: torch.Tensor, ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the schedule entry nearest ``t``, whether ``t`` is that entry): all CPU tensors.

    The nearest entry is accepted if ``t`` is closer to it than half the gap to its neighbours and within 2**-6 of it
    relative to ``t``: robust to the pipeline casting ``t`` to the latents' dtype (bf16 rounds 1000-ish timesteps by
    up to 2), while a call in other units than its schedule (Cosmos-Predict2.5 passes the sigma in [0, 1] of
    timesteps up to 1000) matches nothing."""
    # gather, not tensor indexing: indexing by a tensor value would make a compiled graph data-dependent
    diff = (ts - t).abs()
    i = diff.argmin().reshape(1)
    d = diff.gather(0, i)
    if ts.numel() > 1:
        gaps = (ts[1:] - ts[:-1]).abs()
        inf = gaps.new_full((1,), float("inf"))
        padded = torch.cat([inf, gaps, inf])  # padded[i] = gap to the left neighbour, padded[i + 1] to the right
        tolerance = 0.5 * torch.minimum(padded.gather(0, i), padded.gather(0, i + 1))
    else:
        tolerance = 1e-3 * torch.clamp(t.abs(), min=1.0)
    tolerance = torch.minimum(tolerance, 2.0**-6 * torch.clamp(t.abs(), min=1.0))
    return i[0], ((d < tolerance) | (d == 0))[0]


# Mochi's pipeline records ``1000 - t`` as its current timestep (Diffusers' literal, not the scheduler's config).
_TRAIN_TIMESTEPS = 1000.0


def _close(entry: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Whether ``t`` is the schedule ``entry`` after a cast to bf16 (relative error up to 2**-8, doubled for slack)."""
    return (entry - t).abs() <= 2.0**-7 * torch.clamp(t.abs(), min=1.0)


def _schedule_entry(current: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The entry of the schedule ``ts`` a pipeline's ``current_timestep`` names: itself, or ``1000 - current`` where
    only that is an entry (Mochi). Both float32 CPU tensors; tensor ops only (traced by torch.compile)."""
    def in_schedule(x):
        return (ts - x).abs().amin() <= 1e-3 * torch.clamp(x.abs(), min=1.0)

    return torch.where(~in_schedule(current) & in_schedule(_TRAIN_TIMESTEPS - current), _TRAIN_TIMESTEPS - current,
                       current)


_UNSET = object()


def _call_t(timestep) -> torch.Tensor:
    """A call's timestep as the CPU float32 scalar the step hook works with: the max of a per-sample or per-token
    tensor (the noisiest)."""
    if isinstance(timestep, torch.Tensor):
        return timestep.detach().float().amax().cpu()
    return torch.tensor(float(timestep))


class RadialStepHook:
    """Tracks the denoising step and latent geometry; sets the dense/sparse decision of every radial processor.

    Installed as a plain ``torch`` forward pre-hook (``register_forward_pre_hook(hook, with_kwargs=True)``), not as a
    ``diffusers.hooks.HookRegistry`` entry: Diffusers treats a ``_diffusers_hook`` registry on a module as its own
    (group offloading expects every module that has one to carry its offloading hook), and a torch pre-hook is traced
    by ``torch.compile`` the same way. It runs before any Diffusers hook on the transformer itself."""

    def __init__(self, state: RadialState, pipeline=None):
        self.state = state
        self._family = state.family
        # The pipeline is held weakly and its scheduler read at call time, so a scheduler swapped after
        # apply_radial_attention() (e.g. a different flow shift) is the one whose timesteps are matched.
        self._pipeline = weakref.ref(pipeline) if pipeline is not None else None
        self._warned_for: int | None = None
        self._warned_ungridded = False
        self._warned_replaced = 0  # processors found replaced at the last warning
        self._checked_parallel = None  # the parallel config last checked (enable_parallelism may come after apply)

    # -- step tracking -------------------------------------------------------------------------------------------
    def _bound_pipeline(self, t: torch.Tensor | None = None):
        """The pipeline radial attention was applied to, while it runs; ``None`` for a bare transformer and while it
        is idle (a pipeline sets ``_current_timestep`` in its denoising loop and clears it when done): then another
        pipeline sharing the transformer (``from_pipe``) is calling, whose schedule is not this one's.

        A pipeline whose run a callback interrupted (``_interrupt``) is idle. LTX-Video's pipelines never clear
        ``_current_timestep``: after a run it still holds the last schedule entry. In eager mode such a pipeline is
        idle when its scheduler has stepped past the schedule's end (``step_index``), or, for a scheduler without
        one, when this call's timestep ``t`` (a CPU scalar) is not that last entry. Under torch.compile (where a
        Python decision on these values would recompile every step) it is taken as running. A run stopped by an
        exception leaves the pipeline's state as Diffusers left it, running, until that pipeline's next call."""
        pipeline = self._pipeline() if self._pipeline is not None else None
        if pipeline is None or not hasattr(type(pipeline), "current_timestep"):
            return pipeline  # a pipeline class without the property is taken as running
        # the property's class sets _current_timestep in its __call__ (not yet called: absent)
        current = getattr(pipeline, "_current_timestep", None)
        if current is None or getattr(pipeline, "_interrupt", False) is True:
            return None
        scheduler = getattr(pipeline, "scheduler", None)
        ts = getattr(scheduler, "timesteps", None)
        if torch.compiler.is_compiling() or not isinstance(ts, torch.Tensor) or not ts.numel():
            return pipeline
        own = getattr(scheduler, "step_index", None)
        if isinstance(own, int):
            return None if own >= ts.numel() else pipeline
        if t is not None and isinstance(current, torch.Tensor) and current.numel() == 1:
            current = current.detach().float().cpu().reshape(1)
            if torch.equal(current, ts.detach().reshape(-1)[-1:].float().cpu()) and not bool(_close(current, t)):
                return None
        return pipeline

    @staticmethod
    def _scheduler_timesteps(pipeline) -> torch.Tensor | None:
        ts = getattr(getattr(pipeline, "scheduler", None), "timesteps", None)
        if ts is None or not isinstance(ts, torch.Tensor) or ts.numel() == 0:
            return None
        return ts

    def _pipeline_timestep(self, pipeline, t: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """The schedule entry the pipeline says it is at (from its ``current_timestep``, float32) when that is this
        call's ``t`` up to the rounding of a cast (HunyuanVideo-1.5 and Mochi pass ``t`` in the latents' bf16, which
        moves 1000-ish timesteps by up to 2, past the gap between their schedule entries); else ``t``. For a family
        whose calls are not in schedule units (``ForwardArgs.schedule_units``: Cosmos), the entry whatever ``t`` is;
        a Python number there (Cosmos-Predict2.5's) is read in eager mode only (compiled, it would recompile every
        step: the steps are counted from ``t`` instead)."""
        current = getattr(pipeline, "_current_timestep", None)
        own_units = self._family.forward.schedule_units
        if not own_units and isinstance(current, (int, float)) and not torch.compiler.is_compiling():
            current = torch.tensor(float(current))
        if not isinstance(current, torch.Tensor) or current.numel() != 1:
            return t
        entry = _schedule_entry(current.detach().float().cpu().reshape(()), ts)
        return entry if not own_units else torch.where(_close(entry, t), entry, t)

    @staticmethod
    def _scheduler_index(pipeline, ts: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``index`` (the first schedule entry equal to this call's), or the step of a second-order scheduler's
        second evaluation at a repeated entry (``FlowMatchHeunDiscrete``: 1000, 934, 934, 781, 781, ...: one step
        each). Eager: the scheduler's own ``step_index`` breaks the tie. Compiled: its ``state_in_first_order`` (a
        Python bool Dynamo guards on: at most a second graph), where the scheduler has one: a repeated entry's first
        occurrence is the second-order correction of the step before, its second the first-order start of the next
        step. Reading ``step_index`` there would recompile every step."""
        scheduler = getattr(pipeline, "scheduler", None)
        if scheduler is None:
            return index
        if torch.compiler.is_compiling():
            if getattr(scheduler, "state_in_first_order", None) is not True:
                return index
            following = torch.clamp(index + 1, max=ts.numel() - 1)
            same = ts.gather(0, following.reshape(1))[0] == ts.gather(0, index.reshape(1))[0]
            return torch.where(same, following, index)
        own = getattr(scheduler, "step_index", None)
        if not isinstance(own, int) or not 0 <= own < ts.numel() or own == int(index):
            return index
        return torch.tensor(own) if bool(ts[own] == ts[index]) else index

    def _update_step(self, timestep, *, t: torch.Tensor | None = None, pipeline=_UNSET) -> torch.Tensor:
        """Advance the step from this call's ``timestep`` and return it (an int64 CPU scalar). ``t`` (its
        :func:`_call_t`) and ``pipeline`` (:meth:`_bound_pipeline` of it): passed when the caller has them.

        Tensor arithmetic only, on CPU scalars updated in place: no Python value depends on ``timestep``, so a
        compiled forward neither breaks its graph nor recompiles per step."""
        state = self.state
        t = _call_t(timestep) if t is None else t
        pipeline = self._bound_pipeline(t) if pipeline is _UNSET else pipeline
        last, prev, direction = state._t_last, state._step, state._t_dir
        # Without a scheduler, count distinct timesteps: the same t is the same step (a separate CFG pass), a move
        # in the call's direction (set by its first move: down for most schedules, up for Mochi's) the next step,
        # a move against it a new call.
        moved = t != last
        sign = torch.sign(t - last)
        start = torch.isnan(last) | (moved & (direction != 0) & (sign != direction))
        step = torch.where(start, 0, torch.where(moved, prev + 1, prev))
        new_direction = torch.where(start, 0.0, torch.where(moved & (direction == 0), sign, direction))
        ts = self._scheduler_timesteps(pipeline)
        if ts is not None:
            state.num_steps = ts.numel()
            ts = ts.detach().float().cpu().reshape(-1)
            index, matched = _match_step(self._pipeline_timestep(pipeline, t, ts), ts)
            step = torch.where(matched, self._scheduler_index(pipeline, ts, index), step)
        last.copy_(t)
        prev.copy_(step)
        direction.copy_(new_direction)
        return prev

    def __getstate__(self) -> dict:
        # a saved transformer (torch.save) is not in a pipeline: it counts its own steps
        return {**self.__dict__, "_pipeline": None}

    def __deepcopy__(self, memo: dict) -> "RadialStepHook":
        # a copy follows the copy of its pipeline (copy.deepcopy(pipe)); a transformer copied alone counts its steps
        pipeline = self._pipeline() if self._pipeline is not None else None
        new = copy.copy(self)
        memo[id(self)] = new
        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k != "_pipeline"})
        new._pipeline = weakref.ref(memo[id(pipeline)]) if pipeline is not None and id(pipeline) in memo else None
        return new

    def __call__(self, module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return self.pre_forward(module, *args, **kwargs)

    def pre_forward(self, module, *args, **kwargs):
        state = self.state
        cp = context_parallel_config(module)
        # the parameters are scanned only where the check can refuse (Diffusers' uneven ring beyond 2 ranks)
        if cp is not None and not ring_gradients_right(cp) and torch.is_grad_enabled() and any(
                isinstance(t, torch.Tensor) and t.requires_grad
                for t in (*module.parameters(), *args, *kwargs.values())):
            check_ring_gradients(cp)
        call = self._family.read_call(module, args, kwargs)
        if call.latent_grid is None:
            return self._ungridded_call(module, args, kwargs)
        pad = 0 if cp is None else text_padding(cp, self._family, operator.index(call.text_tokens))
        if pad:  # a text that does not split evenly over the ranks: masked tokens appended (the same output)
            args, kwargs = self._family.pad_text(module, args, kwargs, pad)
            call = self._family.read_call(module, args, kwargs)
        timestep = call.timestep
        text_tokens = operator.index(call.text_tokens)
        device = call.device
        t = _call_t(timestep) if timestep is not None else None
        pipeline = self._bound_pipeline(t)  # once per call: reading t from a GPU tensor synchronizes
        ts = self._scheduler_timesteps(pipeline)
        if ts is not None:
            num_steps = ts.numel()
        elif self._pipeline is not None:  # the bound pipeline is idle (or gone): its last schedule is not this one
            num_steps = None
            self._check_foreign_caller(module)
        else:
            num_steps = state.num_steps
        # operator.index() specializes: the layout is per geometry, so a compiled forward guards on F, H, W (and the
        # text length) as constants even where Dynamo made them dynamic after a geometry change; other dims (batch)
        # may stay dynamic.
        latent_shape = tuple(operator.index(n) for n in call.latent_grid)
        # a block-causal frame mask (SkyReels-V2 diffusion forcing): read on every call, the pipelines rewrite it
        causal_frames = self._family.frame_causal
        frames_per_block = 1 if causal_frames is None else operator.index(causal_frames(module))
        if cp is not None and frames_per_block > 1:
            raise UnsupportedModelError(
                f"{type(module).__name__} passes a block-causal frame mask ({frames_per_block} latent frames per "
                "causal block: the diffusion-forcing pipelines' causal_block_size), which radial attention does not "
                "run under context parallelism yet; call with causal_block_size=1 (asynchronous steps, ar_step > 0, "
                "run with it too), or on one process")
        plan = state._plans[_plan_key(state, latent_shape, text_tokens, device, num_steps, frames_per_block)]
        policy = plan.policy
        if cp is not None:
            if self._checked_parallel is not cp:  # enable_parallelism() may come after apply_radial_attention()
                check_parallel_model(module, self._family, [(None, m) for m, _ in state._originals])
                attend_locally(module, self._family)
                self._checked_parallel = cp
            video = plan.geometry[0] * plan.geometry[1] * plan.geometry[2]
            check_parallel_call(cp, plan.layout.seq_len, [video] + ([plan.text_tokens] if plan.text_tokens else []))
            _prepare_parallel(state, plan, cp)
        exporting = torch.compiler.is_exporting()
        if exporting and policy.varies_by_step():
            raise NotImplementedError(
                f"torch.export captures one transformer call as a pure function, so the radial step counter would "
                f"be frozen at export time and every step would take the same branch; export with a policy that does "
                f"not change per step (RadialConfig(dense_steps=0, last_dense_steps=0): dense_layers still apply), "
                f"or use torch.compile, which keeps the counter (got dense_steps={policy.dense_steps}, "
                f"last_dense_steps={policy.last_dense_steps} of {policy.num_steps} steps)"
            )
        state.geometry, state.text_tokens, state.layout, state.backend = (
            plan.geometry, plan.text_tokens, plan.layout, plan.backend)
        state.frames_per_block, state.causal = plan.frames_per_block, plan.causal
        if exporting:
            # The branch is the same for every step: fixed in the exported program (no step state, no torch.cond).
            self._set_processors(not policy.dense_step(0) and not plan.full, policy)
            return args, kwargs
        # after every check: a rejected call leaves the state as it was
        step = self._update_step(timestep, t=t, pipeline=pipeline)
        sparse_step = ~policy.dense_step(step) & (not plan.full)
        state._sparse_step.copy_(sparse_step)
        if torch.compiler.is_compiling():
            return args, kwargs  # compiled processors read state._sparse_step; no Python value depends on the step
        step = int(step)
        if policy.covers_schedule() and self._warned_for != policy.num_steps and step == 0:
            self._warned_for = policy.num_steps
            warnings.warn(
                f"radial attention: dense steps ({policy.dense_steps} first + {policy.last_dense_steps} last) cover the "
                f"whole {policy.num_steps}-step schedule, so every step runs dense attention; lower "
                "RadialConfig.dense_steps / last_dense_steps",
                stacklevel=2,
            )
        self._check_processors(module)
        self._set_processors(bool(sparse_step), policy)
        return args, kwargs

    def _check_processors(self, module) -> None:
        """Follow Diffusers' QKV fusion where it swaps processors (CogVideoX): where ``fuse_qkv_projections()`` saved
        this layer's radial processor (``module.original_attn_processors``) and put its stock fused one in place, a
        radial twin reading the fused ``to_qkv`` takes its place (the stock one comes back on removal); a radial
        processor of this state put back by ``unfuse_qkv_projections()`` is taken up again, with the settings made
        meanwhile. Warn (again whenever the count changes) about any other replacement (``set_attn_processor``, a
        user's choice, never taken over): those layers run what replaced them."""
        state = self.state
        saved = _saved_processors(module)
        for i, ((attn, _), proc, key) in enumerate(zip(state._originals, state.processors, state._keys)):
            current = attn.processor
            if current is proc:
                continue
            if state.installed(current):  # ours, put back by unfuse
                current.take_settings(proc)
                state.processors[i] = current
            elif saved is not None and saved.get(key) is proc and proc.fusion_variant(current) is True:
                twin = proc.twin(fused=True, restores=current)
                _set_processor(attn, twin)
                state.processors[i] = twin
                state._installed.append(twin)
        replaced = sum(m.processor is not p for (m, _), p in zip(state._originals, state.processors))
        if replaced != self._warned_replaced:
            self._warned_replaced = replaced
            if replaced:
                warnings.warn(
                    f"radial attention: {replaced} of the {len(state.processors)} attention processors it installed on "
                    f"{type(module).__name__} were replaced since (set_attn_processor(), "
                    "set_default_attn_processor(), ...), so those layers run the replacement, not radial attention; "
                    "make such changes first, then call rd.apply_radial_attention (it installs over them and "
                    "restores them on removal)",
                    stacklevel=3,
                )

    def _check_foreign_caller(self, module) -> None:
        """The transformer is called while the pipeline radial attention was applied to is idle: another pipeline
        shares it (``DiffusionPipeline.from_pipe``) or it is called directly. The step is then counted from the
        timesteps, as for a bare transformer; a policy that needs the schedule's length cannot be resolved."""
        if torch.compiler.is_compiling():
            return
        pipeline = self._pipeline()  # idle (the caller checked), or gone
        try:
            self.state.config.resolve(self.state.preset_key, None)
        except ValueError:
            name = type(pipeline).__name__ if pipeline is not None else "pipeline"
            raise ConfigError(
                f"radial attention: {type(module).__name__} is called while the {name} radial attention was applied "
                f"to is not running (another pipeline shares the transformer, e.g. one built with {name}.from_pipe, "
                "or it is called directly), so the schedule, which this config's dense steps are a fraction of, is "
                "unknown; apply radial attention to the pipeline you call (rd.apply_radial_attention(pipe) moves it "
                "there), or pass RadialConfig(num_inference_steps=...)") from None

    def _ungridded_call(self, module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """A call that does not say its latent grid (a packed-token family called without ``num_frames`` /
        ``height`` / ``width``): its tokens cannot be placed in the mask, so every layer runs the stock processor."""
        if not self._warned_ungridded:
            self._warned_ungridded = True
            warnings.warn(
                f"radial attention: {type(module).__name__} was called without the latent grid of its tokens "
                f"({', '.join(self._family.forward.grid)}), so they cannot be placed in the radial mask (LTX-Video's "
                "LTXConditionPipeline passes video_coords and extra conditioning tokens instead, "
                "LTXI2VLongMultiPromptPipeline a 1 x 1 x 1 grid, LTX-2's condition and IC-LoRA pipelines append "
                "keyframe or reference tokens to the grid's); such calls run the stock dense attention",
                stacklevel=2,
            )
        self.state._sparse_step.fill_(False)
        if not torch.compiler.is_compiling():
            for proc in self.state.processors:
                proc.use_sparse = False
        return args, kwargs

    def _set_processors(self, sparse_step: bool, policy: ResolvedPolicy) -> None:
        for proc in self.state.processors:
            proc.use_sparse = sparse_step and proc.layer_idx >= policy.dense_layers


def _split_target(target) -> tuple[list, object]:
    """(the transformers to patch, the pipeline or None) from a pipeline or a transformer: a pipeline's experts are
    the attributes its family's entry names (Wan2.2 A14B: ``transformer`` and ``transformer_2``) that are set."""
    if isinstance(target, torch.nn.Module):
        return [target], None
    transformer = pipeline_transformer(target)
    if transformer is None:
        from .families import supported_summary

        raise UnsupportedModelError(
            f"expected a Diffusers video pipeline or its transformer, got {type(target).__name__}; supported: "
            f"{supported_summary()}"
        )
    family = family_of(transformer)
    experts = [getattr(target, name, None) for name in family.experts]
    return [t for t in experts if t is not None], target


def apply_radial_attention(pipe_or_transformer, config: RadialConfig | None = None) -> RadialState:
    """Swap radial attention into a video pipeline or transformer of a registered family (Wan2.1, HunyuanVideo, ...).

    Installs the family's radial processor on the attention modules its registry entry names (Wan
    ``blocks[i].attn1``, with cross-attention and the I2V image branch stock; HunyuanVideo's dual and single blocks,
    never the token refiner), keeping each processor's attention backend, and registers the step-tracking hook on
    the transformer. With a two-expert pipeline (Wan2.2 A14B: ``transformer`` and ``transformer_2``) both get radial
    attention, and a variant's preset (``"wan2.2"``) is detected from the pipeline (a bare transformer gets its
    family's preset). Applying again replaces the previous installation (if installing fails half-way, the
    experts are left with their stock processors). Every expert is checked before any changes; an unsupported
    model is an :class:`~radial_diffusers.errors.UnsupportedModelError` and is left unchanged.

    Args:
        pipe_or_transformer: a pipeline whose ``transformer`` belongs to a registered family
            (:mod:`radial_diffusers.families`), or the transformer itself. With a pipeline the
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
    transformers, pipeline = _split_target(pipe_or_transformer)
    plans = []
    for transformer in transformers:  # validate every expert before any is changed
        family = family_of(transformer)
        family.check_forward(transformer)
        preset = family.preset_for(pipeline, transformer)
        if pipeline is None:
            config.resolve(preset, None)  # fail now, not at the first forward, if the policy needs the step count
        modules = family.attention_modules(transformer)
        check_parallel_model(transformer, family, modules)
        plans.append((transformer, family, preset, modules))
    for transformer in transformers:
        if getattr(transformer, _STATE_ATTR, None) is not None:
            _remove(transformer)
    states = []
    try:
        for transformer, family, preset, modules in plans:
            states.append(_install(transformer, family, preset, modules, config, pipeline))
    except BaseException:
        for state in states:
            _remove(state._transformer())
        raise
    for state in states:
        state.experts = tuple(states)
    substitutes = plans[0][1].substitutes_for(pipeline) if pipeline is not None else None
    if substitutes is not None:
        warnings.warn(
            f"radial attention: {type(pipeline).__name__} does not pass its transformer the latent grid, so every "
            f"call will run the stock dense attention; build {substitutes[0]}(**pipe.components) (text-to-video) or "
            f"{substitutes[1]}(**pipe.components) (image-to-video) and apply radial attention to that "
            "(radial_diffusers.pipelines.readable_pipeline does it)",
            stacklevel=2,
        )
    return states[0]


def _install(transformer, family: ModelFamily, preset: str, modules, config: RadialConfig, pipeline) -> RadialState:
    patch_size = tuple(int(p) for p in family.patch_size(transformer.config))
    proc_cls = family.processor_class()
    state = RadialState(model=family.name, config=config, preset=preset, patch_size=patch_size)
    state._transformer = weakref.ref(transformer)
    dense_layers = config.with_preset(preset).dense_layers
    if modules and dense_layers >= len(modules):
        warnings.warn(f"radial attention: dense_layers={dense_layers} covers all {len(modules)} attention layers of "
                      f"{type(transformer).__name__}, so every layer runs dense attention; lower dense_layers (CLI: "
                      "--dense-layers)", stacklevel=3)
    originals = []
    try:
        for layer_idx, module in modules:
            original = module.processor
            proc = proc_cls(state, layer_idx, dense=layer_idx < dense_layers)
            proc.fused = proc.fusion_variant(original) is True  # it replaces a fused stock processor: reads to_qkv
            backend = getattr(original, "_attention_backend", None)
            if backend is not None:
                proc._attention_backend = backend
            # enable_parallelism() came first: the model's config (a stock processor without the attribute, such as
            # CogVideoX's, was skipped by it)
            proc._parallel_config = getattr(transformer, "_parallel_config", None) or getattr(
                original, "_parallel_config", None)
            _set_processor(module, proc)
            originals.append((module, original))
            state.processors.append(proc)
        state._hook_handle = transformer.register_forward_pre_hook(RadialStepHook(state, pipeline), with_kwargs=True)
    except BaseException:
        for module, original in originals:
            _set_processor(module, original)
        raise
    state._originals = originals
    state._installed = list(state.processors)
    names = {id(m): n for n, m in transformer.named_modules()}
    state._keys = [f"{names.get(id(m), '')}.processor" for m, _ in originals]
    saved = _saved_processors(transformer)
    for key, proc in zip(state._keys, state.processors) if saved else ():
        # a fusion before apply saved the stock processor of separate projections, which an unfuse puts back: the
        # saved one becomes a radial processor of separate projections standing for it (restored on removal)
        if proc.fusion_variant(saved.get(key)) is False:
            twin = saved[key] = proc.twin(fused=False, restores=saved[key])
            state._installed.append(twin)
    setattr(transformer, _STATE_ATTR, state)
    return state


def remove_radial_attention(pipe_or_transformer) -> None:
    """Restore the processors that were in place before :func:`apply_radial_attention` and remove the hook.

    A no-op on a model without radial attention. A transformer wrapped by ``torch.compile`` (``pipe.transformer =
    torch.compile(pipe.transformer)`` after applying) is unwrapped. Under context parallelism the stock processors get
    the parallel config back; the stock processors of a joint text + video family, and Cosmos', cannot run on its
    plan's shards, which a warning says.
    """
    if isinstance(pipe_or_transformer, torch.nn.Module):
        transformers = [pipe_or_transformer]
    else:  # every expert attribute a pipeline can have: no family lookup, which a compile wrapper would fail
        transformers = [getattr(pipe_or_transformer, name, None) for name in TRANSFORMER_ATTRIBUTES]
    for transformer in transformers:
        if isinstance(transformer, torch.nn.Module):
            _remove(getattr(transformer, "_orig_mod", transformer))


def _saved_processors(transformer) -> dict | None:
    """The processors Diffusers' ``fuse_qkv_projections()`` saved to put back on ``unfuse_qkv_projections()``
    (``original_attn_processors``, by ``attn_processors`` key), where a fusion that swaps processors ran."""
    saved = getattr(transformer, "original_attn_processors", None)
    return saved if isinstance(saved, dict) else None


def _set_processor(module, processor) -> None:
    """``module.set_processor`` where the attention module has it; Mochi's ``MochiAttention`` has a bare attribute."""
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


def _remove(transformer) -> None:
    state = getattr(transformer, _STATE_ATTR, None)
    if state is None:
        return
    for proc in state._installed:
        # A radial processor something still holds (a copy of the processors dict) runs the stock path from now on.
        proc.removed = True
    saved = _saved_processors(transformer)  # what an unfuse will put back: the stock processors radial ones stood for
    for key, (_, original) in zip(state._keys, state._originals) if saved else ():
        entry = saved.get(key)
        if state.installed(entry):
            saved[key] = entry.stock(original)
    for (module, original), proc in zip(state._originals, state.processors):
        if module.processor is not proc:  # replaced after apply (set_attn_processor): kept
            continue
        original = proc.stock(original)
        if "_attention_backend" in proc.__dict__:  # set_ / reset_attention_backend() after apply (None: reset)
            original._attention_backend = proc.__dict__["_attention_backend"]
        if hasattr(original, "_parallel_config"):  # enable_parallelism() called after apply
            original._parallel_config = proc._parallel_config
        _set_processor(module, original)
    state._hook_handle.remove()
    setattr(transformer, _STATE_ATTR, None)
    if context_parallel_config(transformer) is not None and not state.family.stock_runs_parallel:
        warnings.warn(
            f"radial attention removed from a {state.family.label} transformer under context parallelism: its stock "
            f"processors cannot run on this plan's shards ({state.family.stock_parallel_problem()}); apply radial "
            "attention again, or build the pipeline anew without enable_parallelism", stacklevel=3)
