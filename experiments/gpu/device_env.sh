# Sourced by experiments/gpu/run_*.sh on the GPU machine, in the checkout's root:
#   source experiments/gpu/device_env.sh KIT_DIR DEFAULT_OUT
# makes OUT (the device tool's output folder, else DEFAULT_OUT), installs KIT_DIR/wheels (the
# dependencies the machine's image lacks) into /tmp/orl_site and exports PYTHON, PYTHONPATH and
# PYTHONUNBUFFERED. NO_WHEELS=1 skips the install (a dry run in an environment that has the
# dependencies).
KIT_DIR=$1
OUT=${OUT:-$2}
mkdir -p "$OUT"
[ -d "$KIT_DIR/wheels" ] || { echo "no $KIT_DIR/wheels: run experiments/gpu/prepare_kit.sh (then prepare_vq_probe.sh for the probe) first" >&2; exit 2; }
export PYTHON=${PYTHON:-python3}
[ -n "${NO_WHEELS:-}" ] || "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/orl_site "$KIT_DIR"/wheels/*.whl || exit 2
export PYTHONPATH=/tmp/orl_site:$PWD PYTHONUNBUFFERED=1
