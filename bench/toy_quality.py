"""Radial vs dense quality on the trained toy model, for docs/BENCHMARKS.md: PSNR / SSIM / recall / density / step
time at 1x, 2x and 4x the training length, for the paper's preset and for the config ``suggest_config`` proposes;
then DF11 (bit-identical to BF16?) and each quantization scheme the machine runs, against BF16 radial.

    python bench/toy_quality.py --out outputs/toy-quality            # about 40 minutes on 2 CPU cores
    python bench/toy_quality.py --dry-run --out /tmp/tq              # 2 steps, 1x only, 1 prompt (CI)

Every number comes from this run; a report folder per length (index.html) is written under --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

PROMPTS = ("a yellow square moving right on a striped background",
           "two red circles bouncing on a checkered background",
           "a blue triangle rotating on a dark background")


def _row(name: str, frames: int, v) -> str:
    psnr = "inf (identical)" if v.psnr_mean == float("inf") else ("-" if v.psnr_mean is None else f"{v.psnr_mean:.2f}")
    ssim = "-" if v.ssim_mean is None else f"{v.ssim_mean:.4f}"
    recall = "-" if v.recall is None else f"{v.recall:.4f}"
    step = "-" if v.step_seconds is None else f"{v.step_seconds:.3f}"
    sparse = "-" if v.sparse_step_seconds is None else f"{v.sparse_step_seconds:.3f}"
    status = "" if v.status == "ok" else f" (failed: {v.error[:80]})"
    return (f"| {name} | {frames} | {v.name}{status} | {psnr} | {ssim} | {recall} | "
            f"{'-' if v.density is None else f'{v.density:.3f}'} | {step} | {sparse} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/toy-quality")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--min-recall", type=float, nargs="+", default=[0.9, 0.7], metavar="TARGET",
                   help="targets of suggest_config: the first is the variant 'suggested', each other one "
                   "'suggested@TARGET' (from the same recall pass; a proposal equal to an earlier one is not rerun)")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)

    import radial_diffusers as rd
    from radial_diffusers.evaluation.metrics import video_psnr
    from radial_diffusers.evaluation.run import default_variants
    from radial_diffusers.quant import SCHEMES
    from radial_diffusers.tiny import cast_pipeline, load_tiny
    from radial_diffusers.toy.model import TOY_CALL_KWARGS, TRAIN_FRAMES, TRAIN_SIZE

    out = Path(args.out)
    prompts = list(PROMPTS[:1] if args.dry_run else PROMPTS)
    steps = 2 if args.dry_run else args.steps
    base, size = (9, 32) if args.dry_run else (TRAIN_FRAMES, TRAIN_SIZE)  # the dry run: every code path, small
    lengths = {"1x": base} if args.dry_run else {"1x": base, "2x": 2 * (base - 1) + 1, "4x": 4 * (base - 1) + 1}
    preset = rd.RadialConfig(block_size=16 if args.dry_run else 64)
    call = dict(height=size, width=size, num_inference_steps=steps, call_kwargs=dict(TOY_CALL_KWARGS))
    rows, summary = [], {}
    pipe = load_tiny("toy-wan")
    for name, frames in lengths.items():
        suggestion = rd.suggest_config(pipe, prompts, config=preset, seeds=args.seeds, num_frames=frames,
                                       min_recall=args.min_recall[0], progress=False, **call)
        suggestions = {"suggested": suggestion}
        for target in args.min_recall[1:]:
            suggestions[f"suggested@{target:g}"] = suggestion.retarget(target)
        configs = {}
        for label, s in suggestions.items():
            same = next((other for other, c in configs.items() if c == s.config), None)
            print(f"{name} ({frames} frames), {label} (target {s.min_recall:g}): {s.config}"
                  + (f" (= {same}: not rerun)" if same else ""), flush=True)
            print(s.explain(), flush=True)
            if same is None:
                configs[label] = s.config
        result = rd.evaluate(pipe, prompts, seeds=args.seeds, progress=False, num_frames=frames,
                             variants=default_variants(preset, configs=configs), **call)
        result.settings["suggestion"] = suggestion.to_dict()
        result.write(out / f"eval-{name}", overwrite=True)
        rows += [_row(name, frames, v) for v in result.variants]
        summary[name] = {"result": result.to_dict(),
                         "suggestions": {label: s.to_dict() for label, s in suggestions.items()}}

    # weights: BF16 radial vs DF11 and each scheme this machine runs (1x)
    bf16 = cast_pipeline(load_tiny("toy-wan"), torch.bfloat16)
    # every scheme, in the registry's order: one this machine cannot run (fp8-dynamic and int4-weight need CUDA) is
    # reported as failed, and the others complete
    schemes = list(SCHEMES)
    if args.dry_run:
        schemes = ["int8-weight", "int4-weight"]
    weights = rd.evaluate(bf16, prompts, seeds=args.seeds, progress=False, num_frames=base, recall_rows=0,
                          variants=default_variants(preset, dfloat11=True, quant=schemes), **call)
    weights.write(out / "eval-weights-bf16", overwrite=True)
    wrows = []
    for v in weights.variants:
        vs = "-"
        if v.status == "ok" and v.name not in ("dense", "radial"):
            vals = [video_psnr(a, b) for a, b in zip(weights.videos["radial"], weights.videos[v.name])]
            finite = [float(x) for t in vals for x in t if torch.isfinite(x)]
            vs = "inf (identical)" if not finite else f"{sum(finite) / len(finite):.2f}"
        same = v.identical_to.get("radial")
        wrows.append(f"| {v.name} | {v.status if v.status == 'ok' else 'failed: ' + v.error[:90]} | {vs} | "
                     f"{'-' if same is None else ('yes' if same else 'no')} | "
                     f"{'-' if v.step_seconds is None else f'{v.step_seconds:.3f}'} |")
    summary["weights"] = weights.to_dict()
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print("\n| length | frames | variant | PSNR vs dense (dB) | SSIM | recall | density | s/step | sparse s/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| BF16 variant | status | PSNR vs BF16 radial (dB) | bit-identical to BF16 radial | s/step |")
    print("|---|---|---|---|---|")
    print("\n".join(wrows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
