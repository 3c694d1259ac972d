"""values-staging.yaml and values-prod.yaml render what the guide asks for each environment."""

from __future__ import annotations

import pytest

from tests.chart.helm import by_kind, container, env_of, render_chart, worker_groups


def test_staging_runs_one_preview_worker_on_three_queues_and_beat():
    objects = render_chart(values_file="staging")
    deployments = by_kind(objects, "Deployment")
    assert set(worker_groups(objects)) == {"preview"} and "release-imagineer-workers-beat" in deployments
    args = container(deployments["release-imagineer-workers-preview"])["args"]
    assert args[args.index("-Q") + 1] == "default,scraping,labeling"
    assert "--concurrency=2" in args and "--hostname=preview@%h" in args
    assert env_of(deployments["release-imagineer-workers-beat"])["IMAGINEER_DISK_SAMPLE_HOURS"] == "12"


def test_prod_runs_the_four_groups_training_on_a_gpu_node_and_a_dedicated_beat():
    objects = render_chart(values_file="prod")
    deployments = by_kind(objects, "Deployment")
    assert set(worker_groups(objects)) == {"default", "training", "scraping", "labeling"}
    assert "release-imagineer-workers-beat" in deployments
    training = deployments["release-imagineer-workers-training"]["spec"]["template"]["spec"]
    assert training["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert training["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert training["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert not by_kind(objects, "Secret"), "prod reads the broker URL from an existing Secret"
    labeling = deployments["release-imagineer-workers-labeling"]["spec"]["template"]["spec"]
    assert "podAffinity" in labeling["affinity"]
    assert container(deployments["release-imagineer-workers-default"])["image"].startswith(
        "registry.imagineer.internal/imagineer/worker-default:")


@pytest.mark.parametrize("values_file", [None, "staging", "prod"])
def test_every_object_carries_the_recommended_labels(values_file):
    for obj in render_chart(values_file=values_file):
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert labels.get(key), (obj["kind"], obj["metadata"]["name"], key)
        assert obj["metadata"]["namespace"] == "imagineer"
