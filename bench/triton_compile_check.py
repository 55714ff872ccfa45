"""Compile every Triton kernel and launch config for sm_80 and sm_90 on the CPU (no GPU needed) and report resources.

    python bench/triton_compile_check.py [--quick] [--json] [--jobs N]

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` runs the whole NVIDIA pipeline (TTIR ->
TTGIR -> LLVM -> PTX -> cubin via ptxas), so dot-shape, layout and resource errors show up here, not on the first
GPU. The kernels are compiled as a launch compiles them: the launch arguments of a small call (sequence 4 blocks, 3
heads) are captured from ``triton_kernels.forward`` / ``backward`` (kernel launches replaced by a recorder) and run
through Triton's own argument specialization for the target (a stride of 1 becomes a constant, values divisible by
16 are marked), which decides vectorised loads, ``cp.async`` pipelining and so the shared memory. Real launches can
differ in the divisibility marks of scalars such as the sequence length (the strides, which drive the memory
figures, are those of the real layouts). Variants per shape: contiguous ``(B, S, H, D)`` inputs as Diffusers passes
them, the same with per-sample ``kv_lengths``, and a strided view with ``kv_lengths`` (head_dim not unit-stride: the
unspecialised worst case).

Kernels: the portable forward, the Hopper forward (TMA descriptors, flat loop, warp-specialized configs; sm_90
only), the backward's delta preamble, dQ and dK/dV; shapes with dtype ``fp8`` compile the two forwards with e4m3 q/k
and bf16 v, the e4m3 quantizer of ``attention.fp8`` as it runs for K (smoothed) and for Q (with the row dots) and
the per-block key sums of K's mean, for sm_89 and sm_90, the GPUs with e4m3 tensor cores.

For each (kernel, arch, shape, variant, config) it prints shared memory, registers, spill bytes and whether the PTX
uses mma / wgmma (column ``wN``: the narrowest warpgroup product's N), TMA copies (``cp.async.bulk.tensor``) and warp
specialization (``setmaxnreg``). It exits 1 when a config fails to compile, when fp16/bf16 tiles miss the tensor
cores, when the default (first) config of a kernel does not fit sm_90 (shared memory; register spills for head_dim <=
128, the models' heads: the configs are tuned for H100; wgmma for blocks of 64+ tokens; e4m3 mma for fp8), when a
Hopper build has no TMA copies, is offered beyond shared memory or (16-bit, fp8) takes more than its estimate plus the
reserve (``candidate_configs`` would offer configs that do not fit), when a warp-specialized config has no
``setmaxnreg``, when the main loop of a (not warp-specialized) Hopper build prefetches its tiles fewer than
``num_stages - 1`` iterations ahead (column ``pf``), or when no offered config of a kernel fits an architecture at all
(at run time a config that does not fit is skipped for the next one). Must run with TRITON_INTERPRET unset (the
interpreter patches triton.language); tests/test_triton_compile.py runs it in a subprocess.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

import radial_diffusers as rd  # noqa: E402
from radial_diffusers.attention import fp8  # noqa: E402
from radial_diffusers.attention import triton_kernels as tk  # noqa: E402

SHARED_LIMIT = {80: 166912, 89: 101376, 90: 232448}  # opt-in maximum shared memory per block, bytes
KERNELS = {"fwd": "_fwd_kernel", "fwd_tma": "_fwd_tma_kernel", "delta": "_delta_kernel", "dq": "_bwd_dq_kernel",
           "dkdv": "_bwd_dkdv_kernel", "dq_tma": "_bwd_dq_tma_kernel", "dkdv_tma": "_bwd_dkdv_tma_kernel",
           "quant_k": "_quantize_kernel:k", "quant_q": "_quantize_kernel:q", "key_sum": "_key_sum_kernel"}
# attention.fp8's kernels: the quantizer, launched once per tensor (K smoothed, Q with dots), and K's per-block sums
QUANT_KINDS = ("quant_k", "quant_q", "key_sum")
TMA_KINDS = ("fwd_tma", "dq_tma", "dkdv_tma")
# the rows of each host descriptor argument of the TMA kernels, in order: BLOCK_M ("m") or BLOCK_N ("n")
TMA_BOXES = {"fwd_tma": "mnnm", "dq_tma": "mnnmm", "dkdv_tma": "mnnmnn"}
# tiles a TMA kernel loads once before its main loop (forward: Q; dQ: Q, dO; dK/dV: K, V) and per loop iteration
# (two each: K and V, or Q and dO)
TMA_RESIDENT = {"fwd_tma": 1, "dq_tma": 2, "dkdv_tma": 2}
FIXED = ("delta", *QUANT_KINDS)  # kernels launched with one fixed config (compiled as captured); no matrix product
ARCHS = {kind: (90,) for kind in TMA_KINDS}  # TMA and warp specialization: Hopper only (sm_80 runs the portable ones)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
# (block_size, head_dim, dtype): the real models' shape, Wan2.2's 64-token blocks, LTX-Video / CogVideoX heads, a
# tiny model, wide heads, fp32 training at full width, small blocks, a non-power-of-two head in bf16; fp8 at full
# width and at a head narrower than an fp8 product's 32-element reduction (its tiles are padded to 32).
SHAPES = [(128, 128, "bf16"), (128, 128, "fp16"), (64, 128, "bf16"), (128, 64, "bf16"), (16, 12, "fp32"),
          (128, 256, "bf16"), (128, 128, "fp32"), (64, 128, "fp32"), (32, 64, "bf16"), (16, 24, "bf16"),
          (128, 128, "fp8"), (64, 16, "fp8")]
QUICK_SHAPES = [(128, 128, "bf16"), (16, 12, "fp32"), (128, 128, "fp8"), (64, 16, "fp8")]
VARIANTS = ("contiguous", "kv_lengths", "strided")


def capture_launches(block: int, head_dim: int, dtype: str, variant: str) -> dict:
    """``{kind: (jit kernel, args, kwargs)}`` as ``triton_kernels`` launches them for one small call of this shape
    (2 samples, 3 heads, 4 blocks of tokens); nothing runs."""
    launches = {}

    class Recorder:
        def __init__(self, kind, kernel):
            self.kind, self.kernel = kind, kernel

        def __getitem__(self, grid):
            def record(*args, **kwargs):
                launches[self.kind] = (self.kernel, args, kwargs)
            return record

    saved = {kind: getattr(tk, name) for kind, name in KERNELS.items() if kind not in QUANT_KINDS}
    saved_quant, saved_sum = fp8._quantize_kernel, fp8._key_sum_kernel
    saved_check = tk.check_device
    try:
        for kind, kernel in saved.items():
            setattr(tk, KERNELS[kind], Recorder(kind, kernel))
        # CPU tensors stand in for CUDA ones: only strides and dtypes matter
        tk.check_device = lambda device, block_size=None: None
        n, b, h = 4, 2, 3
        s = n * block
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        lay = rd.BlockLayout.from_block_mask(mask, block, s)
        width = 2 * head_dim if variant == "strided" else head_dim
        # fp8: e4m3 q and k (as attention.fp8 quantizes them, contiguous) with bf16 v, forward only
        qk_dtype, v_dtype = (DTYPES[dtype], torch.bfloat16) if dtype == "fp8" else (DTYPES[dtype],) * 2
        q, k = (torch.zeros(b, s, h, width, dtype=qk_dtype)[..., ::width // head_dim] for _ in range(2))
        v = torch.zeros(b, s, h, width, dtype=v_dtype)[..., ::width // head_dim]
        kv = torch.tensor([s, s - 5], dtype=torch.int32) if variant != "contiguous" else None
        scales = (torch.ones(b, h, n), torch.ones(b, h, n)) if dtype == "fp8" else None
        # both forwards: the portable one, and (where TMA can address the inputs) the Hopper one
        for forced in ("portable", "tma") if variant != "strided" else ("portable",):
            os.environ["RADIAL_TRITON_KERNEL"] = forced
            out, lse = tk.forward(q, k, v, lay.counts, lay.indices, lay.t_counts, lay.t_indices, kv, block, s, 0.1,
                                  fp8_scales=scales)
        if dtype == "fp8":  # the quantizer on the 16-bit K and Q the kernels' e4m3 inputs come from
            x = torch.zeros(b, s, h, width, dtype=torch.bfloat16)[..., ::width // head_dim]
            mean = torch.zeros(b, h, head_dim)
            for kind, smooth in (("quant_k", True), ("quant_q", False)):  # key lengths apply to the keys
                fp8._quantize_kernel = Recorder(kind, saved_quant)
                fp8.quantize(x, block, mean, smooth=smooth, kv_lengths=kv if smooth else None)
            fp8._key_sum_kernel = Recorder("key_sum", saved_sum)
            fp8.key_mean(x, block, kv)
            return launches
        for forced in ("portable", "tma") if variant != "strided" else ("portable",):
            os.environ["RADIAL_TRITON_KERNEL"] = forced
            tk.backward(torch.zeros_like(out), q, k, v, out, lse, None, lay.counts, lay.indices, lay.t_counts,
                        lay.t_indices, kv, block, s, 0.1)
    finally:
        for kind, kernel in saved.items():
            setattr(tk, KERNELS[kind], kernel)
        fp8._quantize_kernel, fp8._key_sum_kernel = saved_quant, saved_sum
        tk.check_device = saved_check
        os.environ.pop("RADIAL_TRITON_KERNEL", None)
    return launches


def compile_as_launched(kernel, args, kwargs, arch: int):
    """``triton.compile`` with the signature, constants and attributes Triton's launcher derives from ``args``."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def _ptxas_log(ptx: str, arch: int) -> subprocess.CompletedProcess:
    """Run the ptxas Triton itself uses for ``arch`` with Triton's flags plus ``-v`` (register / spill report)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", path, "-o", os.path.join(tmp, "k.cubin")]
        return subprocess.run(cmd, capture_output=True, text=True)


def prefetch_distance(ttgir: str, kind: str) -> int | None:
    """How many iterations ahead the software pipeline of a TMA kernel's main (first) loop issues its streamed
    tiles: the TMA copies in the prologue before the loop, less the resident tiles, per iteration's pair (``None``
    when the build has no loop left)."""
    if "scf.for" not in ttgir:
        return None
    prologue = ttgir[:ttgir.index("scf.for")].count("ttng.async_tma_copy_global_to_local")
    return (prologue - TMA_RESIDENT[kind]) // 2


def _reboxed(args: tuple, boxes: str, bm: int, bn: int) -> tuple:
    """``args`` with the i-th host tensor descriptor's box resized to ``bm`` / ``bn`` rows as ``boxes[i]`` says."""
    rows = iter(bm if box == "m" else bn for box in boxes)
    out = tuple(dataclasses.replace(a, block_shape=[1, next(rows), 1, a.block_shape[-1]])
                if isinstance(a, TensorDescriptor) else a for a in args)
    if next(rows, None) is not None:
        raise AssertionError(f"fewer host descriptors than boxes {boxes!r}")
    return out


