# imagineer-workers — the interface: setup · demo · test · lint · images · chart-test · cluster · smoke
# Everything a fresh machine needs is installed from here (Debian packages, a venv, the pinned
# chart tools in .tools/ from tools.mk), nothing by hand.

SHELL        := /bin/bash
.SHELLFLAGS  := -eu -o pipefail -c
PYTHON       ?= python3
VENV         := .venv
PY           := $(VENV)/bin/python
STAMP        := $(VENV)/.installed
APT_PACKAGES := redis-server openssl
# Only where images are built or run (make images, docker-engine: run-test, bench, the kind cluster):
# debootstrap for the local base image, and Debian's docker.io where no Docker engine is installed
# (a runner with docker-ce keeps it).
DOCKER_APT_PACKAGES := debootstrap $(if $(shell command -v dockerd),,docker.io)
# Only for run-test: Flower is checked in a real headless browser (Playwright drives this one).
RUN_TEST_APT_PACKAGES := chromium
# Only for chart-test: systemd-analyze verifies the rendered systemd units (nothing is started).
CHART_TEST_APT_PACKAGES := systemd
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS  ?=

CHART        := charts/imagineer-workers
VALUES_FILES := values-staging.yaml values-prod.yaml
CHART_AUTOSCALING_SETS := --set workers.training.autoscaling.enabled=true \
  --set workers.scraping.autoscaling.enabled=true \
  --set workers.labeling.autoscaling.enabled=true --set workers.labeling.autoscaling.mode=hpa

.DEFAULT_GOAL := help
.PHONY: setup system-packages docker-packages run-test-packages chart-test-packages demo test lint worker-test reliability reliability-ci chart-test chart-readme run-test run-test-clean clean help

help:
	@echo "make setup   install Debian packages (redis-server, openssl) and the venv (.venv, with torch)"
	@echo "make demo    run the whole pipeline locally on a real Redis and print a status table"
	@echo "make test    lint + the whole test suite (real Redis, real workers)"
	@echo "make lint    ruff, and mypy --strict on the worker package"
	@echo "make reliability  fault injection (kill -9, SIGTERM, Redis restart/outage, OOM, poison, two beats, burst): 5 trials each, prints the table"
	@echo "make bench   throughput, latency, memory, start-up, image, scaling, LoRA figures vs baselines (docs/benchmarks.md)"
	@echo "make bench-smoke  the bench with tiny counts: every figure is produced (part of make test)"
	@echo "make chart-test  helm lint, helm-unittest, kubeconform, the chart render tests and the systemd units (systemd-analyze)"
	@echo "make run-test    the rendered pods run as containers from the built images (needs Docker)"
	@echo "make tools   the pinned chart toolchain in .tools/ (helm, helm-unittest, kubeconform, schemas)"
	@echo "make images  the per-queue worker images (local debootstrap base, offline builds); see images/README.md"
	@echo "make locks   regenerate the images' hashed lock files after a dependency change"
	@echo "make kind-node-image  the kind node image, built offline (cluster/README.md)"
	@echo "make cluster / cluster-delete  a two-node kind cluster for the chart"
	@echo "make smoke   the chart on that cluster: install, tasks through pods, scale, upgrade to prod, rollback"
	@echo "make cluster-demo  cluster + install + the demo pipeline through the pods, left running"

include tools.mk
include images.mk
include cluster/cluster.mk

setup: system-packages $(STAMP)

# Installs the Debian packages in $(1) that are missing.
define apt_install
@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
if [ -n "$$missing" ]; then \
  echo "installing Debian packages:$$missing"; \
  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
fi
endef

system-packages:
	$(call apt_install,$(APT_PACKAGES))

docker-packages: system-packages
	$(call apt_install,$(DOCKER_APT_PACKAGES))

run-test-packages: system-packages
	$(call apt_install,$(RUN_TEST_APT_PACKAGES))

chart-test-packages: system-packages
	$(call apt_install,$(CHART_TEST_APT_PACKAGES))

# pip's cache keeps the ~3 GB of torch wheels: a second venv on the same machine installs offline-fast.
$(STAMP): worker/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e 'worker[training,dev]'
	touch $@

demo: setup
	HF_HUB_OFFLINE=1 $(PY) -m imagineer_worker.demo --workdir .demo

lint: $(STAMP)
	$(VENV)/bin/ruff check worker
	$(VENV)/bin/ruff check --config worker/pyproject.toml tests tools/schemas.py bench
	cd worker && ../$(VENV)/bin/mypy  # --strict on src/ (worker/pyproject.toml, [tool.mypy])

# pytest exits 5 when it collected nothing: that must fail, never pass silently.
define run_pytest
rc=0; $(1) || rc=$$?; \
if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc
endef

