#!/usr/bin/env bash
# The GPU check (README "GPU check"): ecmctl's first figures from a GPU, in at most 8 minutes of wall time.
# On the GPU machine it installs what the image lacks from the wheels carried in .whl/ (scripts/gpu-wheels.sh
# fills it), then runs scripts/gpu_check.py, which builds mmcv's ops for that GPU (or installs the wheel an
# earlier check returned) and measures; figures go to $OUT/gpu-check.json, the whole output to
# $OUT/gpu-check.log.
#   GPU machine:  run(command="bash scripts/gpu-check.sh", carry=[".whl"], timeout_s=540)
#   this CPU:     bash scripts/gpu-check.sh --dry-run [--out DIR]   (make gpu-check-dry: the venv, no install)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

if [[ " $* " == *" --dry-run "* ]]; then
  PYTHONPATH=$PWD exec "${PYTHON:-.venv/bin/python}" scripts/gpu_check.py --budget "${BUDGET:-1200}" "$@"
fi

BUDGET=${BUDGET:-480}  # seconds for everything below, the mmcv build included
PYTHON=${PYTHON:-python3}
SITE=/tmp/site
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
mapfile -t wheels < <(ls .whl/*.whl | grep -v '/mmcv-')  # mmcv: built or installed by the driver
echo "installing ${#wheels[@]} carried wheels into $SITE"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
export PYTHONPATH=$SITE:$PWD
"$PYTHON" scripts/gpu_check.py --budget $((BUDGET - SECONDS)) --site "$SITE" --out "$OUT" "$@" 2>&1 \
  | tee "$OUT/gpu-check.log"
