"""Compile every Triton kernel and launch config for sm_80 and sm_90 on the CPU (no GPU needed).

Runs bench/triton_compile_check.py --quick in a subprocess (the compiler cannot run in a process where the
Triton interpreter is active), with the argument specialization a real launch gets: compile errors, missing
tensor-core instructions, a default sm_90 config that spills, exceeds shared memory or misses wgmma, a Hopper build
without TMA copies or offered beyond shared memory, a warp-specialized one without setmaxnreg, a plain Hopper build
whose main loop prefetches fewer than num_stages - 1 tiles ahead, a dK/dV default with products narrower than
N = 64, and a kernel with no config that fits an architecture fail the test. The fp8 shape also builds the e4m3
quantizer (sm_89 / sm_90).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def test_kernels_compile_for_sm80_and_sm90():
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "triton_compile_check.py"), "--quick"],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    table = result.stdout
    for name in ("_fwd_kernel", "_fwd_tma_kernel", "_delta_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel",
                 "_bwd_dq_tma_kernel", "_bwd_dkdv_tma_kernel"):
        assert name in table, name
    rows = [line.split() for line in table.splitlines() if line.startswith("_")]
    # compiled as launched: contiguous (B, S, H, D) inputs, with kv_lengths, and a strided view
    assert {r[5] for r in rows} == {"contiguous", "kv_lengths", "strided"}
    # the sm_90 bf16 forward default config runs on warpgroup MMA, with the unit-stride loads pipelined through
    # shared memory (more than the unspecialised strided build needs)
    fwd90 = {}
    for r in rows:  # the first row of a group is the default config
        if r[0] == "_fwd_kernel" and r[1] == "90" and r[4] == "bf16":
            fwd90.setdefault(r[5], r)
    assert fwd90["contiguous"][11] == "True"
    assert int(fwd90["contiguous"][7]) > int(fwd90["strided"][7])
    # the Hopper kernels: TMA copies in every build (sm_90 only), wgmma in their bf16 defaults; warp-specialized
    # forward configs split into producer / consumer partitions (setmaxnreg)
    hopper = [r for r in rows if r[0].endswith("_tma_kernel")]
    assert hopper and all(r[1] == "90" and r[12] == "True" for r in hopper)
    tma = [r for r in hopper if r[0] == "_fwd_tma_kernel"]
    bf16 = [r for r in tma if r[4] == "bf16" and r[5] == "contiguous"]
    assert bf16[0][11] == "True" and bf16[0][6].endswith("x0")
    # plain (not warp-specialized) Hopper builds prefetch num_stages - 1 tiles ahead (triton_common._index_scaled):
    # the forward default, a 3-stage ring, two
    assert bf16[0][6].split("x")[3] == "3" and bf16[0][14] == "2"
    plain = [r for r in hopper if r[6].endswith("x0")]
    assert plain and all(int(r[14]) == int(r[6].split("x")[3]) - 1 for r in plain)
    # dK/dV's default: 64-row query tiles against 128 keys on two warpgroups, so no warpgroup product is narrower
    # than N = 64, without spills (K and V reach the score products from shared memory, not registers)
    dkdv = [r for r in hopper if r[0] == "_bwd_dkdv_tma_kernel" and r[2:6] == ["128", "128", "bf16", "contiguous"]]
    assert dkdv[0][6].startswith("64x128x") and int(dkdv[0][15]) >= 64 and dkdv[0][9] == "0"
    specialized = [r for r in bf16 if r[6].endswith("x1")]
    assert specialized and all(r[13] == "True" for r in specialized)
    # fp8 forwards build for Ada and Hopper (both variants on sm_90), not for sm_80, and so do the e4m3 quantizer
    # as it runs for K (smoothed) and Q (row dots) and the key sums of K's mean
    fp8 = {(r[0], r[1]) for r in rows if r[4] == "fp8"}
    assert fp8 == {("_fwd_kernel", "89"), ("_fwd_kernel", "90"), ("_fwd_tma_kernel", "90"),
                   ("_quantize_kernel:k", "89"), ("_quantize_kernel:k", "90"), ("_quantize_kernel:q", "89"),
                   ("_quantize_kernel:q", "90"), ("_key_sum_kernel", "89"), ("_key_sum_kernel", "90")}
