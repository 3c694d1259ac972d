"""Configuration: the guide's defaults, file < env precedence, and one clear message per bad value."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagineer_worker import config
from imagineer_worker.config import ConfigError, ConfigWatcher, load_settings
from imagineer_worker.testing.services import wait_for

GUIDE_DEFAULTS = {
    "CELERY_BROKER_URL": ("broker_url", "redis://localhost:6379/0"),
    "CELERY_RESULT_BACKEND": ("result_backend", "redis://localhost:6379/0"),
    "IMAGINEER_MAINTENANCE_QUEUE": ("maintenance_queue", "default"),
    "IMAGINEER_PURGE_TRAINING_HOUR": ("purge_training_hour", 3),
    "IMAGINEER_PURGE_SCRAPE_HOUR": ("purge_scrape_hour", 4),
    "IMAGINEER_DISK_SAMPLE_HOURS": ("disk_sample_hours", 6),
}


@pytest.mark.parametrize(("env", "expected"), GUIDE_DEFAULTS.items())
def test_every_guide_variable_has_the_guide_default(env, expected):
    attr, value = expected
    assert getattr(load_settings({}), attr) == value
    assert any(f.env_name == env for f in config.FIELDS)


def test_guide_time_limits_are_the_defaults():
    s = load_settings({})
    assert (s.task_soft_time_limit, s.task_time_limit) == (25 * 60, 30 * 60)
    assert s.visibility_timeout > s.task_time_limit


@pytest.mark.parametrize(("env", "raw", "attr", "value"), [
    ("CELERY_BROKER_URL", "redis://redis.internal:6379/1", "broker_url", "redis://redis.internal:6379/1"),
    ("CELERY_RESULT_BACKEND", "redis://r:6379/2", "result_backend", "redis://r:6379/2"),
    ("CELERY_RESULT_EXPIRES", "3600", "result_expires", 3600),
    ("IMAGINEER_MAINTENANCE_QUEUE", "labeling", "maintenance_queue", "labeling"),
    ("IMAGINEER_PURGE_TRAINING_HOUR", "0", "purge_training_hour", 0),
    ("IMAGINEER_PURGE_SCRAPE_HOUR", "23", "purge_scrape_hour", 23),
    ("IMAGINEER_DISK_SAMPLE_HOURS", "12", "disk_sample_hours", 12),
    ("IMAGINEER_DATA_DIR", "/srv/data", "data_dir", Path("/srv/data")),
    ("IMAGINEER_SCRAPING_ALLOW_NETWORKS", "10.0.0.0/8, cdn.internal", "scraping_allow_networks",
     ["10.0.0.0/8", "cdn.internal"]),
])
def test_environment_overrides(env, raw, attr, value):
    assert getattr(load_settings({env: raw}), attr) == value


def test_environment_wins_over_file_and_file_over_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("purge_training_hour: 5\npurge_scrape_hour: 6\nscraping:\n  max_redirects: 2\n")
    s = load_settings({"IMAGINEER_CONFIG": str(path), "IMAGINEER_PURGE_TRAINING_HOUR": "7"})
    assert (s.purge_training_hour, s.purge_scrape_hour, s.scraping_max_redirects) == (7, 6, 2)
    assert s.disk_sample_hours == 6
    assert s.source == str(path)


@pytest.mark.parametrize(("env", "message"), [
    ({"IMAGINEER_PURGE_TRAINING_HOUR": "25"}, r"purge_training_hour \(environment IMAGINEER_PURGE_TRAINING_HOUR\)"
                                              ": 25 is above the maximum 23"),
    ({"IMAGINEER_PURGE_SCRAPE_HOUR": "-1"}, "purge_scrape_hour .*below the minimum 0"),
    ({"IMAGINEER_DISK_SAMPLE_HOURS": "-6"}, "disk_sample_hours .*below the minimum 1"),
    ({"IMAGINEER_DISK_SAMPLE_HOURS": "six"}, "disk_sample_hours .*'six' is not a valid int"),
    ({"IMAGINEER_MAINTENANCE_QUEUE": "maintenance"}, "maintenance_queue .*not one of default, training"),
    ({"CELERY_RESULT_EXPIRES": "0"}, "result_expires .*below the minimum 60"),
    ({"IMAGINEER_VISIBILITY_TIMEOUT": "1800"}, "visibility_timeout: 1800s must exceed task_time_limit"),
    ({"IMAGINEER_TASK_SOFT_TIME_LIMIT": "1800"}, "task_soft_time_limit: 1800s must be below task_time_limit"),
    ({"IMAGINEER_SCRAPING_ALLOW_NETWORKS": "10.0.0.0/8,not a host!"}, "scraping.allow_networks"),
    ({"IMAGINEER_REDIS_CA_CERT": "/nonexistent/ca.pem"}, "redis.ca_cert: /nonexistent/ca.pem"),
    ({"IMAGINEER_REDIS_KEY_PREFIX": "app one:"}, "redis.key_prefix: 'app one:' has blanks or glob"),
    ({"IMAGINEER_REDIS_KEY_PREFIX": "app*:"}, "redis.key_prefix: 'app\\*:' has blanks or glob"),
    ({"IMAGINEER_MAX_DELIVERIES": "0"}, "max_deliveries .*below the minimum 1"),
    ({"IMAGINEER_DEAD_LETTER_MAX_LENGTH": "0"}, "dead_letter_max_length .*below the minimum 1"),
    ({"IMAGINEER_BEAT_LOCK_TIMEOUT": "1"}, r"beat.lock_timeout \(environment IMAGINEER_BEAT_LOCK_TIMEOUT\).*minimum 2"),
])
def test_invalid_values_name_their_key(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


@pytest.mark.parametrize(("text", "message"), [
    ("purge_training_hour: [3\n", "malformed YAML in IMAGINEER_CONFIG=.* at line 2"),
    ("- a\n- b\n", "must hold a mapping"),
    ("purge_training_huor: 3\n", "unknown key purge_training_huor"),
    ("scraping:\n  max_redirect: 3\n", "unknown key scraping.max_redirect"),
    ("purge_training_hour: 24\n", r"purge_training_hour \(.*config.yaml\): 24 is above"),
    ("maintenance_queue: gpu\n", "maintenance_queue .*'gpu' is not one of"),
    ("disk_sample_hours: 1.5\n", "disk_sample_hours .*1.5 is not a valid int"),
])
def test_invalid_files_name_their_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings({"IMAGINEER_CONFIG": str(path)})


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "celery", "-A", "imagineer_worker.celery_app", "worker"],
    [sys.executable, "-m", "celery", "-A", "imagineer_worker.celery_app", "beat"],
    [sys.executable, "-m", "imagineer_worker.cli", "config"],
])
def test_start_up_with_a_bad_value_prints_one_line_and_no_traceback(command):
    env = {"PATH": "/usr/bin:/bin", "IMAGINEER_PURGE_TRAINING_HOUR": "25"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "IMAGINEER_PURGE_TRAINING_HOUR" in proc.stderr and "25 is above the maximum 23" in proc.stderr


def _swap(path: Path, text: str) -> None:
    """Replace the file the way the kubelet updates a ConfigMap: new target + atomic symlink swap."""
    target = path.parent / f"..data-{time.monotonic_ns()}"
    target.write_text(text)
    tmp = path.parent / "config.tmp"
    tmp.symlink_to(target)
    tmp.replace(path)


def test_watcher_applies_a_valid_change_and_keeps_the_last_good_on_an_invalid_one(tmp_path, monkeypatch, caplog):
    path = tmp_path / "config.yaml"
    _swap(path, "purge_training_hour: 3\n")
    monkeypatch.setenv("IMAGINEER_CONFIG", str(path))
    config.set_settings(load_settings())
    watcher = ConfigWatcher(path)
    try:
        assert watcher.check() is False  # unchanged
        _swap(path, "purge_training_hour: 5\n")
        caplog.set_level("INFO")
        assert watcher.check() is True
        assert config.get_settings().purge_training_hour == 5
        applied = [r for r in caplog.records if getattr(r, "operation", None) == "config_reload"]
        assert applied[-1].changes == {"purge_training_hour": {"old": "3", "new": "5"}}

        _swap(path, "purge_training_hour: 99\n")
        assert watcher.check() is False
        assert config.get_settings().purge_training_hour == 5
        rejected = [r for r in caplog.records if getattr(r, "status", None) == "rejected"]
        assert rejected and "purge_training_hour" in rejected[-1].getMessage()
    finally:
        config.set_settings(None)


def test_running_worker_reloads_its_mounted_config(tmp_path, workers):
    path = tmp_path / "config.yaml"
    _swap(path, "scraping:\n  max_redirects: 5\n")
    w = workers("default", env={"IMAGINEER_CONFIG": str(path), "IMAGINEER_CONFIG_RELOAD_SECONDS": "0.2"})

    def reloads() -> list[dict]:
        lines = [json.loads(line) for line in w.log().splitlines() if line.startswith("{")]
        return [e for e in lines if e.get("operation") == "config_reload" and e.get("status")]

    _swap(path, "scraping:\n  max_redirects: 2\n")
    wait_for(lambda: len(reloads()) >= 1, 15, "the reload to be logged")
    _swap(path, "scraping:\n  max_redirects: nope\n")
    wait_for(lambda: len(reloads()) >= 2, 15, "the rejected reload to be logged")
    applied, rejected = reloads()[:2]
    assert applied["status"] == "applied"
    assert applied["changes"] == {"scraping.max_redirects": {"old": "5", "new": "2"}}
    assert rejected["status"] == "rejected" and rejected["level"] == "ERROR"
    assert "scraping.max_redirects" in rejected["message"]
    assert w.proc.poll() is None
