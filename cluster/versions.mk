# Pinned versions of everything the offline kind node image is built from (cluster/README.md).
# Read by make (cluster/cluster.mk) and passed to cluster/node-image/build.sh in its environment.
#
# Kubernetes 1.34: the newest minor whose kubelet still runs on a cgroup v1 host without opting in
# (1.35+ refuse cgroup v1 unless `failCgroupV1: false`); this machine's kernel mounts cgroup v1.
# The image tags are what `kubeadm config images list` asks for at that version (checked by build.sh).
KUBERNETES_VERSION     := v1.34.4
ETCD_VERSION           := v3.6.5
ETCD_IMAGE_TAG         := 3.6.5-0
COREDNS_VERSION        := v1.12.1
PAUSE_IMAGE_TAGS       := 3.10.1 3.10
CRICTL_VERSION         := v1.34.0
KIND_VERSION           := v0.33.0
LOCAL_PATH_VERSION     := v0.0.30
# The node's userland: Debian bookworm (containerd 1.6.20, runc 1.1.5, CNI plugins 1.1.1).
NODE_SUITE             := bookworm
