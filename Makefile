# Two commands do all the set-up (see README): `make quickstart` and `make test`.
# Both create .venv on first use. TORCH_SPEC is installed first so that pip never pulls the CUDA
# build of torch on a CPU-only machine; GPU users pass their own, e.g. TORCH_SPEC="torch==2.13.0"
# with their CUDA index configured, or point VENV at an environment that already has torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: quickstart test lint install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

quickstart: install
	$(BIN)/python train.py experiment=quickstart

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
