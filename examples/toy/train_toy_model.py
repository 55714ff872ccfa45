"""Train the toy Wan model that ships in ``radial_diffusers/toy/weights`` (the demo's and ``eval``'s model).

Four stages on procedurally rendered clips (:mod:`radial_diffusers.toy.scenes`), each resumable (a checkpoint every
``--save-every`` steps; a finished stage is skipped on the next run):

1. VAE: ``AutoencoderKLWan`` on random 32x32 crops of 9-frame windows (the first frame and two 4-frame chunks: both
   of its causal paths), L1 on the posterior mode's unclamped reconstruction with the shapes' pixels weighted
   (``--object-weight``: a plain mean over pixels is mostly background, and the shapes came back dark or grey) + a
   small penalty on the latents' scale. Then a second stage on 49-frame windows: the causal encoder and decoder
   reach back further than 9 frames, and a VAE trained on short windows only drifts in colour past them (measured
   on 65-frame clips: 24.6 dB at frame 4, 19.4 dB at frame 40). The record holds the held-out PSNR of whole frames
   and of the shapes' pixels alone.
2. Cache: every training clip (17 frames, 64x64) encoded once (VAE latent mode, normalised by the per-channel
   mean / std measured on them) with its caption's UMT5 embedding, through ``lora_training``'s Wan adapter, and the
   shapes' coverage on the latent grid. The VAE and text encoder are rounded to bf16 first: the transformer learns
   the latents and embeddings of the weights that ship.
3. Transformer: flow matching (logit-normal levels, the scheduler's shift 3.0) with ``lora_training``'s loss (the
   latents a shape covers can be weighted, ``--transformer-object-weight``; off by default); 10% of the captions
   dropped (the empty prompt) so classifier-free guidance works; the saved weights are the moving average of the
   training steps' (``--ema``).
4. Longer clips (``--long-frames``, 65 by default; 0 skips it): the transformer continues on clips up to that
   length, every step one latent length from a fixed cycle (the longest every other step, shorter ones between,
   batched to about the same tokens), the shorter ones the leading latent frames of the long clips (the causal VAE's
   first latent frames are the encoding of the clip's first frames). Real video models are trained on a range of
   lengths. Trained at 17 frames only, the toy drew its shapes at 17 frames and nothing recognisable at 33 or 65
   (tried: softmax temperature, temporal RoPE interpolation, length-extension LoRAs of up to 2400 steps); after this
   stage it draws some of them (the demo prompt's yellow square) for the first half of a 65-frame video.

The transformer stages compute in bf16 under CPU autocast (float32 weights, optimizer state and average;
``--precision fp32`` on CPUs without bf16 units) through ``torch.compile`` (one graph per latent length;
``--no-compile`` without a C++ compiler).

The text encoder is a frozen random UMT5, saved with the rest so the model does not depend on how a future
``transformers`` initialises it. Weights are written in bf16 with ``training.json`` (the command, seeds, steps, run
time, final losses, latent statistics).

Run time of the full recipe (the shipped weights' run, ``training.json``): 52 minutes on a quiet 2-core Intel Xeon
with AMX (bf16 units), 2026-12-06: VAE 18 min, caches 4 min, transformer 13 + 16 min. CPUs without bf16 matrix units
gain less from ``--precision bf16`` (the float32 eager recipe took 93 minutes on the same machine); a loaded machine
takes several times longer (torch's CPU threads collapse under contention).

    python examples/toy/train_toy_model.py                          # full recipe, writes the package's weights
    python examples/toy/train_toy_model.py --quick --out /tmp/toy   # two steps per stage, tiny clips (CI)
    python examples/toy/train_toy_model.py --long-frames 0          # stages 1-3 only (17-frame clips)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import load_file

from lora_training.objective import Objective
from lora_training.train import ema_decay_at, training_loss
from radial_diffusers._io import atomic_path, atomic_write_text
from radial_diffusers.dfloat11.checkpoint import save_safetensors
from radial_diffusers.evaluation.metrics import video_psnr
from radial_diffusers.masks import latent_frames_for
from radial_diffusers.tiny import _seeded
from radial_diffusers.toy import model as toy
from radial_diffusers.toy.scenes import caption, random_scene, render
from radial_diffusers.training_adapters import TrainingOptions, WanTraining

VAE_CLIP_SEEDS = 1_000_000  # VAE clips: seeds from here; transformer clips: seeds 0..clips-1
HELD_OUT_SEEDS = 10**9  # the VAE's held-out clips
HELD_OUT = 8


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _video(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(F, H, W, 3)`` -> float ``(3, F, H, W)`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def _vae_batch(step: int, args, frames: int, batch: int, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clips (batch, 3, frames, crop, crop), coverage (batch, 1, frames, crop, crop))``: random windows and crops
    of freshly rendered clips and their shapes' coverage (``stage`` 0 or 1: each VAE stage draws its own clips)."""
    rng = np.random.default_rng([args.seed, step] + [stage] * stage)
    length = max(frames, args.frames)
    clips, covers = [], []
    for i in range(batch):
        scene = random_scene(np.random.default_rng(VAE_CLIP_SEEDS + 5_000_000 * stage + step * batch + i))
        clip, cover = render(scene, length, args.size, args.size, seed=int(rng.integers(1 << 30)), coverage=True)
        t0 = int(rng.integers(0, length - frames + 1))
        y0, x0 = (int(v) for v in rng.integers(0, args.size - args.crop + 1, size=2))
        window = np.s_[t0:t0 + frames, y0:y0 + args.crop, x0:x0 + args.crop]
        clips.append(_video(clip[window]))
        covers.append(torch.from_numpy(cover[window])[None])
    return torch.stack(clips), torch.stack(covers)


