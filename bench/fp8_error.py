"""Error of precision="fp8" attention against exact (float64) masked attention, beside the 16-bit kernel's.

    TRITON_INTERPRET=1 python bench/fp8_error.py [--seeds 12] [--dtype float16]     # CPU, interpreted kernels
    python bench/fp8_error.py --device cuda --seq 4096 --heads 8 --head-dim 128      # a GPU (sm_89 / sm_90)

Random q, k, v with a per-channel bias on k (3 sigma: what K smoothing is for) and one outlier query token (8x), a
random block layout; per seed: the cosine similarity of the whole fp8 output with the exact one (the measure
SageAttention reports), the worst row's, the relative max error, and the ratio of mean absolute errors fp8 / 16-bit.
"""

from __future__ import annotations

import argparse
import math

import torch

import radial_diffusers as rd


def exact(q, k, v, layout):
    """float64 masked attention ``(B, S, H, D)``."""
    mask = layout.token_mask().to(q.device)
    qt, kt, vt = (x.double().transpose(1, 2) for x in (q, k, v))
    scores = (qt @ kt.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0).matmul(vt).transpose(1, 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=12)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--density", type=float, default=0.6)
    p.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    n = -(-args.seq // args.block)
    print(f"S={args.seq}, heads={args.heads}, head_dim={args.head_dim}, block={args.block}, {args.dtype}, "
          f"{args.device}")
    print(f"{'seed':>4s} {'cos whole':>10s} {'cos worst row':>14s} {'rel max err':>12s} {'fp8/16-bit mean err':>20s}")
    for seed in range(args.seeds):
        gen = torch.Generator().manual_seed(seed)
        mask = torch.rand(n, n, generator=gen) < args.density
        mask[torch.arange(n), torch.arange(n)] = True
        layout = rd.BlockLayout.from_block_mask(mask, args.block, args.seq)
        q, k, v = (torch.randn(1, args.seq, args.heads, args.head_dim, generator=gen) for _ in range(3))
        k = k + 3 * torch.randn(1, 1, args.heads, args.head_dim, generator=gen)
        q[:, 3] *= 8
        q, k, v = (x.to(args.device, dtype) for x in (q, k, v))
        with torch.no_grad():
            low = rd.block_sparse_attention(q, k, v, layout, backend="triton", precision="fp8").double()
            half = rd.block_sparse_attention(q, k, v, layout, backend="triton").double()
        ref = exact(q, k, v, layout)
        cos = torch.nn.functional.cosine_similarity(low.flatten(), ref.flatten(), dim=0).item()
        worst = torch.nn.functional.cosine_similarity(low, ref, dim=-1).min().item()
        rel = ((low - ref).abs().max() / ref.abs().max()).item()
        ratio = ((low - ref).abs().mean() / (half - ref).abs().mean()).item()
        print(f"{seed:4d} {cos:10.5f} {worst:14.5f} {rel:12.3e} {ratio:20.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
