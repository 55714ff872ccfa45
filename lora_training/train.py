"""LoRA length-extension fine-tuning of video DiTs (every registered family with the ``training`` feature: Wan2.1 T2V/I2V,
Wan2.2 A14B one expert at a time, Wan2.2 TI2V-5B, HunyuanVideo, HunyuanVideo-1.5 text-to-video, CogVideoX and CogVideoX
1.5, LTX-Video, Mochi) with radial attention in the training step.

    radial-diffusers train CONFIG.yaml [--resume latest] [--set max_steps=500 ...] [--stop-at 100]
    accelerate launch --multi_gpu -m lora_training.train CONFIG.yaml [--resume latest]   # multi-GPU: DDP, or FSDP
                                                                  # with distributed: fsdp (lora_training/fsdp.py)
    torchrun --nproc_per_node 2 -m lora_training.train CONFIG.yaml               # also CPU-only (gloo)

One optimizer step = ``gradient_accumulation_steps`` micro-batches of ``batch_size`` clips per process. The noise schedule
and target are the pipeline scheduler's (:mod:`lora_training.objective`): flow matching ``x_t = (1 - s) x_0 + s noise``,
timestep ``1000 s``, target ``noise - x_0``, with ``s`` drawn uniformly or logit-normally and then shifted
(``shift s / (1 + (shift - 1) s)``); CogVideoX's DDIM: epsilon / v-prediction. What is family-specific (encoding a clip,
calling the transformer) is the family's training adapter (:mod:`radial_diffusers.training_adapters`). A two-expert
Wan2.2 A14B pipeline trains one expert per run (``expert: high_noise | low_noise``) on the noise levels the pipeline
gives that expert.

Exact resume: the sample order of an epoch, the noise, the timesteps and the global RNG (LoRA dropout) of every
micro-step are seeded from (seed, step, micro-step, rank), so a run resumed from a checkpoint (LoRA weights,
optimizer, LR schedule, EMA, step) with the same number of processes continues bit for bit as if it had not stopped.
``--stop-at N`` stops a run early on its own schedule (that of ``max_steps``); a resume that would change the schedule
(``max_steps``, ``warmup_steps``, ``lr_scheduler``, ``learning_rate``) is refused unless ``--allow-schedule-change``.
Resuming from an older checkpoint of ``output_dir`` forks the run: the later checkpoints (and the export) are moved to
``checkpoints/superseded-after-step-N/``, so ``--resume latest`` follows the new line. Checkpoints are written to a
temporary folder and renamed when complete (an existing folder of the same step is renamed aside first and removed
last). The EMA decay warms up with the step as in diffusers' ``EMAModel``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import re
import shutil
import sys
import time
import types
from pathlib import Path

import torch

from radial_diffusers._io import atomic_write_text, replace_dir
from radial_diffusers.families import get_family
from radial_diffusers.pipelines import latent_geometry

from .config import SCHEDULE_OPTIONS, ConfigError, TrainConfig, add_cli_arguments, load_config
from .objective import Objective, flow_shift, sample_levels

__all__ = ["train", "main", "training_loss", "latest_checkpoint", "ema_decay_at"]

# options that may change between a checkpoint and its resumed run; the SCHEDULE_OPTIONS only with
# --allow-schedule-change, everything else must match
_RESUMABLE_CHANGES = {"distributed", "checkpoint_every", "keep_checkpoints", "log_every", "log_with",
                      "validate_every", "validation_prompt", "validation_frames", "validation_steps", "output_dir",
                      "cache_dir", "data_dir", "manifest", "attention_backend"}


def _seed(cfg: TrainConfig, step: int, micro: int, rank: int) -> int:
    return ((cfg.seed * 1_000_003 + step) * 4099 + micro) * 257 + rank


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay applied after optimizer step ``step`` (1-based, from the run's start): diffusers'
    ``EMAModel.get_decay`` without ``use_ema_warmup``, i.e. 0 at step 1, then ``min(decay, (1 + s) / (10 + s))``
    with ``s = step - 1``."""
    s = step - 1
    return 0.0 if s <= 0 else min(decay, (1 + s) / (10 + s))


