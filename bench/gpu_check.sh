#!/usr/bin/env bash
# GPU check for a lent CUDA machine, run from the repository root:
#   1. attention: correctness of every backend against an fp32 reference on fresh random inputs, then the timing
#      table (bench/attention.py; arguments of this script go to it, e.g. --backward);
#   2. DFloat11: Triton decode bit-exact + GB/s, then the step overhead of a DF11 Wan2.1-1.3B-size transformer
#      (bench/dfloat11.py --gpu; the overhead part needs Diffusers on that machine and says so when it is missing).
# Part 1 needs only torch and numpy. Output goes to stdout and, if $OUT is set, to $OUT/gpu_check.txt.
# Budgets: GPU_CHECK_TIMEOUT (attention, default 420 s), DF11_CHECK_TIMEOUT (default 150 s); SKIP_ATTENTION=1 or
# SKIP_DF11=1 skip a part.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log="${OUT:-/tmp}/gpu_check.txt"
: > "$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
rc=0
if [ "${SKIP_ATTENTION:-0}" != 1 ]; then
  timeout "${GPU_CHECK_TIMEOUT:-420}" python bench/attention.py "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
fi
if [ "${SKIP_DF11:-0}" != 1 ]; then
  timeout "${DF11_CHECK_TIMEOUT:-150}" python bench/dfloat11.py --gpu 2>&1 | tee -a "$log"
  r=${PIPESTATUS[0]}; [ "$rc" = 0 ] && rc=$r
fi
exit "$rc"
