"""The paper's length-extension recipe in miniature, on the trained toy model, end to end on a CPU.

1. The toy model was trained on clips of up to 65 frames (``examples/toy/train_toy_model.py``;
   ``radial_diffusers.toy.model.TRAIN_FRAMES``).
2. Render toy clips 4x longer (257 frames, 64x64) with their captions (mp4 + txt).
3. Train a LoRA on them with radial attention in the training step: ``radial-diffusers train`` on a config written
   here.
4. Evaluate at 4x (257 frames), 2x (129 frames) and 1x (65 frames: what the LoRA costs at the trained length):
   dense attention, radial attention (the paper's preset) and radial attention + the LoRA, same prompts and seeds;
   one report folder per length, and the table printed.

    python examples/toy/length_extension.py --out outputs/length-extension
    python examples/toy/length_extension.py --quick --out /tmp/le      # a smoke test: 2 LoRA steps, tiny eval
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import imageio
import numpy as np

from radial_diffusers.toy import model as toy
from radial_diffusers.toy.scenes import caption, random_scene, render

PROMPTS = ("a yellow square moving right on a striped background",
           "two red circles bouncing on a checkered background",
           "a blue triangle rotating on a dark background")
CLIP_SEEDS = 2_000_000  # clips the toy model never saw


def write_clips(folder: Path, count: int, frames: int, size: int) -> None:
    """``count`` captioned toy clips as ``clip-<i>.mp4`` + ``clip-<i>.txt`` (near-lossless H.264)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        scene = random_scene(np.random.default_rng(CLIP_SEEDS + i))
        video = render(scene, frames, size, size, seed=CLIP_SEEDS + i)
        imageio.mimwrite(folder / f"clip-{i:03d}.mp4", list(video), fps=16, codec="libx264", quality=10,
                         macro_block_size=1, pixelformat="yuv444p")
        (folder / f"clip-{i:03d}.txt").write_text(caption(scene) + "\n")


def train_config(out: Path, *, frames: int, size: int, steps: int, rank: int) -> Path:
    text = f"""# written by examples/toy/length_extension.py
model: toy-wan
data_dir: clips
output_dir: lora
num_frames: {frames}
height: {size}
width: {size}
fps: 16
max_sequence_length: {toy.TEXT_LENGTH}
rank: {rank}
block_size: 64
mixed_precision: "no"
gradient_checkpointing: false
learning_rate: 0.001
max_steps: {steps}
warmup_steps: {max(1, steps // 10)}
checkpoint_every: {max(1, steps // 2)}
"""
    path = out / "lora.yaml"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/length-extension")
    p.add_argument("--clips", type=int, default=24, help="training clips of 4x length")
    p.add_argument("--steps", type=int, default=150, help="LoRA steps")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--eval-steps", type=int, default=20, help="denoising steps of the evaluation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--lengths", nargs="+", choices=("4x", "2x", "1x"), default=None,
                   help="evaluate only these lengths (default all three; the LoRA is trained once, then reused)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: 2 clips, 2 LoRA steps, one 2-step eval at 17 frames 32x32 (labelled 2x; "
                   "--lengths is then ignored)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = toy.TRAIN_FRAMES
    lengths = {"4x": 4 * (base - 1) + 1, "2x": 2 * (base - 1) + 1, "1x": base}
    train_frames = lengths["4x"]
    if args.lengths:
        lengths = {k: v for k, v in lengths.items() if k in args.lengths}
    size = toy.TRAIN_SIZE
    if args.quick:  # every step of the recipe, small: 17-frame clips at 32x32
        args.clips, args.steps, args.eval_steps, lengths, size, train_frames = 2, 2, 2, {"2x": 17}, 32, 17
    lora = out / "lora" / "final" / "pytorch_lora_weights.safetensors"
    if not lora.is_file():
        print(f"rendering {args.clips} clips of {train_frames} frames", flush=True)
        write_clips(out / "clips", args.clips, train_frames, size)
        config = train_config(out, frames=train_frames, size=size, steps=args.steps, rank=args.rank)
        from radial_diffusers.cli import main as radial_diffusers  # `radial-diffusers train CONFIG`, in this process

        if radial_diffusers(["train", str(config)]) != 0:
            raise SystemExit(f"radial-diffusers train {config} failed")

    import radial_diffusers as rd
    from radial_diffusers.evaluation.run import default_variants
    from radial_diffusers.tiny import load_tiny

    pipe = load_tiny("toy-wan")
    config = rd.RadialConfig(block_size=64)
    failed = []
    for name, frames in lengths.items():
        result = rd.evaluate(pipe, list(PROMPTS[:1] if args.quick else PROMPTS), seeds=args.seeds,
                             variants=default_variants(config, lora=str(lora)), num_frames=frames, height=size,
                             width=size, num_inference_steps=args.eval_steps, call_kwargs=dict(toy.TOY_CALL_KWARGS))
        index = result.write(out / f"eval-{name}", overwrite=True)
        print(f"\n{name}: {frames} frames at {size}x{size}, {args.eval_steps} steps -> {index}")
        print(result.summary(), flush=True)
        failed += [f"{v.name} at {name}: {v.error}" for v in result.variants if v.status != "ok"]
    if failed:  # the reports are written; the recipe is not complete
        print("failed variants:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
