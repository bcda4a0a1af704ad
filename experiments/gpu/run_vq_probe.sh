#!/usr/bin/env bash
# One call on a GPU machine: a 7x wider VQ autoencoder than the bundled one, trained from scratch
# for a few minutes, to see whether the autoencoder's width is what holds AID's reconstruction
# under #6's 28 dB. Returns the weights without optimizer state, in files under 16 MiB each.
#
#   bash experiments/gpu/run_vq_probe.sh [TRAIN_LDM_ARGS...]   # in the checkout, with .gpu_probe/ in it
#
# Extra arguments go to train_ldm.py after the probe's own and so override them (for example
# --vq-batch-size 256 --max-minutes 8.5: a wall-time cap that stops training with its checkpoint
# saved, so the weights still come back when the device call's limit is near).
#
# .gpu_probe/ comes from experiments/gpu/prepare_vq_probe.sh. Output in $OUT (else
# experiments/results/gpu_vq_probe/): train.log, the run's commands.log and run_config.json,
# vq_encoder.pt / vq_decoder.pt (stage 1, split in two) and decoder_best.pt (stage 1b).
set -uo pipefail
cd "$(dirname "$0")/../.."
PROBE=$PWD/.gpu_probe
source experiments/gpu/device_env.sh "$PROBE" experiments/results/gpu_vq_probe
RUN=$(mktemp -d)/vq_probe
VQ_MINUTES=${VQ_MINUTES:-2.8} DECODER_MINUTES=${DECODER_MINUTES:-0.9}
"$PYTHON" experiments/train_ldm.py --out "$RUN" --device "${DEVICE:-cuda}" --data "$PROBE/data" --stages vq,decoder \
    --vq-channels 64,128,128 --vq-layers-per-block 2 --vq-mid-attention --unet-mid-attention \
    --codebook-size 8192 --vq-batch-size 64 --vq-crop 64 --vq-lr 1e-3 --vq-steps 1000000 \
    --vq-minutes "$VQ_MINUTES" --decoder-steps 1000000 --decoder-minutes "$DECODER_MINUTES" \
    --decoder-batch-size 16 --val-every 500 --val-images 64 --no-export --no-progress "$@" \
    2>&1 | tee "$OUT/train.log"
status=$?
cp "$RUN"/commands.log "$RUN"/run_config.json "$OUT"/ 2>/dev/null
"$PYTHON" - "$RUN" "$OUT" <<'PY'
import sys
from pathlib import Path

import torch

run, out = Path(sys.argv[1]), Path(sys.argv[2])
vq = torch.load(run / "vq" / "checkpoint.pt", map_location="cpu", weights_only=False)
state = vq.pop("model")
vq.pop("optimizer")
encoder_side = ("encoder.", "quant_conv.", "quantize.")
for name, keep in (("vq_encoder.pt", True), ("vq_decoder.pt", False)):
    part = {k: v for k, v in state.items() if k.startswith(encoder_side) == keep}
    torch.save({**vq, "model": part}, out / name)
decoder_path = run / "decoder" / "checkpoint.pt"
if decoder_path.exists():
    dec = torch.load(decoder_path, map_location="cpu", weights_only=False)
    torch.save({k: dec[k] for k in ("best", "best_val", "step", "history", "vq_step", "seconds")},
               out / "decoder_best.pt")
for f in sorted(out.iterdir()):
    print(f.name, f.stat().st_size)
PY
exit $status