def training_loss(transformer, adapter, objective: Objective, batch: dict[str, torch.Tensor], cfg: TrainConfig,
                  shift: float, g: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Mean squared error of the transformer's prediction against the objective's target at random noise levels
    (one per sample, or one per latent frame where the adapter draws them so: diffusion forcing) (float32 loss);
    weighted where the batch has a ``loss_weight`` (any shape that broadcasts to the latents', e.g.
    ``(B, 1, F', H', W')``: the weighted mean ``sum(w * err) / sum(w)``).

    ``adapter``: the family's :class:`~radial_diffusers.training_adapters.TrainingAdapter` (model inputs, the
    expert's noise range); ``batch``: a collated cache batch (``latents`` ``(B, C, F', H', W')`` ...); ``dtype``: the
    base weights' dtype (model inputs are cast to it); ``g``: the CPU generator of this micro-step (noise, then the
    noise levels)."""
    x0 = batch["latents"].to(device, torch.float32)
    noise = torch.randn(x0.shape, generator=g).to(device)
    lo, hi = adapter.noise_range()
    levels = adapter.noise_levels(
        lambda n: sample_levels(n, g, sampling=cfg.timestep_sampling, logit_mean=cfg.logit_mean,
                                logit_std=cfg.logit_std, shift=shift if objective.is_flow else 1.0, lo=lo, hi=hi),
        x0.shape, g)
    xt, timestep, target = objective.draw(x0, noise, levels.to(device))
    pred = adapter.predict(transformer, xt, timestep, batch, device, dtype)
    weight = batch.get("loss_weight")
    if weight is None:
        return torch.nn.functional.mse_loss(pred.float(), target.float())
    err = (pred.float() - target.float()).square()
    weight = weight.to(device, torch.float32).expand_as(err)
    return (err * weight).sum() / weight.sum()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder (``checkpoints/step-NNNNNNN`` with a ``state.json``), if any."""
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")
                  and (p / "state.json").exists()) if root.exists() else []
    return done[-1] if done else None


def _check_new_output_dir(out: Path) -> None:
    """A new run (no ``resume``) refuses an ``output_dir`` holding another run's checkpoints or export: its checkpoint
    rotation would delete its own new checkpoints among the old ones, and ``--resume latest`` would then continue
    the old run."""
    newest = latest_checkpoint(out)
    if newest is None and not (out / "final").exists():
        return
    what = f"checkpoints (the newest {newest.name})" if newest is not None else "exported LoRA (final/)"
    raise ConfigError(f"output_dir {out} already holds a run's {what}: continue that run with --resume latest "
                      "(Python: train(cfg, resume='latest')), or start this one in another output_dir (--set "
                      "output_dir=...) or after deleting that folder")


def _check_resume(cfg: TrainConfig, path: Path, processes: int,
                  allow_schedule_change: bool) -> tuple[int, list[str]]:
    """Check that the run of ``cfg`` may continue from checkpoint ``path`` (read before any model loads); returns its
    step and the schedule options that differ (allowed only with ``allow_schedule_change``). Raises
    :class:`ConfigError` naming what differs and the flag or option that resolves it."""
    if not path.is_dir():
        raise ConfigError(f"resume: {path} does not exist; give 'latest' or a checkpoint folder "
                          f"(<output_dir>/checkpoints/step-NNNNNNN)")
    if not (path / "state.json").exists():
        raise ConfigError(f"resume: {path} is not a complete checkpoint (no state.json)")
    state = json.loads((path / "state.json").read_text())
    saved = state.get("processes")
    if saved is not None and saved != processes:
        raise ConfigError(f"cannot resume from {path}: it was written by a run with {saved} process(es), this "
                          f"one has {processes}; the data order and the noise of every step depend on the "
                          f"process count, so launch {saved} process(es) (or start a new run in another output_dir)")
    old, now = state["config"], cfg.to_dict()
    changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and k not in SCHEDULE_OPTIONS
                     and old.get(k) != now[k])
    if changed:
        raise ConfigError(f"cannot resume from {path}: these options differ from the checkpoint's: "
                          + ", ".join(f"{k} ({old.get(k)!r} -> {now[k]!r})" for k in changed))
    step = int(state["step"])
    if step > cfg.max_steps:
        raise ConfigError(f"cannot resume from {path}: it is at step {step}, past max_steps {cfg.max_steps}; "
                          f"resume with --set max_steps={old.get('max_steps', step)} (its own), or from an earlier "
                          "checkpoint")
    schedule = [k for k in SCHEDULE_OPTIONS if k in old and old[k] != now[k]]
    if schedule and not allow_schedule_change:
        own = " ".join(f"--set {k}={old[k]}" for k in schedule)
        raise ConfigError(f"cannot resume from {path}: it would change the learning-rate schedule ("
                          + ", ".join(f"{k} {old[k]!r} -> {now[k]!r}" for k in schedule)
                          + f"), so the result would differ from an uninterrupted run. Continue the checkpoint's "
                          f"own run exactly with {own} (to stop early and continue exactly, use --stop-at N instead "
                          "of a smaller max_steps), or pass --allow-schedule-change to go on with the new schedule "
                          "from this step")
    return step, schedule


def _check_stop_at(stop_at: int | None, start: int, max_steps: int) -> None:
    if stop_at is None:
        return
    if stop_at < 1:
        raise ConfigError(f"--stop-at {stop_at}: give an optimizer step >= 1")
    if stop_at > max_steps:
        raise ConfigError(f"--stop-at {stop_at} is past max_steps {max_steps}: give a step <= {max_steps}, or drop "
                          "--stop-at to run to the end")
    if stop_at <= start:
        raise ConfigError(f"--stop-at {stop_at}: the resumed run is already at step {start}; give a later step")


