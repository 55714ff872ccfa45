"""A long Wan2.1 video on several GPUs: radial attention under Diffusers' context parallelism.

    torchrun --nproc-per-node 8 examples/multi_gpu_long_video.py --ulysses 4 --ring 2     # Wan2.1-T2V-14B, 720p
    torchrun --nproc-per-node 2 examples/multi_gpu_long_video.py --tiny --ring 2           # tiny model, CPU (gloo)

Every process loads the pipeline and runs the same call with the same seed; the transformer's sequence is split
over the processes (Ulysses: each attends the whole sequence with its share of the heads; ring: each keeps its
query chunk while the key/value chunks go round, computing only the radial mask's kept blocks of each pair).
Rank 0 writes the video. Wan2.1-1.3B has 12 heads: on 8 GPUs use ``--ulysses 4 --ring 2`` (or ``--ring 8``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers.utils import export_to_video

import radial_diffusers as rd

from _sizes import add_size_options, parse_with_sizes  # examples/_sizes.py

REAL = {"frames": 161, "height": 720, "width": 1280, "steps": 50}
TINY = {"frames": 33, "height": 64, "width": 64, "steps": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Wan-AI/Wan2.1-T2V-14B-Diffusers", help="Hub id or local pipeline folder")
    p.add_argument("--tiny", action="store_true", help="use the built-in tiny random Wan pipeline (no download)")
    p.add_argument("--prompt", default="a cat dancing on the beach at sunset, cinematic, high quality")
    p.add_argument("--ulysses", type=int, default=1, help="Ulysses degree (divides the attention heads)")
    p.add_argument("--ring", type=int, default=1, help="ring degree")
    add_size_options(p, REAL, TINY)
    p.add_argument("--out", default="wan_long_parallel.mp4")
    return parse_with_sizes(p, REAL, TINY, argv)


def main() -> None:
    args = parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the run, not after it
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if args.tiny:
        from radial_diffusers.tiny import default_call_kwargs, load_tiny

        pipe, extra, config = load_tiny("tiny-wan"), default_call_kwargs("tiny-wan"), rd.RadialConfig(block_size=16)
    else:
        from diffusers import WanPipeline

        pipe = WanPipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16)
        extra, config = {}, rd.RadialConfig()
    pipe.to(device)
    rd.enable_context_parallelism(pipe, ulysses=args.ulysses, ring=args.ring)
    state = rd.apply_radial_attention(pipe, config)
    rank = dist.get_rank()
    pipe.set_progress_bar_config(disable=rank != 0)

    video = pipe(args.prompt, num_frames=args.frames, height=args.height, width=args.width,
                 num_inference_steps=args.steps, guidance_scale=5.0,
                 generator=torch.Generator("cpu").manual_seed(0), **extra).frames[0]
    if rank == 0:
        export_to_video(video, args.out, fps=16)
        stats = state.stats()
        print(f"wrote {args.out} on {dist.get_world_size()} processes (ulysses {args.ulysses} x ring {args.ring}): "
              f"latent {state.geometry}, density {stats.density:.3f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
