"""Compile every Triton kernel and launch config for sm_80 and sm_90 on the CPU (no GPU needed) and report resources.

    python bench/triton_compile_check.py [--json]

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` runs the whole NVIDIA pipeline (TTIR ->
TTGIR -> LLVM -> PTX -> cubin via ptxas), so dot-shape, layout and resource errors show up here, not on the first
GPU. For each (kernel, arch, block, head_dim, dtype, config) it prints shared memory, registers, spill bytes and
whether the PTX uses mma / wgmma; it exits 1 if a config that ``candidate_configs(..., arch=...)`` offers for that
architecture fails to compile, exceeds shared memory, spills, or (fp16/bf16) misses the tensor cores.
Must run with TRITON_INTERPRET unset (the interpreter patches triton.language); tests/test_triton_compile.py runs
it in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from radial_diffusers.attention import triton_kernels as tk  # noqa: E402

SHARED_LIMIT = {80: 166912, 90: 232448}  # opt-in maximum shared memory per block, bytes
INT_POINTERS = {"Counts", "Indices", "KvLen", "TCounts", "TIndices"}
FP32_POINTERS = {"Lse", "Delta"}
FLOAT_SCALARS = {"qk_scale", "sm_scale"}
KERNELS = {"fwd": tk._fwd_kernel, "dq": tk._bwd_dq_kernel, "dkdv": tk._bwd_dkdv_kernel}
# (block_size, head_dim, dtype): the real models' shape, Wan2.2's 64-token blocks, a tiny model, wide heads.
SHAPES = [(128, 128, "bf16"), (128, 128, "fp16"), (64, 128, "bf16"), (16, 12, "fp32"), (128, 256, "bf16")]
QUICK_SHAPES = [(128, 128, "bf16"), (16, 12, "fp32")]


def _signature(fn, dtype: str, constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in INT_POINTERS:
            sig[name] = "*i32"
        elif name in FP32_POINTERS:
            sig[name] = "*fp32"
        elif name[0].isupper() and name != "H":
            sig[name] = f"*{dtype}"
        elif name in FLOAT_SCALARS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


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


def check_one(kernel, arch, block, head_dim, dtype, cfg, default=False) -> dict:
    """Compile one kernel/config; ``problems`` fail the check, ``notes`` are reported. Register spills are a
    problem only for the default (first) config on sm_90, the architecture the configs are tuned for."""
    bm, bn, warps, stages = cfg
    constexprs = dict(D=head_dim, BLOCK_D=tk.block_d(head_dim), BLOCK_SIZE=block, BLOCK_M=bm, BLOCK_N=bn,
                      HAS_KV_LEN=True, UPCAST=dtype == "fp32", DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
    row = dict(kernel=kernel.fn.__name__, arch=arch, block=block, head_dim=head_dim, dtype=dtype,
               config="x".join(map(str, cfg)), problems=[], notes=[])
    try:
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=_signature(kernel, dtype, constexprs), constexprs=constexprs),
            target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps, num_stages=stages))
    except Exception as exc:  # a compile error is a finding, reported per row
        row["problems"].append(f"compile error: {str(exc).splitlines()[-1][:200]}")
        return row
    ptx = compiled.asm["ptx"]
    row["shared"] = compiled.metadata.shared
    row["mma"] = "mma" in ptx
    row["wgmma"] = "wgmma" in ptx
    if row["shared"] > SHARED_LIMIT[arch]:
        row["problems"].append(f"shared memory {row['shared']} > {SHARED_LIMIT[arch]}")
    if dtype != "fp32" and not row["mma"]:
        row["problems"].append("no tensor-core mma in the PTX")
    info = _ptxas_log(ptx, arch)
    regs = re.findall(r"Used (\d+) registers", info.stderr)
    spills = re.findall(r"(\d+) bytes spill stores", info.stderr)
    row["registers"] = int(regs[-1]) if regs else None
    row["spill_bytes"] = int(spills[-1]) if spills else 0
    if info.returncode != 0:
        row["problems"].append(f"ptxas failed: {info.stderr.strip().splitlines()[-1][:200]}")
    elif row["spill_bytes"]:
        (row["problems"] if default and arch == 90 else row["notes"]).append(f"{row['spill_bytes']} B spilled")
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="the CI subset: block 128 / head 128 bf16 and a tiny fp32")
    args = p.parse_args()
    rows = []
    for block, d, dtype in QUICK_SHAPES if args.quick else SHAPES:
        for kind, kernel in KERNELS.items():
            configs = tk.candidate_configs(kind, block, d, 4 if dtype == "fp32" else 2)
            for arch in (80, 90):
                for i, cfg in enumerate(configs):
                    rows.append(check_one(kernel, arch, block, d, dtype, cfg, default=i == 0))
    bad = [r for r in rows if r["problems"]]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'kernel':18s} {'sm':>3s} {'blk':>4s} {'d':>4s} {'dtype':5s} {'config':12s} {'smem':>7s} {'regs':>5s} "
              f"{'spill':>6s} {'mma':>5s} {'wgmma':>6s}  result")
        for r in rows:
            print(f"{r['kernel']:18s} {r['arch']:3d} {r['block']:4d} {r['head_dim']:4d} {r['dtype']:5s} "
                  f"{r['config']:12s} {r.get('shared', 0):7d} {str(r.get('registers')):>5s} "
                  f"{r.get('spill_bytes', 0):6d} {str(r.get('mma')):>5s} {str(r.get('wgmma')):>6s}  "
                  f"{'; '.join(r['problems']) or 'ok'}{(' (' + '; '.join(r['notes']) + ')') if r['notes'] else ''}")
    print(f"{len(rows)} compiles, {len(bad)} with problems", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
