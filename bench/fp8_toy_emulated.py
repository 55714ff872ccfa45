"""What fp8 attention costs in quality on the trained toy model, on a CPU: radial attention with e4m3 QK^T against
dense attention, beside radial attention in BF16, at the demo's settings.

    TRITON_INTERPRET=1 python bench/fp8_toy_emulated.py --check --out outputs/fp8-toy   # ~4 minutes, 2 CPU cores
    python bench/fp8_toy_emulated.py --dry-run --out /tmp/fp8-toy                         # 2 steps, 9 frames (CI)

``precision="fp8"`` runs only on GPUs with e4m3 tensor cores, and the interpreted kernel takes about 50 s per toy
attention call (an hour per video), so the sparse calls run :func:`emulated_fp8_forward`: the fp8 path's arithmetic
in PyTorch. K smoothed by its mean over tokens (below each sample's key limit, the keys past it zeroed, as the
kernels do), Q and K rounded to e4m3 (nearest-even, as ``attention.fp8``'s
quantizer) with one scale per (sample, head, layout block), then attention over the layout in float32 on the
dequantized values, the output in V's dtype. The kernels' one other rounding, P to BF16 before P @ V, is not
emulated (2^-9 relative per weight, against e4m3's 2^-4 per q / k element); ``--check`` measures the emulation
against the interpreted kernel on random inputs first. The number is that of the arithmetic, not of a GPU run.

Every number comes from this run; the eval report (index.html) is written under --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

import torch

PROMPTS = ("a yellow square moving right on a striped background",
           "two red circles bouncing on a checkered background",
           "a blue triangle rotating on a dark background")


def _e4m3_roundtrip(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """``x`` ``(B, S, H, D)`` float32 quantized as ``attention.fp8.quantize`` does (one scale per (sample, head,
    layout block): amax / E4M3_MAX, 1 for an all-zero block; nearest-even) and dequantized, float32."""
    from radial_diffusers.attention.fp8 import E4M3_MAX

    b, s, h, d = x.shape
    pad = -s % block_size
    blocks = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)).view(b, (s + pad) // block_size, block_size, h, d)
    amax = blocks.abs().amax(dim=(2, 4), keepdim=True)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    back = (blocks / scale).to(torch.float8_e4m3fn).float() * scale
    return back.view(b, s + pad, h, d)[:, :s]


def emulated_fp8_forward(q, k, v, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len, scale):
    """``attention.fp8.forward``'s arithmetic in PyTorch: ``(out (B, S, H, D) in v's dtype, lse (B, H, S) float32)``
    of attention with e4m3 q and smoothed k, float32 softmax and P @ V."""
    from radial_diffusers.attention import op

    valid = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)  # keys below each sample's limit
    if kv_lengths is not None:
        valid = torch.arange(k.shape[1], device=k.device)[None, :] < kv_lengths.to(k.device)[:, None]
    valid = valid[:, :, None, None]
    kept = torch.where(valid, k.float(), 0.0)  # keys past the limit: not read by the kernels, stored as 0
    mean = kept.sum(1) / valid.sum(1).clamp_min(1)  # (B, H, D)
    kd = _e4m3_roundtrip(torch.where(valid, kept - mean[:, None], 0.0), block_size)
    qd = _e4m3_roundtrip(q.float(), block_size)
    out, lse = op._bsa_forward(qd, kd, v.float(), counts, indices, t_counts, t_indices, kv_lengths, block_size,
                               seq_len, scale, "torch")
    lse = torch.where(torch.isfinite(lse), lse + scale * torch.einsum("bshd,bhd->bhs", q.float(), mean), lse)
    return out.to(v.dtype), lse


@contextlib.contextmanager
def emulating_fp8():
    """Route ``precision="fp8"`` calls to :func:`emulated_fp8_forward` (CPU tensors: the backend checks pass as
    under the interpreter)."""
    from radial_diffusers.attention import fp8

    saved = fp8.forward
    fp8.forward = emulated_fp8_forward
    try:
        yield
    finally:
        fp8.forward = saved


def check_emulation(seed: int = 0) -> dict:
    """The emulation against the interpreted fp8 kernel on random BF16 inputs with channel-biased K (toy heads:
    head_dim 64, block 64, an unaligned tail): max and mean absolute difference, and for scale the kernel's against
    float32 attention of the BF16 inputs. Needs ``TRITON_INTERPRET=1`` set before Triton kernels are imported."""
    import radial_diffusers as rd

    g = torch.Generator().manual_seed(seed)
    s, h, d, block = 300, 2, 64, 64
    mask = torch.rand(5, 5, generator=g) < 0.5
    mask |= torch.eye(5, dtype=torch.bool)
    layout = rd.BlockLayout.from_block_mask(mask, block, s)
    q = torch.randn(1, s, h, d, generator=g).bfloat16()
    k = (torch.randn(1, s, h, d, generator=g) + 4 * torch.randn(1, 1, h, d, generator=g)).bfloat16()
    v = torch.randn(1, s, h, d, generator=g).bfloat16()
    with torch.no_grad():
        kernel = rd.block_sparse_attention(q, k, v, layout, backend="triton", precision="fp8").double()
        with emulating_fp8():
            emulated = rd.block_sparse_attention(q, k, v, layout, backend="triton", precision="fp8").double()
        exact = rd.block_sparse_attention(q.float(), k.float(), v.float(), layout, backend="torch").double()
    return {"max_abs_emulated_vs_kernel": float((emulated - kernel).abs().max()),
            "mean_abs_emulated_vs_kernel": float((emulated - kernel).abs().mean()),
            "mean_abs_kernel_vs_exact": float((kernel - exact).abs().mean())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/fp8-toy")
    p.add_argument("--frames", type=int, nargs="+", default=None,
                   help="lengths to run (default: the toy's training length and the demo's)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the demo's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--check", action="store_true",
                   help="first compare the emulation with the interpreted kernel (needs TRITON_INTERPRET=1)")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)

    import radial_diffusers as rd
    from radial_diffusers.cli import TOY_BLOCK_SIZE, TOY_DEFAULTS
    from radial_diffusers.evaluation.metrics import video_psnr
    from radial_diffusers.evaluation.run import Variant
    from radial_diffusers.tiny import cast_pipeline, load_tiny
    from radial_diffusers.toy.model import TOY_CALL_KWARGS, TRAIN_FRAMES

    out = Path(args.out)
    summary: dict = {}
    if args.check:
        if os.environ.get("TRITON_INTERPRET") != "1":
            p.error("--check runs the fp8 kernel under Triton's interpreter: set TRITON_INTERPRET=1")
        summary["check"] = check_emulation()
        print("emulation vs interpreted kernel:", json.dumps(summary["check"]), flush=True)

    prompts = list(PROMPTS[:1] if args.dry_run else PROMPTS)
    steps = 2 if args.dry_run else (args.steps or TOY_DEFAULTS["steps"])
    size = 32 if args.dry_run else TOY_DEFAULTS["height"]
    lengths = [9] if args.dry_run else (args.frames or [TRAIN_FRAMES, TOY_DEFAULTS["frames"]])
    if any(f < 1 or (f - 1) % 4 for f in lengths):
        p.error(f"--frames {' '.join(map(str, lengths))}: each length must be 4k+1 (17, 65, 97, ...), the frame counts "
                "the toy's Wan VAE decodes")
    block = 16 if args.dry_run else TOY_BLOCK_SIZE
    preset = rd.RadialConfig(block_size=block, backend="torch")
    fp8_config = rd.RadialConfig(block_size=block, backend="triton", attention_precision="fp8")
    variants = [Variant("dense"), Variant("radial", preset), Variant("radial-fp8 (emulated)", fp8_config)]
    pipe = cast_pipeline(load_tiny("toy-wan"), torch.bfloat16)
    rows = []
    for frames in lengths:
        with emulating_fp8():
            result = rd.evaluate(pipe, prompts, variants=variants, seeds=args.seeds, num_frames=frames, height=size,
                                 width=size, num_inference_steps=steps, call_kwargs=dict(TOY_CALL_KWARGS),
                                 recall_rows=0, progress=False)
        result.write(out / f"eval-{frames}", overwrite=True)
        by_name = {v.name: v for v in result.variants}
        for v in result.variants[1:]:
            if v.status != "ok":
                raise SystemExit(f"{v.name} failed at {frames} frames: {v.error}")
        vs_radial = [float(x) for a, b in zip(result.videos["radial"], result.videos["radial-fp8 (emulated)"])
                     for x in video_psnr(a, b) if torch.isfinite(x)]
        fp8_vs_radial = sum(vs_radial) / len(vs_radial) if vs_radial else float("inf")
        radial, low = by_name["radial"], by_name["radial-fp8 (emulated)"]
        rows.append(f"| {frames} | {radial.density:.3f} | {radial.psnr_mean:.2f} | {radial.ssim_mean:.4f} | "
                    f"{low.psnr_mean:.2f} | {low.ssim_mean:.4f} | {fp8_vs_radial:.2f} |")
        summary[str(frames)] = {"radial": radial.to_dict(), "fp8": low.to_dict(), "fp8_vs_radial_psnr": fp8_vs_radial}
        print(rows[-1], flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"\nBF16 toy model, {len(prompts)} prompt(s) x seeds {args.seeds}, {steps} steps, {size}x{size}, "
          f"block {block}")
    print("| frames | density | radial PSNR vs dense (dB) | SSIM | radial fp8 PSNR vs dense (dB) | SSIM | "
          "fp8 vs BF16 radial PSNR (dB) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
