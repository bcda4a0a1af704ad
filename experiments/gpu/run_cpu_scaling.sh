#!/usr/bin/env bash
# One call on a lent GPU machine, CPU only: the reward and env benchmarks on its host CPU (16
# cores) at 1, 2, 4, 8 and 16 torch threads.
#
#   bash experiments/gpu/run_cpu_scaling.sh        # in the checkout, with .gpu_kit/ beside it
#
# Why: the CPU targets of the rewards issue (batched >= 8x the per-image loop at B = 64) and the
# env issue (N = 64 >= 10x the env-steps/s of N = 1) are missed on the 2-core development machine
# (experiments/results/bench_rewards.md, bench_env.md: 5.1x and 5.1x at 2 threads, 3.2x and 3.6x
# at 1). Batching gains with threads there (a B = 1 call cannot use a second core, a B = 64 call
# can), so whether the targets are a property of the code or of a 2-core CPU is a measurement on
# a CPU with more cores, which only the device machine has here.
#
# .gpu_kit/ comes from experiments/gpu/prepare_kit.sh. Results go to $OUT (the device tool's
# output folder) or else experiments/results/cpu16/: cpu.txt (lscpu, torch's thread and ISA
# info), bench_rewards_cpu.md, bench_env_cpu.md and their logs. Each part has its own time
# limit (PART_LIMIT_S seconds; 16-core numbers, the 2-core machine needs more), so the call
# stays under 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/../.."
KIT=$PWD/.gpu_kit
source experiments/gpu/device_env.sh "$KIT" experiments/results/cpu16
export ORL_GYM_DATA=$KIT/data ORL_GYM_CACHE=$KIT/cache ORL_GYM_TEST_LPIPS_CACHE=$KIT/cache/lpips
# No GPU: the benchmarks must not pick up CUDA by default.
export CUDA_VISIBLE_DEVICES=
PART_LIMIT_S=${PART_LIMIT_S:-240}
THREADS=${THREADS:-1 2 4 8 16}
part() { timeout --signal=INT --kill-after=10 "$PART_LIMIT_S" "$@"; }
status=0
{ lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)|Flags" | cut -c1-200
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads(), 'cpu capability', torch.backends.cpu.get_cpu_capability())"; } \
    2>&1 | tee "$OUT/cpu.txt"
# shellcheck disable=SC2086  # THREADS is a list
part "$PYTHON" experiments/bench_rewards.py --device cpu --batches 1 16 64 --threads $THREADS \
    --malloc inherit --repeats 5 --budget-s 20 --output "$OUT/bench_rewards_cpu.md" \
    2>&1 | tee "$OUT/bench_rewards.log" || status=1
# shellcheck disable=SC2086
part "$PYTHON" experiments/bench_env.py --device cpu --num-envs 1 8 64 --threads $THREADS \
    --out "$OUT/bench_env_cpu.md" 2>&1 | tee "$OUT/bench_env.log" || status=1
exit $status
