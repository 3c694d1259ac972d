# imagineer-workers — the interface: setup · demo · test · lint
# Everything a fresh machine needs is installed from here (Debian packages, a venv), nothing by hand.

SHELL        := /bin/bash
.SHELLFLAGS  := -eu -o pipefail -c
PYTHON       ?= python3
VENV         := .venv
PY           := $(VENV)/bin/python
STAMP        := $(VENV)/.installed
APT_PACKAGES := redis-server openssl
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS  ?=

.PHONY: setup system-packages demo test lint worker-test clean help

help:
	@echo "make setup   install Debian packages (redis-server, openssl) and the venv (.venv, with torch)"
	@echo "make demo    run the whole pipeline locally on a real Redis and print a status table"
	@echo "make test    lint + the whole test suite (real Redis, real workers)"
	@echo "make lint    ruff"

setup: system-packages $(STAMP)

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

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

# pytest exits 5 when it collected nothing: that must fail, never pass silently.
worker-test: setup
	cd worker && HF_HUB_OFFLINE=1 ../$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test: lint worker-test

clean:
	rm -rf .demo worker/.pytest_cache
