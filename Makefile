# One-command install of the detection stack into .venv/, then the project's jobs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Prebuilt wheels of slow builds (mmcv with ops), used when present; the build below works without them.
WHEELS ?= ../shared/wheels
WHEEL_FLAGS := $(if $(wildcard $(WHEELS)/*.whl),--find-links $(WHEELS),)
# mmcv 2.1.0 from the sdist: ops on CPU, no -g (halves build time), no build isolation (builds against our torch).
MMCV_ENV := MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=2 CFLAGS="-DNDEBUG -O3 -g0 -fwrapv -Wall"
STAMP := $(VENV)/.installed
# mmcv's setup.py and mmengine's mmdet:: config loader import pkg_resources, gone in setuptools>=81;
# torch pulls the newest setuptools, so every install step repeats the pin.
PIN := "setuptools<81"
DEMO_DIR ?= runs/demo
LEADERBOARD_DIR ?= runs/leaderboard
LEADERBOARD_LOSSES ?= [bce,ecm,seesaw,eqlv2,eql,fed]

.PHONY: install test lint demo leaderboard bench gpu-check-dry clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q "pip>=24" $(PIN) wheel
	$(PIP) install -q torch==2.13.0 $(PIN)
	$(PY) -c "import mmcv.ops" 2>/dev/null || $(MMCV_ENV) $(PIP) install -q --no-build-isolation $(WHEEL_FLAGS) mmcv==2.1.0 $(PIN)
	$(PIP) install -q -e ".[dev]" $(PIN)
	$(PY) -c "import mmcv.ops, mmdet, lvis, ecmctl" && touch $(STAMP)

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .

demo: install
	$(VENV)/bin/ecmctl demo --out $(DEMO_DIR)

# every loss x 3 seeds on the LVIS-like synthetic set, each compared with bce by seed (not part of `make test`)
leaderboard: install
	$(VENV)/bin/ecmctl demo "demo.losses=$(LEADERBOARD_LOSSES)" "demo.seeds=[0,1,2]" --out $(LEADERBOARD_DIR)

bench: install
	$(PY) benchmarks/count_bench.py
	$(PY) benchmarks/loss_bench.py
	$(PY) benchmarks/eval_bench.py --images 5000 --iou bbox
	$(PY) benchmarks/calibration_bench.py
	$(PY) benchmarks/dataset_bench.py

gpu-check-dry: install  # the GPU check's script at tiny sizes on this CPU (README "GPU check")
	PYTHON=$(PY) bash scripts/gpu-check.sh --dry-run

clean:
	rm -rf $(VENV) runs/ .pytest_cache
