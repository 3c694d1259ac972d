"""The chart's values for the worker's Redis key prefix, RedBeat lock and delivery cap reach the pods,
and the worker package reads them back as the settings they name."""

from __future__ import annotations

import json

import yaml
from imagineer_worker.config import load_settings

from tests.chart.helm import by_kind, celery_app_deployments, container, env_of, render_chart

SETTINGS = {
    "broker": {"keyPrefix": "imgw-7f3a:"},
    "beat": {"lockTimeoutSeconds": 90},
    "config": {"maxDeliveries": 5, "deadLetterMaxLength": 250},
    "flower": {"enabled": True, "basicAuth": {"username": "ops", "password": "pw"}},
    "monitoring": {"prometheusRule": {"enabled": True}},
}


def _worker_env(deployment: dict, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in env_of(deployment).items() if isinstance(v, str)}
    (tmp_path / "config.yaml").write_text("{}\n")
    env["IMAGINEER_CONFIG"] = str(tmp_path / "config.yaml")
    return env


def test_the_worker_reads_the_charts_settings_in_every_pod(tmp_path):
    deployments = celery_app_deployments(render_chart(SETTINGS))
    assert {"release-imagineer-workers-beat", "release-imagineer-workers-flower",
            "release-imagineer-workers-default"} <= set(deployments)
    for name, deployment in deployments.items():
        settings = load_settings(_worker_env(deployment, tmp_path))
        assert settings.redis_key_prefix == "imgw-7f3a:", name
        assert settings.max_deliveries == 5, name
        assert settings.dead_letter_max_length == 250, name
        # The lock timeout is the beat's; elsewhere the worker's default stays.
        assert settings.beat_lock_timeout == (90 if name.endswith("-beat") else 60), name


def test_large_numbers_from_a_values_file_reach_the_pods_as_integers(tmp_path):
    """YAML reads 2592000 as a float64 in Helm: without ``int`` it renders as ``2.592e+06``, which
    the worker refuses at start-up (every pod in a crash loop). ``--set`` hides it; a file shows it."""
    big = {"celery": {"resultExpiresSeconds": 2592000, "softTimeLimitSeconds": 1000000,
                      "hardTimeLimitSeconds": 1200000, "visibilityTimeoutSeconds": 2400000},
           "beat": {"lockTimeoutSeconds": 1000000},
           "config": {"maxDeliveries": 1000000, "deadLetterMaxLength": 5000000}}
    values = tmp_path / "big.yaml"
    values.write_text(yaml.safe_dump(big))
    for name, deployment in celery_app_deployments(render_chart(values_file=values)).items():
        settings = load_settings(_worker_env(deployment, tmp_path))
        assert (settings.result_expires, settings.task_time_limit, settings.visibility_timeout) == \
            (2592000, 1200000, 2400000), name
        assert (settings.max_deliveries, settings.dead_letter_max_length) == (1000000, 5000000), name
        assert settings.beat_lock_timeout == (1000000 if name.endswith("-beat") else 60), name
    numbers = [v for d in celery_app_deployments(render_chart(values_file=values)).values()
               for v in env_of(d).values() if isinstance(v, str) and "e+" in v]
    assert numbers == []


def test_the_defaults_are_the_workers_defaults(tmp_path):
    for name, deployment in celery_app_deployments(render_chart()).items():
        env = _worker_env(deployment, tmp_path)
        assert "IMAGINEER_REDIS_KEY_PREFIX" not in env, name
        settings, defaults = load_settings(env), load_settings({})
        assert settings.redis_key_prefix == defaults.redis_key_prefix == ""
        assert (settings.max_deliveries, settings.dead_letter_max_length) == (3, 10000)
        assert settings.beat_lock_timeout == defaults.beat_lock_timeout == 60


def test_the_exporter_reads_queues_under_the_prefix_and_labels_them_without_it():
    objects = render_chart(SETTINGS)
    exporter = by_kind(objects, "Deployment")["release-imagineer-workers-exporter"]
    args = container(exporter)["args"]
    option = next(a for a in args if a.startswith("--broker-transport-option=global_keyprefix="))
    # The exporter json-decodes an option value: a JSON string stays the prefix, whatever it looks like.
    assert json.loads(option.split("=", 2)[2]) == "imgw-7f3a:"
    # the dead-letter lists too: the workers write <prefix><queue>.dead, the exporter's LLEN adds the prefix
    assert "--queues=default,default.dead,labeling,labeling.dead,scraping,scraping.dead,training,training.dead" in args


def test_the_alerts_do_not_change_with_the_key_prefix():
    """Metrics carry bare queue names (the exporter's --queues), so the rules must not mention the prefix."""
    def rules(values):
        rule = by_kind(render_chart(values), "PrometheusRule")["release-imagineer-workers"]
        return yaml.safe_dump(rule["spec"])

    with_prefix = {**SETTINGS, "beat": {}, "config": {}}
    without = {"monitoring": SETTINGS["monitoring"], "flower": SETTINGS["flower"]}
    assert rules(with_prefix) == rules(without)
    assert "imgw-7f3a" not in rules(with_prefix)