worker-test: setup
	cd worker && $(call run_pytest,HF_HUB_OFFLINE=1 ../$(VENV)/bin/pytest $(PYTEST_ARGS))

# Fault injection on real workers and Redis (tests/README.md, "tests/reliability"): every scenario,
# RELIABILITY_TRIALS trials each; the table lands in tests/reliability/artifacts/results.md.
# reliability-ci is the short form `make test` runs: the same scenarios, 2 trials, a 2,000-task burst.
reliability: setup tools
	$(call run_pytest,HELM=$(HELM) RELIABILITY_TRIALS=$${RELIABILITY_TRIALS:-5} RELIABILITY_BURST=$${RELIABILITY_BURST:-10000} $(VENV)/bin/pytest tests/reliability $(PYTEST_ARGS))

reliability-ci: setup tools
	$(call run_pytest,HELM=$(HELM) RELIABILITY_TRIALS=2 RELIABILITY_BURST=2000 $(VENV)/bin/pytest tests/reliability $(PYTEST_ARGS))

# The Parameters section of the chart README is generated from the @param comments.
chart-readme: tools
	$(README_GENERATOR) --values $(CHART)/values.yaml --readme $(CHART)/README.md

chart-test: chart-test-packages tools $(STAMP)
	$(HELM) lint --strict $(CHART)
	for f in $(VALUES_FILES); do $(HELM) lint --strict $(CHART) -f $$f; done
	$(HELM) unittest $(CHART)
	for f in "" $(VALUES_FILES); do \
	  echo "kubeconform: $${f:-default values}"; \
	  $(HELM) template release $(CHART) --namespace imagineer $${f:+-f $$f} | $(KUBECONFORM) $(KUBECONFORM_FLAGS) -; \
	done
	@# Autoscaling on, so that the generated KEDA CRD schemas validate the ScaledObjects and the
	@# TriggerAuthentication (training scales to zero), and autoscaling/v2 an HPA (labeling).
	echo "kubeconform: values-prod.yaml with KEDA (training, scraping) and an HPA (labeling)"; \
	$(HELM) lint --strict $(CHART) -f values-prod.yaml $(CHART_AUTOSCALING_SETS) && \
	$(HELM) template release $(CHART) --namespace imagineer -f values-prod.yaml $(CHART_AUTOSCALING_SETS) \
	  | $(KUBECONFORM) $(KUBECONFORM_FLAGS) -
	tmp=$$(mktemp -d) && cp $(CHART)/README.md $$tmp/README.md && \
	  $(README_GENERATOR) --values $(CHART)/values.yaml --readme $$tmp/README.md >/dev/null && \
	  diff -u $(CHART)/README.md $$tmp/README.md || { echo "$(CHART)/README.md is out of date: run make chart-readme" >&2; exit 1; }
	$(call run_pytest,HELM=$(HELM) KUBECONFORM=$(KUBECONFORM) KUBECONFORM_FLAGS="$(KUBECONFORM_FLAGS)" KUBE_VERSION=$(KUBE_VERSION) PROMTOOL=$(PROMTOOL) KUBE_SCORE=$(KUBE_SCORE) $(VENV)/bin/pytest tests/chart)

# The chart's pod specs executed: each rendered Deployment as a container from the built images.
run-test: run-test-packages images tools $(STAMP)
	$(call run_pytest,HELM=$(HELM) KUBECONFORM=$(KUBECONFORM) KUBECONFORM_FLAGS="$(KUBECONFORM_FLAGS)" KUBE_VERSION=$(KUBE_VERSION) $(VENV)/bin/pytest tests/run $(PYTEST_ARGS))

run-test-clean:  # containers left behind by a killed run
	-docker rm -f $$(docker ps -aq --filter label=imagineer-run-test) 2>/dev/null

# Every figure against a baseline measured in the same run, alternating (bench/README.md): 13-15
# minutes on 2 CPUs; writes bench/results.json and bench/results.md (docs/benchmarks.md keeps the
# latest table). The GPU figure is bench/gpu.sh, for a machine with a GPU.
.PHONY: bench bench-smoke
bench: setup images
	HF_HUB_OFFLINE=1 $(PY) -m bench.run --markdown bench/results.md

# The bench at tiny sizes, one repetition (BENCH_QUICK=1): every figure is produced, nothing is judged.
bench-smoke: setup images tools
	$(call run_pytest,HF_HUB_OFFLINE=1 HELM="$(HELM)" $(VENV)/bin/pytest tests/bench $(PYTEST_ARGS))

# The chart on a real cluster last: kind from the offline node image (cluster/README.md).
test: lint locks-check worker-test chart-test run-test bench-smoke smoke reliability-ci

clean:
	rm -rf .demo worker/.pytest_cache
