"""``evaluate``: generate the same prompts and seeds with dense attention and with radial variants, and measure.

Runs, in order, for every (prompt, seed):

1. ``dense``: the stock pipeline (radial attention removed), timed: the reference video.
2. recall probe (if ``recall_rows``): the dense trajectory again with radial processors that compute dense attention
   and measure, on sampled query rows of every self-attention call, the softmax mass the radial mask keeps
   (:class:`~radial_diffusers.evaluation.recall.RecallProbe`); once per distinct mask (block size, decay, ...) and
   LoRA, with that LoRA loaded (DF11 / quantized variants get the recall of the original weights). A pass that fails
   is recorded with its error; the variants' numbers stand.
3. each variant, timed: ``radial`` (and any other named :class:`~radial_diffusers.RadialConfig`), ``radial+lora``
   (a LoRA loaded on top), ``radial+dfloat11`` (the transformer compressed to DF11 in memory, or a DF11 checkpoint
   of it loaded: must equal ``radial`` bit for bit on BF16 weights), ``radial+<scheme>`` (torchao quantization).

A variant that fails (a scheme the device cannot run, DF11 on non-BF16 weights, a LoRA that does not load) is
reported with its error and the pipeline is restored; the others still run. Weight variants work on a deep copy of
the transformer (the original is never modified), so they need memory for a second transformer.

Step times come from the transformer calls themselves (the time between the first calls of consecutive denoising
steps, the last step ending where the VAE decode starts; CUDA synchronised), without the first (warm-up) step; the
sparse mean also without the first sparse step when others follow (on a GPU it compiles and tunes the Triton
kernels): :func:`~radial_diffusers.evaluation.timing.means_by_kind`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .._io import to_uint8
from .._machine import cpu_model
from ..config import RadialConfig
from .metrics import finite_mean, video_psnr, video_ssim
from .recall import RecallProbe
from .timing import StepClock, counted_steps

__all__ = ["Variant", "VariantResult", "EvalResult", "evaluate", "default_variants"]


@dataclass(frozen=True)
class Variant:
    """One way to run the pipeline. ``config``: the radial config (``None``: dense); ``lora``: a LoRA file or folder
    loaded for this variant; ``weights``: ``None``, ``"dfloat11"`` or a quantization scheme of
    :data:`radial_diffusers.quant.SCHEMES`; ``lora_scale``: the adapter's strength; ``checkpoint``: with
    ``weights="dfloat11"``, a DF11 checkpoint of this transformer (folder, ``.safetensors`` file or Hub id: ours or an
    official one) to load instead of compressing the transformer in memory (``None``)."""

    name: str
    config: RadialConfig | None = None
    lora: str | None = None
    weights: str | None = None
    lora_scale: float = 1.0
    checkpoint: str | None = None

    @property
    def kind(self) -> str:
        if self.config is None:
            return "dense"
        return "+".join(["radial", *(["lora"] if self.lora else []), *([self.weights] if self.weights else [])])


@dataclass
class VariantResult:
    """What one variant measured, over every (prompt, seed); per-frame lists are per sample."""

    name: str
    kind: str
    status: str = "ok"  # "ok" or "failed"
    error: str | None = None
    psnr: list[list[float]] = field(default_factory=list)  # [sample][frame] dB against dense (inf: identical frame)
    ssim: list[list[float]] = field(default_factory=list)
    psnr_mean: float | None = None  # mean over samples of the per-video mean over finite frames
    ssim_mean: float | None = None
    identical_to: dict[str, bool] = field(default_factory=dict)  # e.g. {"radial": True} for DF11
    step_seconds: float | None = None  # mean of the timed steps (first step left out)
    sparse_step_seconds: float | None = None
    dense_step_seconds: float | None = None
    seconds: float | None = None  # whole generations, summed over samples
    density: float | None = None  # of the attention blocks on sparse calls (1: dense)
    # mean recall of its mask over its sparse (step, layer) cells, along the dense trajectory of the model with its
    # LoRA (a DF11 / quantized variant: of the original weights)
    recall: float | None = None
    config: dict | None = None
    traceback: str | None = None
    digests: list[str] = field(default_factory=list)  # SHA-256 of each sample's decoded frames as the pipeline gave them

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))


@dataclass
class EvalResult:
    """Everything :func:`evaluate` measured; ``videos[name][i]`` are uint8 ``(F, H, W, 3)`` per sample ``i`` (in
    the order of ``samples``)."""

    samples: list[dict]  # {"prompt", "seed"}
    settings: dict
    variants: list[VariantResult]
    # per mask label: {"mask": its options, "matrix": [layer][step] recall, "density", "rows",
    #                  "what_if": {decay: {"matrix", "density"}}, "dense_cells": {"variant", "cells": [layer][step]}}
    recall: dict
    videos: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)
    environment: dict = field(default_factory=dict)
    mask_picture: tuple | None = field(default=None, repr=False)  # (bool block mask, MaskPictureInfo) of "radial"

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r}; variants: {[v.name for v in self.variants]}")

    def to_dict(self) -> dict:
        return _jsonable({"samples": self.samples, "settings": self.settings, "environment": self.environment,
                          "variants": [v.to_dict() for v in self.variants], "recall": self.recall})

    def write(self, out: str | Path, *, fps: int = 16, overwrite: bool = False) -> Path:
        """Write the report folder (``index.html``, ``report.json``, videos, pictures) atomically; see
        :func:`radial_diffusers.evaluation.report.write_report`."""
        from .report import write_report

        return write_report(self, out, fps=fps, overwrite=overwrite)

    def summary(self) -> str:
        """A plain-text table of the variants."""
        lines = [f"{'variant':<24} {'PSNR dB':>8} {'SSIM':>6} {'recall':>6} {'density':>7} {'s/step':>7}  status"]
        for v in self.variants:
            def f(x, fmt):
                return format(x, fmt) if isinstance(x, (int, float)) and x is not None else "-"
            psnr = "inf" if v.psnr_mean == math.inf else f(v.psnr_mean, ".2f")
            lines.append(f"{v.name:<24} {psnr:>8} {f(v.ssim_mean, '.4f'):>6} {f(v.recall, '.3f'):>6} "
                         f"{f(v.density, '.3f'):>7} {f(v.step_seconds, '.3f'):>7}  "
                         f"{v.status if v.status == 'ok' else 'FAILED: ' + (v.error or '')}")
        return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, float):
        return None if math.isnan(x) else ("inf" if x == math.inf else x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def default_variants(config: RadialConfig | None = None, *, lora: str | None = None,
                     dfloat11: bool | str | os.PathLike = False, quant: Sequence[str] = (),
                     configs: dict[str, RadialConfig] | None = None, lora_scale: float = 1.0) -> list[Variant]:
    """``dense``, ``radial`` (``config``, default the preset), any extra named ``configs``, then radial with a LoRA,
    with DF11 weights (``dfloat11=True``: compressed in memory; a path or Hub id: that DF11 checkpoint) and with each
    quantization scheme."""
    cfg = config or RadialConfig()
    out = [Variant("dense"), Variant("radial", cfg)]
    for name, extra in (configs or {}).items():
        out.append(Variant(name, extra))
    if lora:
        out.append(Variant("radial+lora", cfg, lora=str(lora), lora_scale=lora_scale))
    if dfloat11:
        checkpoint = None if dfloat11 is True else os.fspath(dfloat11)
        out.append(Variant("radial+dfloat11", cfg, weights="dfloat11", checkpoint=checkpoint))
    for scheme in quant:
        out.append(Variant(f"radial+{scheme}", cfg, weights=scheme))
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


@contextlib.contextmanager
def _prepared(pipe, variant: Variant, work: Path) -> Iterator[Any]:
    """The pipeline set up for ``variant`` (yields the radial state or ``None``); restored afterwards, also on error."""
    from ..integration import apply_radial_attention, remove_radial_attention

    from ..pipelines import experts

    remove_radial_attention(pipe)
    originals = experts(pipe)  # each expert of Wan2.2 A14B gets the variant's weights
    swapped = lora_loaded = False
    try:
        if variant.checkpoint is not None and len(originals) > 1:
            raise ValueError(f"a DF11 checkpoint holds one transformer, and {type(pipe).__name__} has "
                             f"{len(originals)} experts ({', '.join(originals)}); compress them in memory instead "
                             "(eval --dfloat11 without a path)")
        if variant.weights is not None:
            models = {name: copy.deepcopy(original) for name, original in originals.items()}
            for name, model in models.items():
                if variant.checkpoint is not None:
                    from ..dfloat11 import load_dfloat11

                    load_dfloat11(model, variant.checkpoint, progress=False)
                elif variant.weights == "dfloat11":
                    from ..dfloat11 import compress, load_dfloat11

                    target = work / f"dfloat11-{name}"
                    try:
                        compress(model, target, progress=False, overwrite=True)
                    except (TypeError, ValueError) as exc:  # not BF16: say how to get BF16 weights here
                        raise type(exc)(f"{exc} (for the DF11 variant, load the pipeline in bfloat16: "
                                        "eval --dtype bfloat16)") from None
                    load_dfloat11(model, target, progress=False)
                else:
                    from ..quant import quantize

                    quantize(model, variant.weights)
            pipe.register_modules(**models)
            swapped = True
        if variant.lora is not None:
            pipe.load_lora_weights(variant.lora, adapter_name="radial_eval")
            lora_loaded = True
            pipe.set_adapters(["radial_eval"], [variant.lora_scale])
        state = apply_radial_attention(pipe, variant.config) if variant.config is not None else None
        yield state
    finally:
        remove_radial_attention(pipe)
        if lora_loaded:
            pipe.delete_adapters(["radial_eval"])
            if not getattr(pipe.transformer, "peft_config", None):
                # delete_adapters leaves PEFT's wrapper layers; with no adapter left, the plain Linears come back (a
                # later DF11 variant compresses plain Linears only)
                pipe.unload_lora_weights()
        if swapped:
            pipe.register_modules(**originals)


def _mask_key(pipe, cfg: RadialConfig) -> tuple:
    full = cfg.with_preset(_preset_key(pipe))
    return (full.block_size, full.decay_factor, full.adjacent, full.sink)


def _preset_key(pipe) -> str:
    from ..pipelines import detect_family

    return detect_family(pipe).preset_for(pipe, pipe.transformer)


def evaluate(pipe, prompts: str | Sequence[str], *, variants: Sequence[Variant] | None = None,
             config: RadialConfig | None = None, seeds: Sequence[int] = (0,), num_frames: int | None = None,
             height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
             call_kwargs: dict | None = None, recall_rows: int = 64, recall_decays: Sequence[float] = (),
             recall_configs: Sequence[RadialConfig] = (), progress: bool = True) -> EvalResult:
    """Radial attention against dense attention on ``pipe``, for the same prompts and seeds.

    Args:
        pipe: a Diffusers video pipeline of a supported family, on its device (radial attention already applied to
            it is removed first; the pipeline is left without it).
        prompts: one prompt or several.
        variants: what to run (default :func:`default_variants` of ``config``: dense and radial); the first
            ``"dense"`` variant is the reference (one is added when missing).
        config: the radial config of the default variants (default: the family's preset).
        seeds: generation seeds (a CPU ``torch.Generator`` each); every prompt runs with every seed.
        num_frames, height, width, num_inference_steps: the call's geometry and steps (default: the pipeline's).
        call_kwargs: other pipeline-call arguments (e.g. ``max_sequence_length``, ``guidance_scale``, ``image``).
        recall_rows: query rows per attention call for the recall probe (0: no recall pass).
        recall_decays: extra decay factors whose masks' recall the probe also measures (``suggest_config``).
        recall_configs: configs whose masks' recall is measured without generating with them (``variants=[]`` and
            one config: the recall pass alone).
        progress: a progress bar over the generations.

    Returns:
        :class:`EvalResult`; ``result.write(folder)`` writes the HTML / JSON report, ``result.summary()`` a table.

    Example:
        >>> from radial_diffusers.toy.model import toy_wan_pipeline, TOY_CALL_KWARGS          # doctest: +SKIP
        >>> result = evaluate(toy_wan_pipeline(), "a red circle moving right on a dark background",
        ...                   num_frames=129, height=128, width=128, num_inference_steps=20,
        ...                   call_kwargs=TOY_CALL_KWARGS)                                     # doctest: +SKIP
        >>> print(result.summary())                                                            # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from ..integration import remove_radial_attention

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("evaluate needs at least one prompt")
    variants = list(variants) if variants is not None else default_variants(config)
    if variants and not any(v.config is None for v in variants):
        variants.insert(0, Variant("dense"))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    variants.sort(key=lambda v: v.config is not None)  # the dense reference first
    for v in variants:
        if v.lora is not None and not Path(v.lora).exists():
            raise FileNotFoundError(f"variant {v.name}: LoRA {v.lora} does not exist")
    base = dict(call_kwargs or {})
    for key, value in (("num_frames", num_frames), ("height", height), ("width", width),
                       ("num_inference_steps", num_inference_steps)):
        if value is not None:
            base[key] = value
    base.setdefault("output_type", "np")
    samples = [{"prompt": p, "seed": int(s)} for p in prompts for s in seeds]
    preset = _preset_key(pipe)
    remove_radial_attention(pipe)
    was_disabled = getattr(pipe, "_progress_bar_config", {}).get("disable", False)
    pipe.set_progress_bar_config(disable=True)

    # The recall passes: one per (mask, LoRA) the variants use, along the dense trajectory of that LoRA's model.
    passes: dict[tuple, RadialConfig] = {}
    for v in variants:
        if v.config is not None:
            passes.setdefault(_pass_key(pipe, v), v.config)
    for cfg in recall_configs:
        passes.setdefault(_pass_key(pipe, Variant("recall", cfg)), cfg)
    if not variants and not (passes and recall_rows):
        raise ValueError("nothing to run: pass variants, or recall_configs with recall_rows > 0")
    runs = len(samples) * (len(variants) + (len(passes) if recall_rows else 0))
    bar = tqdm(total=runs, desc="eval", unit="video", disable=not progress)
    results = {v.name: VariantResult(v.name, v.kind, config=dataclasses.asdict(v.config) if v.config else None)
               for v in variants}
    videos: dict[str, list[np.ndarray]] = {v.name: [] for v in variants}
    reference: list[np.ndarray] = []
    recall: dict[str, dict] = {}
    mask_picture = None
    num_steps = base.get("num_inference_steps")

    def generate(sample: dict) -> tuple[np.ndarray, list[float], float]:
        kwargs = dict(base, prompt=sample["prompt"], generator=torch.Generator("cpu").manual_seed(sample["seed"]))
        clock = StepClock(pipe)
        t0 = time.perf_counter()
        with clock.watch():
            out = pipe(**kwargs)
        seconds = time.perf_counter() - t0
        frames = out.frames[0]
        frames = frames.detach().cpu().float().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if frames.ndim == 4 and frames.shape[1] in (1, 3) and frames.shape[-1] not in (1, 3):
            frames = frames.transpose(0, 2, 3, 1)
        return frames, clock.steps(), seconds

    try:
        with tempfile.TemporaryDirectory(prefix="radial-eval-") as tmp:
            for v in variants:
                res = results[v.name]
                step_times, sparse_times, dense_times, total = [], [], [], 0.0
                policy = None
                try:
                    with _prepared(pipe, v, Path(tmp)) as state:
                        for i, sample in enumerate(samples):
                            bar.set_postfix_str(f"{v.name} {i + 1}/{len(samples)}")
                            frames, steps, seconds = generate(sample)
                            bar.update()
                            if frames.dtype.kind == "f" and not np.isfinite(frames).all():  # uint8: always
                                raise FloatingPointError("the video has NaN / inf pixels (the transformer or the VAE "
                                                         "produced non-finite values)")
                            total += seconds
                            policy = (v.config.resolve(preset, len(steps)) if v.config is not None else None)
                            if state is not None and res.density is None and state.geometry is not None:
                                res.density = float(state.stats().density)
                                if mask_picture is None:
                                    mask_picture = _mask_picture(state, pipe, res.density)
                            # a step runs sparse when the policy says so and some layer and block can be skipped
                            never_sparse = (policy is None or state is None or _all_dense(policy, state)
                                            or res.density == 1.0)
                            step_times += steps[1:]
                            sparse_steps, dense_steps = counted_steps(
                                steps, [not (never_sparse or policy.dense_step(s)) for s in range(len(steps))])
                            sparse_times += sparse_steps
                            dense_times += dense_steps
                            if v.config is None:
                                reference.append(frames)
                            else:
                                ref = reference[i]
                                p, q = video_psnr(ref, frames), video_ssim(ref, frames)
                                res.psnr.append([float(x) for x in p])
                                res.ssim.append([float(x) for x in q])
                            videos[v.name].append(to_uint8(frames))
                            res.digests.append(hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest())
                            if num_steps is None:
                                num_steps = len(steps)
                    if v.config is None or (state is not None and policy is not None and _all_dense(policy, state)):
                        res.density = 1.0  # dense, or a config that keeps every call dense (a suggestion can)
                except Exception as exc:  # a failed variant is reported; the others still run
                    res.status, res.error = "failed", f"{type(exc).__name__}: {exc}"
                    res.traceback = traceback.format_exc(limit=4)
                    bar.update(len(samples) - len(videos[v.name]))
                    videos.pop(v.name, None)
                    if v.config is None:
                        raise RuntimeError(f"the dense reference failed: {res.error}") from exc
                    continue
                res.step_seconds, res.seconds = _mean(step_times), total
                res.sparse_step_seconds, res.dense_step_seconds = _mean(sparse_times), _mean(dense_times)
                if res.psnr:
                    res.psnr_mean = finite_mean([finite_mean(p) for p in res.psnr])
                    res.ssim_mean = float(np.mean([np.mean(q) for q in res.ssim]))

            if recall_rows:
                _recall_passes(pipe, passes, variants, results, samples, recall, generate, bar, preset, recall_rows,
                               tuple(recall_decays), Path(tmp))
    finally:
        bar.close()
        pipe.set_progress_bar_config(disable=was_disabled)

    _identical(results, variants)
    import diffusers

    device = next(pipe.transformer.parameters()).device
    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
           "threads": torch.get_num_threads(), "dtype": str(pipe.transformer.dtype)}  # not a kept-fp32 parameter's
    settings = {k: v for k, v in base.items() if k not in ("output_type", "image", "generator")}
    settings.update(pipeline=type(pipe).__name__, preset=preset, num_inference_steps=num_steps,
                    recall_rows=recall_rows)
    return EvalResult(samples=samples, settings=_jsonable(settings), variants=list(results.values()), recall=recall,
                      videos=videos, environment=env, mask_picture=mask_picture)


