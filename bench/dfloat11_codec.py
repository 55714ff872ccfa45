"""DF11 CPU codec throughput and ratio on random (synthetic Gaussian) BF16 weights.

    python bench/dfloat11_codec.py [--elements 16777216] [--sigma 0.02] [--repeats 3] [--threads 1]
                                   [--official-elements N] [--no-official]

Prints encode / decode throughput (M weights/s) and the compression ratio of radial_diffusers.dfloat11, and, if the
official ``dfloat11==0.5.0`` package (+ ``dahuffman``) is installed, the official CPU encoder on the same data in the
same run (its ``dfloat11_utils`` is loaded by file path so CuPy is never imported; the official decoder is CUDA-only).
The data is random-init style Gaussian, NOT trained weights: ratios on real checkpoints differ slightly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import time

import torch
from radial_diffusers._machine import cpu_model

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from radial_diffusers.dfloat11 import decode, encode  # noqa: E402


def _official_utils():
    import importlib.machinery

    # search sys.path without this folder: bench/dfloat11.py would shadow the official package
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("dfloat11", path)
    if spec is None or spec.submodule_search_locations is None or importlib.util.find_spec("dahuffman") is None:
        return None
    path = spec.submodule_search_locations[0] + "/dfloat11_utils.py"
    s = importlib.util.spec_from_file_location("_df11_official_utils", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elements", type=int, default=16 * 2**20)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (numpy parts are single-threaded)")
    ap.add_argument("--official-elements", type=int, default=None, help="limit the official encoder to a prefix")
    ap.add_argument("--no-official", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    x = (torch.randn(args.elements) * args.sigma).bfloat16()
    n = x.numel()
    print(f"data: random Gaussian sigma={args.sigma}, {n:,} BF16 weights ({2 * n / 2**20:.1f} MiB); "
          f"torch {torch.__version__}, {cpu_model()}, threads={args.threads}")

    enc_t, dec_t = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        unit = encode([x])
        enc_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        (y,) = decode(unit)
        dec_t.append(time.perf_counter() - t)
        assert torch.equal(x.view(torch.int16), y.view(torch.int16)), "round trip is not bit-exact"
    for name, ts in (("encode", enc_t), ("decode", dec_t)):
        print(f"ours     {name}: {n / min(ts) / 1e6:7.1f} M weights/s "
              f"(best of {args.repeats}; first {n / ts[0] / 1e6:.1f}){' [bit-exact]' if name == 'decode' else ''}")
    print(f"ours     ratio : {unit.ratio:.4f} (all buffers incl. luts) = {8 * unit.nbytes / n:.3f} bits/weight; "
          f"encoded_exponent {unit.encoded_exponent.numel():,} B, gaps {unit.gaps.numel():,} B, "
          f"luts {tuple(unit.luts.shape)}, max code {int(unit.luts[-1].max())} bits")

    utils = None if args.no_official else _official_utils()
    if utils is None:
        print("official dfloat11 encoder: not installed (pip install dfloat11==0.5.0 dahuffman==0.4.2 --no-deps)")
        return
    m = min(n, args.official_elements or n)
    xo = x[:m]
    sink = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        _, counter = utils.get_codec(xo)
        codec, counter, table = utils.get_32bit_codec(counter)
        luts = utils.get_luts(table)
        enc, sm, outpos, gaps, split = utils.encode_weights([xo], codec, 8, 512)
    dt = time.perf_counter() - t
    nbytes = sum(a.numel() * a.element_size() for a in (luts, enc, sm, outpos, gaps, split))
    which = "the same" if m == n else f"the first {m:,} of the same"
    print(f"official encode: {m / dt / 1e6:7.2f} M weights/s on {which} data (dfloat11 0.5.0, Python loop)")
    print(f"official ratio : {nbytes / (2 * m):.4f} (all buffers incl. luts); encoded_exponent {enc.numel():,} B, "
          f"luts {tuple(luts.shape)}")
    if m == n:
        print(f"size: ours/official encoded_exponent = {unit.encoded_exponent.numel() / enc.numel():.5f}")


if __name__ == "__main__":
    main()
