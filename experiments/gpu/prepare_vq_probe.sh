#!/usr/bin/env bash
# Build .gpu_probe/ (git-ignored) for experiments/gpu/run_vq_probe.sh: the wheels of the GPU kit
# and as much training data as one device call can carry (64 MiB with the checkout): AID's
# train and validation splits whole, UC Merced's validation split and a sample of its train split.
#
#   ORL_GYM_DATA=../shared/data bash experiments/gpu/prepare_vq_probe.sh   # after prepare_kit.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${ORL_GYM_DATA:?set ORL_GYM_DATA to the aerial data folder (../shared/data)}
PYTHON=${PYTHON:-.venv/bin/python}
[ -d .gpu_kit/wheels ] || { echo "no .gpu_kit/wheels: run experiments/gpu/prepare_kit.sh first" >&2; exit 2; }
rm -rf .gpu_probe && mkdir -p .gpu_probe/data
cp -r .gpu_kit/wheels .gpu_probe/wheels
"$PYTHON" - "$DATA" .gpu_probe/data <<'PY'
import shutil
import sys
from pathlib import Path

from orl_gym.data import assign_split

data, target = Path(sys.argv[1]), Path(sys.argv[2])
# Splits hash each image's "<dataset>/<class>/<file>" identity, so the copies keep their split.
KEEP = {("aid150", "train"): 1.0, ("aid150", "validation"): 1.0,
        ("ucmerced", "validation"): 0.3, ("ucmerced", "train"): 0.1}
taken: dict[tuple[str, str], int] = {}
for image in sorted(p for p in data.glob("*/*/*") if p.is_file()):
    identity = image.relative_to(data)
    key = (identity.parts[0], assign_split(str(identity)))
    share = KEEP.get(key, 0.0)
    index = int(identity.stem[-2:]) if identity.parts[0] == "ucmerced" else 0
    # UC Merced: every class keeps the same share (file ids 00-49, evenly spaced).
    if share == 1.0 or (share and index % round(1 / share) == 0):
        (target / identity).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, target / identity)
        taken[key] = taken.get(key, 0) + 1
print({f"{d}/{s}": n for (d, s), n in sorted(taken.items())})
PY
du -sh .gpu_probe .gpu_probe/*