def _target_layers(transformer, targets: str | list[str]) -> list[str]:
    """The names of ``transformer``'s layers that ``target_modules`` selects as PEFT matches them (a regex: the whole
    name; a list: a name, or its end after a dot; ``"all-linear"``: every Linear)."""
    if isinstance(targets, str) and targets.lower() == "all-linear":  # PEFT's own shorthand
        return [name for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    # the layers a LoRA can wrap have no submodules (Linear, Conv, Embedding): a container module is no target
    names = [name for name, m in transformer.named_modules() if name and next(m.children(), None) is None]
    if isinstance(targets, str):
        return [name for name in names if re.fullmatch(targets, name)]
    return [name for name in names if any(name == t or name.endswith("." + t) for t in targets)]


def _check_targets(transformer, targets: str | list[str], default: bool) -> None:
    """Refuse ``target_modules`` that match none of ``transformer``'s layers (:func:`_target_layers`)."""
    if _target_layers(transformer, targets):
        return
    linear = [name for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    examples = ", ".join(([n for n in linear if "attn" in n] or linear)[:4]) or "none"
    what = "the family's default" if default else "the regex" if isinstance(targets, str) else "the names"
    shown = f"'{targets}'" if isinstance(targets, str) else repr(targets)
    raise ConfigError(f"target_modules: {what} {shown} match no module of {type(transformer).__name__} (its "
                      f"linear layers are named like {examples}); give a regex over full module names or a list of "
                      "name suffixes" + ("" if default else ", or null for the family's default"))


def _check_sequence_parallel_targets(transformer, targets: str | list[str], family) -> None:
    """Refuse LoRA targets among the modules whose gradients under the family's context-parallel plan are whole on
    every rank (``ModelFamily.cp_replicated``): sequence-parallel training sums the ranks' shard gradients, which
    would count theirs once per rank."""
    if not family.cp_replicated:
        return
    bad = [n for n in _target_layers(transformer, targets) if any(re.fullmatch(p, n) for p in family.cp_replicated)]
    if bad:
        raise ConfigError(
            f"target_modules: under sequence_parallel, {family.label}'s {', '.join(bad[:3])} get whole-sequence "
            "gradients on every process (they run after the sequence is gathered, or feed what does), so their LoRA "
            "gradients would be counted once per process; target the transformer blocks' attention (null: the "
            "family's default), or train without sequence_parallel")


def _fork(out: Path, resume_path: Path) -> tuple[Path, list[str]] | None:
    """Resuming from a checkpoint of ``out`` that has later ones starts a new line of the run: move the later
    checkpoints (and the old line's export) to ``checkpoints/superseded-after-<name>[-k]/``, so ``latest`` is the
    newest of the new line and nothing is lost. Returns (that folder, what was moved), or ``None`` (no fork)."""
    root = out / "checkpoints"
    if not root.is_dir() or resume_path.resolve().parent != root.resolve():
        return None
    later = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")
                   and p.name > resume_path.name)
    if not later:
        return None
    dest, k = root / f"superseded-after-{resume_path.name}", 1
    while dest.exists():
        k += 1
        dest = root / f"superseded-after-{resume_path.name}-{k}"
    dest.mkdir()
    for p in reversed(later):  # the newest first: a crash half-way leaves no stale newest checkpoint behind
        os.replace(p, dest / p.name)
    moved = [p.name for p in later]
    if (out / "final").is_dir():
        os.replace(out / "final", dest / "final")
        moved.append("final")
    return dest, moved


def _load_pipeline(cfg: TrainConfig, dtype: torch.dtype):
    from radial_diffusers.errors import ModelLoadError, UnsupportedModelError
    from radial_diffusers.pipelines import load_pipeline, readable_pipeline

    try:
        pipe = load_pipeline(cfg.model, dtype, dfloat11=cfg.dfloat11, revision=cfg.revision)
    except ModelLoadError as exc:
        raise ConfigError(f"model: {exc}") from None
    try:  # LTX-Video 0.9.7 loads as LTXConditionPipeline: its calls carry no latent grid (training is text-to-video)
        return readable_pipeline(pipe, image_to_video=False)
    except UnsupportedModelError:
        return pipe  # the adapter lookup says what is unsupported


def _adapter(cfg: TrainConfig, pipe):
    """The family's training adapter for ``pipe``, after the checks that need the loaded pipeline: a family that
    trains, the expert, a package the transformer needs (torchvision for the released Cosmos configs), the clip
    geometry against the pipeline's own VAE and patch size. Nothing is encoded yet."""
    from radial_diffusers.errors import RadialError
    from radial_diffusers.pipelines import detect_family, geometry_problem, missing_dependency
    from radial_diffusers.training_adapters import TrainingAdapter, TrainingOptions

    try:
        fps = cfg.clip_fps(detect_family(pipe).fps_for(pipe))
        adapter = TrainingAdapter.for_pipeline(pipe, TrainingOptions(
            num_frames=cfg.num_frames, height=cfg.height, width=cfg.width, fps=fps, guidance=cfg.guidance,
            expert=cfg.expert))
    except RadialError as exc:
        raise ConfigError(str(exc)) from None
    missing = missing_dependency(pipe)
    if missing is not None:
        raise ConfigError(f"model: {missing}")
    for frames, key in ((cfg.num_frames, "num_frames"), (cfg.validation_frames, "validation_frames")):
        problem = None if frames is None else geometry_problem(pipe, frames, cfg.height, cfg.width,
                                                               training=key == "num_frames")
        if problem is not None:
            which, reason = problem
            key, value = ((key, frames), ("height", cfg.height), ("width", cfg.width))[which]
            raise ConfigError(f"{key}: got {value}; {reason}")
    objective = Objective.from_scheduler(pipe.scheduler)
    if cfg.flow_shift is not None and not objective.is_flow:
        raise ConfigError(f"flow_shift: {type(pipe.scheduler).__name__} is not a flow-matching scheduler "
                          f"({objective.kind}); drop flow_shift")
    return adapter, objective


class _Run:
    """Everything a running job holds, and its checkpoint I/O."""

    def __init__(self, cfg: TrainConfig, accelerator, transformer, lora_config, optimizer, scheduler, ema):
        self.cfg, self.acc, self.transformer = cfg, accelerator, transformer
        self.lora_config, self.optimizer, self.scheduler, self.ema = lora_config, optimizer, scheduler, ema

    def lora_state(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().float().cpu().contiguous()
                for k, v in get_peft_model_state_dict(self.acc.unwrap_model(self.transformer)).items()}

    def ema_state(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        model = self.acc.unwrap_model(self.transformer)
        names = {id(p): n for n, p in model.named_parameters()}
        by_name = {names[id(p)]: e for p, e in zip(self.trainable(), self.ema)}
        sd = get_peft_model_state_dict(model, state_dict=by_name)
        return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.acc.unwrap_model(self.transformer).parameters() if p.requires_grad]

    @contextlib.contextmanager
    def ema_weights(self):
        """The EMA values in the LoRA parameters for the duration (nothing without EMA); the trained ones after."""
        if self.ema is None:
            yield
            return
        params = self.trainable()
        trained = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, self.ema):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(params, trained):
                    p.copy_(t)

    def save(self, step: int) -> Path | None:
        from radial_diffusers.dfloat11.checkpoint import save_safetensors

        self.acc.wait_for_everyone()
        final = Path(self.cfg.output_dir) / "checkpoints" / f"step-{step:07d}"
        if self.acc.is_main_process:
            tmp = final.with_name(final.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_safetensors(tmp / "lora.safetensors", self.lora_state())
            if self.ema is not None:
                save_safetensors(tmp / "ema.safetensors", {str(i): e.detach().cpu() for i, e in enumerate(self.ema)})
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            if self.acc.scaler is not None:  # fp16 loss scaling
                torch.save(self.acc.scaler.state_dict(), tmp / "scaler.pt")
            state = {"step": step, "processes": self.acc.num_processes, "config": self.cfg.to_dict()}
            atomic_write_text(tmp / "state.json", json.dumps(state, indent=1))
            replace_dir(tmp, final)
            kept = sorted(p for p in final.parent.glob("step-*") if p.is_dir() and not p.name.endswith(".partial"))
            for old in kept[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def load(self, path: Path, reschedule: bool = False) -> int:
        """Restore checkpoint ``path`` (checked by :func:`_check_resume`); returns its step. ``reschedule`` (the
        schedule options changed, ``--allow-schedule-change``): the LR schedule built from the new options takes over
        at that step, with the new ``learning_rate`` as its base rate and the new schedule's rate for the next step."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = json.loads((path / "state.json").read_text())
        model = self.acc.unwrap_model(self.transformer)
        lora = load_file(str(path / "lora.safetensors"))
        result = set_peft_model_state_dict(model, lora)
        differ = list(getattr(result, "unexpected_keys", None) or []) + [
            k for k in getattr(result, "missing_keys", None) or [] if ".lora_A." in k or ".lora_B." in k]
        if differ:
            targets = self.lora_config.target_modules
            raise ConfigError(
                f"{path}: its LoRA covers other modules than this run's target_modules ({targets!r}), e.g. "
                f"{differ[:3]}; resume with the target_modules the run started with (--set target_modules=...). A "
                "family's default can change between versions: Mochi's left out the caption pool time_embed.pooler "
                "on 2026-12-07; before, it was '.*\\.(to_q|to_k|to_v|to_out\\.0)'")
        for p in self.trainable():  # set_peft_model_state_dict copies in the parameter dtype; keep fp32 masters
            p.data = p.data.float()
        # map_location: every rank reads the file rank 0 wrote; load_state_dict moves the state to the params' device
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
        if self.acc.scaler is not None and (path / "scaler.pt").exists():
            self.acc.scaler.load_state_dict(torch.load(path / "scaler.pt", map_location="cpu", weights_only=True))
        if self.ema is not None:
            saved = load_file(str(path / "ema.safetensors"))
            for i, e in enumerate(self.ema):
                e.copy_(saved[str(i)])
        if reschedule:
            self._reschedule()
        return int(state["step"])

    def _reschedule(self) -> None:
        # the loaded LambdaLR state holds the old base rates and the old step's rate; its lambdas are this run's
        sched = self.scheduler
        sched.base_lrs = [self.cfg.learning_rate] * len(sched.base_lrs)
        lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"], group["initial_lr"] = lr, self.cfg.learning_rate
        sched._last_lr = lrs


def _validate(adapter, cfg: TrainConfig, step: int, device, first_video: str, write: bool = True) -> Path:
    """Render ``validation_prompt`` with the LoRA now in the pipeline of ``adapter`` (the run's
    :class:`~radial_diffusers.training_adapters.TrainingAdapter`; ``train`` swaps in the EMA weights when EMA is on,
    as the export holds them) to ``<output_dir>/validation/step-N.mp4`` (image-to-video: from the first frame of
    ``first_video``, the first training clip), conditioned as the run trains (``adapter.render_kwargs()``: the clips'
    frame rate for LTX-Video and SkyReels-V2 diffusion forcing). ``write=False`` renders without saving: the other
    processes of an FSDP run take part in rank 0's render."""
    from diffusers.utils import export_to_video

    from radial_diffusers.families import tiny_models
    from radial_diffusers.pipelines import detect_family, experts, is_image_to_video, one_window
    from radial_diffusers.training_adapters import EXPERT_NAMES

    from .data import auxiliary_models
    from .video import read_clip

    pipe = adapter.pipe
    models = tiny_models()
    kwargs = models[cfg.model][1].kwargs() if cfg.model in models else {}
    if is_image_to_video(pipe):
        from PIL import Image

        kwargs["image"] = Image.fromarray(read_clip(first_video, 1, cfg.height, cfg.width)[0].numpy())
    transformers = experts(pipe)
    trained = EXPERT_NAMES.get(cfg.expert, "transformer")
    transformer = transformers[trained]
    was_training = transformer.training
    transformer.eval()
    # the VAE and encoders, and an expert this run does not train (Wan2.2 A14B renders with both)
    others = auxiliary_models(pipe) + [m for name, m in transformers.items() if name != trained]
    for m in others:
        m.to(device)
    one_window(pipe, cfg.validation_frames or cfg.num_frames, kwargs)  # SkyReels-V2 DF beyond its 97-frame window
    kwargs.update(adapter.render_kwargs())
    with torch.no_grad():
        frames = pipe(prompt=cfg.validation_prompt, num_frames=cfg.validation_frames or cfg.num_frames,
                      height=cfg.height, width=cfg.width, num_inference_steps=cfg.validation_steps,
                      generator=torch.Generator("cpu").manual_seed(cfg.seed), output_type="np", **kwargs).frames[0]
    for m in others:
        m.to("cpu")
    transformer.train(was_training)
    out = Path(cfg.output_dir) / "validation" / f"step-{step:07d}.mp4"
    if write:
        out.parent.mkdir(parents=True, exist_ok=True)
        export_to_video(list(frames), str(out), fps=round(cfg.clip_fps(detect_family(pipe).fps_for(pipe)) or 16))
    return out


def train(cfg: TrainConfig, resume: str | None = None, *, stop_at: int | None = None,
          allow_schedule_change: bool = False, on_step_end=None, progress: bool = True) -> Path:
    """Run (or resume) the LoRA fine-tune described by ``cfg``; returns the folder of the exported LoRA (with
    ``stop_at``: of the checkpoint it stopped at).

    ``resume``: ``"latest"`` (the newest complete checkpoint of ``output_dir``; a fresh start if there is none) or a
    checkpoint folder; an older checkpoint of ``output_dir`` forks the run (:func:`_fork`). ``stop_at``: stop after
    that optimizer step with a checkpoint and no export, keeping the schedule of ``max_steps`` (so resuming continues
    exactly). ``allow_schedule_change``: resume although a schedule option (``SCHEDULE_OPTIONS``) differs from the
    checkpoint's, on the schedule of the new values. ``on_step_end(step, loss)`` is called after every optimizer step
    (tests use it).
    The export (``<output_dir>/final/pytorch_lora_weights.safetensors``, with the LoRA config as metadata so
    ``alpha`` is kept) loads with ``pipe.load_lora_weights(dir)``.

    Example:
        >>> from lora_training import load_config, train  # doctest: +SKIP
        >>> train(load_config("examples/train/tiny_wan.yaml"))  # doctest: +SKIP
    """
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from tqdm.auto import tqdm

    import radial_diffusers as rd

    from .data import LatentDataset, build_cache, collate, epoch_order

    cfg.validate()  # every bad value fails here, before the accelerator and the pipeline
    out = Path(cfg.output_dir)
    log_with = cfg.log_with
    if log_with == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            log_with = None
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state()  # a second run in this process (notebook, tests) may change mixed precision
    # no accelerator device: run on the CPU, as several gloo processes under torchrun / accelerate launch --multi_gpu
    has_device = getattr(torch, "accelerator", None) is not None and torch.accelerator.is_available()
    acc = Accelerator(mixed_precision=cfg.mixed_precision, log_with=log_with, cpu=not (has_device or
                                                                                      torch.cuda.is_available()),
                      project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
                      # rank 0 alone encodes the cache and renders validation videos while the others wait
                      kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=4))])
    device = acc.device
    if cfg.log_with and not log_with and acc.is_main_process:
        print(f"lora_training: warning: log_with: {cfg.log_with} is not installed, so this run logs nothing "
              f"(pip install {cfg.log_with})", file=sys.stderr)
    if acc.distributed_type.name in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise ConfigError(f"Accelerate's {acc.distributed_type.name} plugin is not used by this trainer: launch with "
                          "accelerate launch --multi_gpu (or torchrun) and set distributed: fsdp in the training "
                          "config to shard the frozen base with FSDP2 (or distributed: ddp)")
    fsdp = cfg.distributed == "fsdp" and acc.num_processes > 1
    sp = cfg.sequence_parallel
    if acc.num_processes % sp:
        raise ConfigError(f"sequence_parallel: {sp} needs a multiple of {sp} processes, this run has "
                          f"{acc.num_processes}; launch {sp} (or {2 * sp}, ...) processes")
    resume_path, start, schedule_changed = None, 0, []
    newest = latest_checkpoint(out) if resume is not None else None
    if resume is not None:
        resume_path = newest if resume == "latest" else Path(resume)
        if resume_path is None and acc.is_main_process:  # as Diffusers' training scripts: a new run, said so
            print(f"lora_training: --resume latest: no checkpoint in {out / 'checkpoints'}, so this starts a new "
                  "run", file=sys.stderr)
    if resume_path is not None:
        start, schedule_changed = _check_resume(cfg, resume_path, acc.num_processes, allow_schedule_change)
    _check_stop_at(stop_at, start, cfg.max_steps)
    if (resume_path is not None and start == cfg.max_steps and (out / "final").is_dir() and newest is not None
            and newest.resolve() == resume_path.resolve()):  # an older checkpoint forks the run instead
        # nothing to train: re-exporting would replace the report's losses with none (a run that stopped between
        # its last checkpoint and the export, with no final/, is exported by this resume)
        raise ConfigError(f"the run in {out} is finished: {resume_path.name} is at max_steps {cfg.max_steps} and "
                          f"{out / 'final'} holds its LoRA; to train longer, resume with --set max_steps=N "
                          "--allow-schedule-change (N > the current max_steps)")
    if resume is None:
        _check_new_output_dir(out)

    base_dtype = _base_dtype(cfg)
    pipe = _load_pipeline(cfg, base_dtype)
    adapter, objective = _adapter(cfg, pipe)
    transformer = adapter.transformer
    spec = _spec(cfg, adapter)
    family = spec.family
    targets = cfg.target_modules if cfg.target_modules is not None else get_family(family).lora_targets
    _check_targets(transformer, targets, cfg.target_modules is None)  # before anything is encoded
    if cfg.sequence_parallel > 1:
        _check_sequence_parallel_targets(transformer, targets, get_family(family))
    with acc.main_process_first():
        if acc.is_main_process:
            manifest = build_cache(adapter, spec, cfg.data_dir, cfg.cache_path, cfg.manifest, device=device,
                                   progress=progress)
            if manifest["skipped"]:
                print(f"lora_training: {len(manifest['skipped'])} clip(s) skipped, e.g. "
                      f"{manifest['skipped'][0]['video']}: {manifest['skipped'][0]['reason']}", file=sys.stderr)
    dataset = LatentDataset(cfg.cache_path)

    if cfg.quant is not None:
        from radial_diffusers.quant import check_lora_trainable, quantize

        transformer.to(device)
        quantize(transformer, cfg.quant, group_size=cfg.quant_group_size)
        check_lora_trainable(transformer)
    transformer.requires_grad_(False)
    lora_config = LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets, init_lora_weights=True)
    torch.manual_seed(cfg.seed)  # the LoRA initialisation: the same run starts from the same weights
    transformer.add_adapter(lora_config)
    params = [p for p in transformer.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"target_modules {targets!r} matched no module of {type(transformer).__name__}")
    for p in params:
        p.data = p.data.float()  # fp32 master weights for the LoRA
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if sp > 1:  # one sample's sequence over each group of sp processes; DDP across the groups (a "dp" mesh dim)
        from torch.distributed.device_mesh import init_device_mesh

        from radial_diffusers.parallel import enable_context_parallelism

        mesh = init_device_mesh(device.type, (acc.num_processes // sp, 1, sp),
                                mesh_dim_names=("dp", "ring", "ulysses"))
        try:
            enable_context_parallelism(transformer, ulysses=sp, mesh=mesh)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"sequence_parallel: {sp}: {exc}") from None
    # the pipeline's preset fills what the config leaves open (Wan2.2 A14B: decay 0.8), not the bare expert's
    radial = cfg.radial_config().with_preset(adapter.preset)
    state = rd.apply_radial_attention(transformer, radial) if cfg.attention == "radial" else None
    if fsdp:
        from .fsdp import average_gradients, local_bytes, shard_frozen_base

        shard_frozen_base(transformer, device)
    transformer.to(device)
    transformer.train()

    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.max_steps)
    if fsdp:  # sharded already; the replicated LoRA gradients are averaged by hand after each step's backward
        model, optimizer = transformer, acc.prepare(optimizer)
    else:
        if acc.num_processes > 1:
            # DDP must neither broadcast nor sync the frozen base: its parameters may be torchao tensors, and DF11
            # streams are buffers that would be re-broadcast on every forward. Only the LoRA parameters are shared.
            frozen = [n for n, p in transformer.named_parameters() if not p.requires_grad]
            frozen += [n for n, _ in transformer.named_buffers()]
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(transformer, frozen)
        model, optimizer = acc.prepare(transformer, optimizer)
    ema = [p.detach().clone() for p in params] if cfg.ema_decay is not None else None
    run = _Run(cfg, acc, model, lora_config, optimizer, scheduler, ema)
    step = run.load(resume_path, reschedule=bool(schedule_changed)) if resume_path is not None else 0
    if resume_path is not None and acc.is_main_process:
        forked = _fork(out, resume_path)
        if forked is not None:
            print(f"lora_training: resuming from {resume_path.name} forks the run: its later checkpoints "
                  f"({', '.join(forked[1])}) were moved to {forked[0]}", file=sys.stderr)
    acc.wait_for_everyone()
    end = stop_at or cfg.max_steps

    # the video's latent tokens set the shift of a dynamically shifting scheduler (LTX-Video), as at inference
    shift = flow_shift(cfg.flow_shift, pipe.scheduler, math.prod(latent_geometry(pipe, cfg.num_frames, cfg.height,
                                                                                  cfg.width)))
    order = functools.lru_cache(maxsize=2)(lambda epoch: epoch_order(len(dataset), epoch, cfg.seed))
    # the data-parallel place of this process: the processes of one sequence-parallel group share the sample and its
    # noise, and each back-propagates its shard of the sequence
    world, rank = acc.num_processes // sp, acc.process_index // sp
    per_step = cfg.batch_size * world * cfg.gradient_accumulation_steps
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=1))
        if log_with:
            acc.init_trackers("lora_training", config={k: v for k, v in cfg.to_dict().items()
                                                       if isinstance(v, (int, float, str, bool))})
    bar = tqdm(total=cfg.max_steps, initial=step, desc="LoRA training", unit="step",
               disable=not (progress and acc.is_main_process))
    start_step, t_start = step, time.perf_counter()
    losses: list[float] = []
    t_last = t_start
    last_checkpoint = None
    while step < end:
        total = torch.zeros((), device=device)
        for micro in range(cfg.gradient_accumulation_steps):
            first = (step * cfg.gradient_accumulation_steps + micro) * cfg.batch_size * world + rank * cfg.batch_size
            idx = []
            for j in range(first, first + cfg.batch_size):
                epoch, pos = divmod(j, len(dataset))
                idx.append(order(epoch)[pos])
            batch = collate([dataset[i] for i in idx])
            torch.manual_seed(_seed(cfg, step, micro, rank))  # LoRA dropout
            g = torch.Generator().manual_seed(_seed(cfg, step, micro, rank) + 1)
            last = micro == cfg.gradient_accumulation_steps - 1
            ctx = acc.no_sync(model) if not last else contextlib.nullcontext()
            with ctx, acc.autocast():
                loss = training_loss(model, adapter, objective, batch, cfg, shift, g, device, base_dtype)
                # DDP averages over every process; a group's sp processes each hold the gradient of their shard,
                # whose sum is the sample's gradient: x sp makes the average the mean over the groups
                acc.backward(loss * sp / cfg.gradient_accumulation_steps)
            total += loss.detach() / cfg.gradient_accumulation_steps
        if fsdp:
            average_gradients(params)
        grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        if not optimizer.step_was_skipped:  # fp16's loss scaler skips a step with inf / NaN gradients: the LR stays
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if ema is not None:
            decay = ema_decay_at(cfg.ema_decay, step)
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.lerp_(p.detach(), 1 - decay)
        loss_value = acc.reduce(total, reduction="mean").item()
        losses.append(loss_value)
        now = time.perf_counter()
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                        clips_s=f"{per_step / max(now - t_last, 1e-9):.2f}")
        t_last = now
        bar.update(1)
        if log_with and step % cfg.log_every == 0:
            acc.log({"loss": loss_value, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}, step=step)
        if step % cfg.checkpoint_every == 0 or step == end:
            last_checkpoint = run.save(step)
        # with a sharded base or sequence every process takes part in the render; rank 0 writes it
        if cfg.validate_every and step % cfg.validate_every == 0 and (acc.is_main_process or fsdp or sp > 1):
            with run.ema_weights():  # render what the export will hold
                _validate(adapter, cfg, step, device, dataset.samples[0]["video"], write=acc.is_main_process)
        if on_step_end is not None:
            on_step_end(step, loss_value)
    bar.close()
    seconds = time.perf_counter() - t_start
    stopped = step < cfg.max_steps  # --stop-at: the run goes on later, so nothing is exported yet
    if stopped:
        final = last_checkpoint
    else:
        final = _export(run, pipe, out / "final") if acc.is_main_process else out / "final"
    if acc.is_main_process:
        report = {"steps": [start_step + 1, step], "max_steps": cfg.max_steps, "stopped_early": stopped,
                  "losses": losses, "seconds": seconds,
                  "seconds_per_step": seconds / max(len(losses), 1), "processes": acc.num_processes,
                  "sequence_parallel": sp,
                  "attention": cfg.attention, "density": state.layout.density if state and state.layout else 1.0,
                  "geometry": list(state.geometry) if state and state.geometry else None,
                  "lora": None if stopped else str(final),
                  "checkpoint": str(last_checkpoint) if last_checkpoint else None,
                  "distributed": cfg.distributed if acc.num_processes > 1 else None,
                  "preset": adapter.preset, "expert": cfg.expert, "load": adapter.load_hint()}
        if fsdp:
            report["base_bytes_here"], report["base_bytes"] = local_bytes(model)
        atomic_write_text(out / "train_report.json", json.dumps(report, indent=1) + "\n")
    acc.wait_for_everyone()
    if log_with:
        acc.end_training()
    if state is not None:
        state.reset_counters()
    return final


