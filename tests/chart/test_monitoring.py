"""The exporter, the Prometheus Operator objects, the dashboard and Flower as the values files render them."""

from __future__ import annotations

import json

import pytest

from tests.chart.helm import REPO, by_kind, container, env_of, render_chart, worker_groups

PREFIX = "release-imagineer-workers"
ALERTS = ["ImagineerQueueBacklog", "ImagineerTrainingIdle", "ImagineerBeatMissedRun",
          "ImagineerQueueWithoutWorkers", "ImagineerTaskFailureRate", "ImagineerDeadLetters"]


def test_prod_renders_exporter_service_monitor_rules_and_dashboard():
    objects = render_chart(values_file="prod")
    exporter = by_kind(objects, "Deployment")[f"{PREFIX}-exporter"]
    args = container(exporter)["args"]
    assert ("--queues=default,default.dead,labeling,labeling.dead,scraping,scraping.dead,training,training.dead"
            in args)
    assert not [a for a in args if "ssl" in a]  # TLS is the launcher's call, from the URL's scheme
    # The CA path handed to the launcher lies inside the mounted CA Secret.
    env = {e["name"]: e.get("value") for e in container(exporter)["env"]}
    mount = next(m for m in container(exporter)["volumeMounts"] if m["name"] == "redis-ca")
    volume = next(v for v in exporter["spec"]["template"]["spec"]["volumes"] if v["name"] == "redis-ca")
    assert env["IMAGINEER_REDIS_CA_CERT"] == f"{mount['mountPath']}/ca.crt"
    assert volume["secret"]["secretName"] == "imagineer-redis-ca"
    assert container(exporter)["image"] == "registry.imagineer.internal/imagineer/celery-exporter:0.1.0"
    service = by_kind(objects, "Service")[f"{PREFIX}-exporter"]
    monitor = by_kind(objects, "ServiceMonitor")[f"{PREFIX}-exporter"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]

    rule = by_kind(objects, "PrometheusRule")[PREFIX]
    groups = rule["spec"]["groups"]
    assert [r["alert"] for g in groups for r in g["rules"] if "alert" in r] == ALERTS
    for group in groups:
        for alert in (r for r in group["rules"] if "alert" in r):
            assert alert["labels"]["severity"] and alert["labels"]["queue"], alert["alert"]
            assert alert["labels"]["team"] == "imagineer-backend"
            assert {"summary", "description", "runbook_url"} <= alert["annotations"].keys()
            assert alert["annotations"]["runbook_url"].endswith(f"#{alert['alert'].lower()}")

    for group in worker_groups(objects).values():  # the exporter lives on the workers' heartbeats
        assert "--without-heartbeat" not in container(group)["args"]

    dashboard = by_kind(objects, "ConfigMap")[f"{PREFIX}-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["imagineer-workers.json"])["panels"]


@pytest.mark.parametrize("alert", ALERTS)
def test_every_runbook_anchor_exists_in_the_readme_troubleshooting_section(alert):
    readme = (REPO / "README.md").read_text()
    troubleshooting = readme[readme.index("## Troubleshooting"):]
    assert f"### {alert}" in troubleshooting, alert


def test_staging_has_flower_from_an_existing_secret_and_no_alerts():
    objects = render_chart(values_file="staging")
    assert not by_kind(objects, "PrometheusRule")
    flower = by_kind(objects, "Deployment")[f"{PREFIX}-flower"]
    auth = next(e for e in container(flower)["env"] if e["name"] == "FLOWER_BASIC_AUTH")
    assert auth["valueFrom"]["secretKeyRef"] == {"name": "imagineer-flower-auth", "key": "basic-auth"}
    assert f"{PREFIX}-flower" in by_kind(objects, "Service")
    assert f"{PREFIX}-flower" not in by_kind(objects, "Secret")


def test_flower_with_credentials_renders_deployment_service_secret_and_ingress():
    objects = render_chart({"flower": {"enabled": True, "basicAuth": {"username": "ops", "password": "pw"},
                                       "ingress": {"enabled": True, "host": "flower.imagineer.internal"}}},
                           values_file="prod")
    assert f"{PREFIX}-flower" in by_kind(objects, "Deployment")
    assert by_kind(objects, "Service")[f"{PREFIX}-flower"]["spec"]["ports"][0]["port"] == 5555
    assert f"{PREFIX}-flower" in by_kind(objects, "Secret")
    ingress = by_kind(objects, "Ingress")[f"{PREFIX}-flower"]
    assert ingress["spec"]["rules"][0]["host"] == "flower.imagineer.internal"


def test_exporter_queue_list_follows_the_enabled_groups():
    objects = render_chart(values_file="staging")
    args = container(by_kind(objects, "Deployment")[f"{PREFIX}-exporter"])["args"]
    assert "--queues=default,default.dead,labeling,labeling.dead,scraping,scraping.dead" in args


@pytest.mark.parametrize("values_file", [None, "staging", "prod"])
def test_exporter_reports_each_consumed_queue_and_its_dead_letter_list(values_file):
    """--queues = the queues the workers consume (IMAGINEER_EXPECTED_QUEUES) and each one's <queue>.dead."""
    objects = render_chart(values_file=values_file)
    consumed = {q for group in worker_groups(objects).values()
                for q in env_of(group)["IMAGINEER_EXPECTED_QUEUES"].split(",")}
    args = container(by_kind(objects, "Deployment")[f"{PREFIX}-exporter"])["args"]
    queues = next(a for a in args if a.startswith("--queues=")).removeprefix("--queues=").split(",")
    assert len(queues) == len(set(queues))
    assert set(queues) == consumed | {f"{q}.dead" for q in consumed}, queues


def test_prod_queue_and_worker_alerts_leave_the_dead_letter_lists_out():
    rule = by_kind(render_chart(values_file="prod"), "PrometheusRule")[PREFIX]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    not_dead = r'queue_name!~".+\\.dead"'
    for name in ("ImagineerQueueBacklog", "ImagineerQueueWithoutWorkers"):
        assert not_dead in alerts[name]["expr"], name
        assert ".dead" not in alerts[name]["expr"].replace(not_dead, ""), name
    assert r'celery_queue_length{queue_name=~".+\\.dead"}' in alerts["ImagineerDeadLetters"]["expr"]


def _beat_rule(objects: list[dict]) -> dict:
    [rule] = [r for o in by_kind(objects, "PrometheusRule").values() for g in o["spec"]["groups"]
              for r in g["rules"] if r.get("alert") == "ImagineerBeatMissedRun"]
    return rule


@pytest.mark.parametrize(("config", "window"), [
    ({}, "12h"), ({"diskSampleHours": 12}, "24h"), ({"diskSampleHours": 24}, "48h"), ({"diskSampleHours": 1}, "12h"),
    ({"diskSampleMinutes": 1}, "12h"), ({"diskSampleHours": 8}, "16h"),
])
def test_the_beat_alert_window_is_the_doctor_threshold(config, window):
    """One rule for both: twice the record_disk_usage interval, at least the guide's 12 hours."""
    from imagineer_worker.config import load_settings
    from imagineer_worker.doctor import beat_max_age_hours

    objects = render_chart({"config": config, "monitoring": {"prometheusRule": {"enabled": True}}})
    rule = _beat_rule(objects)
    assert f"has not succeeded for {window}" in rule["annotations"]["summary"]
    env = {"IMAGINEER_DISK_SAMPLE_HOURS": str(config.get("diskSampleHours", 6)),
           "IMAGINEER_DISK_SAMPLE_MINUTES": str(config.get("diskSampleMinutes", 0))}
    assert beat_max_age_hours(load_settings(env)) == float(window.rstrip("h"))


def test_staging_cannot_flap_between_two_disk_samples():
    """Staging samples every 12 hours: its alert (when turned on) and doctor allow 24."""
    from imagineer_worker.config import load_settings
    from imagineer_worker.doctor import beat_max_age_hours

    objects = render_chart({"monitoring": {"prometheusRule": {"enabled": True}}}, values_file="staging")
    rule = _beat_rule(objects)
    env = env_of(worker_groups(objects)["preview"])
    interval = int(env["IMAGINEER_DISK_SAMPLE_HOURS"])
    assert interval == 12 and "has not succeeded for 24h" in rule["annotations"]["summary"]
    assert beat_max_age_hours(load_settings({"IMAGINEER_DISK_SAMPLE_HOURS": str(interval)})) == 24
