"""Benchmark: cold build time of ``radial_block_mask`` vs the naive per-frame-pair token-tile approach (upstream's).

Run:  python bench/mask_build.py [--repeats 5] [--naive-repeats 3] [--skip-naive] [--large-naive]

Prints a table. "ours" is ``radial_diffusers.masks.radial_block_mask`` with its cache cleared before every run
(``_radial_block_mask_np.cache_clear()``); "naive" is the literal port of upstream ``gen_log_mask_shrinked`` in
``tests/official_mask_port.py`` (a dense ``tpf x tpf`` torch tile per frame pair, run on CPU, single-threaded),
timed only on geometries small enough for it to finish in seconds. Times are medians of cold runs measured with
``time.perf_counter``; compare the ratio from one run, not absolute times across machines. Exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from radial_diffusers._machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radial_diffusers.masks import _radial_block_mask_np, radial_block_mask  # noqa: E402


def _load_port():
    path = ROOT / "tests" / "official_mask_port.py"
    spec = importlib.util.spec_from_file_location("_official_mask_port", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.official_block_mask


def time_ours(kwargs: dict, repeats: int) -> tuple[float, torch.Tensor]:
    times, mask = [], None
    for _ in range(repeats):
        _radial_block_mask_np.cache_clear()
        t0 = time.perf_counter()
        mask = radial_block_mask(**kwargs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), mask


def time_naive(port, kwargs: dict, repeats: int) -> tuple[float, torch.Tensor]:
    times, mask = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        mask = port(**kwargs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), mask


# name, kwargs, target seconds for ours (None = no target), run the naive port too
CASES = [
    (
        "Wan 768x1280x69 (F=18, tpf=3840, d=0.2)",
        dict(latent_frames=18, tokens_per_frame=3840, model="wan", decay_factor=0.2),
        0.1,
        False,
    ),
    (
        "HunyuanVideo 720x1280x509 (F=128, tpf=3600, d=1, text 256)",
        dict(latent_frames=128, tokens_per_frame=3600, model="hunyuan", decay_factor=1.0, text_tokens=256),
        1.0,
        False,
    ),
    (
        "Wan 512x832x33 (F=9, tpf=1664, d=0.2)",
        dict(latent_frames=9, tokens_per_frame=1664, model="wan", decay_factor=0.2),
        None,
        True,
    ),
]
# with --large-naive: a geometry where the naive port takes tens of seconds
LARGE_NAIVE_CASE = (
    "Wan 768x1280x29 (F=8, tpf=3840, d=0.2)",
    dict(latent_frames=8, tokens_per_frame=3840, model="wan", decay_factor=0.2),
    None,
    True,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="cold runs of ours per geometry (median reported)")
    parser.add_argument("--naive-repeats", type=int, default=3, help="runs of the naive port per geometry")
    parser.add_argument("--skip-naive", action="store_true", help="do not time the naive port")
    parser.add_argument("--large-naive", action="store_true", help="also time the naive port on 768x1280x29 (slow)")
    args = parser.parse_args(argv)

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores)")
    print(f"torch {torch.__version__} (intra-op threads {torch.get_num_threads()}), numpy {np.__version__}, "
          f"Python {platform.python_version()}")
    try:
        print(f"load average at start: {os.getloadavg()[0]:.2f}")
    except OSError:
        pass
    print(f"times: median of {args.repeats} cold runs (ours, cache cleared each run), "
          f"{args.naive_repeats} runs (naive port, single-threaded torch)")
    print()

    port = None if args.skip_naive else _load_port()
    header = (
        f"{'geometry':<60} {'blocks':>11} {'sparsity':>9} {'ours [s]':>9} {'target':>8} {'naive [s]':>10} "
        f"{'naive/ours':>11} {'equal':>6}"
    )
    print(header)
    print("-" * len(header))
    cases = CASES + ([LARGE_NAIVE_CASE] if args.large_naive else [])
    for name, kwargs, target, with_naive in cases:
        t_ours, mask = time_ours(kwargs, args.repeats)
        n = mask.shape[0]
        sparsity = 1.0 - int(mask.sum()) / mask.numel()
        target_s = "-" if target is None else (f"<{target:g} " + ("ok" if t_ours < target else "MISS"))
        naive_s = ratio_s = equal_s = "-"
        if with_naive and port is not None:
            t_naive, ref = time_naive(port, kwargs, args.naive_repeats)
            naive_s = f"{t_naive:.3f}"
            ratio_s = f"{t_naive / t_ours:.0f}x"
            equal_s = "yes" if torch.equal(ref, mask) else "NO"
        print(f"{name:<60} {f'{n}x{n}':>11} {sparsity:>9.4f} {t_ours:>9.4f} {target_s:>8} {naive_s:>10} "
              f"{ratio_s:>11} {equal_s:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
