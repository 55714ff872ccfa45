"""LTX-2 text-to-video with sound at 4x its pipeline's default length (481 frames: 20 s at 24 fps) with radial
attention on the video self-attention.

    python examples/ltx2_long_video.py                                      # Lightricks/LTX-2, 512x768x481, CUDA
    python examples/ltx2_long_video.py --tiny                               # offline tiny random model, CPU

At 512x768x481 the mask keeps 25% of the video self-attention's blocks (`radial-diffusers mask --model
Lightricks/LTX-2 --height 512 --width 768 --frames 481`). The audio self-attention and the audio-video
cross-attentions stay dense (the audio sequence is short). The mp4 carries the generated audio track (AAC, muxed
with imageio-ffmpeg's ffmpeg: no PyAV needed).
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import torch
from diffusers import LTX2Pipeline

import radial_diffusers as rd

from _sizes import add_size_options, parse_with_sizes  # examples/_sizes.py

FPS = 24
REAL = {"frames": 481, "height": 512, "width": 768,
        "steps": inspect.signature(LTX2Pipeline.__call__).parameters["num_inference_steps"].default}
TINY = {"frames": 161, "height": 64, "width": 64, "steps": 8}  # seconds of denoising on a CPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Lightricks/LTX-2", help="Hub id or local pipeline folder")
    p.add_argument("--tiny", action="store_true", help="use the built-in tiny random LTX-2 pipeline (no download)")
    p.add_argument("--prompt", default="waves rolling onto a beach at sunset, seagulls calling, cinematic")
    add_size_options(p, REAL, TINY)
    p.add_argument("--lora", help="a LoRA folder or file (pipe.load_lora_weights)")
    p.add_argument("--out", default="ltx2_long.mp4", help="output video with its audio (default: ltx2_long.mp4)")
    return parse_with_sizes(p, REAL, TINY, argv)


def main() -> None:
    args = parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the run, not after it

    cuda = torch.cuda.is_available()
    if args.tiny:
        from radial_diffusers.tiny import default_call_kwargs, load_tiny

        pipe, extra, config = load_tiny("tiny-ltx2"), default_call_kwargs("tiny-ltx2"), rd.RadialConfig(block_size=16)
        pipe.to("cuda" if cuda else "cpu")
    else:
        pipe = LTX2Pipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16)
        extra, config = {}, rd.RadialConfig()  # ours: 1 dense layer, 12/50 of the steps dense, decay 1.0
        if cuda:
            pipe.enable_model_cpu_offload()  # the 19B transformer and the Gemma 3 text encoder take turns on the GPU
    if args.lora:
        pipe.load_lora_weights(args.lora)
    state = rd.apply_radial_attention(pipe, config)

    video, audio = pipe(args.prompt, negative_prompt="worst quality, blurry, jittery, distorted",
                        num_frames=args.frames, height=args.height, width=args.width, frame_rate=FPS,
                        num_inference_steps=args.steps, output_type="np", return_dict=False, **extra)
    rd.export_video(video[0], args.out, FPS, audio[0], pipe.vocoder.config.output_sampling_rate)
    stats = state.stats()
    print(f"wrote {args.out}: latent {state.geometry}, density {stats.density:.3f} "
          f"({stats.flops_saved:.0%} of the video self-attention's FLOPs skipped on sparse steps)")


if __name__ == "__main__":
    main()
