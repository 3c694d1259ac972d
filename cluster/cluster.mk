# cluster.mk — a real Kubernetes cluster for the chart: kind on a node image built offline.
# `include`d by the Makefile (or `make -f cluster/cluster.mk …`); cluster/README.md explains it.
#
#   make kind-node-image   imagineer/kind-node:<k8s version>, from Debian and the Go module proxy
#                          (cold ~20 min on 2 CPUs, seconds when cached in ~/.cache/imagineer-workers)
#   make cluster           kind create cluster (cluster/kind-config.yaml) with that image, or with
#                          KIND_NODE_IMAGE=kindest/node:v1.34.x@sha256:… where a registry is reachable
#   make cluster-delete    kind delete cluster
#   make smoke             tests/smoke/smoke.sh against the cluster: install, tasks, scale, upgrade, rollback
#   make cluster-demo      cluster + install + the demo pipeline through the pods; the cluster stays up

CLUSTER_MK   := $(lastword $(MAKEFILE_LIST))
CLUSTER_GOAL := $(.DEFAULT_GOAL)
include $(dir $(CLUSTER_MK))versions.mk

CLUSTER_NAME    ?= imagineer
KIND_CACHE      ?= $(HOME)/.cache/imagineer-workers/kind
OFFLINE_NODE_IMAGE := imagineer/kind-node:$(KUBERNETES_VERSION)
KIND_NODE_IMAGE ?= $(OFFLINE_NODE_IMAGE)
KIND            := $(TOOLS_ABS)/bin/kind
KUBECTL         := $(TOOLS_ABS)/bin/kubectl
KUBE_CONTEXT    ?= kind-$(CLUSTER_NAME)
SMOKE_ARTIFACTS ?= tests/smoke/artifacts
# The node image build: pins in the environment, Go as tools.mk runs it.
NODE_IMAGE_ENV  := $(TOOLS_GOENV) GO=$(GO) DOCKER=$(DOCKER) KIND_CACHE=$(KIND_CACHE) NODE_IMAGE=$(OFFLINE_NODE_IMAGE) \
  $(foreach v,KUBERNETES_VERSION ETCD_VERSION ETCD_IMAGE_TAG COREDNS_VERSION CRICTL_VERSION KIND_VERSION LOCAL_PATH_VERSION NODE_SUITE,$(v)=$($(v))) \
  PAUSE_IMAGE_TAGS="$(PAUSE_IMAGE_TAGS)"

.PHONY: kind-node-image cluster cluster-delete smoke cluster-demo cluster-tools

$(KIND): $(CLUSTER_MK) $(dir $(CLUSTER_MK))versions.mk
	GOBIN=$(@D) $(TOOLS_GO) install -trimpath -ldflags "-s -w" sigs.k8s.io/kind@$(KIND_VERSION)
	touch $@

# kubectl at the cluster's version, from the same wrapper module as the node's binaries.
$(KUBECTL): $(dir $(CLUSTER_MK))versions.mk $(dir $(CLUSTER_MK))modules/kubernetes/go.sum
	$(TOOLS_GOENV) GO=$(GO) KUBERNETES_VERSION=$(KUBERNETES_VERSION) cluster/modules/build-kubernetes.sh $(@D) kubectl

cluster-tools: $(KIND) $(KUBECTL) $(HELM)

kind-node-image: docker-engine
	$(NODE_IMAGE_ENV) cluster/node-image/build.sh

# The offline image is built only when it is the one asked for.
cluster: cluster-tools docker-engine $(if $(filter $(OFFLINE_NODE_IMAGE),$(KIND_NODE_IMAGE)),kind-node-image)
	KIND=$(KIND) KUBECTL=$(KUBECTL) DOCKER=$(DOCKER) CLUSTER_NAME=$(CLUSTER_NAME) \
	  KIND_NODE_IMAGE=$(KIND_NODE_IMAGE) cluster/create.sh

cluster-delete: $(KIND)
	$(KIND) delete cluster --name $(CLUSTER_NAME)
	rm -rf .cache/kind-shared-volumes

SMOKE_ENV = KIND=$(KIND) KUBECTL=$(KUBECTL) HELM=$(HELM) DOCKER=$(DOCKER) KUBE_CONTEXT=$(KUBE_CONTEXT) \
  KIND_CLUSTER=$(CLUSTER_NAME) IMAGE_TAG=$(IMAGE_TAG) CRDS_DIR=$(TOOLS_ABS)/crds ARTIFACTS=$(SMOKE_ARTIFACTS) \
  BASE_IMAGE=$(BASE_IMAGE)

smoke: cluster images tools
	$(SMOKE_ENV) tests/smoke/smoke.sh

cluster-demo: cluster images tools
	$(SMOKE_ENV) tests/smoke/smoke.sh --demo

# Included at the top of a Makefile, this file must not make its first target the default goal.
.DEFAULT_GOAL := $(CLUSTER_GOAL)