def _export(run: _Run, pipe, dest: Path) -> Path:
    """Write the LoRA (EMA weights when EMA is on) as ``pytorch_lora_weights.safetensors`` + its config, atomically."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    weights = run.ema_state() if run.ema is not None else run.lora_state()
    metadata = run.lora_config.to_dict()
    if hasattr(type(pipe), "save_lora_weights"):
        type(pipe).save_lora_weights(str(tmp), transformer_lora_layers=weights,
                                     transformer_lora_adapter_metadata=metadata)
    else:  # no LoRA loader on the pipeline (HunyuanVideo-1.5): the same file, by the helper every loader's save uses
        from diffusers.loaders.lora_base import LoraBaseMixin

        LoraBaseMixin._save_lora_weights(str(tmp), {"transformer": weights}, {"transformer": metadata})
    replace_dir(tmp, dest)
    return dest


def build_parser() -> argparse.ArgumentParser:
    return add_cli_arguments(argparse.ArgumentParser(prog="lora_training.train", description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))


def run_cli(args) -> int:
    """Run the parsed training command (``radial-diffusers train`` or ``python -m lora_training.train``); returns the
    exit status: 0, or 2 with a one-line message on bad input."""
    prefix = "radial-diffusers train"
    try:
        cfg = load_config(args.config, args.overrides)
        if args.preprocess_only:
            reused = (cfg.cache_path / "manifest.json").is_file()
            manifest = preprocess(cfg)
            print(f"{prefix}: {_cache_summary(manifest, cfg.cache_path, reused)}")
            return 0
        final = train(cfg, args.resume, stop_at=args.stop_at, allow_schedule_change=args.allow_schedule_change)
    except (ConfigError, ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        if args.stop_at is not None and args.stop_at < cfg.max_steps:
            print(f"{prefix}: stopped at step {args.stop_at} of {cfg.max_steps}; checkpoint {final} (no export yet: "
                  "continue exactly with --resume latest)")
        else:
            report = json.loads((Path(cfg.output_dir) / "train_report.json").read_text())
            print(f"{prefix}: LoRA written to {final} (load with {report['load']})")
    return 0


def _cache_summary(manifest: dict, cache: Path, reused: bool) -> str:
    """The line ``--preprocess-only`` ends with: what is in the cache, and where."""
    shards = len({s["shard"] for s in manifest["samples"]})
    what = (f"{len(manifest['samples'])} clip(s) in {shards} shard(s), {len(manifest['skipped'])} skipped "
            f"(listed in {cache / 'manifest.json'})")
    if reused:
        return f"the cache in {cache} is up to date, nothing encoded: {what}"
    return f"cache written to {cache}: {what}"


def _spec(cfg: TrainConfig, adapter):
    from radial_diffusers.pipelines import is_image_to_video

    from .data import CacheSpec, pipeline_family, text_kwargs

    pipe = adapter.pipe
    model = cfg.model if cfg.revision is None else f"{cfg.model}@{cfg.revision}"  # another revision: other weights
    return CacheSpec(model=model, family=pipeline_family(pipe), i2v=is_image_to_video(pipe),
                     num_frames=cfg.num_frames, height=cfg.height,
                     width=cfg.width, fps=adapter.options.fps,
                     max_sequence_length=text_kwargs(adapter, cfg.model, cfg.max_sequence_length)["max_sequence_length"])


def preprocess(cfg: TrainConfig) -> dict:
    """Only build the encoded cache (``--preprocess-only``)."""
    from .data import build_cache

    cfg.validate()
    pipe = _load_pipeline(cfg, _base_dtype(cfg))
    adapter, _ = _adapter(cfg, pipe)
    return build_cache(adapter, _spec(cfg, adapter), cfg.data_dir, cfg.cache_path, cfg.manifest,
                       device="cuda" if torch.cuda.is_available() else "cpu")


def _base_dtype(cfg: TrainConfig) -> torch.dtype:
    """The frozen base weights' dtype: 16-bit under mixed precision (DF11 bases are BF16), else float32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser().parse_args(argv))


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`train`. The package documents ``lora_training.train(cfg)``, but once this
    module is imported (``from lora_training.train import ...``) the package's attribute ``train`` is the module,
    not the function: calling it still trains."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
