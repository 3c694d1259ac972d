# The kind node's userland, in place of kindest/base (sigs.k8s.io/kind images/base/Dockerfile):
# a debootstrap'd Debian root (BASE, from images/build-base.sh) with systemd, Debian's containerd,
# runc and CNI plugins, plus kind's own base files (entrypoint, systemd units, containerd config).
# Built by build.sh with the classic builder; the context holds kind-files/ and crictl.
#
# One change to kind's containerd config: restrict_oom_score_adj (kind sets it for rootless
# nodes only). Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which a node on a host
# with a reduced capability bounding set lacks (cluster/README.md); the kubelet asks -998 for
# static pods, and runc would fail every control-plane pod. With it, containerd clamps the value
# to its own; elsewhere the OOM killer only loses that hint for node-critical pods.
ARG BASE
FROM ${BASE}
COPY kind-files/ /
COPY crictl /usr/local/bin/crictl
# kind's units and entrypoint expect containerd, runc and the CNI plugins where kind installs
# its own builds; Debian puts them in /usr/bin, /usr/sbin and /usr/lib/cni.
RUN ln -sf /usr/bin/containerd /usr/local/bin/containerd \
 && ln -sf /usr/bin/containerd-shim-runc-v2 /usr/local/bin/containerd-shim-runc-v2 \
 && ln -sf /usr/bin/ctr /usr/local/bin/ctr \
 && ln -sf /usr/sbin/runc /usr/local/sbin/runc \
 && mkdir -p /opt/cni/bin && cp -a /usr/lib/cni/* /opt/cni/bin/ \
 && chmod 0755 /kind /kind/bin \
 && find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete \
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
          /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
          /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \
 && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \
 && ln -sf /usr/lib/systemd/systemd /sbin/init \
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \
 && systemctl mask systemd-binfmt.service \
 && mkdir -p /etc/kubernetes/manifests \
 && sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' /etc/containerd/config.toml \
 && ctr oci spec \
    | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
    | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json \
 && containerd --version && runc --version | head -1
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
