#!/usr/bin/env bash
# GPU check for a lent CUDA machine, run from the repository root: correctness of every attention backend against
# an fp32 reference on fresh random inputs, then the timing table (bench/attention.py). Needs only torch and
# numpy there (the op does not import Diffusers). Output goes to stdout and, if $OUT is set, to $OUT/gpu_check.txt.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
timeout "${GPU_CHECK_TIMEOUT:-420}" python bench/attention.py "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.txt"
exit "${PIPESTATUS[0]}"
