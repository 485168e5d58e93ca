# pam_ros developer commands. Every target installs what it needs first (idempotent: `make setup`).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
PYTEST_ARGS ?=

.PHONY: setup test lint demo interfaces clean bench bench-official gpu-check

setup:
	@bash scripts/setup.sh

interfaces: setup

# The linter, then the whole test suite (CPU, tiny random-weight fixture model).
test: setup lint
	$(PY) -m pytest test $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check pam_ros test scripts launch setup.py

# The main job on the built-in default: replay the demo bag through the whole pipeline.
demo: setup
	$(PY) -m pam_ros.cli demo

bench: setup
	$(PY) -m pam_ros.cli bench track

# Whole-process describe / clip against the official PAM code, side by side (issue #24). OFFICIAL_SRC: a copy
# of github.com/Perceive-Anything/PAM; its venv (.venv-official) is made on first use. RUNS: timed rounds.
OFFICIAL_SRC ?=
RUNS ?= 5
bench-official: setup
	@test -n "$(OFFICIAL_SRC)" || { echo "usage: make bench-official OFFICIAL_SRC=/path/to/PAM [RUNS=5]"; exit 2; }
	bash scripts/official_env.sh $(OFFICIAL_SRC)
	$(PY) scripts/bench_vs_official.py --runs $(RUNS)

# On a machine with an NVIDIA GPU: the benchmarks at real size on CUDA (bf16/fp16, torch.compile on/off,
# ONNX Runtime CUDA/TensorRT), printed as one table. Fails with a message when there is no GPU.
gpu-check: setup
	PAM_ROS_PY=$(PY) bash scripts/gpu_check.sh

clean:
	rm -rf build install log demo_out
