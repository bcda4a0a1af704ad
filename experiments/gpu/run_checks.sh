#!/usr/bin/env bash
# One call on a GPU machine: the CUDA tests, then the reward and env benchmarks on CUDA.
#
#   bash experiments/gpu/run_checks.sh        # in the checkout, with .gpu_kit/ beside it
#
# .gpu_kit/ comes from experiments/gpu/prepare_kit.sh. Results go to $OUT (the device tool's
# output folder) or else experiments/results/gpu/: gpu.txt (the card), pytest_cuda.log,
# bench_rewards_cuda.md, bench_env_cuda.md and their logs. About 5 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-experiments/results/gpu}
mkdir -p "$OUT"
KIT=$PWD/.gpu_kit
[ -d "$KIT/wheels" ] || { echo "no $KIT/wheels: run experiments/gpu/prepare_kit.sh first" >&2; exit 2; }
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/orl_site "$KIT"/wheels/*.whl || exit 2
export PYTHONPATH=/tmp/orl_site:$PWD PYTHONUNBUFFERED=1
export ORL_GYM_DATA=$KIT/data ORL_GYM_CACHE=$KIT/cache ORL_GYM_TEST_LPIPS_CACHE=$KIT/cache/lpips
status=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PYTHON" -c \
    "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } \
    2>&1 | tee "$OUT/gpu.txt"
# The CUDA cases of the suite (the other tests ran in CI, on CPU).
"$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests/test_data.py tests/test_rewards.py tests/test_env.py tests/test_postprocess.py \
    2>&1 | tee "$OUT/pytest_cuda.log" || status=1
"$PYTHON" experiments/bench_rewards.py --device cuda --malloc inherit --repeats 7 \
    --output "$OUT/bench_rewards_cuda.md" 2>&1 | tee "$OUT/bench_rewards.log" || status=1
"$PYTHON" experiments/bench_env.py --device cuda --num-envs 1 8 64 256 \
    --out "$OUT/bench_env_cuda.md" 2>&1 | tee "$OUT/bench_env.log" || status=1
exit $status
