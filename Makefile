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

# The quickstart trains the small cascade's base (32x32) and SR (32->64) stages, exports them as one folder,
# samples the chain, and scores the SR stage against bicubic upsampling on 64 held-out scenes.
QUICKSTART_DIR ?= outputs/quickstart/$(shell date +%Y-%m-%d_%H-%M-%S)
QUICKSTART_DIR := $(QUICKSTART_DIR)

quickstart: install
	$(BIN)/python train.py experiment=quickstart hydra.run.dir=$(QUICKSTART_DIR)/base32
	$(BIN)/python train.py experiment=quickstart_sr64 hydra.run.dir=$(QUICKSTART_DIR)/sr64
	$(BIN)/python -m imagen_lit.cascade export $(QUICKSTART_DIR)/cascade \
	    $(QUICKSTART_DIR)/base32/checkpoints/last.ckpt $(QUICKSTART_DIR)/sr64/checkpoints/last.ckpt
	$(BIN)/python sample.py cascade=$(QUICKSTART_DIR)/cascade hydra.run.dir=$(QUICKSTART_DIR)/samples
	$(BIN)/python experiments/sr_vs_bicubic.py $(QUICKSTART_DIR)/sr64/checkpoints/last.ckpt --num-scenes 64 \
	    --json $(QUICKSTART_DIR)/sr_vs_bicubic.json --save-grid $(QUICKSTART_DIR)/sr_vs_bicubic.png

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
