# tools.mk — the chart toolchain, pinned, installed by `make tools` into .tools/ (git-ignored).
#
# `include tools.mk` from the top-level Makefile (or run `make -f tools.mk tools`) and depend on
# `tools`. A fresh machine needs only Go, Python 3 and npm: Go tools come through the Go module
# proxy, the schemas from PyPI, readme-generator from npm; nothing from GitHub or the web. Go's
# module and build caches stay in their defaults (~/go/pkg/mod, ~/.cache/go-build): a cold machine
# takes ~6 min (2 cores, nearly all compiling) plus ~8 min for promtool (16 CPU-minutes: Prometheus
# links every service discovery and remote-storage SDK), a fresh clone on a warm machine ~1 min.
# Needs Go >= 1.26.7 (Prometheus's go.mod).
# Every target is a file: a second run is a no-op, and editing this file (or a pin under tools/)
# rebuilds what depends on it.

TOOLS_MK     := $(lastword $(MAKEFILE_LIST))
TOOLS_GOAL   := $(.DEFAULT_GOAL)
TOOLS_DIR    := .tools
TOOLS_BIN    := $(TOOLS_DIR)/bin
TOOLS_ABS    := $(abspath $(TOOLS_DIR))

# The Kubernetes version the chart targets: helm's default capabilities, kubeconform's schemas.
# kubernetes-validate 1.37.0 ships schemas for 1.25.0 … 1.37.0 (always x.y.0).
KUBE_VERSION := 1.31.0
KUBE_MAJOR   := $(word 1,$(subst ., ,$(KUBE_VERSION)))
KUBE_MINOR   := $(word 2,$(subst ., ,$(KUBE_VERSION)))

# Pins. helm-unittest, controller-gen and the CRD API types are pinned in tools/*/go.mod (with
# go.sum); readme-generator and its whole tree in tools/readme-generator/package-lock.json;
# kubernetes-validate and PyYAML in tools/requirements.txt.
HELM_VERSION        := v3.22.0
KUBECONFORM_VERSION := v0.7.0
# kube-score: a plain `go install …@version` builds it (no replace directives); all checks built in.
KUBE_SCORE_VERSION  := v1.20.0
# Prometheus's Go module is tagged v0.3xx.y for release 3.xx.y (promtool reports the latter). Its
# go.mod has no replace directives, so a plain `go install …@version` builds promtool.
PROMETHEUS_VERSION  := v0.316.0

# Go may live outside PATH on a fresh machine; controller-gen also needs it on PATH (`go list`).
ifeq ($(origin GO),undefined)
GO := $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)
endif
# -mod=mod: the wrapper modules may complete their go.sum instead of failing; static, path-free binaries.
TOOLS_GOENV := PATH="$(dir $(GO)):$$PATH" GOFLAGS=-mod=mod CGO_ENABLED=0
TOOLS_GO    := $(TOOLS_GOENV) $(GO)
TOOLS_PYTHON ?= python3

HELM             := $(TOOLS_ABS)/bin/helm
KUBECONFORM      := $(TOOLS_ABS)/bin/kubeconform
KUBE_SCORE       := $(TOOLS_ABS)/bin/kube-score
CONTROLLER_GEN   := $(TOOLS_ABS)/bin/controller-gen
PROMTOOL         := $(TOOLS_ABS)/bin/promtool
HELM_PLUGINS     := $(TOOLS_ABS)/helm-plugins
HELM_UNITTEST    := $(HELM_PLUGINS)/unittest/untt
README_GENERATOR := $(TOOLS_ABS)/node/node_modules/.bin/readme-generator
SCHEMAS_DIR      := $(TOOLS_ABS)/schemas
TOOLS_VENV       := $(TOOLS_ABS)/venv

