#!/usr/bin/env bash
# One call on a GPU machine (issue 24): a wider UNet for the LR-anchored (residual) model, on the
# bundled residual model's VQ (orl_gym/assets/ldm-sr-tiny-x4-residual, frozen), trained from
# scratch for a few minutes. experiments/residual_sampling_tradeoff.py shows why: on AID even the
# 2-step sampler (close to the small UNet's posterior mean) is only +0.27 dB over bicubic, so no
# sampler of that UNet reaches the +0.5 dB target; the UNet itself must predict the detail better.
#
#   bash experiments/gpu/run_residual_unet.sh [TRAIN_LDM_ARGS...]   # in the checkout, with .gpu_probe/ in it
#
# Extra arguments go to train_ldm.py after these and override them (e.g. --max-minutes 8.5: a wall
# cap that still saves and exports). .gpu_probe/ comes from experiments/gpu/prepare_kit.sh then
# prepare_vq_probe.sh (wheels + AID train/validation whole, a sample of UC Merced). Output in $OUT
# (else experiments/results/gpu_residual_unet/): train.log, commands.log, run_config.json and
# export/ (the diffusers folder, float16, about 13 MB: evaluate it here with
# experiments/eval_base_model.py --model <it>/export, then copy it over the asset if it is better).
set -uo pipefail
cd "$(dirname "$0")/../.."
PROBE=$PWD/.gpu_probe
source experiments/gpu/device_env.sh "$PROBE" experiments/results/gpu_residual_unet
RUN=$(mktemp -d)/residual_unet
"$PYTHON" experiments/train_ldm.py --out "$RUN" --device "${DEVICE:-cuda}" --data "$PROBE/data" \
    --init-from orl_gym/assets/ldm-sr-tiny-x4-residual --init-stages vq,decoder --stages unet \
    --unet-channels 64,128,128 --unet-layers-per-block 2 --unet-crop 128 --unet-batch-size 64 \
    --unet-steps 1000000 --unet-minutes "${UNET_MINUTES:-7}" --prediction-type v_prediction \
    --val-every 500 --export "$OUT/export" --no-progress "$@" 2>&1 | tee "$OUT/train.log"
status=${PIPESTATUS[0]}
cp "$RUN"/commands.log "$RUN"/run_config.json "$OUT"/ 2>/dev/null
exit "$status"
