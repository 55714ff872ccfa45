"""Wan2.1 text-to-video at 2x the trained length (161 frames) with radial attention.

    python examples/wan_t2v_long_video.py                                   # Wan2.1-T2V-14B, 768x1280x161, CUDA
    python examples/wan_t2v_long_video.py --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --height 480 --width 832
    python examples/wan_t2v_long_video.py --tiny                            # offline tiny random model, CPU

Without a length-extension LoRA (``--lora``) a base model extrapolates to 161 frames with reduced quality; the paper
fine-tunes one with radial attention (see the training recipes). 768x1280 keeps the sequence a multiple of 128
tokens; other sizes work too (the mask is padded).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers.utils import export_to_video

import radial_diffusers as rd

from _sizes import add_size_options, parse_with_sizes  # examples/_sizes.py

REAL = {"frames": 161, "height": 768, "width": 1280, "steps": 50}
TINY = {"frames": 161, "height": 192, "width": 192, "steps": 8}  # generate's default size for a random tiny model: seconds of denoising on a CPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Wan-AI/Wan2.1-T2V-14B-Diffusers", help="Hub id or local pipeline folder")
    p.add_argument("--tiny", action="store_true", help="use the built-in tiny random Wan pipeline (no download)")
    p.add_argument("--prompt", default="a cat dancing on the beach at sunset, cinematic, high quality")
    add_size_options(p, REAL, TINY)
    p.add_argument("--lora", help="a length-extension LoRA folder or file (pipe.load_lora_weights)")
    p.add_argument("--out", default="wan_long.mp4", help="output video (default: wan_long.mp4)")
    return parse_with_sizes(p, REAL, TINY, argv)


def main() -> None:
    args = parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the run, not after it

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        from radial_diffusers.tiny import default_call_kwargs, load_tiny

        pipe, extra, config = load_tiny("tiny-wan"), default_call_kwargs("tiny-wan"), rd.RadialConfig(block_size=16)
    else:
        from diffusers import WanPipeline

        pipe = WanPipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16)
        extra, config = {}, rd.RadialConfig()  # paper preset: 1 dense layer, 12/50 dense steps, decay 0.2
    pipe.to(device)
    if args.lora:
        pipe.load_lora_weights(args.lora)
    state = rd.apply_radial_attention(pipe, config)

    video = pipe(args.prompt, num_frames=args.frames, height=args.height, width=args.width,
                 num_inference_steps=args.steps, guidance_scale=5.0, **extra).frames[0]
    export_to_video(video, args.out, fps=16)
    stats = state.stats()
    print(f"wrote {args.out}: latent {state.geometry}, density {stats.density:.3f} "
          f"({stats.flops_saved:.0%} of attention FLOPs skipped on sparse steps)")


if __name__ == "__main__":
    main()
