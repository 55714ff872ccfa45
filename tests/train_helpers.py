"""Training-test helpers shared by the test files: synthetic clips, a small run config, the step's loss."""

from __future__ import annotations

from pathlib import Path

import imageio
import numpy as np
import torch

from lora_training import load_config
from lora_training.train import _adapter, latest_checkpoint, training_loss
from radial_diffusers.tiny import load_tiny


def write_clip(path: Path, seed: int, frames: int = 24, size=(64, 80)) -> None:
    """A drifting coarse random pattern (genuine motion, compresses well) as an mp4 of ``frames`` frames."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, (8, 10, 3)).astype(np.uint8)
    video = []
    for t in range(frames):
        img = np.kron(np.roll(base, t // 3, axis=1), np.ones((size[0] // 8, size[1] // 10, 1), np.uint8))
        video.append(img)
    imageio.mimwrite(path, video, fps=16, macro_block_size=1)


def write_clips(d: Path) -> Path:
    """Two captioned clips (``cat``, ``dog``) in folder ``d``; returns ``d``."""
    write_clip(d / "cat.mp4", 0)
    (d / "cat.txt").write_text("a cat dancing on the beach")
    write_clip(d / "dog.mp4", 1)
    (d / "dog.txt").write_text("a dog running in the snow")
    return d


def run_config(data_dir, out, **kw):
    """A small validated training config over ``data_dir`` (tiny Wan at 17x64x64, rank 4, block 16 unless ``kw``)."""
    base = dict(model="tiny-wan", data_dir=str(data_dir), output_dir=str(out), num_frames=17, height=64, width=64,
                fps=16, rank=4, alpha=8, block_size=16, mixed_precision="no", learning_rate=2e-3, max_steps=4,
                warmup_steps=1, checkpoint_every=2, gradient_checkpointing=True, seed=3)
    base.update(kw)
    return load_config(base)


def step_loss(transformer, cfg, batch, seed: int = 5) -> torch.Tensor:
    """The training step's loss of ``transformer`` (or any callable like it) on ``batch`` (shift 3, fixed noise),
    through the family's adapter and the tiny pipeline's objective, as ``train`` computes it."""
    adapter, objective = _adapter(cfg, load_tiny(cfg.model, 0))
    return training_loss(transformer, adapter, objective, batch, cfg, 3.0, torch.Generator().manual_seed(seed),
                         torch.device("cpu"), torch.float32)


def model_output(transformer, cfg, batch) -> torch.Tensor:
    """The transformer's raw output on ``batch`` with the inputs the training step builds (fixed noise)."""
    seen = []

    def call(*args, **kwargs):
        out = transformer(*args, **kwargs)
        seen.append(out[0] if isinstance(out, tuple) else out)  # Kandinsky 5: the tensor itself
        return out

    with torch.no_grad():
        step_loss(call, cfg, batch)
    return seen[0]


def checkpoint_lora(out_dir) -> dict[str, torch.Tensor]:
    """The LoRA tensors of the newest complete checkpoint of the run in ``out_dir``."""
    from safetensors.torch import load_file

    return load_file(str(latest_checkpoint(out_dir) / "lora.safetensors"))
