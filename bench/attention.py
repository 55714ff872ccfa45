"""GPU attention benchmark and check: correctness of every available backend (triton, flex, torch) against an fp32
reference on fresh random inputs, then forward (and with --backward, forward+backward on the first geometry) timings
beside dense SDPA (FLASH_ATTENTION, cuDNN) and FlexAttention on the same radial mask, with density and effective
TFLOP/s over the computed blocks.

Run on a CUDA machine:  python bench/attention.py [--quick] [--backward] [--hunyuan-509]
(bench/gpu_check.sh wraps it with a timeout). Prints tables; exits 1 if a correctness check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import radial_diffusers as rd
from radial_diffusers.attention.op import _triton_ready

DEVICE = "cuda"

GEOMETRIES = [
    # name, model, latent frames, tokens per frame, decay, heads, head_dim
    ("Wan2.1-1.3B 480x832x81", "wan", 21, 1560, 0.2, 12, 128),
    ("Wan2.1-14B 768x1280x69", "wan", 18, 3840, 0.2, 40, 128),
]
# Optional (--hunyuan-509): the paper's 4x setting; long (S = 460,800), so it runs last.
HUNYUAN_509 = ("HunyuanVideo 720x1280x509", "hunyuan", 128, 3600, 1.0, 24, 128)


def reference(q, k, v, layout, kv_lengths=None):
    """fp32 dense masked attention (small shapes only)."""
    b, s, h, d = q.shape
    mask = layout.to(q.device).token_mask()[None].expand(b, s, s).clone()
    if kv_lengths is not None:
        mask &= torch.arange(s, device=q.device)[None, None, :] < kv_lengths[:, None, None]
    qt, kt, vt = (x.float().transpose(1, 2) for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask[:, None])
    return out.transpose(1, 2)


def check(backends) -> bool:
    ok = True
    print("\n## correctness vs fp32 dense masked reference (relative max error)")
    print(f"{'backend':8s} {'dtype':9s} {'case':34s} {'out':>9s} {'dq':>9s} {'dk':>9s} {'dv':>9s}")
    cases = [("wan F=6 tpf=200 B=64 unaligned", "wan", 6, 200, 0, 64),
             ("hunyuan F=4 tpf=256 text=77 B=128", "hunyuan", 4, 256, 77, 128),
             ("wan F=8 tpf=96 B=16 d=128", "wan", 8, 96, 0, 16)]
    for backend in backends:
        for dtype in (torch.float32, torch.bfloat16):
            # FlexAttention compiles per shape and dtype: check it on bf16 only to keep the run short.
            if backend == "flex" and dtype != torch.bfloat16:
                continue
            for name, model, frames, tpf, text, block in cases:
                if backend == "flex" and block != 128:  # flex trains on 128-token blocks only
                    continue
                s = frames * tpf + text
                mask = rd.radial_block_mask(frames, tpf, model=model, block_size=block, text_tokens=text)
                layout = rd.BlockLayout.from_block_mask(mask, block, s)
                d = 128 if block != 16 else 64
                q, k, v = (torch.randn(2, s, 4, d, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
                kv = torch.tensor([s, s - text // 2], device=DEVICE) if text else None
                out = rd.block_sparse_attention(q, k, v, layout, kv_lengths=kv, backend=backend)
                ref = reference(q, k, v, layout, kv)
                g = torch.randn_like(ref)
                got = torch.autograd.grad(out, (q, k, v), g.to(out.dtype))
                want = torch.autograd.grad(ref, (q, k, v), g)
                errs = [((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                        for a, b in zip((out, *got), (ref, *want))]
                tol = 1e-2 if dtype == torch.bfloat16 else 1e-4
                flag = "" if max(errs) <= tol else "  FAIL"
                ok &= not flag
                print(f"{backend:8s} {str(dtype)[6:]:9s} {name:34s} " + " ".join(f"{e:9.2e}" for e in errs) + flag)
    return ok


def bench_ms(fn, iters=5) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def timings(backends, with_backward: bool) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    print(f"\n## timings (bf16, batch 1; ms per call; TFLOP/s over computed blocks) on {torch.cuda.get_device_name()}")
    for name, model, frames, tpf, decay, heads, d in GEOMETRIES:
        s = frames * tpf
        mask = rd.radial_block_mask(frames, tpf, model=model, decay_factor=decay, sink=model == "hunyuan" or None)
        layout = rd.BlockLayout.from_block_mask(mask, 128, s).to("cuda")
        stats = rd.mask_stats(mask, 128, s, d)
        print(f"\n### {name}: S={s}, heads={heads}, density={stats.density:.4f} (1/density={1 / stats.density:.2f})")
        q, k, v = (torch.randn(1, s, heads, d, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        dense_flops = stats.dense_flops * heads
        sparse_flops = stats.sparse_flops * heads
        rows = []
        for label, sdp in (("dense SDPA flash", SDPBackend.FLASH_ATTENTION), ("dense SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel(sdp):
                    t = bench_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt))
                rows.append((label, t, dense_flops))
            except RuntimeError as exc:
                print(f"# {label}: unavailable ({str(exc).splitlines()[0][:80]})")
        for backend in backends:
            with torch.no_grad():
                t = bench_ms(lambda: rd.block_sparse_attention(q, k, v, layout, backend=backend))
            rows.append((f"ours backend={backend}", t, sparse_flops))
        base = rows[0][1]
        for label, t, flops in rows:
            print(f"{label:26s} fwd {t:9.2f} ms  {base / t:6.2f}x vs flash  {flops / t / 1e9:7.1f} TFLOP/s")
        if with_backward and name == GEOMETRIES[0][0]:
            qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                tb = bench_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
                    *(x.transpose(1, 2) for x in (qg, kg, vg))).sum().backward(), iters=3)
            print(f"{'dense SDPA flash':26s} fwd+bwd {tb:9.2f} ms")
            for backend in backends:
                t = bench_ms(lambda: rd.block_sparse_attention(qg, kg, vg, layout, backend=backend).sum().backward(),
                             iters=3)
                print(f"{'ours backend=' + backend:26s} fwd+bwd {t:9.2f} ms  {tb / t:6.2f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="correctness only")
    p.add_argument("--backward", action="store_true", help="also time forward+backward")
    p.add_argument("--cpu-dry-run", action="store_true", help="run the correctness part on CPU (torch backend)")
    p.add_argument("--hunyuan-509", action="store_true", help="also time HunyuanVideo 720x1280x509 (forward only)")
    p.add_argument("--backends", default=None, help="comma-separated subset of torch,flex,triton to check and time")
    p.add_argument("--time-backends", default=None, help="comma-separated backends to time (default: all checked)")
    args = p.parse_args()
    if args.cpu_dry_run:
        global DEVICE
        DEVICE = "cpu"
        return 0 if check(["torch"]) else 1
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    torch.manual_seed(int(time.time()))
    backends = (["triton"] if _triton_ready(torch.device("cuda")) else []) + ["flex", "torch"]
    if args.backends:
        backends = [b for b in backends if b in args.backends.split(",")]
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, backends {backends}")
    os.environ["RADIAL_TRITON_AUTOTUNE"] = "0"  # small correctness shapes: default configs, no tuning runs
    ok = check(backends)
    os.environ["RADIAL_TRITON_AUTOTUNE"] = "1"
    if not args.quick:
        timed = args.time_backends.split(",") if args.time_backends else backends
        if args.hunyuan_509:
            GEOMETRIES.append(HUNYUAN_509)
        timings([b for b in backends if b in timed], args.backward)
    from radial_diffusers.attention import flex

    print(f"# FlexAttention backward path: {flex.BACKWARD_PATH}")
    print("\nRESULT:", "all correctness checks passed" if ok else "CORRECTNESS FAILURES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
