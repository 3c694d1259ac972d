#!/usr/bin/env bash
# `make cluster`: create the kind cluster $CLUSTER_NAME from cluster/kind-config.yaml with
# $KIND_NODE_IMAGE, or reuse it when it is healthy and was created from this checkout (its nodes
# mount this checkout's .cache/kind-shared-volumes). A cluster whose containers stopped (a
# restarted Docker daemon) or that belongs to another checkout is deleted and created anew.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KIND:?}" "${KUBECTL:?}" "${CLUSTER_NAME:?}" "${KIND_NODE_IMAGE:?}"
DOCKER=${DOCKER:-docker}
context=kind-$CLUSTER_NAME
shared=$PWD/.cache/kind-shared-volumes

if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  mounts=$("$DOCKER" inspect -f '{{range .Mounts}}{{.Source}} {{end}}' "$CLUSTER_NAME-control-plane" 2>/dev/null || true)
  if [[ " $mounts " == *" $shared "* ]] && "$KUBECTL" --context "$context" get --raw /readyz >/dev/null 2>&1; then
    echo "kind cluster $CLUSTER_NAME is up (make cluster-delete to start over)"
  else
    echo "kind cluster $CLUSTER_NAME is stopped or belongs to another checkout: creating it anew"
    "$KIND" delete cluster --name "$CLUSTER_NAME"
  fi
fi
if ! "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  mkdir -p "$shared"
  "$KIND" create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" --config cluster/kind-config.yaml --wait 180s
fi
"$KUBECTL" --context "$context" wait --for=condition=Ready nodes --all --timeout=180s >/dev/null
# The system pods (DNS, pod network, storage) before anything is installed.
"$KUBECTL" --context "$context" -n kube-system rollout status daemonset/kube-proxy --timeout=180s >/dev/null
"$KUBECTL" --context "$context" -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
# The ReadWriteMany class (cluster/storage/), on the offline image as on the stock one.
"$KUBECTL" --context "$context" apply -f cluster/storage/rwx-class.yaml >/dev/null
if "$KUBECTL" --context "$context" -n local-path-storage patch configmap local-path-config --type merge \
     --patch-file cluster/storage/rwx-config-patch.yaml | grep -qv "no change"; then
  "$KUBECTL" --context "$context" -n local-path-storage rollout restart deployment/local-path-provisioner >/dev/null
fi
"$KUBECTL" --context "$context" -n local-path-storage rollout status deployment/local-path-provisioner --timeout=180s >/dev/null
"$KUBECTL" --context "$context" get nodes -o wide
