#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what the GPU machine's image lacks, for its Python 3.12 on x86-64 Linux:
# the detection stack's wheels, mmcv 2.1.0's sdist (scripts/gpu-check.sh compiles its ops there, for that
# GPU only) and setuptools<81 (mmcv's setup.py and mmengine import pkg_resources). That machine has no
# network: `run(carry=[".whl"])` takes the folder along. Run here, once:  bash scripts/gpu-wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}  # needs torch and setuptools<81: mmcv's sdist runs setup.py to be fetched
WHL=.whl
# Pinned to the versions `make install` resolves here; everything else the image already has (KINDS.md).
PURE=(mmengine==0.10.7 mmdet==3.3.0 lvis==0.5.3 hydra-core==1.3.8 omegaconf==2.3.1 addict==2.4.0
      yapf==0.43.0 platformdirs==4.14.8 termcolor==3.3.0 terminaltables==3.1.10 setuptools==80.10.2)
BINARY=(pycocotools==2.0.11 shapely==2.2.0)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)

mkdir -p "$WHL"
pip_get() { "$PYTHON" -m pip "$@" --no-deps -q -d "$WHL"; }
pip_get download --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]/#/--platform=}" "${PURE[@]}" "${BINARY[@]}"
pip_get download --no-binary=:all: --no-build-isolation mmcv==2.1.0
# antlr4's runtime (hydra's parser) exists only as an sdist: pure Python, so a wheel built here works there
"$PYTHON" -m pip wheel --no-deps -q -w "$WHL" antlr4-python3-runtime==4.9.3
# the mmcv wheel (or its .partNN files) an earlier check built, if kept beside `make install`'s: no build then
shopt -s nullglob
kept=("${WHEELS:-../shared/wheels}"/mmcv-2.1.0-cp312-*.whl*)
if (( ${#kept[@]} )); then cp "${kept[@]}" "$WHL"/; fi

ls -l "$WHL"
echo "wheels: $(du -sh "$WHL" | cut -f1) in $WHL"
echo "travels with run(carry=[\"$WHL\"]): $(git ls-files -co --exclude-standard -z | du -cb --files0-from=- \
  | tail -1 | awk '{printf "%.1f MiB", $1 / 2^20}') of tree + $(du -sb "$WHL" | awk '{printf "%.1f MiB", $1 / 2^20}') \
of wheels (limit 64 MiB)"
