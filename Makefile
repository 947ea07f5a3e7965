# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline
export PYTHONUNBUFFERED := 1

.PHONY: install demo test lint clean

$(PY):
	python3 -m venv $(VENV)

# torch is installed first and pinned exactly: the local CPU wheel; any looser spec pulls CUDA packages.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) train.py experiment=maskcontrast_demo
	$(PY) evaluate.py task=kmeans ckpt_path=logs/demo/last_run/checkpoints/last.ckpt hydra.run.dir=logs/demo/last_run/evaluate
	@echo "Results and logs: logs/demo/last_run (metrics.json, config.yaml, tensorboard/, evaluate/)"
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir logs/"

test: install
	WANDB_MODE=disabled $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf logs outputs multirun .pytest_cache
