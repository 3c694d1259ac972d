# images.mk — the worker images, `include`d by the Makefile (or `make -f images.mk images`).
#
#   make images       base image (if missing) + wheelhouse + the six images, then their sizes
#   make base-image   imagineer/base-python:bookworm from debootstrap (no registry needed)
#   make wheelhouse   every locked wheel in .cache/wheelhouse (the only source the builds use)
#   make locks        regenerate images/*.lock from worker/pyproject.toml and images/*/requirements.in
#   make locks-check  fail if a lock no longer matches its inputs (part of `make test`)
#   make docker-engine  start dockerd when none answers
#
# Images: imagineer/worker-<queue>:$(IMAGE_TAG), IMAGE_TAG = the chart's appVersion, so the
# chart's default repository/tag per group name exactly these. One Dockerfile per queue under
# images/<queue>/, a few lines over the shared stages (images/runtime/Dockerfile, built per lock as
# imagineer/runtime-<lock>:$(IMAGE_TAG)); the three light images share images/light.lock (worker
# without extras: no torch), training uses images/training.lock (worker[training]). Monitoring:
# images/exporter/ (imagineer/celery-exporter, images/exporter.lock: the upstream exporter alone,
# no worker) and images/flower/ (imagineer/flower, images/flower.lock: light + flower). See
# images/README.md.
#
# Network: only the host reaches PyPI (uv for the locks, pip for the wheelhouse); the builds get
# wheels from .cache/wheelhouse over 127.0.0.1 and reach no index. Builds are sequential (the
# machine has 2 cores) and lean on Docker's layer cache: unchanged locks and code rebuild nothing.

IMAGES_MK      := $(lastword $(MAKEFILE_LIST))
IMAGES_GOAL    := $(.DEFAULT_GOAL)
DOCKER         ?= docker
IMAGE_TAG      := $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$$/\1/p' charts/imagineer-workers/Chart.yaml)
IMAGE_QUEUES   := default scraping labeling training
# What `make images` builds, as <folder under images/>=<repository> (tag: IMAGE_TAG), in order.
IMAGES         := $(foreach q,$(IMAGE_QUEUES),$(q)=imagineer/worker-$(q)) \
                  exporter=imagineer/celery-exporter flower=imagineer/flower
# The Dockerfiles default to python:3.11-slim-bookworm; here no registry is reachable, so the
# base is built locally. Set BASE_IMAGE=python:3.11-slim-bookworm where a registry is available.
BASE_IMAGE     ?= imagineer/base-python:bookworm
LOCAL_BASE     := imagineer/base-python:bookworm
# Fixed on purpose: the URL is part of the pip RUN line's cache key.
WHEELHOUSE_PORT ?= 8765

IMAGES_CACHE   := .cache/images
# Outside the clone, so every clone on this machine (CI included) reuses the 2.7 GB of wheels.
WHEELHOUSE     ?= $(HOME)/.cache/imagineer-workers/wheelhouse
IMAGES_CONTEXT := $(IMAGES_CACHE)/context
# Each lock and its uv inputs. flower.lock is constrained by light.lock (the worker package runs
# with the worker images' exact versions), so light.lock comes first.
LOCK_NAMES     := light training exporter flower
LOCK_INPUTS_light    := worker/pyproject.toml
LOCK_INPUTS_training := worker/pyproject.toml --extra training
LOCK_INPUTS_exporter := images/exporter/requirements.in
LOCK_INPUTS_flower   := worker/pyproject.toml images/flower/requirements.in -c images/light.lock
LOCKS          := $(LOCK_NAMES:%=images/%.lock)
WORKER_SOURCES := worker/pyproject.toml $(shell find worker/src -name '*.py' -o -name py.typed 2>/dev/null)
WORKER_WHEEL   := $(IMAGES_CONTEXT)/imagineer_worker-$(IMAGE_TAG)-py3-none-any.whl

# Lock and wheelhouse tools, pinned, in a venv of their own (not the project's .venv).
UV_VERSION         := 0.13.8
PIP_VERSION        := 26.3
SETUPTOOLS_VERSION := 84.2.1
IMAGES_VENV        := .tools/images-venv
UV                 := $(IMAGES_VENV)/bin/uv
IMAGES_PIP         := $(IMAGES_VENV)/bin/pip --disable-pip-version-check

# The images' interpreter: CPython 3.11 on x86_64 glibc (bookworm has 2.36). The wheelhouse is
# downloaded for exactly that, whatever the host runs.
IMAGE_PYTHON   := 3.11
UV_COMPILE     := $(UV) pip compile --quiet --generate-hashes --python-version $(IMAGE_PYTHON) \
                  --python-platform x86_64-unknown-linux-gnu --annotation-style line \
                  --custom-compile-command "make locks"
