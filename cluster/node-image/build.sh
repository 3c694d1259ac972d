#!/usr/bin/env bash
# Build the kind node image $NODE_IMAGE (imagineer/kind-node:<Kubernetes version>) with no image
# registry: everything comes from Debian's packages and the Go module proxy. Called by
# `make kind-node-image` (cluster/cluster.mk), which passes the pins of cluster/versions.mk in the
# environment. The steps are kind's own node-image build (sigs.k8s.io/kind pkg/build/nodeimage and
# images/base), with every `docker pull` replaced by a local build:
#
#   1. binaries  Kubernetes (wrapper module cluster/modules/kubernetes, version ldflags), etcd
#                (wrapper module cluster/modules/etcd), CoreDNS, crictl, local-path-provisioner
#                (plain `go install`), pause (pause.c, static): CGO off, -trimpath.
#   2. images    the control plane, etcd, CoreDNS, pause and the storage provisioner FROM scratch;
#                kube-proxy on a small Debian root with iptables (kind-tools, which is also the
#                image of the pod-network DaemonSet and of the storage helper pods); tagged exactly
#                as kubeadm (`kubeadm config images list`) and files/*.yaml ask, saved as tarballs.
#   3. base      the node's userland (replaces kindest/base): Debian with systemd as PID 1,
#                containerd, runc, CNI plugins, iptables, and kind's own base files (entrypoint,
#                units, containerd config) from kind's module.
#   4. node      base + kubeadm/kubelet/kubectl + /kind/version + the pod network and storage
#                manifests kind applies (files/default-cni.yaml, files/default-storage.yaml),
#                and every image imported into the node's containerd (no unpack), committed.
#
# Everything is cached under $KIND_CACHE (~/.cache/imagineer-workers/kind) keyed by version and
# by the inputs' hash: a second build with nothing changed takes seconds.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cluster=$(dirname "$here")
repo=$(dirname "$cluster")
for v in KUBERNETES_VERSION ETCD_VERSION ETCD_IMAGE_TAG COREDNS_VERSION PAUSE_IMAGE_TAGS CRICTL_VERSION \
         KIND_VERSION LOCAL_PATH_VERSION NODE_SUITE NODE_IMAGE; do
  [ -n "${!v:-}" ] || { echo "build.sh: $v is not set (run it through make kind-node-image)" >&2; exit 2; }
done
DOCKER=${DOCKER:-docker}
GO=${GO:-go}
CACHE=${KIND_CACHE:-$HOME/.cache/imagineer-workers/kind}
export DOCKER_BUILDKIT=0 CGO_ENABLED=0 GOFLAGS=-mod=mod

SECONDS=0
say() { printf '== %-58s %4ss\n' "$*" "$SECONDS"; }
hash_of() { cat "$@" | sha256sum | cut -c1-12; }

# A cached step runs only when its key (versions + input files) changed: $1 = stamp file, $2 = key.
fresh() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# ---- 1. binaries -------------------------------------------------------------------------------
K8S=$KUBERNETES_VERSION
bin=$CACHE/bin/$K8S
mkdir -p "$bin"
key="$K8S $ETCD_VERSION $COREDNS_VERSION $CRICTL_VERSION $LOCAL_PATH_VERSION \
$(hash_of "$cluster"/modules/*/go.* "$cluster/modules/build-kubernetes.sh" "$here/pause.c")"
if ! fresh "$bin/.stamp" "$key"; then
  say "building binaries for $K8S (cold: ~15 min on 2 CPUs)"
  GO=$GO "$cluster/modules/build-kubernetes.sh" "$bin" \
    kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy
  say "kubernetes built"
  (cd "$cluster/modules/etcd" && "$GO" build -trimpath -o "$bin/etcd" -ldflags "-s -w" go.etcd.io/etcd/server/v3)
  GOBIN=$bin "$GO" install -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
    "github.com/coredns/coredns@$COREDNS_VERSION"
  GOBIN=$bin "$GO" install -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  GOBIN=$bin "$GO" install -trimpath -ldflags "-s -w -X main.VERSION=$LOCAL_PATH_VERSION" \
    "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION"
  gcc -static -Os -s -o "$bin/pause" "$here/pause.c"
  echo "$key" > "$bin/.stamp"
  say "binaries built ($(du -sh "$bin" | cut -f1))"
