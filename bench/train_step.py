"""One LoRA training step (forward + backward + AdamW) with radial vs dense attention, measured side by side.

    python bench/train_step.py                       # CPU: tiny Wan2.1 at a long video (161 frames at 256x256)
    python bench/train_step.py --device cuda --model wan1.3b --frames 161 --height 480 --width 832

Each mode runs in a fresh process (so peak memory is its own): step time is the median over ``--steps`` steps after
one warm-up step; peak memory is the process's peak RSS on CPU and ``torch.cuda.max_memory_allocated`` on CUDA.
``wan1.3b`` is a random-init Wan2.1-T2V-1.3B-size transformer (BF16, rank-128 LoRA), not trained weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _child(args) -> dict:
    from types import SimpleNamespace

    from peft import LoraConfig

    import radial_diffusers as rd
    from lora_training.config import DEFAULT_TARGETS, load_config
    from lora_training.objective import Objective
    from lora_training.train import training_loss
    from radial_diffusers.training_adapters import TrainingOptions, WanTraining

    dev = torch.device(args.device)
    if args.model == "tiny":
        from radial_diffusers.tiny import load_tiny

        tr = load_tiny("tiny-wan", 0).transformer.to(dev)
        dtype, rank, text_dim = torch.float32, 4, tr.config.text_dim
    else:
        from diffusers import WanTransformer3DModel

        from dfloat11 import WAN_1_3B

        with dev:
            tr = WanTransformer3DModel(**WAN_1_3B).to(torch.bfloat16)
        dtype, rank, text_dim = torch.bfloat16, 128, WAN_1_3B["text_dim"]
    cfg = load_config({"model": "tiny-wan" if args.model == "tiny" else "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                       "data_dir": ".", "output_dir": ".", "num_frames": args.frames, "height": args.height,
                       "width": args.width, "rank": rank, "block_size": args.block_size,
                       "attention": args.mode, "mixed_precision": "no" if dtype == torch.float32 else "bf16",
                       # a Hub id's family is known only from a loaded pipeline, and none is loaded here
                       "target_modules": DEFAULT_TARGETS["wan"]})
    tr.requires_grad_(False)
    tr.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=cfg.targets))
    params = [p for p in tr.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    tr.enable_gradient_checkpointing()
    state = rd.apply_radial_attention(tr, cfg.radial_config()) if args.mode == "radial" else None
    opt = torch.optim.AdamW(params, lr=1e-4)
    f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    g = torch.Generator().manual_seed(0)
    batch = {"latents": torch.randn(1, 16, f, h, w, generator=g),
             "prompt_embeds": torch.randn(1, 512 if args.model != "tiny" else 16, text_dim, generator=g)}

    # the Wan text-to-video training step without a pipeline: the adapter only shapes the transformer's inputs
    adapter = WanTraining(SimpleNamespace(config={}), TrainingOptions(args.frames, args.height, args.width))
    objective = Objective("flow")

    def step(i):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = training_loss(tr, adapter, objective, batch, cfg, 3.0, torch.Generator().manual_seed(i), dev,
                                 dtype)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step(0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        step(i + 1)
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024
    return {"seconds": statistics.median(times), "peak_bytes": peak,
            "density": state.layout.density if state is not None else 1.0,
            "tokens": f * (h // 2) * (w // 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", choices=("tiny", "wan1.3b"), default="tiny")
    ap.add_argument("--frames", type=int, default=161)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=None, help="default: tiny 64, wan1.3b 128")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--mode", choices=("radial", "dense"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.block_size is None:
        args.block_size = 64 if args.model == "tiny" else 128
    if args.mode is not None:
        print(json.dumps(_child(args)))
        return
    from radial_diffusers._machine import cpu_model

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{cpu_model()}, {os.cpu_count()} CPUs"
    print(f"LoRA training step, {args.model} at {args.frames}x{args.height}x{args.width}, block {args.block_size}; "
          f"{where}; torch {torch.__version__}")
    results = {}
    for mode in ("radial", "dense"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:7s}: {r['seconds']:.3f} s/step, peak {r['peak_bytes'] / 1e9:.2f} GB, density {r['density']:.3f}, "
              f"{r['tokens']:,} tokens")
    ratio = results["dense"]["seconds"] / results["radial"]["seconds"]
    mem = results["radial"]["peak_bytes"] / results["dense"]["peak_bytes"]
    print(f"radial vs dense: {ratio:.2f}x faster per step, peak memory {mem:.2f}x")


if __name__ == "__main__":
    main()