def _recall_passes(pipe, passes: dict, variants: list[Variant], results: dict, samples: list[dict], recall: dict,
                   generate, bar, preset: str, rows: int, decays: tuple, work: Path) -> None:
    """Run each recall pass (a probe on every self-attention call, dense trajectory) and fill ``recall[label]`` and
    the matching variants' ``recall``. A pass that fails is recorded as ``{"error": ...}``; the others still run."""
    from ..integration import apply_radial_attention

    for (key, lora, scale), cfg in passes.items():
        label = _mask_label(key) + (f"; LoRA {lora} (scale {scale:g})" if lora else "")
        probe = RecallProbe(rows=rows, dense=True, decays=decays)
        done = 0
        try:
            # the LoRA (if any) loaded as its variants have it; the original weights (DF11 / quantized variants
            # are assigned the recall measured on them)
            with _prepared(pipe, Variant("recall", None, lora=lora, lora_scale=scale or 1.0), work):
                state = apply_radial_attention(pipe, cfg)
                for state_i in getattr(state, "experts", ()) or (state,):
                    state_i.probe = probe
                for i, sample in enumerate(samples):
                    bar.set_postfix_str(f"recall {i + 1}/{len(samples)}")
                    generate(sample)
                    bar.update()
                    done += 1
        except Exception as exc:  # reported in the report and JSON; the variants' numbers stand
            bar.update(len(samples) - done)
            recall[label] = {"mask": _mask_dict(key), "lora": lora, "error": f"{type(exc).__name__}: {exc}"}
            continue
        recall[label] = {
            "mask": _mask_dict(key),
            "lora": lora,
            "matrix": probe.matrix(),
            "density": probe.density.get(None),
            "what_if": {str(d): {"matrix": probe.matrix(d), "density": probe.density.get(d)} for d in probe.decays},
            "rows": rows,
        }
        for v in variants:
            if v.config is None or _pass_key(pipe, v) != (key, lora, scale) or results[v.name].status != "ok":
                continue
            pol = v.config.resolve(preset, probe.steps)
            dense = [[pol.dense_step(s) or l < pol.dense_layers for s in range(probe.steps)]
                     for l in range(probe.layers)]  # [layer][step]
            cells = [(s, l) for l, row in enumerate(dense) for s, d in enumerate(row) if not d]
            results[v.name].recall = probe.mean(cells) if cells else None
            recall[label].setdefault("dense_cells", {"variant": v.name, "cells": dense})  # outlined in the heat map


