"""A small evaluator of Kubernetes NetworkPolicy semantics, for testing what rendered policies allow.

It answers "may this pod open this connection" from a list of rendered NetworkPolicy objects, the
way the API documents it (networking.k8s.io/v1): a pod selected by no policy of a direction is not
isolated in that direction; a selected pod may only do what one of the selecting policies' rules
allows; rules and peers are OR'ed, a rule's ``ports`` and ``to``/``from`` are AND'ed; an absent or
empty ``to``/``from``/``ports`` matches everything; a ``podSelector`` peer without a
``namespaceSelector`` means pods of the policy's namespace; an ``ipBlock`` matches by address
(``except`` carved out). Only ``matchLabels`` selectors are supported (the chart renders no others).
What it cannot tell is whether a cluster's CNI enforces any of this.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """The other side of a connection: a pod (labels, namespace) and/or an address."""

    ip: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None
    namespace_labels: dict[str, str] | None = None

    @property
    def ns_labels(self) -> dict[str, str]:
        if self.namespace_labels is not None:
            return self.namespace_labels
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


def pod(labels: dict[str, str], namespace: str, ip: str | None = None) -> Endpoint:
    return Endpoint(ip=ip, labels=labels, namespace=namespace)


def address(ip: str) -> Endpoint:
    return Endpoint(ip=ip)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as Go's net package (and so the API server and CNIs) reads it: an IPv4-mapped IPv6
    address is the IPv4 address it carries."""
    ip = ipaddress.ip_address(text)
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR as Go's net.ParseCIDR reads it: ``::ffff:a.b.c.d/N`` (N >= 96) is IPv4 ``a.b.c.d/N-96``."""
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        return ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}", strict=False)
    return net


def check_ip_blocks(policies: list[dict[str, Any]]) -> None:
    """What the API server refuses in an ipBlock: an ``except`` that is not a strict subset of ``cidr``
    (compared as Go parses them: an IPv4-mapped IPv6 CIDR is an IPv4 one)."""
    for policy in policies:
        for key, peers_key in (("egress", "to"), ("ingress", "from")):
            for i, rule in enumerate(policy["spec"].get(key) or []):
                for j, peer in enumerate(rule.get(peers_key) or []):
                    block = peer.get("ipBlock")
                    if not block:
                        continue
                    cidr = _net(block["cidr"])
                    for ex in block.get("except") or []:
                        e = _net(ex)
                        ok = e.version == cidr.version and e.subnet_of(cidr) and e.prefixlen > cidr.prefixlen
                        assert ok, (f"{policy['metadata']['name']}: spec.{key}[{i}].{peers_key}[{j}].ipBlock.except "
                                    f"{ex!r} is not a strict subset of {block['cidr']!r} (the API server refuses it)")


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    selector = selector or {}
    unsupported = set(selector) - {"matchLabels"}
    assert not unsupported, f"the evaluator supports matchLabels only, got {unsupported}"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_matches(peer: dict[str, Any], other: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False
        ip = _ip(other.ip)
        block = peer["ipBlock"]
        net = _net(block["cidr"])
        if ip.version != net.version or ip not in net:
            return False
        return not any(ip.version == (ex := _net(e)).version and ip in ex for e in block.get("except") or [])
    if other.namespace is None:  # an address outside the cluster is no pod
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], other.ns_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return _selects(peer.get("podSelector"), other.labels)


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        assert isinstance(p["port"], int), f"named ports are not supported: {p}"
        if p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def selecting(policies: list[dict[str, Any]], labels: dict[str, str], namespace: str,
              direction: str) -> list[dict[str, Any]]:
    """The policies that select a pod for a direction ("Ingress" or "Egress")."""
    out = []
    for policy in policies:
        if policy["metadata"].get("namespace") != namespace:
            continue
        spec = policy["spec"]
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if spec.get("egress") else ["Ingress"])
        if direction in types and _selects(spec.get("podSelector"), labels):
            out.append(policy)
    return out


def allowed(policies: list[dict[str, Any]], me: Endpoint, other: Endpoint, port: int, *,
            direction: str = "Egress", protocol: str = "TCP") -> bool:
    """Whether ``me`` may connect to ``other`` (Egress) or accept ``other``'s connection (Ingress)."""
    assert me.namespace, "the pod under test needs a namespace"
    chosen = selecting(policies, me.labels, me.namespace, direction)
    if not chosen:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in chosen:
        for rule in policy["spec"].get(key) or []:
            if not _port_matches(rule.get("ports"), port, protocol):
                continue
            peers = rule.get(peers_key)
            if not peers or any(_peer_matches(p, other, policy["metadata"]["namespace"]) for p in peers):
                return True
    return False
