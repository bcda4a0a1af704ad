#!/usr/bin/env bash
# Build .gpu_kit/ (git-ignored): what experiments/gpu/run_checks.sh needs on a GPU machine that
# has PyTorch but no internet and none of this project's other dependencies.
#
#   ORL_GYM_DATA=../shared/data bash experiments/gpu/prepare_kit.sh      # here, where pip works
#
# The kit holds (about 28 MB: with the checkout's ~34 MB of tracked files, under the 64 MiB a
# device call can carry):
#   wheels/  pure-Python wheels of the dependencies the GPU image lacks, at the versions of this
#            checkout's .venv (no dependencies of theirs: the image has torch, numpy, scipy, ...)
#   data/    the first 4 images of every class of every dataset under $ORL_GYM_DATA
#   cache/lpips/alexnet.pth   the converted LPIPS backbone (`orl-gym fetch-weights`)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${ORL_GYM_DATA:?set ORL_GYM_DATA to the aerial data folder (../shared/data)}
PYTHON=${PYTHON:-.venv/bin/python}
KIT=.gpu_kit
STAGE=$(mktemp -d "$PWD/.gpu_kit.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/wheels" "$STAGE/data" "$STAGE/cache/lpips"

# Missing from the image (its package list: /work/.library/device/KINDS.md); its
# huggingface-hub 1.33 satisfies diffusers and datasets, so that one is not carried.
PACKAGES="diffusers gymnasium farama-notifications stable-baselines3 sb3-contrib lpips datasets dill multiprocess"
PINS=$("$PYTHON" - $PACKAGES <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
echo "wheels: $PINS"
# shellcheck disable=SC2086
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$STAGE/wheels" $PINS

"$PYTHON" - "$DATA" "$STAGE" <<'PY'
import shutil
import sys
from pathlib import Path

from orl_gym.lpips_weights import cached_weights_path, fetch_lpips_weights

data, stage = Path(sys.argv[1]), Path(sys.argv[2])
for class_dir in sorted(p for p in data.glob("*/*") if p.is_dir()):
    target = stage / "data" / class_dir.relative_to(data)
    target.mkdir(parents=True)
    for image in sorted(p for p in class_dir.iterdir() if p.is_file())[:4]:
        shutil.copy2(image, target)
fetch_lpips_weights("alex")  # a no-op when the user cache already holds verified weights
shutil.copy2(cached_weights_path("alex"), stage / "cache" / "lpips")
PY

rm -rf "$KIT"
mv "$STAGE" "$KIT"
trap - EXIT
du -sh "$KIT" "$KIT"/*
echo "Now, on the GPU machine (the device tool's run, carry [\"$KIT\"]): bash experiments/gpu/run_checks.sh"