# Helm keeps config, cache, data and plugins inside .tools, never in ~. Exported to every recipe;
# HELM_ENV is the same as a prefix for use outside make: `env $(HELM_ENV) $(HELM) unittest chart`.
export HELM_CACHE_HOME  := $(TOOLS_ABS)/helm/cache
export HELM_CONFIG_HOME := $(TOOLS_ABS)/helm/config
export HELM_DATA_HOME   := $(TOOLS_ABS)/helm/data
export HELM_PLUGINS
HELM_ENV := HELM_CACHE_HOME=$(HELM_CACHE_HOME) HELM_CONFIG_HOME=$(HELM_CONFIG_HOME) \
            HELM_DATA_HOME=$(HELM_DATA_HOME) HELM_PLUGINS=$(HELM_PLUGINS)

# `$(KUBECONFORM) $(KUBECONFORM_FLAGS) file.yaml`: built-in kinds first, then the CRDs; a kind
# with no schema is an error (no -ignore-missing-schemas). Both schema sets are strict.
KUBECONFORM_FLAGS := -strict -summary -kubernetes-version $(KUBE_VERSION) \
  -schema-location '$(SCHEMAS_DIR)/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json' \
  -schema-location '$(SCHEMAS_DIR)/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json'

K8S_SCHEMAS := $(SCHEMAS_DIR)/v$(KUBE_VERSION)-local-strict/.done
CRD_SCHEMAS := $(SCHEMAS_DIR)/crds/.done

.PHONY: tools tools-versions clean-tools
tools: $(HELM) $(HELM_UNITTEST) $(KUBECONFORM) $(KUBE_SCORE) $(PROMTOOL) $(K8S_SCHEMAS) $(CRD_SCHEMAS) $(README_GENERATOR)

# A plain `go install` of helm v3 defaults to Kubernetes v1.20 capabilities (upstream's Makefile
# sets them by ldflags): set them to KUBE_VERSION for `helm template`/`lint`, and the version
# `helm version` reports. go install leaves an up-to-date binary untouched, hence the touch.
$(HELM): $(TOOLS_MK)
	GOBIN=$(@D) $(TOOLS_GO) install -trimpath -ldflags "-s -w \
	  -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$(KUBE_MAJOR) -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(KUBE_MINOR) \
	  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$(KUBE_MAJOR) -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(KUBE_MINOR)" \
	  helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	touch $@

$(KUBECONFORM): $(TOOLS_MK)
	GOBIN=$(@D) $(TOOLS_GO) install -trimpath -ldflags "-s -w -X main.version=$(KUBECONFORM_VERSION)" \
	  github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)
	touch $@

# kube-score scores the rendered chart (tests/chart/test_security.py); its version variables are in main.
$(KUBE_SCORE): $(TOOLS_MK)
	GOBIN=$(@D) $(TOOLS_GO) install -trimpath -ldflags "-s -w -X main.version=$(KUBE_SCORE_VERSION)" \
	  github.com/zegl/kube-score/cmd/kube-score@$(KUBE_SCORE_VERSION)
	touch $@

# promtool checks and unit-tests the chart's PrometheusRule groups and the dashboard's PromQL.
# Module v0.MMM.P is Prometheus 3.(MMM-300).P: that is the version `promtool --version` reports.
# netgo as upstream's .promu.yml; builtinassets only matters for the server's web UI.
$(PROMTOOL): $(TOOLS_MK)
	v=$(PROMETHEUS_VERSION) && m=$${v#v0.} && m=$${m%%.*} && p=$${v##*.} && \
	GOBIN=$(@D) $(TOOLS_GO) install -trimpath -tags netgo -ldflags "-s -w \
	  -X github.com/prometheus/common/version.Version=3.$$((m - 300)).$$p \
	  -X github.com/prometheus/common/version.Revision=$(PROMETHEUS_VERSION) \
	  -X github.com/prometheus/common/version.Branch=HEAD" \
	  github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_VERSION)
	touch $@

