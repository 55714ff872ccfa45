"""CPU attention benchmark: our PyTorch block-sparse path vs dense SDPA vs FlexAttention (compiled) on one radial mask.

Run:  .venv/bin/python bench/attention_cpu.py [--frames 64 --tpf 256 --heads 2 --head-dim 64 --block 128]

Prints one table; ratios are measured side by side in this run (median of --repeat timed calls after a warm-up).
The target of the radial foundation issue: at S ~ 16k-32k and density ~0.3, ours >= 0.6 x (1 / density) faster
than dense SDPA, and faster than compiled FlexAttention on the same mask.
"""

from __future__ import annotations

import argparse
import time

import torch
from radial_diffusers._machine import cpu_model
from radial_diffusers.evaluation.attention_speed import measure

import radial_diffusers as rd


def _timed(fn, repeat: int) -> float:
    return measure(fn, repeat, torch.device("cpu"))


def _identical_set_layout(mask: torch.Tensor, block: int, seq_len: int) -> rd.BlockLayout:
    """The same layout, its PyTorch-path plan built from identical key sets only (no rectangle cover)."""
    from radial_diffusers.attention import block_cover

    layout = rd.BlockLayout.from_block_mask(mask, block, seq_len)
    saved, block_cover._MAX_COVER_WORK = block_cover._MAX_COVER_WORK, 0
    try:
        block_cover.plan_for(layout.counts, layout.indices, block)  # cached for this layout's tensors
    finally:
        block_cover._MAX_COVER_WORK = saved
    return layout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=64, help="latent frames")
    p.add_argument("--tpf", type=int, default=256, help="tokens per latent frame")
    p.add_argument("--model", default="wan", choices=["wan", "hunyuan"])
    p.add_argument("--decay", type=float, default=1.0)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its first compile takes a while)")
    p.add_argument("--backward", action="store_true", help="also time forward+backward")
    p.add_argument("--compare-plans", action="store_true",
                   help="also time our path batched by identical key sets only (the plan before the rectangle cover)")
    args = p.parse_args()

    torch.manual_seed(0)
    mask = rd.radial_block_mask(args.frames, args.tpf, model=args.model, block_size=args.block,
                                decay_factor=args.decay)
    s = args.frames * args.tpf
    layout = rd.BlockLayout.from_block_mask(mask, args.block, s)
    plain = _identical_set_layout(mask, args.block, s) if args.compare_plans else None
    stats = rd.mask_stats(mask, args.block, s, args.head_dim)
    q, k, v = (torch.randn(1, s, args.heads, args.head_dim) for _ in range(3))
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))

    print(f"# CPU: {cpu_model()}, threads={torch.get_num_threads()}, torch {torch.__version__}")
    print(f"# geometry: {args.model} F={args.frames} tpf={args.tpf} S={s} block={args.block} heads={args.heads} "
          f"head_dim={args.head_dim} density={stats.density:.4f} (1/density={1 / stats.density:.2f}x) "
          f"flops_saved={stats.flops_saved:.3f}")

    rows = []
    with torch.no_grad():
        t_sdpa = _timed(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt), args.repeat)
        rows.append(("dense SDPA", t_sdpa))
        t_ours = _timed(lambda: rd.block_sparse_attention(q, k, v, layout, backend="torch"), args.repeat)
        rows.append(("ours (torch path)", t_ours))
        if plain is not None:
            rows.append(("ours, identical-set plan", _timed(
                lambda: rd.block_sparse_attention(q, k, v, plain, backend="torch"), args.repeat)))
        if not args.no_flex:
            from radial_diffusers.attention import flex

            block_mask = flex.block_mask_for(layout, batch=1)
            t0 = time.perf_counter()
            flex.attention_out(q, k, v, block_mask)
            print(f"# flex first call (compile) {time.perf_counter() - t0:.1f} s")
            t_flex = _timed(lambda: flex.attention_out(q, k, v, block_mask), args.repeat)
            rows.append(("FlexAttention (compiled)", t_flex))

    print(f"{'method':28s} {'fwd ms':>10s} {'vs SDPA':>8s} {'vs ours':>8s}")
    for name, t in rows:
        print(f"{name:28s} {t * 1e3:10.1f} {t_sdpa / t:7.2f}x {t / t_ours:7.2f}x")
    speedup = t_sdpa / t_ours
    target = 0.6 / stats.density
    print(f"# ours vs dense SDPA: {speedup:.2f}x; target 0.6 x (1/density) = {target:.2f}x -> "
          f"{'met' if speedup >= target else 'NOT met'}")

    if args.backward:
        qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
        qtg, ktg, vtg = (x.clone().requires_grad_(True) for x in (qt, kt, vt))

        def ours_fb():
            rd.block_sparse_attention(qg, kg, vg, layout, backend="torch").sum().backward()

        def sdpa_fb():
            torch.nn.functional.scaled_dot_product_attention(qtg, ktg, vtg).sum().backward()

        tb_sdpa, tb_ours = _timed(sdpa_fb, args.repeat), _timed(ours_fb, args.repeat)
        print(f"{'fwd+bwd dense SDPA':28s} {tb_sdpa * 1e3:10.1f}")
        print(f"{'fwd+bwd ours':28s} {tb_ours * 1e3:10.1f} {tb_sdpa / tb_ours:7.2f}x")
        if plain is not None:
            tb_plain = _timed(lambda: rd.block_sparse_attention(qg, kg, vg, plain, backend="torch").sum().backward(),
                             args.repeat)
            print(f"{'fwd+bwd identical-set plan':28s} {tb_plain * 1e3:10.1f} {tb_sdpa / tb_plain:7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