def element_sizes(dtype: str) -> tuple[int, int | None]:
    """``(v's, q's and k's when they differ)`` element sizes the launches size their configs by (fp8: e4m3 q / k,
    bf16 v)."""
    return (2, 1) if dtype == "fp8" else (DTYPES[dtype].itemsize, None)


def estimated_shared(kind: str, cfg: tuple, head_dim: int, dtype: str) -> int:
    """The shared memory ``candidate_configs`` estimates for a TMA kernel's config."""
    bm, bn, _, stages, ws = cfg
    es, qk = element_sizes(dtype)
    if kind == "fwd_tma":
        return tk.triton_tma.shared_bytes(bm, bn, tk.block_d(head_dim, qk == 1), es, stages, ws, qk)
    return tk.triton_tma_backward.shared_bytes(kind, bm, bn, tk.block_d(head_dim), es, stages, ws)


def check_one(kind, launch, arch, shape, variant, cfg) -> dict:
    """Compile one kernel/config as launched; ``problems`` fail the check (decided in :func:`judge`)."""
    kernel, args, kwargs = launch
    ws = ()
    if cfg is not None:
        bm, bn, warps, stages, *ws = cfg
        kwargs = dict(kwargs, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
        if ws:
            kwargs["WARP_SPECIALIZE"] = bool(ws[0])
        if kind in TMA_KINDS:  # the TMA boxes follow the tiles: query-side descriptors BLOCK_M rows, key-side BLOCK_N
            args = _reboxed(args, TMA_BOXES[kind], bm, bn)
    block, head_dim, dtype = shape
    row = dict(kernel=KERNELS[kind], arch=arch, block=block, head_dim=head_dim, dtype=dtype, variant=variant,
               config="fixed" if cfg is None else "x".join(map(str, cfg)), problems=[], notes=[])
    try:
        compiled = compile_as_launched(kernel, args, kwargs, arch)
    except Exception as exc:  # a compile error is a finding, reported per row
        row["problems"].append(f"compile error: {str(exc).splitlines()[-1][:200]}")
        return row
    ptx = compiled.asm["ptx"]
    row["shared"] = compiled.metadata.shared
    row["mma"] = "mma" in ptx
    row["wgmma"] = "wgmma" in ptx
    widths = [int(n) for n in re.findall(r"wgmma\.mma_async\.sync\.aligned\.m64n(\d+)k", ptx)]
    row["wgmma_n"] = min(widths) if widths else None  # the narrowest warpgroup product (N; M is 64)
    row["tma"] = "cp.async.bulk.tensor" in ptx
    row["e4m3"] = bool(re.search(r"mma\S*e4m3", ptx))
    row["setmaxnreg"] = "setmaxnreg" in ptx
    row["warp_specialized"] = bool(ws and ws[0])
    if kind in TMA_KINDS:
        row["estimate"] = estimated_shared(kind, cfg, head_dim, dtype)
    if kind in TMA_KINDS and not row["warp_specialized"]:
        row["prefetch"] = prefetch_distance(compiled.asm["ttgir"], kind)
        row["stages"] = cfg[3]
    row["fits"] = row["shared"] <= SHARED_LIMIT[arch]
    if dtype != "fp32" and kind not in FIXED and not row["mma"]:
        row["problems"].append("no tensor-core mma in the PTX")
    info = _ptxas_log(ptx, arch)
    regs = re.findall(r"Used (\d+) registers", info.stderr)
    spills = re.findall(r"(\d+) bytes spill stores", info.stderr)
    row["registers"] = int(regs[-1]) if regs else None
    row["spill_bytes"] = int(spills[-1]) if spills else 0
    if info.returncode != 0:
        row["problems"].append(f"ptxas failed: {info.stderr.strip().splitlines()[-1][:200]}")
    if not row["fits"]:
        row["notes"].append(f"shared memory {row['shared']} > {SHARED_LIMIT[arch]}: skipped at run time")
    if row["spill_bytes"]:
        row["notes"].append(f"{row['spill_bytes']} B spilled")
    return row


def judge(rows: list[dict], offered: dict | None = None) -> None:
    """Turn notes into problems where they matter: the default config on sm_90 (fp16/bf16, contiguous inputs) must
    fit shared memory, and for head_dim <= 128 (the models' heads) compile without spills; every (kernel, shape,
    variant, arch) needs at least one config that fits."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["arch"], r["block"], r["head_dim"], r["dtype"], r["variant"]), []).append(r)
    for (kernel, arch, *_), group in groups.items():
        first = group[0]
        if arch == 90 and first["dtype"] != "fp32" and first["variant"] == "contiguous" and "shared" in first:
            if not first["fits"] or (first["spill_bytes"] and first["head_dim"] <= 128):
                first["problems"].append("default sm_90 config does not fit: " + "; ".join(first["notes"]))
            if kernel not in {KERNELS[kind] for kind in FIXED}:
                if not first["wgmma"] and first["block"] >= 64:  # wgmma tiles have 64 rows: smaller blocks use mma
                    first["problems"].append("default sm_90 config does not use warpgroup MMA (wgmma)")
                if first["dtype"] == "fp8" and not first["e4m3"]:
                    first["problems"].append("fp8 default sm_90 config does not multiply QK^T on e4m3 tensor cores")
        complete = offered is None or len(group) == offered.get((kernel, arch, *_), len(group))
        if complete and not any(r.get("fits") for r in group) and all("shared" in r for r in group):
            group[-1]["problems"].append(f"no offered config fits sm_{arch}")
        if kernel in {KERNELS[kind] for kind in TMA_KINDS}:
            for r in group:
                if "shared" not in r:
                    continue
                if not r["tma"]:
                    r["problems"].append("no TMA copies (cp.async.bulk.tensor) in the PTX")
                if "prefetch" in r and (r["prefetch"] or 0) < r["stages"] - 1:  # see triton_common._index_scaled
                    r["problems"].append(f"main loop prefetches {r['prefetch']} tile(s) ahead with "
                                         f"{r['stages']} stages (want {r['stages'] - 1})")
                if not r["fits"]:  # offered by the shared-memory estimate of candidate_configs, so it is low
                    r["problems"].append("config offered but over shared memory")
                # a config offered near the limit may not fit; fp32 tiles (FMA, no tensor cores; forced only) stage
                # layout conversions through shared memory beyond the estimate (up to 16.6 KB in dK/dV)
                elif r["dtype"] != "fp32" and r["shared"] > r["estimate"] + tk.triton_tma.SHARED_RESERVE:
                    r["problems"].append(f"shared memory {r['shared']} over the estimate {r['estimate']} + reserve")
                if r["warp_specialized"] and r["dtype"] != "fp32" and r["head_dim"] <= 128 and not r["setmaxnreg"]:
                    r["problems"].append("warp-specialized config without setmaxnreg: the loop was not split")


_JOBS: list[tuple] = []  # (kind, launch, arch, shape, variant, cfg), read by forked workers by index


def _check_job(i: int) -> dict:
    return check_one(*_JOBS[i])


def run_checks(jobs: list[tuple], workers: int) -> list[dict]:
    """:func:`check_one` over ``jobs``, in order, on ``workers`` forked processes (compiles are independent and
    single-threaded: about 1.5 s each on one core). Workers are forked so the captured launches (jit kernels, which
    do not pickle) are inherited, not sent."""
    if workers <= 1 or len(jobs) <= 1:
        return [check_one(*job) for job in jobs]
    import multiprocessing

    _JOBS[:] = jobs
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            return pool.map(_check_job, range(len(jobs)), chunksize=1)
    finally:
        _JOBS.clear()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="the CI subset: block 128 / head 128 bf16 and a tiny fp32 shape; every config for contiguous "
                        "inputs, the default config of the other variants")
    p.add_argument("--shape", action="append", default=[], metavar="BLOCK,HEAD_DIM,DTYPE",
                   help="check only these shapes (repeatable), e.g. --shape 128,256,bf16")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="compile on this many processes (default: every CPU)")
    args = p.parse_args()
    shapes = [(int(b), int(d), t) for b, d, t in (x.split(",") for x in args.shape)]
    jobs = []
    offered = {}  # (kernel, arch, shape, variant) -> number of configs offered (--quick compiles only the first of some)
    for shape in shapes or (QUICK_SHAPES if args.quick else SHAPES):
        block, d, dtype = shape
        for variant in VARIANTS:
            launches = capture_launches(block, d, dtype, variant)
            for kind in KERNELS:
                configs = [None] if kind in FIXED else tk.candidate_configs(kind, block, d, *element_sizes(dtype))
                n_offered = len(configs)
                if args.quick and variant != "contiguous":
                    configs = configs[:1]
                if kind not in launches:
                    continue
                # fp8 (e4m3) tensor cores: Ada (sm_89) and Hopper; sm_80 has none (precision="fp8" refuses it)
                for arch in ARCHS.get(kind, (89, 90) if dtype == "fp8" else (80, 90)):
                    offered[(KERNELS[kind], arch, block, d, dtype, variant)] = n_offered
                    for cfg in configs:
                        jobs.append((kind, launches[kind], arch, shape, variant, cfg))
    rows = run_checks(jobs, args.jobs)
    judge(rows, offered)
    bad = [r for r in rows if r["problems"]]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'kernel':18s} {'sm':>3s} {'blk':>4s} {'d':>4s} {'dtype':5s} {'variant':10s} {'config':14s} "
              f"{'smem':>7s} {'regs':>5s} {'spill':>6s} {'mma':>5s} {'wgmma':>6s} {'tma':>5s} {'ws':>5s} {'pf':>3s} "
              f"{'wN':>4s}  result")
        for r in rows:
            print(f"{r['kernel']:18s} {r['arch']:3d} {r['block']:4d} {r['head_dim']:4d} {r['dtype']:5s} "
                  f"{r['variant']:10s} {r['config']:14s} {r.get('shared', 0):7d} {str(r.get('registers')):>5s} "
                  f"{r.get('spill_bytes', 0):6d} {str(r.get('mma')):>5s} {str(r.get('wgmma')):>6s} {str(r.get('tma')):>5s} "
                  f"{str(r.get('setmaxnreg')):>5s} {str(r.get('prefetch', '-')):>3s} "
                  f"{str(r.get('wgmma_n') or '-'):>4s}  "
                  f"{'; '.join(r['problems']) or 'ok'}{(' (' + '; '.join(r['notes']) + ')') if r['notes'] else ''}")
    print(f"{len(rows)} compiles, {len(bad)} with problems", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
