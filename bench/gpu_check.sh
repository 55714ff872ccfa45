#!/usr/bin/env bash
# GPU check for a lent CUDA machine, run from the repository root: one short call (the device README: "one short,
# prepared script, with a timeout_s that leaves time to rerun it"). By default two parts, about 4-5 minutes:
#   1. attention (GPU_CHECK_TIMEOUT, default 240 s): every backend's default configs against an fp32 reference on
#      fresh random inputs, then forward (with --backward, forward+backward) timings of ours, Flex and dense SDPA
#      flash / cuDNN at Wan 480x832x81 and 768x1280x69, then every other Triton launch config (last, so a run cut
#      short keeps the timings; a case that raises is a FAIL row and the others run) (bench/attention.py; this
#      script's arguments go to it, e.g. --backward, --hunyuan-509);
#   2. DFloat11 (DF11_CHECK_TIMEOUT, 90 s): Triton decode bit-exact + GB/s, then the step overhead of a DF11
#      Wan2.1-1.3B-size transformer (bench/dfloat11.py --gpu).
# Three more with SKIP_QUANT=0 / SKIP_TRAIN=0 / SKIP_BENCH=0, for a second call once the first has its numbers
# (about 6 minutes):
#   3. quantization (QUANT_CHECK_TIMEOUT, 200 s): Wan2.1-1.3B size at 480x832x81, BF16 dense / radial / radial + each
#      scheme (bench/quant.py --gpu);
#   4. training step (TRAIN_CHECK_TIMEOUT, 150 s): LoRA step radial vs dense at 480x832x161 (bench/train_step.py);
#   5. the CLI's bench (CLI_BENCH_TIMEOUT, 45 s): `radial-diffusers bench --backward --flex` at its CUDA defaults, as
#      a user runs it.
# The Triton kernels run their fixed default configs (RADIAL_TRITON_AUTOTUNE=0: a handful of compiles per shape, not
# every candidate's); GPU_CHECK_TUNE=1 tunes as users' runs do and prints every config the tuner timed.
# 15 minutes of device time in all, starts included, so:
#   run(command="bash bench/gpu_check.sh --backward", carry=[".whl"], timeout_s=360)
#   run(command="SKIP_ATTENTION=1 SKIP_DF11=1 SKIP_QUANT=0 SKIP_TRAIN=0 SKIP_BENCH=0 bash bench/gpu_check.sh",
#       carry=[".whl"], timeout_s=420)    # at once, while the machine is warm; or rerun the first if it failed
# Parts 2-5 need Diffusers (and 3 torchao) there: run bench/fetch_gpu_wheels.sh here first and carry .whl; they are
# installed into /tmp/site. Output goes to stdout and, if $OUT is set, to $OUT/gpu_check.txt. Other arguments go to
# bench/attention.py (python bench/attention.py --help).
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # the comment block above is the help
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
log="${OUT:-/tmp}/gpu_check.txt"
: > "$log"
[ "${GPU_CHECK_TUNE:-0}" = 1 ] || export RADIAL_TRITON_AUTOTUNE="${RADIAL_TRITON_AUTOTUNE:-0}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "
import importlib.metadata as md, torch
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return 'absent'
print('torch', torch.__version__, 'cuda', torch.version.cuda, *(f'{n} {version(n)}' for n in ('triton', 'diffusers', 'peft', 'torchao')))
print('RADIAL_TRITON_AUTOTUNE', '${RADIAL_TRITON_AUTOTUNE:-1}')" 2>&1 | tee -a "$log"
rc=0
part() {  # part NAME TIMEOUT command...
  local name=$1 limit=$2; shift 2
  echo "== $name" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local r=${PIPESTATUS[0]}
  [ "$r" = 0 ] || echo "== $name: exit $r" | tee -a "$log"
  [ "$rc" = 0 ] && rc=$r
}
[ "${SKIP_ATTENTION:-0}" = 1 ] || part attention "${GPU_CHECK_TIMEOUT:-240}" python3 bench/attention.py "$@"
[ "${SKIP_DF11:-0}" = 1 ] || part dfloat11 "${DF11_CHECK_TIMEOUT:-90}" python3 bench/dfloat11.py --gpu
[ "${SKIP_QUANT:-1}" = 1 ] || part quant "${QUANT_CHECK_TIMEOUT:-200}" python3 bench/quant.py --gpu --repeats 3
[ "${SKIP_TRAIN:-1}" = 1 ] || part train_step "${TRAIN_CHECK_TIMEOUT:-150}" python3 bench/train_step.py --device cuda \
  --model wan1.3b --frames 161 --height 480 --width 832 --steps 2
[ "${SKIP_BENCH:-1}" = 1 ] || part cli_bench "${CLI_BENCH_TIMEOUT:-45}" python3 -m radial_diffusers bench --backward \
  --flex --repeats 5
exit "$rc"
