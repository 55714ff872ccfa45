"""Cosmos-Predict2 video-to-world at 2x its checkpoint's length (185 frames from one image: 11.6 s at 16 fps, where the
2B checkpoint makes 93) with radial attention on the blocks' self-attention.

    python examples/cosmos_long_video.py --image first.png                 # Predict2 2B, 704x1280x185, CUDA
    python examples/cosmos_long_video.py --tiny                            # offline tiny random model, CPU

At 704x1280x185 the mask keeps 25% of the self-attention's blocks (`radial-diffusers mask --model cosmos --height 704
--width 1280 --frames 185`). The released pipelines need NVIDIA's guardrail (`pip install cosmos_guardrail`) and, for
their padding mask, torchvision. (Predict2's pipeline has no LoRA loader in Diffusers 0.42; `radial-diffusers train` adapts Predict2.5,
see examples/train/cosmos_predict2.5_2b_2x.yaml.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import Cosmos2VideoToWorldPipeline
from PIL import Image

import radial_diffusers as rd

from _sizes import add_size_options, parse_with_sizes  # examples/_sizes.py

FPS = 16
REAL = {"frames": 185, "height": 704, "width": 1280, "steps": 35}
TINY = {"frames": 81, "height": 128, "width": 128, "steps": 8}  # seconds of denoising on a CPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="nvidia/Cosmos-Predict2-2B-Video2World", help="Hub id or local pipeline folder")
    p.add_argument("--tiny", action="store_true", help="use the built-in tiny random Cosmos pipeline (no download)")
    p.add_argument("--image", help="the first frame (required without --tiny; --tiny makes a gradient)")
    p.add_argument("--prompt", default="a car driving down a wet city street at night, reflections of neon signs")
    add_size_options(p, REAL, TINY)
    p.add_argument("--out", default="cosmos_long.mp4", help="output video (default: cosmos_long.mp4)")
    args = parse_with_sizes(p, REAL, TINY, argv)
    if args.image is None and not args.tiny:
        p.error("--image is required: Cosmos-Predict2 video-to-world starts from an image (or pass --tiny)")
    if args.image is not None and not Path(args.image).is_file():
        p.error(f"--image {args.image}: no such file")
    return args


def first_frame(args: argparse.Namespace) -> Image.Image:
    if args.image is not None:
        return Image.open(args.image).convert("RGB").resize((args.width, args.height))
    ramp = torch.linspace(0, 255, args.width).to(torch.uint8)
    rgb = torch.stack([ramp.expand(args.height, -1), ramp.flip(0).expand(args.height, -1),
                       torch.full((args.height, args.width), 128, dtype=torch.uint8)], dim=-1)
    return Image.fromarray(rgb.numpy())


def main() -> None:
    args = parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the run, not after it

    cuda = torch.cuda.is_available()
    if args.tiny:
        from radial_diffusers.tiny import default_call_kwargs, load_tiny

        pipe = load_tiny("tiny-cosmos2")
        extra, config = default_call_kwargs("tiny-cosmos2"), rd.RadialConfig(block_size=16)
        pipe.to("cuda" if cuda else "cpu")
    else:
        pipe = Cosmos2VideoToWorldPipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16)
        extra, config = {}, rd.RadialConfig()  # ours: 1 dense layer, 12/50 of the steps dense, decay 1.0
        if cuda:
            pipe.enable_model_cpu_offload()  # the T5-XXL text encoder and the transformer take turns on the GPU
    state = rd.apply_radial_attention(pipe, config)

    video = pipe(image=first_frame(args), prompt=args.prompt, num_frames=args.frames, height=args.height,
                 width=args.width, num_inference_steps=args.steps, fps=FPS, output_type="np", **extra).frames[0]
    rd.export_video(video, args.out, FPS)
    stats = state.stats()
    print(f"wrote {args.out}: latent {state.geometry}, density {stats.density:.3f} "
          f"({stats.flops_saved:.0%} of the video self-attention's FLOPs skipped on sparse steps)")


if __name__ == "__main__":
    main()
