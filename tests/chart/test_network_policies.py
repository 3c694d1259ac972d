"""The NetworkPolicies (networkPolicy.*): what each rendered pod may reach and who may reach it.

Each test renders the chart with real helm (kubeconform-validated) and asks ``tests.chart.netpol``,
an evaluator of the NetworkPolicy API's semantics, whether a connection is allowed. Whether a
cluster enforces them depends on its CNI (the smoke cluster's does not): that part is not tested here.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.helm import by_kind, render_chart, render_error
from tests.chart.netpol import address, allowed, check_ip_blocks, pod, selecting

NS = "imagineer"
FULL = "release-imagineer-workers"
# values-prod.yaml: the managed Redis on a private address, TLS port 6380.
PROD_REDIS = address("10.20.30.40")
KUBE_DNS = pod({"k8s-app": "kube-dns"}, "kube-system", ip="10.96.0.10")
PROMETHEUS = pod({"app.kubernetes.io/name": "prometheus"}, "monitoring", ip="10.244.3.3")
INGRESS_NGINX = pod({"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx", ip="10.244.4.4")
STRANGER = pod({"app": "other"}, "other-team", ip="10.244.5.5")
PUBLIC_V4, PUBLIC_V6 = address("93.184.216.34"), address("2606:2800:220:1:248:1893:25c8:1946")
PRIVATE = ["10.0.0.5", "172.16.0.1", "192.168.1.1", "100.64.0.1", "127.0.0.1", "169.254.169.254",
           "fd00::1", "fe80::1", "::1", "::ffff:10.0.0.5"]
IN_CLUSTER_REDIS = {"networkPolicy": {"enabled": True, "redis": {"podSelector": {"app": "redis"}}}}
REDIS_POD = pod({"app": "redis"}, NS, ip="10.244.1.9")


def pods_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """Every pod the rendering creates, by its Deployment's (or the Pod's) name: an Endpoint each."""
    out = {}
    for obj in objects:
        if obj["kind"] == "Deployment":
            out[obj["metadata"]["name"]] = pod(obj["spec"]["template"]["metadata"]["labels"], NS, ip="10.244.0.50")
        elif obj["kind"] == "Pod":
            out[obj["metadata"]["name"]] = pod(obj["metadata"]["labels"], NS, ip="10.244.0.51")
    return out


def policies_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


@pytest.fixture(scope="module")
def prod() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    objects = render_chart(values_file="prod")
    return policies_of(objects), pods_of(objects)


# ---- which pods get a policy ------------------------------------------------------------------


def test_off_by_default_and_in_staging():
    for values_file in (None, "staging"):
        assert not policies_of(render_chart(values_file=values_file))


def test_prod_enables_them_and_every_pod_is_isolated_both_ways(prod):
    policies, pods = prod
    assert {f"{FULL}-{n}" for n in ("default", "training", "scraping", "labeling", "beat", "exporter",
                                    "test-queues")} <= set(pods)
    for name, me in pods.items():
        for direction in ("Ingress", "Egress"):
            chosen = selecting(policies, me.labels, NS, direction)
            assert len(chosen) == 1, f"{name}: {direction} policies {[p['metadata']['name'] for p in chosen]}"


def test_the_api_server_would_accept_every_ip_block():
    """An except the API server refuses fails the install (seen on the smoke cluster: ``::ffff:0:0/96``
    is IPv4 0.0.0.0/0 to Go, no subset of ``::/0``)."""
    check_ip_blocks(policies_of(render_chart(values_file="prod")))
    allow = ["10.1.0.0/16", "192.168.7.7", "fd12::/64", "::ffff:10.2.0.0/112", "files.internal"]
    check_ip_blocks(policies_of(render_chart({**IN_CLUSTER_REDIS, "config": {"file": {"scraping": {
        "allow_networks": allow}}}})))
    with pytest.raises(AssertionError, match="not a strict subset"):
        check_ip_blocks([{"metadata": {"name": "x"}, "spec": {"egress": [
            {"to": [{"ipBlock": {"cidr": "::/0", "except": ["::ffff:0:0/96"]}}]}]}}])


def test_every_policy_selects_a_rendered_pod():
    objects = render_chart({**IN_CLUSTER_REDIS, "flower": {"enabled": True,
                                                         "basicAuth": {"username": "u", "password": "p"}}})
    pods = pods_of(objects)
    assert f"{FULL}-flower" in pods
    for policy in policies_of(objects):
        assert any(selecting([policy], p.labels, NS, "Egress") for p in pods.values()), policy["metadata"]["name"]


def test_disabled_components_get_no_policy():
    objects = render_chart({**IN_CLUSTER_REDIS, "exporter": {"enabled": False}, "beat": {"enabled": False},
                            "tests": {"enabled": False}, "workers": {"training": {"enabled": False}},
                            "config": {"maintenanceQueue": "default"}})
    assert set(by_kind(objects, "NetworkPolicy")) == {f"{FULL}-{g}" for g in ("default", "scraping", "labeling")}


# ---- egress -----------------------------------------------------------------------------------


@pytest.mark.parametrize("component", ["default", "training", "labeling", "beat", "exporter", "test-queues"])
def test_redis_and_dns_only(prod, component):
    policies, pods = prod
    me = pods[f"{FULL}-{component}"]
    assert allowed(policies, me, PROD_REDIS, 6380)
    assert not allowed(policies, me, PROD_REDIS, 22)
    assert allowed(policies, me, KUBE_DNS, 53, protocol="UDP") and allowed(policies, me, KUBE_DNS, 53)
    assert not allowed(policies, me, KUBE_DNS, 80)
    assert not allowed(policies, me, pod({"k8s-app": "kube-dns"}, "other-team"), 53, protocol="UDP")
    for other in (PUBLIC_V4, PUBLIC_V6):
        assert not allowed(policies, me, other, 443), f"{component} may reach the internet"
    assert not allowed(policies, me, STRANGER, 8080)


def test_scraping_reaches_the_internet_but_no_private_range(prod):
    policies, pods = prod
    scraping = pods[f"{FULL}-scraping"]
    assert allowed(policies, scraping, PROD_REDIS, 6380)
    assert allowed(policies, scraping, KUBE_DNS, 53, protocol="UDP")
    for other in (PUBLIC_V4, PUBLIC_V6):
        assert allowed(policies, scraping, other, 443) and allowed(policies, scraping, other, 8080)
    for ip in PRIVATE:
        assert not allowed(policies, scraping, address(ip), 80), f"scraping may reach {ip}"


def test_scraping_allow_networks_opens_those_private_addresses_only():
    objects = render_chart({**IN_CLUSTER_REDIS, "config": {"file": {"scraping": {
        "allow_networks": ["10.1.0.0/16", "192.168.7.7", "fd12::/64", "files.internal"]}}}})
    policies, pods = policies_of(objects), pods_of(objects)
    scraping, labeling = pods[f"{FULL}-scraping"], pods[f"{FULL}-labeling"]
    for ip in ("10.1.2.3", "192.168.7.7", "fd12::5"):
        assert allowed(policies, scraping, address(ip), 80), ip
        assert not allowed(policies, labeling, address(ip), 80), ip
    for ip in ("10.2.0.1", "192.168.7.8", "fd13::5", "169.254.169.254"):
        assert not allowed(policies, scraping, address(ip), 80), ip


def test_staging_preview_worker_consumes_scraping_so_it_gets_the_internet():
    redis = {"podSelector": {"app.kubernetes.io/name": "redis"},
             "namespaceSelector": {"kubernetes.io/metadata.name": "staging"}}
    objects = render_chart({"networkPolicy": {"enabled": True, "redis": redis}}, values_file="staging")
    policies, pods = policies_of(objects), pods_of(objects)
    preview = pods[f"{FULL}-preview"]
    assert allowed(policies, preview, PUBLIC_V4, 443)
    staging_redis = pod({"app.kubernetes.io/name": "redis"}, "staging")
    assert allowed(policies, preview, staging_redis, 6379)
    assert not allowed(policies, preview, pod({"app.kubernetes.io/name": "redis"}, NS), 6379)
    assert not allowed(policies, pods[f"{FULL}-beat"], PUBLIC_V4, 443)


def test_internet_queues_value_decides_which_groups_go_out():
    objects = render_chart({**IN_CLUSTER_REDIS, "networkPolicy": {**IN_CLUSTER_REDIS["networkPolicy"],
                                                                   "internet": {"queues": ["training"]}}})
    policies, pods = policies_of(objects), pods_of(objects)
    assert allowed(policies, pods[f"{FULL}-training"], PUBLIC_V4, 443)
    assert not allowed(policies, pods[f"{FULL}-scraping"], PUBLIC_V4, 443)


def test_in_cluster_redis_by_selector_in_the_release_namespace():
    objects = render_chart(IN_CLUSTER_REDIS)
    policies, pods = policies_of(objects), pods_of(objects)
    for me in pods.values():
        assert allowed(policies, me, REDIS_POD, 6379)
        assert not allowed(policies, me, pod({"app": "redis"}, "other-team"), 6379)
        assert not allowed(policies, me, pod({"app": "memcached"}, NS), 6379)


def test_extra_egress_globally_and_per_group():
    hub = {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    objects = render_chart({"networkPolicy": {**IN_CLUSTER_REDIS["networkPolicy"]},
                            "workers": {"training": {"networkPolicy": {"extraEgress": [hub]}}}})
    policies, pods = policies_of(objects), pods_of(objects)
    assert allowed(policies, pods[f"{FULL}-training"], address("203.0.113.9"), 443)
    assert not allowed(policies, pods[f"{FULL}-default"], address("203.0.113.9"), 443)
    objects = render_chart({"networkPolicy": {**IN_CLUSTER_REDIS["networkPolicy"], "extraEgress": [hub]}})
    policies, pods = policies_of(objects), pods_of(objects)
    assert all(allowed(policies, p, address("203.0.113.9"), 443) for p in pods.values())


# ---- Redis ports --------------------------------------------------------------------------------


def _redis_ports(values: dict[str, Any]) -> list[int]:
    objects = render_chart({"networkPolicy": IN_CLUSTER_REDIS["networkPolicy"], **values})
    rule = by_kind(objects, "NetworkPolicy")[f"{FULL}-beat"]["spec"]["egress"][0]
    assert rule["to"] == [{"podSelector": {"matchLabels": {"app": "redis"}}}]
    return [p["port"] for p in rule["ports"]]


@pytest.mark.parametrize(("broker", "ports"), [
    ({"url": "redis://redis:6379/0"}, [6379]),
    ({"url": "redis://:pw@redis/0"}, [6379]),
    ({"url": "rediss://:p%40ss@redis.example.com:6380/0"}, [6380]),
    ({"url": "redis://r:6390/0", "resultBackendUrl": "redis://results:6391/1"}, [6390, 6391]),
    ({"url": "sentinel://:pw@s1:26380/2;sentinel://:pw@s2", "sentinelMaster": "m"}, [26380, 6379, 26379]),
])
def test_redis_ports_come_from_the_broker_urls(broker, ports):
    assert _redis_ports({"broker": broker}) == ports


def test_redis_ports_value_wins():
    redis = {"podSelector": {"app": "redis"}, "ports": [7000, 7001]}
    assert _redis_ports({"networkPolicy": {**IN_CLUSTER_REDIS["networkPolicy"], "redis": redis}}) == [7000, 7001]


# ---- ingress ------------------------------------------------------------------------------------


@pytest.mark.parametrize("component", ["default", "training", "scraping", "labeling", "beat", "test-queues"])
def test_nothing_may_connect_to_workers_beat_or_the_test_pod(prod, component):
    policies, pods = prod
    me = pods[f"{FULL}-{component}"]
    for other in (PROMETHEUS, INGRESS_NGINX, STRANGER, pods[f"{FULL}-exporter"]):
        assert not allowed(policies, me, other, 8080, direction="Ingress")
        assert not allowed(policies, me, other, 9808, direction="Ingress")


def test_the_exporter_accepts_scrapes_from_the_monitoring_namespace_only(prod):
    policies, pods = prod
    exporter = pods[f"{FULL}-exporter"]
    assert allowed(policies, exporter, PROMETHEUS, 9808, direction="Ingress")
    assert not allowed(policies, exporter, PROMETHEUS, 22, direction="Ingress")
    assert not allowed(policies, exporter, STRANGER, 9808, direction="Ingress")
    assert not allowed(policies, exporter, pods[f"{FULL}-default"], 9808, direction="Ingress")


def test_the_exporter_port_and_scraper_selector_are_values():
    objects = render_chart({**IN_CLUSTER_REDIS, "exporter": {"port": 9900}, "networkPolicy": {
        **IN_CLUSTER_REDIS["networkPolicy"], "exporter": {"from": {
            "namespaceSelector": {"kubernetes.io/metadata.name": "observability"},
            "podSelector": {"app.kubernetes.io/name": "prometheus"}}}}})
    policies, exporter = policies_of(objects), pods_of(objects)[f"{FULL}-exporter"]
    prom = pod({"app.kubernetes.io/name": "prometheus"}, "observability")
    assert allowed(policies, exporter, prom, 9900, direction="Ingress")
    assert not allowed(policies, exporter, prom, 9808, direction="Ingress")
    assert not allowed(policies, exporter, pod({"app": "grafana"}, "observability"), 9900, direction="Ingress")


FLOWER = {"enabled": True, "basicAuth": {"username": "u", "password": "p"}}


def test_flower_accepts_its_ingress_controller_only_with_an_ingress():
    objects = render_chart({**IN_CLUSTER_REDIS, "flower": FLOWER})
    policies, flower = policies_of(objects), pods_of(objects)[f"{FULL}-flower"]
    assert not allowed(policies, flower, INGRESS_NGINX, 5555, direction="Ingress")
    assert allowed(policies, flower, REDIS_POD, 6379) and not allowed(policies, flower, PUBLIC_V4, 443)
    objects = render_chart({**IN_CLUSTER_REDIS, "flower": {**FLOWER, "ingress": {"enabled": True}}})
    policies, flower = policies_of(objects), pods_of(objects)[f"{FULL}-flower"]
    assert allowed(policies, flower, INGRESS_NGINX, 5555, direction="Ingress")
    assert not allowed(policies, flower, INGRESS_NGINX, 80, direction="Ingress")
    assert not allowed(policies, flower, STRANGER, 5555, direction="Ingress")


# ---- refusals -----------------------------------------------------------------------------------


def test_refused_without_a_redis_peer():
    message = render_error({"networkPolicy": {"enabled": True}})
    assert "networkPolicy.redis needs a podSelector, a namespaceSelector or cidrs" in message


def test_refused_with_an_existing_secret_and_no_redis_ports():
    message = render_error({"networkPolicy": {"enabled": True, "redis": {"cidrs": ["10.0.0.0/8"]}},
                            "broker": {"existingSecret": "redis"}})
    assert "networkPolicy.redis.ports is required" in message


def test_refused_without_scrapers_or_ingress_controller():
    message = render_error({"networkPolicy": {**IN_CLUSTER_REDIS["networkPolicy"],
                                              "exporter": {"from": {"namespaceSelector": None}},
                                              "flower": {"from": {"namespaceSelector": None}}},
                            "flower": {**FLOWER, "ingress": {"enabled": True}}})
    assert "networkPolicy.exporter.from needs" in message and "networkPolicy.flower.from needs" in message