# helm-unittest's go.mod has a replace directive, so `go install …@version` refuses it: it is
# built from the wrapper module tools/helm-unittest, which repeats the replace. It embeds helm's
# chart engine, so it gets the same default Kubernetes version. Installed as a plugin from our own
# plugin.yaml: no install hooks, nothing downloaded.
$(HELM_UNITTEST): tools/helm-unittest/go.mod tools/helm-unittest/go.sum $(TOOLS_MK)
	cd tools/helm-unittest && v=$$($(TOOLS_GO) list -m -f '{{.Version}}' github.com/helm-unittest/helm-unittest) && \
	$(TOOLS_GO) build -trimpath -o $@ -ldflags "-s -w \
	  -X github.com/helm-unittest/helm-unittest/internal/build.version=$${v#v} \
	  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$(KUBE_MAJOR) -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(KUBE_MINOR)" \
	  github.com/helm-unittest/helm-unittest/cmd/helm-unittest && \
	printf '%s\n' 'name: unittest' "version: \"$${v#v}\"" 'usage: unit tests for helm charts (tests/*_test.yaml)' \
	  'description: helm-unittest built from tools/helm-unittest (see tools.mk)' \
	  'ignoreFlags: false' 'platformCommand:' '  - command: $$HELM_PLUGIN_DIR/untt' > $(@D)/plugin.yaml
	touch $@

$(CONTROLLER_GEN): tools/crds/go.mod tools/crds/go.sum $(TOOLS_MK)
	cd tools/crds && $(TOOLS_GO) build -trimpath -ldflags "-s -w" -o $@ sigs.k8s.io/controller-tools/cmd/controller-gen
	touch $@

# A venv of our own (not the project's .venv), for the schema converter tools/schemas.py.
$(TOOLS_VENV)/.installed: tools/requirements.txt $(TOOLS_MK)
	rm -rf $(TOOLS_VENV) && $(TOOLS_PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q --disable-pip-version-check --no-deps -r tools/requirements.txt
	touch $@

$(K8S_SCHEMAS): $(TOOLS_VENV)/.installed tools/schemas.py
	$(TOOLS_VENV)/bin/python tools/schemas.py k8s $(SCHEMAS_DIR) $(KUBE_VERSION)
	touch $@

# CRDs generated from the operators' Go types (the same way their projects do), then converted;
# the CRD manifests stay in .tools/crds (descriptions stripped) for anything that must install them.
# monitoring.coreos.com/v1: ServiceMonitor, PodMonitor, PrometheusRule, …; keda.sh/v1alpha1:
# ScaledObject, ScaledJob, TriggerAuthentication, …
$(CRD_SCHEMAS): $(CONTROLLER_GEN) $(TOOLS_VENV)/.installed tools/schemas.py
	rm -rf $(@D) $(TOOLS_ABS)/crds && cd tools/crds && $(TOOLS_GOENV) $(CONTROLLER_GEN) crd:maxDescLen=0 \
	  paths=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1 \
	  paths=github.com/kedacore/keda/v2/apis/keda/v1alpha1 output:crd:dir=$(TOOLS_ABS)/crds
	$(TOOLS_VENV)/bin/python tools/schemas.py crd $(@D) $(TOOLS_ABS)/crds/*.yaml >/dev/null
	touch $@

# npm ci installs exactly the lock file's tree; npm's cache (~/.npm) is shared across clones.
$(README_GENERATOR): tools/readme-generator/package.json tools/readme-generator/package-lock.json
	mkdir -p $(TOOLS_ABS)/node && cp $^ $(TOOLS_ABS)/node/
	npm ci --prefix $(TOOLS_ABS)/node --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

tools-versions: tools
	@$(HELM) version --short
	@$(HELM) plugin list
	@echo "kubeconform $$($(KUBECONFORM) -v)"
	@$(KUBE_SCORE) version
	@$(PROMTOOL) --version | head -1
	@$(CONTROLLER_GEN) --version
	@echo "readme-generator $$($(README_GENERATOR) --version | cut -d" " -f2)"
	@echo "schemas: $$(ls $(SCHEMAS_DIR) | tr '\n' ' ')"

clean-tools:
	rm -rf $(TOOLS_DIR)

# Included at the top of a Makefile, this file must not make `tools` its default goal.
.DEFAULT_GOAL := $(TOOLS_GOAL)
