# kube-proxy on a small Debian root (BASE: iptables, conntrack), tagged as kubeadm's image.
# Like upstream's distroless-iptables image, iptables chooses its backend (legacy or nft) on
# first use, by which one already holds the node's rules (files/iptables-wrapper).
ARG BASE
FROM ${BASE}
COPY kube-proxy /usr/local/bin/kube-proxy
COPY iptables-wrapper /usr/sbin/iptables-wrapper
# (modes are set in the build context: a chmod here would copy the 70 MB binary into a new layer)
RUN for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
      ln -sf iptables-wrapper "/usr/sbin/$c"; done