else
  say "binaries cached in $bin"
fi
"$bin/kubeadm" version -o short | grep -qx "$K8S" || { echo "kubeadm does not report $K8S" >&2; exit 1; }

# ---- 2. images ---------------------------------------------------------------------------------
# kubeadm's list is the contract: every image it names must be built here, under that exact name.
mapfile -t wanted < <("$bin/kubeadm" config images list --kubernetes-version "$K8S" 2>/dev/null)
expected=(registry.k8s.io/kube-{apiserver,controller-manager,scheduler,proxy}:$K8S
          "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "registry.k8s.io/etcd:$ETCD_IMAGE_TAG")
for t in $PAUSE_IMAGE_TAGS; do expected+=("registry.k8s.io/pause:$t"); done
for w in "${wanted[@]}"; do
  printf '%s\n' "${expected[@]}" | grep -qx "$w" || {
    echo "kubeadm $K8S wants $w, which cluster/versions.mk does not pin: update the pins" >&2; exit 1; }
done

images=$CACHE/images/$K8S
mkdir -p "$images"
ctx=$(mktemp -d /tmp/kind-node-build.XXXXXX)
build_container=""
cleanup() {
  rm -rf "$ctx"
  [ -z "$build_container" ] || "$DOCKER" rm -f -v "$build_container" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# A FROM-scratch image of one static binary: $1 = name, $2 = binary, $3 = path in the image.
scratch_image() {
  local name=$1 binary=$2 path=$3 root=$ctx/scratch-$RANDOM
  mkdir -p "$root/tmp" "$root/$(dirname "$path")"
  cp "$binary" "$root/$path"
  chmod 1777 "$root/tmp"
  "$DOCKER" rmi "$name" >/dev/null 2>&1 || true  # no dangling image from an earlier build
  tar -C "$root" -c . | "$DOCKER" import --change "ENTRYPOINT [\"$path\"]" \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' - "$name" >/dev/null
}

# Debian roots from debootstrap (images/build-base.sh), built once per machine.
rootfs() { # $1 = image, $2 = packages
  "$DOCKER" image inspect "$1" >/dev/null 2>&1 || DOCKER=$DOCKER "$repo/images/build-base.sh" "$1" "$2"
}
TOOLS_ROOT=docker.io/imagineer/kind-tools:$NODE_SUITE
NODE_ROOT=imagineer/kind-rootfs:node-$NODE_SUITE
NODE_PACKAGES=systemd,dbus,containerd,runc,containernetworking-plugins,iptables,nftables,conntrack,\
iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,socat,jq,procps,ca-certificates,curl,e2fsprogs
TOOLS_PACKAGES=iptables,conntrack,kmod,iproute2,curl,jq,ca-certificates

ikey="$key $(hash_of "$here/kube-proxy.Dockerfile" "$here/files/iptables-wrapper" "$repo/images/build-base.sh") $NODE_SUITE"
if ! fresh "$images/.stamp" "$ikey"; then
  say "building the cluster's images"
  rm -f "$images"/*.tar
  rootfs "$TOOLS_ROOT" "$TOOLS_PACKAGES"
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    scratch_image "registry.k8s.io/$c:$K8S" "$bin/$c" "/usr/local/bin/$c"
  done
  scratch_image "registry.k8s.io/etcd:$ETCD_IMAGE_TAG" "$bin/etcd" /usr/local/bin/etcd
  scratch_image "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "$bin/coredns" /coredns
  for t in $PAUSE_IMAGE_TAGS; do scratch_image "registry.k8s.io/pause:$t" "$bin/pause" /pause; done
  scratch_image "docker.io/imagineer/local-path-provisioner:$LOCAL_PATH_VERSION" \
    "$bin/local-path-provisioner" /usr/local/bin/local-path-provisioner
  install -m 0755 "$bin/kube-proxy" "$here/files/iptables-wrapper" "$ctx/"
  "$DOCKER" build -q -f "$here/kube-proxy.Dockerfile" --build-arg BASE="$TOOLS_ROOT" \
    -t "registry.k8s.io/kube-proxy:$K8S" "$ctx" >/dev/null
  for name in "${expected[@]}" "docker.io/imagineer/local-path-provisioner:$LOCAL_PATH_VERSION" "$TOOLS_ROOT"; do
    file=$(echo "${name#*/}" | tr '/:' '__').tar
    "$DOCKER" save -o "$images/$file" "$name"
  done
  echo "$ikey" > "$images/.stamp"
  say "images saved ($(du -sh "$images" | cut -f1))"
else
  say "images cached in $images"
fi

# ---- 3. base + 4. node -------------------------------------------------------------------------
nkey="$ikey $(hash_of "$here/build.sh" "$here/base.Dockerfile" "$here"/files/*.yaml) $KIND_VERSION"
if [ "$("$DOCKER" image inspect -f '{{index .Config.Labels "io.imagineer.inputs"}}' "$NODE_IMAGE" 2>/dev/null)" = "$nkey" ]; then
  say "$NODE_IMAGE is current"
  exit 0
fi
rootfs "$NODE_ROOT" "$NODE_PACKAGES"
kind_files=$($GO env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION/images/base/files
[ -d "$kind_files" ] || (cd "$ctx" && "$GO" mod download "sigs.k8s.io/kind@$KIND_VERSION")
# The module cache is read-only: copy with fresh modes (the classic builder has no COPY --chmod).
cp -r --no-preserve=mode "$kind_files" "$ctx/kind-files"
chmod 0755 "$ctx"/kind-files/usr/local/bin/* "$ctx"/kind-files/kind/bin/*
cp "$bin/crictl" "$ctx/"
"$DOCKER" build -q -f "$here/base.Dockerfile" --build-arg BASE="$NODE_ROOT" \
  -t "imagineer/kind-base:$NODE_SUITE" "$ctx" >/dev/null
say "node base built"

# --init: something must reap containerd once it is stopped (sleep, as PID 1, would not).
build_container=$("$DOCKER" run -d --init --entrypoint sleep --security-opt seccomp=unconfined \
  "imagineer/kind-base:$NODE_SUITE" infinity)
in_node() { "$DOCKER" exec "$build_container" "$@"; }
for b in kubeadm kubelet kubectl; do "$DOCKER" cp "$bin/$b" "$build_container:/usr/bin/$b"; done
in_node sh -c 'mkdir -p /kind/manifests /kind/images /etc/cni/net.d && chown root:root /usr/bin/kube*'
in_node sh -c "echo $K8S > /kind/version"
for m in default-storage default-cni; do
  sed "s/@LOCAL_PATH_VERSION@/$LOCAL_PATH_VERSION/; s/@NODE_SUITE@/$NODE_SUITE/" "$here/files/$m.yaml" > "$ctx/$m.yaml"
  "$DOCKER" cp "$ctx/$m.yaml" "$build_container:/kind/manifests/$m.yaml"
done
in_node sh -c 'containerd >/tmp/containerd.log 2>&1 &'
for _ in $(seq 100); do in_node ctr version >/dev/null 2>&1 && break; sleep 0.2; done
for tar in "$images"/*.tar; do
  "$DOCKER" exec -i "$build_container" ctr --namespace=k8s.io images import \
    --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - < "$tar" >/dev/null
done
in_node ctr --namespace=k8s.io images list -q | grep -v '^sha256:' | sort > "$ctx/imported"
in_node sh -c 'pkill containerd; while pgrep -x containerd >/dev/null; do sleep 0.1; done; rm -f /tmp/containerd.log'
for name in "${expected[@]}"; do
  grep -qx "$name" "$ctx/imported" || { echo "$name is missing from the node's containerd" >&2; exit 1; }
done
"$DOCKER" commit \
  --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
  --change "LABEL io.imagineer.inputs=\"$nkey\"" \
  --change "LABEL io.x-k8s.kind.kubernetes-version=\"$K8S\"" \
  "$build_container" "$NODE_IMAGE" >/dev/null
say "$NODE_IMAGE built: $(( $("$DOCKER" image inspect -f '{{.Size}}' "$NODE_IMAGE") / 1000000 )) MB, $(wc -l < "$ctx/imported") images preloaded"