def _pass_key(pipe, variant: Variant) -> tuple:
    """``(mask key, LoRA, LoRA scale)`` of the recall pass a radial ``variant`` is measured by."""
    return (_mask_key(pipe, variant.config), variant.lora, variant.lora_scale if variant.lora else None)


def _mask_dict(key: tuple) -> dict:
    return {"block_size": key[0], "decay_factor": key[1], "adjacent": key[2], "sink": key[3]}


def _mask_picture(state, pipe, density: float) -> tuple:
    """``(block mask, MaskPictureInfo)`` of the state's last geometry, for the report's mask picture."""
    from ..mask_image import MaskPictureInfo

    cfg = state.config.with_preset(state.preset_key)
    frames, h, w = state.geometry
    info = MaskPictureInfo.of_radial(
        cfg, state.geometry, text_tokens=state.text_tokens, text_first=state.family.text_position == "before",
        title=f"radial mask: {type(pipe).__name__}, latent {frames}x{h}x{w}",
        extra=(f"decay {cfg.decay_factor}, adjacent {cfg.adjacent}; density {density:.3f}",),
    )
    return state.block_mask(), info


def _all_dense(policy, state) -> bool:
    """Whether ``policy`` runs every attention call of ``state``'s transformer(s) dense."""
    layers = min(len(s.processors) for s in state.experts or (state,))
    return policy.dense_layers >= layers or policy.covers_schedule()


def _mask_label(key: tuple) -> str:
    return f"block {key[0]}, decay {key[1]:g}, adjacent {key[2]}, sink {'on' if key[3] else 'off'}"


def _identical(results: dict, variants: list[Variant]) -> None:
    """Weight variants: whether their decoded videos equal, bit for bit (before any rounding to uint8), those of the
    variant with the same config and LoRA and the original weights."""
    for v in variants:
        mine = results[v.name]
        if v.weights is None or mine.status != "ok":
            continue
        for w in variants:
            theirs = results[w.name]
            if w.weights is None and w.config == v.config and w.lora == v.lora and theirs.status == "ok":
                mine.identical_to[w.name] = mine.digests == theirs.digests
                break
