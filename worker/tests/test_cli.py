"""``imagineer-workers doctor`` and ``submit`` against a real Redis and real workers."""

from __future__ import annotations

import json
import subprocess
import sys

from imagineer_worker.tasks.maintenance import BEAT_STARTED, DISK_USAGE_LAST_RUN
from imagineer_worker.testing.services import wait_for

CLI = [sys.executable, "-m", "imagineer_worker.cli"]
SLOW = ["--include=tests.support.slow_tasks"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _verdicts(stdout: str) -> dict[str, str]:
    return {c["name"]: c["verdict"] for c in json.loads(stdout)}


def test_doctor_names_the_queue_without_consumer_and_the_missing_beat(workers, redis_server):
    workers("default,labeling", name="dl")
    client = redis_server.client()
    for _ in range(30):  # a backlog on a queue nobody consumes: the guide's alert threshold is 25
        client.lpush("scraping", "{}")
    doctor = _run("doctor", "--json", "--timeout", "2")
    assert doctor.returncode == 1
    v = _verdicts(doctor.stdout)
    assert v["broker reachable"] == "PASS"
    assert v["queue default: consumers"] == v["queue labeling: consumers"] == "PASS"
    assert v["queue scraping: consumers"] == v["queue training: consumers"] == "FAIL"
    assert v["queue scraping: length"] == "WARN"
    assert v["prefetch multiplier"] == v["result_expires"] == "PASS"
    assert v["beat: record_disk_usage"] == "FAIL"


def test_doctor_passes_on_a_complete_fleet_after_record_disk_usage(workers, redis_server):
    workers("default,training,scraping,labeling", name="all")
    submit = _run("submit", "maintenance.record_disk_usage", "--wait", "--timeout", "60")
    assert submit.returncode == 0, submit.stderr
    assert redis_server.client().get(DISK_USAGE_LAST_RUN) is not None
    doctor = _run("doctor", "--timeout", "2")
    assert doctor.returncode == 0, doctor.stdout
    assert "FAIL" not in doctor.stdout


def test_doctor_flags_a_stale_beat(workers, redis_server):
    workers("default,training,scraping,labeling", name="all")
    redis_server.client().set(DISK_USAGE_LAST_RUN, "1000")  # 1970: beat has been dead for long
    doctor = _run("doctor", "--json", "--timeout", "2")
    assert doctor.returncode == 1
    assert _verdicts(doctor.stdout)["beat: record_disk_usage"] == "FAIL"


def test_doctor_is_green_on_a_fresh_staging_fleet(workers, redis_server):
    """Staging runs no training (IMAGINEER_EXPECTED_QUEUES, set by the chart) and beat has not had
    its first interval yet: neither is a failure."""
    staging = {"IMAGINEER_EXPECTED_QUEUES": "default,scraping,labeling", "IMAGINEER_DISK_SAMPLE_HOURS": "12"}
    workers("default,scraping,labeling", name="preview")
    workers("default", name="beat", beat=True, env=staging, wait=False)
    client = redis_server.client()
    wait_for(lambda: client.get(BEAT_STARTED) is not None, 60, "beat's start-up record")
    doctor = _run("doctor", "--json", "--timeout", "2", env=staging)
    v = _verdicts(doctor.stdout)
    assert doctor.returncode == 0, doctor.stdout
    assert "queue training: consumers" not in v
    assert v["queue scraping: consumers"] == "PASS"
    assert v["beat: record_disk_usage"] == "PEND"
    # The same fleet, beat started long ago and still no sample: that is a dead beat.
    client.set(BEAT_STARTED, "1000")
    doctor = _run("doctor", "--json", "--timeout", "2", env=staging)
    assert doctor.returncode == 1
    assert _verdicts(doctor.stdout)["beat: record_disk_usage"] == "FAIL"


def test_doctor_runs_only_the_chosen_checks(workers):
    workers("default", name="d")
    doctor = _run("doctor", "--json", "--timeout", "2", "--queues", "default", "--checks", "broker,consumers")
    assert doctor.returncode == 0, doctor.stdout  # beat never ran, but it was not asked for
    assert set(_verdicts(doctor.stdout)) == {"broker reachable", "queue default: consumers"}
    assert _run("doctor", "--checks", "broker,ping").returncode == 2


def test_doctor_names_a_wrong_typed_queue_key_and_dead_letters(redis_server):
    prefix = "app1:"
    client = redis_server.client()
    client.flushdb()
    client.hset(f"{prefix}labeling", "a", "b")
    client.set(f"{prefix}training\x06\x166", "a priority sub-list of the wrong type")
    client.lpush(f"{prefix}default", "queued")
    client.lpush(f"{prefix}default.dead", "one", "two")
    doctor = _run("doctor", "--json", "--queues", "default,training,labeling,scraping", "--checks", "lengths",
                  env={"IMAGINEER_REDIS_KEY_PREFIX": prefix})
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert doctor.returncode == 1
    assert checks["queue labeling: key type"]["verdict"] == "FAIL"
    assert "'app1:labeling' is a Redis hash" in checks["queue labeling: key type"]["detail"]
    assert "DEL or RENAME" in checks["queue labeling: key type"]["fix"]
    assert "is a Redis string" in checks["queue training: key type"]["detail"]
    length = checks["queue default: length"]
    assert (length["verdict"], length["detail"]) == ("PASS", "1 waiting")
    assert checks["queue default: dead letters"]["detail"] == "2 in app1:default.dead"
    assert "LMOVE app1:default.dead app1:default LEFT LEFT" in checks["queue default: dead letters"]["fix"]
    assert checks["queue scraping: length"]["verdict"] == "PASS" and "queue scraping: dead letters" not in checks
    client.flushdb()


def test_doctor_reports_an_unreachable_broker():
    doctor = _run("doctor", "--timeout", "1", env={"CELERY_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert doctor.returncode == 1
    assert doctor.stdout.startswith("FAIL  broker reachable")


def test_submit_reports_a_failed_task_and_exits_non_zero(workers):
    workers("default,scraping", name="ds")
    submit = _run("submit", "scraping.scrape_dataset", "--kwargs", '{"dataset_id": "x"}', "--wait",
                  "--timeout", "60")
    assert submit.returncode == 1
    assert "task failed" in submit.stderr and "InvalidPayload" in submit.stderr


def test_submit_rejects_non_json_arguments():
    submit = _run("submit", "maintenance.record_disk_usage", "--kwargs", "{not json")
    assert submit.returncode == 2 and "JSON object" in submit.stderr