def object_weight(coverage: torch.Tensor, weight: float) -> torch.Tensor:
    """Loss weights ``1 + weight * coverage``: a shape's pixels count ``1 + weight`` times a background pixel's (the
    shapes cover a few percent of a frame; with a plain mean the models learn the backgrounds and blur the shapes
    away)."""
    return 1.0 + weight * coverage


def latent_coverage(coverage: torch.Tensor, temporal: int, spatial: int) -> torch.Tensor:
    """The shapes' coverage ``(..., F, H, W)`` on the latent grid ``(..., 1 + (F - 1) // temporal, H // spatial,
    W // spatial)``: the maximum over the pixels and frames each latent covers (a causal video VAE encodes the first
    frame alone, then ``temporal`` frames per latent frame)."""
    first, rest = coverage[..., :1, :, :], coverage[..., 1:, :, :]
    rest = rest.unflatten(-3, (rest.shape[-3] // temporal, temporal)).amax(-3)
    frames = torch.cat([first, rest], dim=-3)
    lead = frames.shape[:-2]
    pooled = torch.nn.functional.max_pool2d(frames.reshape(-1, 1, *frames.shape[-2:]), spatial)
    return pooled.reshape(*lead, *pooled.shape[-2:])


class Stage:
    """A resumable training loop: ``loss_fn(step) -> loss``; AdamW with warm-up + cosine; checkpoints.

    ``ema``: the decay of an exponential moving average of the trainable parameters (0: none), which replaces them
    when the stage ends. A diffusion model's samples come from its weights' average, not from the last noisy step's.
    ``bf16``: the loss under CPU autocast to bf16 (float32 weights, optimizer state and average).
    """

    def __init__(self, name: str, module: torch.nn.Module, steps: int, lr: float, work: Path, save_every: int,
                 ema: float = 0.0, bf16: bool = False):
        self.name, self.module, self.steps, self.base_lr, self.work = name, module, steps, lr, work
        self.save_every, self.ema_decay, self.bf16 = save_every, ema, bf16
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
        self.ckpt = work / f"{name}.ckpt.pt"
        self.start, self.losses, self.seconds, saved_ema = 0, [], 0.0, None
        if self.ckpt.is_file():
            state = torch.load(self.ckpt, weights_only=False)
            module.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            saved_ema = state.get("ema")
            self.start, self.losses, self.seconds = state["step"], state["losses"], state["seconds"]
            _log(f"{name}: resumed at step {self.start}")
        self.ema = None
        if ema:
            self.ema = saved_ema or [p.detach().clone() for p in self.params]  # a checkpoint without one: from here

    def _save(self, step: int) -> None:
        with atomic_path(self.ckpt) as tmp:
            torch.save({"model": self.module.state_dict(), "opt": self.opt.state_dict(), "ema": self.ema,
                        "step": step, "losses": self.losses, "seconds": self.seconds}, tmp)

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        decay = ema_decay_at(self.ema_decay, step + 1)  # the LoRA trainer's warm-up (diffusers' EMAModel); 1-based
        for e, p in zip(self.ema, self.params):
            e.lerp_(p.detach(), 1.0 - decay)

    def run(self, loss_fn) -> dict:
        self.module.train()
        t_start = t_last = time.perf_counter()
        for step in range(self.start, self.steps):
            for group in self.opt.param_groups:
                group["lr"] = _lr(step, self.steps, self.base_lr, warmup=min(50, max(1, self.steps // 10)))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = loss_fn(step)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            if self.ema is not None:
                self._update_ema(step)
            self.losses.append(float(loss.detach()))
            now = time.perf_counter()
            self.seconds += now - t_last
            t_last = now
            if (step + 1) % 25 == 0 or step + 1 == self.steps:
                recent = self.losses[-25:]
                _log(f"{self.name} step {step + 1}/{self.steps} loss {sum(recent) / len(recent):.4f} "
                     f"({(now - t_start) / (step + 1 - self.start):.2f} s/step)")
            if (step + 1) % self.save_every == 0 and step + 1 < self.steps:
                self._save(step + 1)
        self.module.eval()
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    p.copy_(e)
        tail = self.losses[-min(100, len(self.losses)):]
        return {"steps": self.steps, "lr": self.base_lr, "ema": self.ema_decay, "seconds": round(self.seconds, 1),
                "final_loss": round(sum(tail) / len(tail), 5), "final_loss_steps": len(tail),
                "loss_curve": [round(sum(self.losses[i:i + 50]) / len(self.losses[i:i + 50]), 5)
                               for i in range(0, len(self.losses), 50)]}


def _save_module(module: torch.nn.Module, path: Path, dtype=torch.float32) -> None:
    """Save ``module``'s state in ``dtype``; a tied tensor (UMT5's shared embedding) is saved once, first name."""
    state, seen = {}, set()
    for k, v in module.state_dict(keep_vars=True).items():
        if id(v) not in seen:
            seen.add(id(v))
            state[k] = v.detach().to(dtype).contiguous()
    save_safetensors(path, state, with_crc=False)


@torch.no_grad()
def _round_as_shipped(module: torch.nn.Module) -> torch.nn.Module:
    """Round ``module``'s floating-point state to bf16 in place (kept in float32): the values the shipped weights
    hold, so the transformer trains on the latents and text embeddings the shipped VAE and text encoder produce."""
    for v in module.state_dict().values():
        if v.is_floating_point():
            v.copy_(v.to(torch.bfloat16))
    return module


def train_vae(args, work: Path) -> dict:
    """Two stages: ``--vae-steps`` on ``--vae-frames`` windows, then ``--vae-long-steps`` at a lower rate on
    ``--vae-long-frames`` windows. The causal encoder and decoder carry a cache from chunk to chunk; trained on 9
    frames only (two chunks after the first), frames past the window drifted (tried: the 17th frame of a decoded
    clip came out dark), so the second stage shows them longer chains."""
    done = work / "vae.safetensors"
    vae = toy.toy_wan_vae(base_dim=args.vae_base_dim)
    if done.is_file():
        toy.load_weights(vae, done)
        return json.loads((work / "vae.json").read_text())

    def loss_fn(frames: int, batch: int, stage: int, shape_weight: float):
        def loss(step: int) -> torch.Tensor:
            x, coverage = _vae_batch(step, args, frames, batch, stage)
            # A deterministic autoencoder on the posterior's mode: sampling with the initial unit variance buries
            # the signal in noise and the decoder learns the mean clip (tried: PSNR 14 dB after 200 steps). The
            # latents only need a bounded scale, kept by a small penalty (the pipeline normalises by measured std).
            z = vae.encode(x).latent_dist.mode()
            recon = _decode_unclamped(vae, z)
            if not shape_weight:  # a plain mean
                return (recon - x).abs().mean() + args.kl_weight * z.square().mean()
            w = object_weight(coverage, shape_weight)
            return ((recon - x).abs() * w).sum() / (w.sum() * x.shape[1]) + args.kl_weight * z.square().mean()
        return loss

    short = work / "vae-short.safetensors"
    if short.is_file():
        toy.load_weights(vae, short)
        record = json.loads((work / "vae-short.json").read_text())
    else:
        record = Stage("vae", vae, args.vae_steps, args.vae_lr, work, args.save_every).run(
            loss_fn(args.vae_frames, args.vae_batch, 0, args.object_weight))
        _save_module(vae, short)
        atomic_write_text(work / "vae-short.json", json.dumps(record) + "\n")
    # the same pixels per step on longer windows
    long_batch = max(1, args.vae_batch * args.vae_frames // args.vae_long_frames)
    long = Stage("vae-long", vae, args.vae_long_steps, args.vae_lr * 0.5, work, args.save_every).run(
        loss_fn(args.vae_long_frames, long_batch, 1, args.object_weight))
    record = {**record, "long": long, "seconds": record["seconds"] + long["seconds"], "base_dim": args.vae_base_dim}
    psnr, shape_psnr = _vae_psnr(vae, args, args.frames)
    record["held_out_psnr_db"], record["held_out_shape_psnr_db"] = round(psnr, 2), round(shape_psnr, 2)
    record["held_out_psnr_db_4x"] = round(_vae_psnr(vae, args, 4 * args.frames - 3)[0], 2)
    _log(f"vae: held-out reconstruction PSNR {record['held_out_psnr_db']} dB at {args.frames} frames "
         f"({record['held_out_shape_psnr_db']} dB on the shapes), {record['held_out_psnr_db_4x']} dB at "
         f"{4 * args.frames - 3}")
    _save_module(vae, done)
    atomic_write_text(work / "vae.json", json.dumps(record) + "\n")
    return record


def _decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """``AutoencoderKLWan.decode`` without its final clamp to [-1, 1]: a clamped pixel has no gradient, and early in
    training whole regions sit outside the range and never learn. The same per-latent-frame causal loop."""
    vae.clear_cache()
    h = vae.post_quant_conv(z)
    out = []
    for i in range(h.shape[2]):
        vae._conv_idx = [0]
        out.append(vae.decoder(h[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                               first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(out, dim=2)


@torch.no_grad()
def _vae_psnr(vae, args, length: int) -> tuple[float, float]:
    """``(PSNR, shape PSNR)`` in dB of decode(encode(x)) against x on the held-out clips of ``length`` frames: the
    first per frame as ``eval`` measures it, averaged over the frames; the second from the squared error pooled over
    the pixels a shape covers (coverage > 0.5). A frame is mostly background: a VAE that blurs the shapes away still
    scores 26 dB on the first (measured: 17.5 dB on the second)."""
    values, shape_err, shape_pixels = [], 0.0, 0
    for i in range(HELD_OUT if not args.quick else 1):
        frames, cover = render(random_scene(np.random.default_rng(HELD_OUT_SEEDS + i)), length, args.size,
                               args.size, seed=i, coverage=True)
        y = (vae.decode(vae.encode(_video(frames)[None]).latent_dist.mode()).sample[0] + 1) / 2
        values.append(video_psnr(frames, y.transpose(0, 1)).clamp_max(100.0))
        on_shape = torch.from_numpy(cover > 0.5)
        err = (y.clamp(0, 1).permute(1, 2, 3, 0) - torch.from_numpy(frames).float() / 255).square()
        shape_err += float(err[on_shape].sum())
        shape_pixels += int(on_shape.sum()) * 3
    shape_psnr = 10 * math.log10(shape_pixels / max(shape_err, 1e-10)) if shape_pixels else float("nan")
    return float(torch.cat(values).mean()), shape_psnr


def build_pipe(vae):
    from diffusers import WanPipeline

    tokenizer, text_encoder = toy.toy_wan_text_encoder()
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval().requires_grad_(False),
                       transformer=toy.toy_wan_transformer(), vae=vae, scheduler=toy.toy_wan_scheduler())


@torch.no_grad()
def build_cache(args, work: Path, pipe, adapter, frames: int, name: str = "cache",
                stats: dict | None = None) -> tuple[dict, dict]:
    """Encode the ``--clips`` training clips at ``frames`` frames into ``work/<name>.safetensors``; returns
    ``(tensors, stats)``, the latents normalised with ``stats`` (default: the per-channel mean / std measured on
    these latents; the longer clips of stage 4 reuse stage 3's, the statistics the pipeline ships with)."""
    path = work / f"{name}.safetensors"
    if path.is_file():
        stats = json.loads((work / f"{name}.json").read_text())
    else:
        raw, embeds, covers = [], [], []
        t0 = time.perf_counter()
        temporal, spatial = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        for i in range(args.clips):
            scene = random_scene(np.random.default_rng(i))
            video, cover = render(scene, frames, args.size, args.size, seed=i, coverage=True)
            raw.append(adapter._vae_latents(torch.from_numpy(video), "cpu")[0])
            covers.append(latent_coverage(torch.from_numpy(cover), temporal, spatial)[None])
            embeds.append(adapter.encode_text(caption(scene), toy.TOY_CALL_KWARGS, "cpu")["prompt_embeds"])
            if (i + 1) % 16 == 0 or i + 1 == args.clips:
                _log(f"{name}: {i + 1}/{args.clips} clips of {frames} frames encoded "
                     f"({time.perf_counter() - t0:.0f} s)")
        z = torch.stack(raw)
        if stats is None:
            mean, std = z.mean(dim=(0, 2, 3, 4)), z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
            stats = {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}
        stats = {"mean": stats["mean"], "std": stats["std"], "clips": args.clips, "frames": frames,
                 "seconds": round(time.perf_counter() - t0, 1)}
        save_safetensors(path, {"latents": z, "prompt_embeds": torch.stack(embeds), "coverage": torch.stack(covers)},
                         with_crc=False)
        atomic_write_text(work / f"{name}.json", json.dumps(stats) + "\n")
    tensors = load_file(str(path))
    mean = torch.tensor(stats["mean"]).view(1, -1, 1, 1, 1)
    std = torch.tensor(stats["std"]).view(1, -1, 1, 1, 1)
    tensors["latents"] = (tensors["latents"] - mean) / std
    return tensors, stats


def length_cycle(latent_frames: int, shortest: int) -> list[int]:
    """Stage 4's latent lengths, one per step in turn: the longest every other step, and between them ``shortest``
    (stage 3's), ``shortest + 4``, ... below it (``length_cycle(17, 5)``: 17, 5, 17, 9, 17, 13)."""
    shorter = list(range(shortest, latent_frames, 4)) or [latent_frames]
    return [n for short in shorter for n in (latent_frames, short)]


def train_transformer(args, work: Path, pipe, adapter, cache: dict, name: str = "transformer", steps: int = 0,
                      lr: float = 0.0, lengths: list[int] | None = None, seed_offset: int = 0) -> dict:
    """Flow matching on the cached latents; ``lengths``: latent lengths taken in turn, one per step (each step's
    clips cut to their leading latent frames, ``--batch`` x the shortest (stage 3's) // ``length`` of them, at least
    1: about stage 3's tokens per step); default: the clips' full length at ``--batch``. ``seed_offset``: added to
    every step's generator seed (each stage draws its own clips and noise)."""
    done = work / f"{name}.safetensors"
    transformer = pipe.transformer
    if done.is_file():
        toy.load_weights(transformer, done)
        return json.loads((work / f"{name}.json").read_text())
    objective = Objective.from_scheduler(pipe.scheduler)
    shift = float(pipe.scheduler.config.flow_shift)
    cfg = SimpleNamespace(timestep_sampling="logit_normal", logit_mean=0.0, logit_std=1.0)
    empty = adapter.encode_text("", toy.TOY_CALL_KWARGS, "cpu")["prompt_embeds"]
    n, full = cache["latents"].shape[0], cache["latents"].shape[2]
    seed, shortest = args.seed * 1_000_003 + seed_offset, min(lengths or [full])

    def loss_fn(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + step)
        length = lengths[step % len(lengths)] if lengths else full
        batch_size = args.batch if not lengths else max(1, args.batch * shortest // length)
        idx = torch.randint(n, (batch_size,), generator=g)
        embeds = cache["prompt_embeds"][idx].clone()
        drop = torch.rand(batch_size, generator=g) < args.caption_dropout
        embeds[drop] = empty
        batch = {"latents": cache["latents"][idx, :, :length], "prompt_embeds": embeds}
        if args.transformer_object_weight:
            batch["loss_weight"] = object_weight(cache["coverage"][idx, :, :length], args.transformer_object_weight)
        return training_loss(transformer, adapter, objective, batch, cfg, shift, g, torch.device("cpu"),
                             torch.float32)

    transformer.requires_grad_(True)
    if args.compile:  # in place: the state dict keeps its names; one graph per latent length (dynamic=False)
        from torch._dynamo import config as dynamo_config

        # past the limit dynamo would run the remaining lengths eagerly (longer --long-frames: more lengths)
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, len(set(lengths or [])) + 4)
        transformer.compile(dynamic=False)
    record = Stage(name, transformer, steps or args.steps, lr or args.lr, work, args.save_every, args.ema,
                   bf16=args.precision == "bf16").run(loss_fn)
    transformer.requires_grad_(False)
    if lengths:
        record["latent_lengths"] = lengths
    _save_module(transformer, done)
    atomic_write_text(work / f"{name}.json", json.dumps(record) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/toy-training", help="work folder: checkpoints, cache, stage results")
    p.add_argument("--weights-dir", default=None,
                   help=f"where the final weights go (default: the package's {toy.WEIGHTS_DIR}; --quick: OUT/weights)")
    p.add_argument("--quick", action="store_true", help="two steps per stage on 2 clips of 9x32x32 (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips", type=int, default=400, help="transformer training clips (each encoded once)")
    p.add_argument("--frames", type=int, default=toy.SHORT_TRAIN_FRAMES, help="stage 3's clips (frames, 4k+1)")
    p.add_argument("--size", type=int, default=toy.TRAIN_SIZE)
    p.add_argument("--crop", type=int, default=32, help="VAE training crop (pixels)")
    p.add_argument("--vae-frames", type=int, default=9, help="VAE training window (frames, 4k+1)")
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--vae-long-steps", type=int, default=300, help="second VAE stage: longer windows")
    p.add_argument("--vae-long-frames", type=int, default=49,
                   help="the second stage's window (frames, 4k+1): longer than the causal encoder's and decoder's "
                        "reach back in time, or frames past the trained window drift in colour")
    p.add_argument("--vae-base-dim", type=int, default=toy.VAE_BASE_DIM,
                   help="the VAE's width at full resolution (x2, x4 below)")
    p.add_argument("--vae-batch", type=int, default=4)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the latents' mean square")
    p.add_argument("--object-weight", type=float, default=8.0,
                   help="a shape's pixels weigh 1 + this in the VAE's loss")
    p.add_argument("--transformer-object-weight", type=float, default=0.0,
                   help="the latents a shape covers weigh 1 + this in the transformer's loss (default 0, a plain "
                        "mean: at 8 the model painted the shapes' colours over whole frames)")
    p.add_argument("--steps", type=int, default=3000, help="transformer steps")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ema", type=float, default=0.999,
                   help="the transformer's weights are the moving average of its training steps with this decay "
                        "(0: the last step's)")
    p.add_argument("--long-frames", type=int, default=toy.TRAIN_FRAMES,
                   help="stage 4: continue on clips up to this many frames (4k+1; 0 skips the stage)")
    p.add_argument("--long-steps", type=int, default=2200, help="stage 4's steps")
    p.add_argument("--long-lr", type=float, default=2e-4, help="stage 4's peak learning rate")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="the transformer stages' compute: bf16 autocast (float32 weights, optimizer and average; "
                        "1.25-1.31x faster steps than fp32 on a Xeon with AMX), or fp32 (for CPUs without bf16 "
                        "units, where bf16 is emulated and slower); the VAE trains in fp32")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the transformer for its stages (about 45 s to compile stage 3's graph and 100 s "
                        "for stage 4's four; with bf16, stage 3's steps ran 1.85x faster than fp32 eager on a 2-core "
                        "Xeon); needs a C++ compiler; off with --quick")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.frames, args.size, args.crop, args.vae_batch, args.vae_frames = 2, 9, 32, 16, 2, 5
        args.vae_steps = args.steps = args.vae_long_steps = 2
        args.compile = False  # compiling costs more than two steps
        args.vae_long_frames = 9
        args.long_steps, args.long_frames = 2, 21 if args.long_frames else 0  # 6 latent frames: cut to 6 and 3
    if args.frames < 9 or (args.frames - 1) % 4 or args.size % 16 or args.crop > args.size:
        p.error("--frames must be 4k+1 >= 9, --size a multiple of 16, --crop <= --size")
    if args.long_frames and ((args.long_frames - 1) % 4 or args.long_frames <= args.frames):
        p.error(f"--long-frames must be 4k+1 and longer than --frames ({args.frames}), or 0 to skip stage 4")
    if (args.vae_frames - 1) % 4 or (args.vae_long_frames - 1) % 4:
        p.error("--vae-frames and --vae-long-frames must be 4k+1 (the first frame, then 4-frame chunks)")
    cxx = os.environ.get("CXX") or "g++"  # the compiler inductor's C++ code goes to
    if args.compile and not shutil.which(cxx):  # before any work
        p.error(f"--compile needs a C++ compiler ({cxx} not found): install one (e.g. apt-get install g++) or pass "
                "--no-compile (slower steps)")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights_dir) if args.weights_dir else (work / "weights" if args.quick else toy.WEIGHTS_DIR)
    started = time.perf_counter()
    torch.manual_seed(args.seed)

    vae_record = train_vae(args, work)
    with _seeded(args.seed + 1):  # the frozen random text encoder (saved below with the rest) and the transformer
        pipe = build_pipe(toy.toy_wan_vae(base_dim=args.vae_base_dim))
    toy.load_weights(pipe.vae, work / "vae.safetensors")
    pipe.vae.eval().requires_grad_(False)
    text_path = work / "text_encoder.safetensors"
    if text_path.is_file():
        toy.load_weights(pipe.text_encoder, text_path)
    else:
        _save_module(pipe.text_encoder, text_path)
    _round_as_shipped(pipe.vae), _round_as_shipped(pipe.text_encoder)
    adapter = WanTraining(pipe, TrainingOptions(num_frames=args.frames, height=args.size, width=args.size))
    cache, stats = build_cache(args, work, pipe, adapter, args.frames)
    vae_record["latents"] = {"mean": stats["mean"], "std": stats["std"]}
    tr_record = train_transformer(args, work, pipe, adapter, cache)
    long_record, long_stats = None, {"seconds": 0.0}
    if args.long_frames:
        del cache
        long_cache, long_stats = build_cache(args, work, pipe, adapter, args.long_frames, "cache-long", stats)
        lengths = length_cycle(long_cache["latents"].shape[2],
                               latent_frames_for(args.frames, pipe.vae_scale_factor_temporal))
        long_record = train_transformer(args, work, pipe, adapter, long_cache, "transformer-long",
                                        args.long_steps, args.long_lr, lengths, 1 << 24)

    weights.mkdir(parents=True, exist_ok=True)
    for name in toy.COMPONENTS:
        _save_module(getattr(pipe, name), weights / f"{name}.safetensors", torch.bfloat16)
    record = {
        "command": "python examples/toy/train_toy_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "weights_dir")},
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "seconds_this_run": round(time.perf_counter() - started, 1),
        "seconds_total": round(vae_record["seconds"] + stats["seconds"] + tr_record["seconds"]
                               + long_stats["seconds"] + (long_record or {}).get("seconds", 0.0), 1),
        "vae": vae_record,
        "cache": {"clips": stats["clips"], "seconds": stats["seconds"]},
        "transformer": tr_record,
        "transformer_long": long_record and {**long_record, "frames": args.long_frames,
                                             "cache_seconds": long_stats["seconds"]},
        "weights_dtype": "bfloat16",
    }
    atomic_write_text(weights / "training.json", json.dumps(record, indent=1) + "\n")
    _log(f"wrote {weights} (VAE loss {vae_record['final_loss']}, PSNR {vae_record['held_out_psnr_db']} dB; "
         f"transformer loss {tr_record['final_loss']}"
         + (f", {args.long_frames} frames {long_record['final_loss']}" if long_record else "")
         + f"; {record['seconds_total']:.0f} s of training)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
