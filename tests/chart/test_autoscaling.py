"""Autoscaling across objects: each ScaledObject and HPA against its Deployment, Secret and values.

Every rendering here goes through kubeconform -strict with the offline schemas, the KEDA CRD schemas
(keda.sh/v1alpha1 ScaledObject, TriggerAuthentication) that ``make tools`` generates from KEDA's Go
types included. What one template renders for one value is in helm-unittest
(charts/imagineer-workers/tests/autoscaling_test.yaml); that the triggers see a running task, against
a real worker, in tests/run/test_autoscaling.py.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, REPO, by_kind, container, render_chart, render_manifest, validate, worker_groups

KEDA_SCHEMAS = REPO / ".tools" / "schemas" / "crds" / "keda.sh"
TRAINING_KEDA = {"workers": {"training": {"autoscaling": {"enabled": True}}}}
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def grace(deployment: dict[str, Any]) -> int:
    return deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def queues_of(deployment: dict[str, Any]) -> list[str]:
    args = container(deployment)["args"]
    return args[args.index("-Q") + 1].split(",")


def test_the_keda_crd_schemas_are_there_and_kubeconform_uses_them() -> None:
    """kubeconform has no -ignore-missing-schemas: a ScaledObject validates against the generated
    schema, and a field KEDA does not know is refused (strict), so the schema is really read."""
    for kind in ("scaledobject", "triggerauthentication"):
        assert (KEDA_SCHEMAS / f"{kind}_v1alpha1.json").is_file()
    manifest = render_manifest(TRAINING_KEDA, show_only=["templates/worker/scaledobject.yaml"])
    scaled = yaml.safe_load(manifest)
    scaled["spec"]["cooldownPeriods"] = 1860
    with pytest.raises(AssertionError, match="cooldownPeriods"):
        validate(yaml.safe_dump(scaled))
    scaled = yaml.safe_load(manifest)
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 1  # KEDA's metadata values are strings
    with pytest.raises(AssertionError, match="listLength"):
        validate(yaml.safe_dump(scaled))


def test_acceptance_training_scales_to_zero_with_the_unacked_safeguard() -> None:
    """`--set workers.training.autoscaling.enabled=true`: a ScaledObject for training with
    minReplicaCount 0 and the safeguard (a trigger on the unacked hash, cooldown >= grace >= hard
    limit), no replicas on the training Deployment, kubeconform strict with the KEDA schemas."""
    objects = render_chart(TRAINING_KEDA)
    (scaled,) = by_kind(objects, "ScaledObject").values()
    workers = worker_groups(objects)
    training = workers["training"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == training["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] == 0
    assert "replicas" not in training["spec"]
    assert all(d["spec"]["replicas"] == 1 for n, d in workers.items() if n != "training")
    triggers = {t["name"]: t for t in scaled["spec"]["triggers"]}
    assert triggers["unacked"]["metadata"]["listName"] == "unacked"
    assert triggers["unacked"]["metadata"]["activationListLength"] == "0"
    hard = VALUES["celery"]["hardTimeLimitSeconds"]
    assert scaled["spec"]["cooldownPeriod"] >= grace(training) >= hard
    assert training["spec"]["template"]["metadata"]["annotations"][
        "cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert training["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


@pytest.mark.parametrize("values_file", ["default", "staging", "prod"])
def test_every_group_on_keda_watches_exactly_its_queues_under_the_prefix(values_file: str) -> None:
    """Each enabled group autoscaled: one trigger per queue of its -Q (with broker.keyPrefix), never a
    dead-letter list, the unacked hash when it scales to zero, the Secret and keys KEDA reads exist."""
    base = render_chart(values_file=values_file)
    groups = worker_groups(base)
    values = {"workers": {name: {"autoscaling": {"enabled": True, "minReplicas": 0}} for name in groups}}
    objects = render_chart(values, values_file=values_file)
    prefix = next((e["value"] for e in container(next(iter(worker_groups(objects).values())))["env"]
                   if e["name"] == "IMAGINEER_REDIS_KEY_PREFIX"), "")
    assert prefix == ("imagineer:" if values_file == "staging" else "")
    scaled = by_kind(objects, "ScaledObject")
    assert len(scaled) == len(groups)
    (auth,) = by_kind(objects, "TriggerAuthentication").values()
    for name, deployment in worker_groups(objects).items():
        spec = scaled[deployment["metadata"]["name"]]["spec"]
        lists = [t["metadata"]["listName"] for t in spec["triggers"]]
        assert lists == [prefix + q for q in queues_of(deployment)] + [prefix + "unacked"], name
        assert not any(name.endswith(".dead") for name in lists)
        assert {t["authenticationRef"]["name"] for t in spec["triggers"]} == {auth["metadata"]["name"]}
        assert spec["cooldownPeriod"] >= grace(deployment)
        assert "replicas" not in deployment["spec"]
    secrets = by_kind(objects, "Secret")
    for ref in auth["spec"]["secretTargetRef"]:
        if ref["name"] in secrets:  # the chart's own Secret: the key is there (existing ones: pre-flight)
            assert ref["key"] in secrets[ref["name"]]["data"], ref


def test_the_chart_secret_gives_keda_the_broker_urls_address_and_password() -> None:
    objects = render_chart({**TRAINING_KEDA, "broker": {"url": "rediss://:s3cret@redis.example.com:6380/2"}})
    (secret,) = by_kind(objects, "Secret").values()
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["redis-address"] == "redis.example.com:6380"
    assert data["redis-password"] == "s3cret"
    (scaled,) = by_kind(objects, "ScaledObject").values()
    assert {t["metadata"]["databaseIndex"] for t in scaled["spec"]["triggers"]} == {"2"}
    assert {t["metadata"]["enableTLS"] for t in scaled["spec"]["triggers"]} == {"true"}


def test_prod_with_keda_reads_the_existing_secret_and_its_ca() -> None:
    objects = render_chart(TRAINING_KEDA, values_file="prod")
    (auth,) = by_kind(objects, "TriggerAuthentication").values()
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {"address": ("imagineer-redis", "redis-address"), "password": ("imagineer-redis", "redis-password"),
                    "ca": ("imagineer-redis-ca", "ca.crt")}
    assert "Secret" not in {o["kind"] for o in objects if o["metadata"]["name"] == "imagineer-redis"}


def test_hpa_fallback_targets_its_deployment_and_removes_one_pod_per_period() -> None:
    values = {"workers": {"scraping": {"autoscaling": {"enabled": True, "mode": "hpa", "minReplicas": 2}},
                          "labeling": {"autoscaling": {"enabled": True, "mode": "hpa"}}}}
    objects = render_chart(values, values_file="prod")
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    workers = worker_groups(objects)
    assert set(hpas) == {workers["scraping"]["metadata"]["name"], workers["labeling"]["metadata"]["name"]}
    for name in ("scraping", "labeling"):
        hpa = hpas[workers[name]["metadata"]["name"]]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": workers[name]["metadata"]["name"]}
        assert "replicas" not in workers[name]["spec"]
        assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]
        assert container(workers[name])["resources"]["requests"]["cpu"]  # utilization needs a request
    assert not by_kind(objects, "ScaledObject") and not by_kind(objects, "TriggerAuthentication")


def test_rollouts_never_need_a_second_gpu_and_light_groups_surge() -> None:
    for values_file in ("default", "prod"):
        workers = worker_groups(render_chart(values_file=values_file))
        for name, deployment in workers.items():
            gpus = container(deployment)["resources"]["limits"].get("nvidia.com/gpu", 0)
            rolling = deployment["spec"]["strategy"]["rollingUpdate"]
            expected = {"maxSurge": 0, "maxUnavailable": 1} if gpus else {"maxSurge": 1, "maxUnavailable": 0}
            assert rolling == expected, name
            evict = deployment["spec"]["template"]["metadata"]["annotations"].get(
                "cluster-autoscaler.kubernetes.io/safe-to-evict")
            assert evict == ("false" if gpus else None), name


def test_the_values_file_documents_what_the_schema_accepts() -> None:
    """workerDefaults carries every autoscaling key (the schema has additionalProperties: false)."""
    schema = copy.deepcopy(yaml.safe_load((CHART / "values.schema.json").read_text()))
    group = schema["definitions"]["workerGroup"]["properties"]
    assert set(group["autoscaling"]["properties"]) == set(VALUES["workerDefaults"]["autoscaling"])
    assert set(schema["properties"]["keda"]["properties"]) == set(VALUES["keda"])
