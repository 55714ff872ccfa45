"""Kandinsky 5.0 Video Lite text-to-video at 2x its checkpoint's length (241 frames: 10 s at 24 fps, from the 5-second
checkpoint) with radial attention on the visual blocks' self-attention.

    python examples/kandinsky5_long_video.py                                # the 5 s Lite checkpoint, 512x768x241, CUDA
    python examples/kandinsky5_long_video.py --tiny                         # offline tiny random model, CPU

At 512x768x241 the mask keeps 25% of the self-attention's blocks (`radial-diffusers mask --model kandinsky5 --height
512 --width 768 --frames 241`). On the NABLA checkpoints (Pro, and the 10 s Lite ones) radial attention replaces
NABLA. For quality past the trained length, train a length-extension LoRA first (`radial-diffusers train`, see the
README) and pass it with `--lora`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import Kandinsky5T2VPipeline

import radial_diffusers as rd

from _sizes import add_size_options, parse_with_sizes  # examples/_sizes.py

FPS = 24
REAL = {"frames": 241, "height": 512, "width": 768, "steps": 50}
TINY = {"frames": 81, "height": 128, "width": 128, "steps": 8}  # seconds of denoising on a CPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers",
                   help="Hub id or local pipeline folder")
    p.add_argument("--tiny", action="store_true",
                   help="use the built-in tiny random Kandinsky 5 pipeline (no download)")
    p.add_argument("--prompt", default="a red fox running through a snowy forest, cinematic, slow motion")
    add_size_options(p, REAL, TINY)
    p.add_argument("--lora", help="a LoRA folder or file (pipe.load_lora_weights)")
    p.add_argument("--out", default="kandinsky5_long.mp4", help="output video (default: kandinsky5_long.mp4)")
    return parse_with_sizes(p, REAL, TINY, argv)


def main() -> None:
    args = parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the run, not after it

    cuda = torch.cuda.is_available()
    if args.tiny:
        from radial_diffusers.tiny import default_call_kwargs, load_tiny

        pipe = load_tiny("tiny-kandinsky5")
        extra, config = default_call_kwargs("tiny-kandinsky5"), rd.RadialConfig(block_size=16)
        pipe.to("cuda" if cuda else "cpu")
    else:
        pipe = Kandinsky5T2VPipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16)
        extra, config = {}, rd.RadialConfig()  # ours: 1 dense layer, 12/50 of the steps dense, decay 1.0
        if cuda:
            pipe.enable_model_cpu_offload()  # the Qwen2.5-VL 7B text encoder and the transformer take turns on the GPU
    if args.lora:
        pipe.load_lora_weights(args.lora)
    state = rd.apply_radial_attention(pipe, config)

    video = pipe(args.prompt, num_frames=args.frames, height=args.height, width=args.width,
                 num_inference_steps=args.steps, output_type="np", **extra).frames[0]
    rd.export_video(video, args.out, FPS)
    stats = state.stats()
    print(f"wrote {args.out}: latent {state.geometry}, density {stats.density:.3f} "
          f"({stats.flops_saved:.0%} of the video self-attention's FLOPs skipped on sparse steps)")


if __name__ == "__main__":
    main()
