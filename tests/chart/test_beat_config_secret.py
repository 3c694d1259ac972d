"""What spans objects: every container's shared environment, the Secret's references, config and
checksums across Deployments, and the rendered config read back by the worker itself.

Single-template facts (beat's Deployment, the Secret's data, the service account, the claim) are
the chart's helm-unittest suites (charts/imagineer-workers/tests); that a password appears in no
other object is tests/chart/test_credentials.py."""

from __future__ import annotations

import pytest
import yaml
from imagineer_worker.config import load_settings

from tests.chart.helm import by_kind, celery_app_deployments, container, env_of, render_chart


def test_every_container_gets_the_guides_variables_with_their_defaults():
    for d in celery_app_deployments(render_chart()).values():
        env = env_of(d)
        assert env["IMAGINEER_MAINTENANCE_QUEUE"] == "default"
        assert env["IMAGINEER_PURGE_TRAINING_HOUR"] == "3"
        assert env["IMAGINEER_PURGE_SCRAPE_HOUR"] == "4"
        assert env["IMAGINEER_DISK_SAMPLE_HOURS"] == "6"
        assert env["IMAGINEER_TASK_SOFT_TIME_LIMIT"] == "1500"
        assert env["IMAGINEER_TASK_TIME_LIMIT"] == "1800"
        assert env["IMAGINEER_VISIBILITY_TIMEOUT"] == "3600"
        assert env["CELERY_RESULT_EXPIRES"] == "86400"
        assert env["IMAGINEER_CONFIG"] == "/etc/imagineer/config/config.yaml"
        assert env["IMAGINEER_DATA_DIR"] == "/data"
        assert env["CELERY_BROKER_URL"] == {"secretKeyRef": {"name": "release-imagineer-workers", "key": "broker-url"}}
        assert env["CELERY_RESULT_BACKEND"]["secretKeyRef"]["key"] == "result-backend-url"


def test_an_existing_secret_replaces_the_charts_secret():
    objects = render_chart({"broker": {"existingSecret": "managed-redis", "url": ""}})
    assert not by_kind(objects, "Secret")
    env = env_of(by_kind(objects, "Deployment")["release-imagineer-workers-default"])
    assert env["CELERY_BROKER_URL"]["secretKeyRef"]["name"] == "managed-redis"


def test_tls_ca_and_sentinel_reach_the_workers():
    objects = render_chart({"broker": {"url": "rediss://r:6380/0", "caSecret": "redis-ca", "sentinelMaster": "m"}})
    d = by_kind(objects, "Deployment")["release-imagineer-workers-scraping"]
    env = env_of(d)
    assert env["IMAGINEER_REDIS_CA_CERT"] == "/etc/imagineer/redis-ca/ca.crt"
    assert env["IMAGINEER_REDIS_SENTINEL_MASTER"] == "m"
    volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
    assert volumes["redis-ca"]["secret"]["secretName"] == "redis-ca"


def test_config_file_is_mounted_from_the_configmap():
    objects = render_chart({"config": {"file": {"scraping": {"allow_networks": ["10.1.0.0/16"]}}}})
    cm = by_kind(objects, "ConfigMap")["release-imagineer-workers"]
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["scraping"]["allow_networks"] == ["10.1.0.0/16"]
    assert config["scraping"]["max_redirects"] == 5  # the other defaults stay


@pytest.mark.parametrize("values_file", ["default", "staging", "prod"])
def test_the_worker_accepts_the_rendered_config_and_env(values_file, tmp_path):
    """The chart and the worker package agree: the rendered config.yaml and env load cleanly."""
    objects = render_chart(values_file=None if values_file == "default" else values_file)
    configmap = by_kind(objects, "ConfigMap")["release-imagineer-workers"]
    (tmp_path / "config.yaml").write_text(configmap["data"]["config.yaml"])
    for deployment in celery_app_deployments(objects).values():
        env = {k: v for k, v in env_of(deployment).items() if isinstance(v, str)}
        env["IMAGINEER_CONFIG"] = str(tmp_path / "config.yaml")
        env.pop("IMAGINEER_REDIS_CA_CERT", None)  # a mounted Secret in the pod
        settings = load_settings(env)
        assert settings.maintenance_queue == env["IMAGINEER_MAINTENANCE_QUEUE"]
        assert settings.task_time_limit == int(env["IMAGINEER_TASK_TIME_LIMIT"])
        assert str(settings.data_dir) == env["IMAGINEER_DATA_DIR"]


def _checksums(values):
    return {name: d["spec"]["template"]["metadata"]["annotations"]
            for name, d in celery_app_deployments(render_chart(values)).items()}


def test_config_and_secret_changes_roll_the_pods():
    base = _checksums({})
    changed_config = _checksums({"config": {"file": {"purge": {"training_max_age_days": 7}}}})
    changed_secret = _checksums({"broker": {"url": "redis://other:6379/0"}})
    for name in base:
        assert base[name]["checksum/config"] != changed_config[name]["checksum/config"]
        assert base[name]["checksum/secret"] == changed_config[name]["checksum/secret"]
        assert base[name]["checksum/secret"] != changed_secret[name]["checksum/secret"]
    in_place = _checksums({"config": {"rollOnChange": False}})
    assert all("checksum/config" not in a for a in in_place.values())


def test_helm_test_pod_checks_every_consumed_queue():
    objects = render_chart({"workers": {"default": {"queues": ["default", "labeling"]},
                                        "labeling": {"enabled": False}, "training": {"enabled": False}}})
    pod = by_kind(objects, "Pod")["release-imagineer-workers-test-queues"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    cmd = container(pod)["command"]
    assert cmd[:4] == ["imagineer-workers", "doctor", "--checks", "broker,consumers"]
    assert cmd[cmd.index("--queues") + 1] == "default,labeling,scraping"
