#!/usr/bin/env bash
# One call on a GPU machine: the CUDA tests, the reward and env benchmarks on CUDA, then short
# runs of the two training entry points with --device cuda (train_ldm.py, orl-gym train).
#
#   bash experiments/gpu/run_checks.sh        # in the checkout, with .gpu_kit/ beside it
#
# .gpu_kit/ comes from experiments/gpu/prepare_kit.sh. Results go to $OUT (the device tool's
# output folder) or else experiments/results/gpu/: gpu.txt (the card), pytest_cuda.log,
# bench_rewards_cuda.md, bench_env_cuda.md (float32), bench_env_cuda_float16.md,
# bench_env_cuda_bfloat16.md and their logs, smoke_cuda.log. Each part has its own
# time limit (PART_LIMIT_S, seconds), so the whole call stays under 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/../.."
KIT=$PWD/.gpu_kit
source experiments/gpu/device_env.sh "$KIT" experiments/results/gpu
export ORL_GYM_DATA=$KIT/data ORL_GYM_CACHE=$KIT/cache ORL_GYM_TEST_LPIPS_CACHE=$KIT/cache/lpips
PART_LIMIT_S=${PART_LIMIT_S:-110}
part() { timeout --signal=INT --kill-after=10 "$PART_LIMIT_S" "$@"; }
status=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PYTHON" -c \
    "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } \
    2>&1 | tee "$OUT/gpu.txt"
# The CUDA cases of the suite (the other tests ran in CI, on CPU).
part "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests/test_data.py tests/test_rewards.py tests/test_env.py tests/test_postprocess.py \
    2>&1 | tee "$OUT/pytest_cuda.log" || status=1
part "$PYTHON" experiments/bench_rewards.py --device cuda --malloc inherit --repeats 7 --budget-s 60 \
    --output "$OUT/bench_rewards_cuda.md" 2>&1 | tee "$OUT/bench_rewards.log" || status=1
part "$PYTHON" experiments/bench_env.py --device cuda --num-envs 1 8 64 256 \
    --out "$OUT/bench_env_cuda.md" 2>&1 | tee "$OUT/bench_env.log" || status=1
# The same env in half precision (EnvConfig.dtype): does it pay on this card?
for dtype in float16 bfloat16; do
    part "$PYTHON" experiments/bench_env.py --device cuda --dtype "$dtype" --num-envs 1 64 256 \
        --out "$OUT/bench_env_cuda_$dtype.md" 2>&1 | tee -a "$OUT/bench_env.log" || status=1
done
# The training entry points on CUDA, a few steps each on the kit's images (does --device cuda
# work end to end: training steps on the GPU, checkpoints, export, PPO with the batched env).
SMOKE=$(mktemp -d)
{ part "$PYTHON" experiments/train_ldm.py --out "$SMOKE/ldm" --device cuda --data "$ORL_GYM_DATA" \
      --stages vq,decoder,unet --vq-steps 40 --decoder-steps 20 --unet-steps 40 --decoder-crop 64 \
      --val-every 20 --val-images 4 --no-progress \
  && part "$PYTHON" -m orl_gym.cli train --algo ppo --env tiny-x4 --device cuda --timesteps 512 \
      --n-envs 16 --params n_steps=16 batch_size=64 n_epochs=1 --eval-freq 256 --eval-images 4 \
      --run-dir "$SMOKE/ppo" --no-progress \
  && ls "$SMOKE/ldm/export" "$SMOKE/ppo" && cat "$SMOKE/ppo/validation.csv"; } 2>&1 | tee "$OUT/smoke_cuda.log" || status=1
exit $status
