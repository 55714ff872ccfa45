"""Wan2.1-T2V-14B from the official DFloat11 release (lossless, ~68% of the BF16 weight memory), long video, radial
attention. The BF16 transformer weights are never downloaded: the model is built from its config and filled from
the DF11 checkpoint, decoded block by block on the GPU by our Triton kernel.

    python examples/wan_t2v_dfloat11.py                         # DFloat11/Wan2.1-T2V-14B-Diffusers-DF11, 768x1280x161
    python examples/wan_t2v_dfloat11.py --cpu-offload           # compressed weights in CPU RAM (24 GB-class GPUs)
    python examples/wan_t2v_dfloat11.py --tiny                  # offline: compresses the tiny random model

Your own checkpoints: ``radial-diffusers compress Wan-AI/Wan2.1-T2V-1.3B-Diffusers wan-df11 --cast-bf16`` (the
repository stores FP32 weights) then ``--df11 wan-df11 --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from diffusers.utils import export_to_video

import radial_diffusers as rd
from radial_diffusers.dfloat11 import compress, load_dfloat11

from _sizes import add_size_options, parse_with_sizes  # examples/_sizes.py

REAL = {"frames": 161, "height": 768, "width": 1280, "steps": 50}
TINY = {"frames": 81, "height": 128, "width": 128, "steps": 8}  # BF16 matmuls are slow on a CPU: a smaller video


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Wan-AI/Wan2.1-T2V-14B-Diffusers", help="the original (BF16) pipeline")
    p.add_argument("--df11", default="DFloat11/Wan2.1-T2V-14B-Diffusers-DF11", help="DF11 checkpoint: dir or Hub id")
    p.add_argument("--tiny", action="store_true", help="compress and run the built-in tiny random Wan (no download)")
    p.add_argument("--cpu-offload", action="store_true", help="keep the compressed weights in pinned CPU memory")
    p.add_argument("--prompt", default="a cat dancing on the beach at sunset, cinematic, high quality")
    add_size_options(p, REAL, TINY)
    p.add_argument("--out", default="wan_df11.mp4", help="output video (default: wan_df11.mp4)")
    return parse_with_sizes(p, REAL, TINY, argv)


def main() -> None:
    args = parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the run, not after it

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        from radial_diffusers.tiny import default_call_kwargs, load_tiny

        pipe = load_tiny("tiny-wan", dtype=torch.bfloat16)
        tmp = tempfile.TemporaryDirectory()  # removed when the script ends
        result = compress(pipe.transformer, f"{tmp.name}/df11", progress=False)  # BF16 in, lossless DF11 out
        print(f"compressed the tiny transformer: ratio {result.ratio:.3f}")
        load_dfloat11(pipe.transformer, result.path, device=device, cpu_offload=args.cpu_offload)
        extra, config = default_call_kwargs("tiny-wan"), rd.RadialConfig(block_size=16)
    else:
        from diffusers import WanPipeline

        transformer = load_dfloat11(args.model, args.df11, device=device, cpu_offload=args.cpu_offload)
        pipe = WanPipeline.from_pretrained(args.model, transformer=transformer, torch_dtype=torch.bfloat16)
        extra, config = {}, rd.RadialConfig()  # paper preset
    pipe.to(device)
    state = rd.apply_radial_attention(pipe, config)

    video = pipe(args.prompt, num_frames=args.frames, height=args.height, width=args.width,
                 num_inference_steps=args.steps, guidance_scale=5.0, **extra).frames[0]
    export_to_video(video, args.out, fps=16)
    print(f"wrote {args.out}: DFloat11 transformer, latent {state.geometry}, radial density "
          f"{state.stats().density:.3f}")


if __name__ == "__main__":
    main()
