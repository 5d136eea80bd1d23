# Quick start:  make demo       (create .venv, train on the built-in demo data)
#               make test       (create .venv with dev and docs extras: lint, docs, the whole suite; CI runs this)
#               make test-fast  (the suite less the tests marked slow: what to run while working)
#               make docs       (build the documentation site into build/site, strict: broken links fail)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Pinned to the torch/torchvision pair this project is developed and tested with.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
# pytest-xdist workers, each with a share of the cores (tests/conftest.py); loadfile gives each module to one
# worker, so a module's expensive fixture (a DDP run, an uninterrupted reference run) is made once; the modules go
# out in the order tests/conftest.py sorts them (slow ones first), not xdist's (most tests first)
XDIST := --dist loadfile --no-loadscope-reorder
# the whole suite on three workers for two cores: its process tests wait (for signals, rendezvous rounds, servers)
# while their processes sleep, and a third worker fills those waits (docs/testing.md: 840 -> 744 s); the fast
# tier computes in its own processes and waits for nothing, so it keeps one worker a core
WORKERS_ALL  ?= 3
WORKERS_FAST ?= 2
# Packages go in with uv (installed from PyPI into the environment first): the same wheels from the same places as
# pip (tools/uv_sources.py passes it pip's find-links, indexes and constraints, which uv does not read), unpacked
# several at a time, and without byte-compiling what is never imported (the first import compiles a module once).
# A fresh .venv here: torch and torchvision 55 -> 30 s, the dev and docs extras 82 -> 15 s, no 55 s compileall.
# `make INSTALLER=pip ...` installs with pip instead.
# INSTALL_TOOL is the target that readies the installer in the environment.
INSTALLER ?= uv
ifeq ($(INSTALLER),pip)
INSTALL      = $(BIN)/pip install --quiet
INSTALL_TOOL = $(VENV)/.stamp-pip
else
INSTALL      = $(BIN)/uv pip install --quiet --python $(BIN)/python $(shell $(PYTHON) tools/uv_sources.py)
INSTALL_TOOL = $(BIN)/uv
endif
# the tests write bytecode caches even where the environment says not to (PYTHONDONTWRITEBYTECODE=1 on this
# machine): without them every test process compiles yolotrain's modules again and every worker rewrites every
# test module (collecting took 13.9 CPU-s a worker without the caches, 7.6 s with them)
WRITE_BYTECODE := PYTHONDONTWRITEBYTECODE=
PYTEST := $(WRITE_BYTECODE) $(BIN)/python -m pytest
# A new .venv has no bytecode (uv compiles nothing), and the three test workers and the first test processes, all
# started at once, would each compile torch and the rest for themselves. Two processes (one a core) import what
# the tests' processes import and write the caches once, before the suite: about 16 CPU-s of compiling, paid once.
# An import that fails here fails the tests that make it, so the warm-up's own status is not checked.
WARM_TORCH  := yolotrain.cli, yolotrain.engine.trainer, yolotrain.engine.launch, torch._dynamo, torchvision, \
	torch.distributed.run
WARM_OTHERS := matplotlib.pyplot, mlflow, optuna, onnx, onnxruntime, pandas, pytest, xdist, hypothesis
WARM_BYTECODE := $(WRITE_BYTECODE) $(BIN)/python -c "import $(WARM_TORCH)" & \
	$(WRITE_BYTECODE) $(BIN)/python -c "import $(WARM_OTHERS)"; wait

.PHONY: demo test test-fast docs lint venv venv-dev clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# the installers are targets of their own, so an environment made before the Makefile used uv gets it too
$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv

$(VENV)/.stamp-pip: | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.stamp-base: pyproject.toml | $(INSTALL_TOOL)
	$(INSTALL) $(TORCH_PIN) -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-base
	$(INSTALL) $(TORCH_PIN) -e ".[dev,docs]"
	$(WARM_BYTECODE)
	touch $@

venv: $(VENV)/.stamp-base
venv-dev: $(VENV)/.stamp-dev

demo: venv
	$(BIN)/yolotrain train

# on $(WORKERS_ALL) workers: well under half the serial time on two cores (docs/testing.md)
test: venv-dev lint docs
	$(PYTEST) -n $(WORKERS_ALL) $(XDIST)

# everything but the tests marked slow (processes, DDP, preemption, tune, longer training), on two workers
test-fast: venv-dev
	$(PYTEST) -m "not slow" -n $(WORKERS_FAST) $(XDIST)

# the site goes to build/ (ignored by git); --strict turns broken links and missing references into errors
docs: venv-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir build/site

# one house style: ruff's lint rules and formatter, configured in pyproject.toml
lint: venv-dev
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

bench: venv-dev
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
