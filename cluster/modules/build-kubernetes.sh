#!/usr/bin/env bash
# Build Kubernetes commands at $KUBERNETES_VERSION from the wrapper module next to this script,
# with the version ldflags upstream's build sets (kubeadm refuses a binary without them).
#   cluster/modules/build-kubernetes.sh OUT_DIR kubeadm kubelet kubectl …
# Used by the node image build (all seven) and by cluster.mk (kubectl for the host).
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd); shift
v=${KUBERNETES_VERSION:?}
minor=${v#v1.}; minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  ld+=" -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=1970-01-01T00:00:00Z"
done
pkgs=()
for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
cd "$(dirname "$0")/kubernetes"
CGO_ENABLED=0 GOFLAGS=-mod=mod "${GO:-go}" build -trimpath -ldflags "$ld" -o "$out/" "${pkgs[@]}"
