#!/usr/bin/env bash
# Download the pure-Python wheels the lent GPU machine lacks (it has torch, triton, accelerate, peft, safetensors,
# transformers, ... but not diffusers or torchao; it cannot reach a package index) into .whl/ (git-ignored).
# Then run the GPU check with .whl carried:   run(command="bash bench/gpu_check.sh --backward", carry=[".whl"])
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # the comment block above is the help
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  -d .whl diffusers==0.42.1 torchao==0.18.0
ls -la .whl
