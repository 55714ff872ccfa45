"""Transformer step time under context parallelism against the number of GPUs, radial vs dense.

    torchrun --nproc-per-node 1 bench/parallel.py --out par.json              # the one-GPU baseline
    torchrun --nproc-per-node 8 bench/parallel.py --out par.json              # Ulysses 8, ring 8, Ulysses 4 x ring 2
    python bench/parallel.py --summary par.json                              # the table, with scaling efficiency
    torchrun --nproc-per-node 2 bench/parallel.py --cpu-dry-run --out x.json  # CPU/gloo, tiny model (CI)

One denoising forward of a random-weight Wan2.1-T2V-14B-size transformer (BF16; ``--model wan1.3b`` for the small
one, ``--layers`` to time fewer blocks) at 720x1280, 81 frames by default, with radial attention (every step and
layer sparse) and with dense attention, under each parallel mode the process count allows. Step time is the median
of ``--repeats`` forwards after a warm-up, every rank synchronised; rank 0 appends one JSON record per (mode,
attention) to ``--out``. Scaling efficiency = t(1 GPU) / (N x t(N GPUs)), from records of one file.

Anchors (not ours): xDiT dense HunyuanVideo 720p 5.6x on 8 H100; the official radial + Ulysses 3.8x on 4, 7.4x on 8.
HunyuanVideo has no context-parallel plan here yet, so only Wan is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))


def _modes(world: int, heads: int) -> list[tuple[str, int, int]]:
    """``(name, ulysses, ring)`` for ``world`` processes: one process alone, else Ulysses (if it divides the heads),
    ring, and unified (the largest Ulysses degree below ``world`` dividing both, ring for the rest)."""
    if world == 1:
        return [("single", 1, 1)]
    modes = [("ring", 1, world)]
    if heads % world == 0:
        modes.insert(0, ("ulysses", world, 1))
    for u in range(world // 2, 1, -1):
        if world % u == 0 and heads % u == 0:
            modes.append(("unified", u, world // u))
            break
    return modes


def _model(args, device, dtype):
    from diffusers import WanTransformer3DModel

    if args.cpu_dry_run:
        from radial_diffusers.tiny import load_tiny

        return load_tiny("tiny-wan").transformer.to(device, dtype)
    from dfloat11 import WAN_1_3B, WAN_14B  # bench/dfloat11.py: the released configs

    config = dict(WAN_14B if args.model == "wan14b" else WAN_1_3B)
    if args.layers:
        config["num_layers"] = args.layers
    with device:
        torch.manual_seed(0)
        return WanTransformer3DModel(**config).to(dtype).eval()


def _time(fn, repeats: int, device) -> float:
    import torch.distributed as dist

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        if dist.is_initialized():
            dist.barrier()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args) -> list[dict]:
    import torch.distributed as dist

    import radial_diffusers as rd

    cuda = torch.cuda.is_available() and not args.cpu_dry_run
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    world = dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    frames, height, width = (17, 64, 64) if args.cpu_dry_run else (args.frames, args.height, args.width)
    f, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    records = []
    probe = _model(args, torch.device("meta"), dtype) if not args.cpu_dry_run else _model(args, device, dtype)
    heads = probe.config.num_attention_heads
    del probe
    for name, ulysses, ring in _modes(world, heads):
        for attention in args.attention:
            tr = _model(args, device, dtype)
            if cuda and attention == "dense":
                # Diffusers' ring attention needs a backend returning the log-sum-exp (not SDPA's native one)
                tr.set_attention_backend("_native_cudnn")
            if world > 1:
                rd.enable_context_parallelism(tr, ulysses=ulysses, ring=ring)
            # dense: every call dense (dense_steps=1 and the same timestep each forward: step 0), i.e. the stock
            # attention on the processor's backend; under ring on the CPU's native backend, our op over all blocks
            config = rd.RadialConfig(dense_layers=0, dense_steps=0 if attention == "radial" else 1,
                                     block_size=16 if args.cpu_dry_run else args.block_size)
            state = rd.apply_radial_attention(tr, config)
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, tr.config.in_channels, f, h, w, generator=g).to(device, dtype)
            text = torch.randn(1, 512 if not args.cpu_dry_run else 16, tr.config.text_dim, generator=g).to(device,
                                                                                                           dtype)
            t = torch.tensor([500.0], device=device)

            @torch.no_grad()
            def step():
                tr(x, t, text, return_dict=False)

            seconds = _time(step, args.repeats, device)
            records.append({"world": world, "mode": name, "ulysses": ulysses, "ring": ring, "attention": attention,
                            "seconds": seconds, "model": "tiny" if args.cpu_dry_run else args.model,
                            "layers": tr.config.num_layers, "geometry": [frames, height, width],
                            "tokens": f * (h // 2) * (w // 2),
                            "density": state.stats().density if attention == "radial" else 1.0,
                            "device": torch.cuda.get_device_name(device) if cuda else "cpu"})
            if dist.get_rank() == 0:
                print(json.dumps(records[-1]), flush=True)
            del tr, state
            if cuda:
                torch.cuda.empty_cache()
    if dist.get_rank() == 0 and args.out:
        path = Path(args.out)
        old = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(old + records, indent=1) + "\n")
    dist.destroy_process_group()
    return records


def summary(records: list[dict]) -> str:
    """A markdown table of the records, with speedup and efficiency against the one-process record of the same
    model, geometry, layers and attention."""
    base = {(r["model"], tuple(r["geometry"]), r["layers"], r["attention"]): r["seconds"] for r in records
            if r["world"] == 1}
    rows = ["| GPUs | mode | attention | s/step | speedup | efficiency |", "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["attention"], r["world"], r["mode"])):
        one = base.get((r["model"], tuple(r["geometry"]), r["layers"], r["attention"]))
        speed = f"{one / r['seconds']:.2f}x" if one else "n/a"
        eff = f"{one / (r['world'] * r['seconds']):.0%}" if one else "n/a"
        mode = r["mode"] if r["world"] == 1 else f"{r['mode']} (U{r['ulysses']} x R{r['ring']})"
        rows.append(f"| {r['world']} | {mode} | {r['attention']} | {r['seconds']:.3f} | {speed} | {eff} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("wan14b", "wan1.3b"), default="wan14b")
    p.add_argument("--layers", type=int, default=None, help="time this many blocks (default: the model's)")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--attention", nargs="+", choices=("radial", "dense"), default=["radial", "dense"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON file the records are appended to (rank 0)")
    p.add_argument("--summary", default=None, metavar="JSON", help="print the table of a records file and exit")
    p.add_argument("--cpu-dry-run", action="store_true", help="the tiny Wan model on CPU processes (gloo)")
    args = p.parse_args(argv)
    if args.summary:
        print(summary(json.loads(Path(args.summary).read_text())))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
