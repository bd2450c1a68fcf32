# MedFakeDet. The two commands a user needs: `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medfakedet-installed
DATA ?= data/embedded
ARTIFACTS ?= artifacts
REPORTS ?= docs/reports
PYTEST_ARGS ?=

.PHONY: help setup test test-fast lint format data train evaluate report archive serve stop restart status \
        ablation bench loadtest clean

help:
	@echo "make serve   - set up, build data + train if no models exist, archive, start TorchServe + nginx"
	@echo "make stop    - stop TorchServe and nginx"
	@echo "make restart - stop, then serve again on the same ports"
	@echo "make test    - set up if needed and run the whole test suite"
	@echo "make lint    - ruff check + format check"
	@echo "make data / train / evaluate / archive / ablation / bench / loadtest / clean"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@scripts/check-prereqs.sh $(PYTHON)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -e '.[train,serve,dev]'
	@touch $@

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/pytest -m "not integration and not slow and not browser" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

data: setup
	@if [ -f $(DATA)/build.json ]; then echo "embedded data exists in $(DATA) (make clean-data to rebuild)"; \
	else $(PY) -m medfakedet.data build --out $(DATA); fi

train: data
	$(PY) -m training.train_synthesis8 --data $(DATA)/medfake --out $(ARTIFACTS)/synthesis8 \
		--config training/configs/synthesis8_embedded.yaml
	$(PY) -m training.train_localizer --data $(DATA)/medfakeinpaint --out $(ARTIFACTS)/manipulation_density \
		--config training/configs/localizer_embedded.yaml

evaluate: setup
	$(PY) -m training.evaluate --artifact $(ARTIFACTS)/synthesis8 --data $(DATA)/medfake --split test \
		--out $(REPORTS)/synthesis8
	$(PY) -m training.evaluate --artifact $(ARTIFACTS)/manipulation_density --data $(DATA)/medfakeinpaint \
		--split test --out $(REPORTS)/manipulation_density

report: data
	$(PY) -m training.pipeline --data $(DATA) --artifacts $(ARTIFACTS) --reports $(REPORTS)

ablation: data
	$(PY) -m training.ablation --data $(DATA)/medfakeinpaint --out $(REPORTS)/ablation

archive: setup
	@for m in synthesis8 manipulation_density; do \
		test -f $(ARTIFACTS)/$$m/artifact.json || { echo "no artifact in $(ARTIFACTS)/$$m: run 'make train' first" >&2; exit 1; }; \
	done
	$(PY) -m medfakedet.deploy archive --artifacts $(ARTIFACTS) --out model_store

serve: setup
	@if [ ! -f $(ARTIFACTS)/synthesis8/artifact.json ] || [ ! -f $(ARTIFACTS)/manipulation_density/artifact.json ]; then \
		echo "No trained models in $(ARTIFACTS)/: building the embedded synthetic data and training the defaults."; \
		echo "NOTE: these models are trained on SYNTHETIC data only. They are NOT for clinical use."; \
		$(MAKE) --no-print-directory train || exit 1; \
	fi
	@$(MAKE) --no-print-directory archive
	$(PY) -m medfakedet.deploy start

stop:
	@if [ -x $(PY) ]; then $(PY) -m medfakedet.deploy stop; else echo "nothing to stop (no $(VENV))"; fi

# Right after a stop, the ports may still hold connections in TIME-WAIT; start does not mind them.
restart:
	@$(MAKE) --no-print-directory stop
	@$(MAKE) --no-print-directory serve

status: setup
	$(PY) -m medfakedet.deploy status

bench: setup
	$(PY) -m loadtests.benchmark

loadtest: setup
	$(VENV)/bin/locust -f loadtests/locustfile.py --headless -u 16 -r 4 -t 60s --host http://127.0.0.1:8000

clean-data:
	rm -rf $(DATA)

clean:
	rm -rf model_store/*.mar logs .pytest_cache .ruff_cache