WHEEL_PLATFORMS := $(foreach v,17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36,--platform manylinux_2_$(v)_x86_64) --platform manylinux2014_x86_64

.PHONY: images base-image wheelhouse locks locks-check docker-engine images-clean

docker-engine: docker-packages
	DOCKER=$(DOCKER) tools/docker-engine.sh

# Built once per machine (≈1-2 min: debootstrap from the apt mirror); `docker rmi` it to rebuild.
base-image: docker-engine
	@if [ "$(BASE_IMAGE)" != "$(LOCAL_BASE)" ]; then \
	  $(DOCKER) image inspect $(BASE_IMAGE) >/dev/null 2>&1 || { echo "BASE_IMAGE $(BASE_IMAGE) is not present locally" >&2; exit 1; }; \
	elif ! $(DOCKER) image inspect $(LOCAL_BASE) >/dev/null 2>&1; then \
	  DOCKER=$(DOCKER) images/build-base.sh $(LOCAL_BASE); \
	fi

$(IMAGES_VENV)/.images-installed: $(IMAGES_MK)
	rm -rf $(IMAGES_VENV) && python3 -m venv $(IMAGES_VENV)
	$(IMAGES_PIP) install -q pip==$(PIP_VERSION) uv==$(UV_VERSION) setuptools==$(SETUPTOOLS_VERSION)
	touch $@

# uv keeps the pins already in a lock (it only re-resolves what the inputs force), so a lock
# changes only when its inputs do, never because PyPI published something.
define compile_lock
$(UV_COMPILE) $(LOCK_INPUTS_$(1)) -o images/$(1).lock

endef

locks: $(IMAGES_VENV)/.images-installed
	$(foreach n,$(LOCK_NAMES),$(call compile_lock,$(n)))

# A lock created by hand (not yet in git) is checked like the others; flower's constraint is the
# checked-in light.lock (a stale light.lock fails its own diff).
locks-check: $(IMAGES_VENV)/.images-installed
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	for f in $(LOCKS); do [ -f $$f ] || { echo "$$f is missing: run make locks" >&2; exit 1; }; done && \
	cp $(LOCKS) $$tmp/ && \
	$(foreach n,$(LOCK_NAMES),$(UV_COMPILE) $(LOCK_INPUTS_$(n)) -o $$tmp/$(n).lock && ) \
	for f in $(LOCKS); do diff -u $$f $$tmp/$$(basename $$f) || { echo "$$f is not current: run make locks" >&2; exit 1; }; done
	@echo "locks are current: $(LOCKS)"

# Binary wheels only (no sdist builds on the host), for the images' interpreter and platform,
# hash-checked against the lock.
$(WHEELHOUSE)/.%.done: images/%.lock | $(IMAGES_VENV)/.images-installed
	mkdir -p $(WHEELHOUSE)
	$(IMAGES_PIP) download -q --no-deps --require-hashes --only-binary=:all: \
	  --python-version $(IMAGE_PYTHON) --implementation cp $(WHEEL_PLATFORMS) -r $< -d $(WHEELHOUSE)
	touch $@

wheelhouse: $(LOCKS:images/%.lock=$(WHEELHOUSE)/.%.done)

# The worker's own wheel, built on the host; SOURCE_DATE_EPOCH makes it byte-identical when the
# code is, so the image's COPY layer stays cached.
$(WORKER_WHEEL): $(WORKER_SOURCES) | $(IMAGES_VENV)/.images-installed
	rm -rf $(IMAGES_CONTEXT)/imagineer_worker-*.whl worker/build
	SOURCE_DATE_EPOCH=315532800 $(IMAGES_PIP) wheel -q --no-deps --no-build-isolation ./worker -w $(IMAGES_CONTEXT)
	rm -rf worker/build

images: base-image wheelhouse $(WORKER_WHEEL)
	cp $(LOCKS) images/entrypoint.sh images/exporter/celery-exporter $(IMAGES_CONTEXT)/
	DOCKER=$(DOCKER) images/build-images.sh $(IMAGES_CONTEXT) $(WHEELHOUSE) $(WHEELHOUSE_PORT) \
	  $(BASE_IMAGE) $(IMAGE_TAG) $(IMAGES)

images-clean:
	rm -rf $(IMAGES_CACHE) $(WHEELHOUSE)
	-$(DOCKER) rmi $(foreach i,$(IMAGES),$(lastword $(subst =, ,$(i))):$(IMAGE_TAG)) \
	  $(LOCK_NAMES:%=imagineer/runtime-%:$(IMAGE_TAG)) 2>/dev/null

# Included at the top of a Makefile, this file must not make its first target the default goal.
.DEFAULT_GOAL := $(IMAGES_GOAL)
