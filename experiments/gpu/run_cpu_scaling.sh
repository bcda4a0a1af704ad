#!/usr/bin/env bash
# One call on a lent GPU machine, CPU only: the reward and env benchmarks on its host CPU (16
# cores) at 1, 2, 4, 8 and 16 torch threads.
#
#   bash experiments/gpu/run_cpu_scaling.sh        # in the checkout, with .gpu_kit/ beside it
#
# Why: the CPU targets of the rewards issue (batched >= 8x the per-image loop at B = 64) and the
# env issue (N = 64 >= 10x the env-steps/s of N = 1) are missed on the 2-core development machine
# (experiments/results/bench_rewards.md, bench_env.md: 5.1x and 4.8x at 2 threads, 3.2x and 3.1x
# at 1). Batching gains with threads there (a B = 1 call cannot use a second core, a B = 64 call
# can), so whether the targets are a property of the code or of a 2-core CPU is a measurement on
# a CPU with more cores, which only the device machine has here.
#
# .gpu_kit/ comes from experiments/gpu/prepare_kit.sh. Results go to $OUT (the device tool's
# output folder) or else experiments/results/cpu16/: cpu.txt (lscpu, torch's thread and ISA
# info), bench_rewards_cpu_tN.md and bench_env_cpu_tN.md for each thread count N, and their logs.
# One invocation per thread count, so that a part cut off by its time limit (PART_LIMIT_S) loses
# only itself; a part that could not finish by LIMIT_S seconds (its own limit and kill grace
# counted) is skipped, so the call ends before the device tool's 10 minutes. (On the 2-core development machine one thread count takes about 25 s
# of bench_rewards and 60 s of bench_env.)
set -uo pipefail
cd "$(dirname "$0")/../.."
KIT=$PWD/.gpu_kit
source experiments/gpu/device_env.sh "$KIT" experiments/results/cpu16
export ORL_GYM_DATA=$KIT/data ORL_GYM_CACHE=$KIT/cache ORL_GYM_TEST_LPIPS_CACHE=$KIT/cache/lpips
# No GPU: nothing here may pick up CUDA.
export CUDA_VISIBLE_DEVICES=
PART_LIMIT_S=${PART_LIMIT_S:-120}
LIMIT_S=${LIMIT_S:-570}
THREADS=${THREADS:-1 2 4 8 16}
part() {
    if (( SECONDS + PART_LIMIT_S + 10 > LIMIT_S )); then
        echo "skipped (it could run past ${LIMIT_S} s): $*" >&2; return 1
    fi
    timeout --signal=INT --kill-after=10 "$PART_LIMIT_S" "$@"
}
status=0
{ lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)" | cut -c1-200
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads(), 'cpu capability', torch.backends.cpu.get_cpu_capability())"; } \
    2>&1 | tee "$OUT/cpu.txt"
for n in $THREADS; do
    part "$PYTHON" experiments/bench_rewards.py --device cpu --batches 1 16 64 --threads "$n" \
        --malloc inherit --repeats 5 --budget-s 20 --output "$OUT/bench_rewards_cpu_t$n.md" \
        2>&1 | tee -a "$OUT/bench_rewards.log" || status=1
    part "$PYTHON" experiments/bench_env.py --device cpu --num-envs 1 8 64 --threads "$n" \
        --out "$OUT/bench_env_cpu_t$n.md" 2>&1 | tee -a "$OUT/bench_env.log" || status=1
done
echo "run_cpu_scaling: ${SECONDS} s" | tee -a "$OUT/cpu.txt"
exit $status
