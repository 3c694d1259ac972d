"""The worker process itself: start-up, routing, time limits, concurrency rule, health files."""

from __future__ import annotations

import json
import time

import pytest
from celery.result import AsyncResult

from imagineer_worker import health
from imagineer_worker.testing.services import CeleryProcess, RedisServer, wait_for

SLOW = ["--include=tests.support.slow_tasks"]


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _decisions(w: CeleryProcess) -> list[dict]:
    """The worker's concurrency decision, logged by the worker_ready signal (the event loop runs)."""
    return [e for e in _json_lines(w.log()) if e.get("operation") == "concurrency"]


def _wait_started(w: CeleryProcess) -> list[dict]:
    """worker_ready may come a moment after the ready file (written when the consumer starts)."""
    wait_for(lambda: _decisions(w), 10, "the worker_ready log line")
    return _decisions(w)


def test_soft_limit_raises_in_task_and_hard_limit_kills_child_but_worker_survives(workers, celery_app):
    limits = {"IMAGINEER_TASK_SOFT_TIME_LIMIT": "1", "IMAGINEER_TASK_TIME_LIMIT": "3"}
    w = workers("default", concurrency=1, env=limits, extra_args=SLOW)

    soft = celery_app.send_task("tests.sleep", kwargs={"seconds": 2.5}, queue="default")
    assert soft.get(timeout=30) == "soft-limit"

    hard = celery_app.send_task("tests.sleep", kwargs={"seconds": 10, "ignore_soft_limit": True}, queue="default")
    with pytest.raises(Exception, match="TimeLimitExceeded"):
        hard.get(timeout=30, propagate=True)
    assert hard.state == "FAILURE"

    # the pool replaced the killed child: the same worker still runs tasks
    after = celery_app.send_task("tests.sleep", kwargs={"seconds": 0.1}, queue="default")
    assert after.get(timeout=30) == "done"
    assert w.proc.poll() is None


def test_worker_logs_the_concurrency_decision_as_json(workers):
    entry = _wait_started(workers("default", concurrency=64))[0]
    assert entry["configured"] == 64
    assert entry["effective"] == min(64, entry["vcpus"]) < 64
    for key in ("timestamp", "level", "logger", "message", "hostname"):
        assert key in entry


def test_health_files_follow_the_consumer(workers):
    w = workers("default")
    assert health.check("readiness", w.health_dir)[0]
    assert health.check("liveness", w.health_dir)[0]
    w.stop()
    ok, why = health.check("readiness", w.health_dir)
    assert not ok and "missing" in why
    assert not health.check("liveness", w.health_dir)[0]


def test_a_broker_outage_fails_readiness_but_not_liveness(workers, tmp_path):
    """Restarting every pod would not bring Redis back: only readiness reflects the outage."""
    redis = RedisServer(tmp_path / "redis").start()
    w = workers("default", env={"CELERY_BROKER_URL": redis.url, "CELERY_RESULT_BACKEND": redis.url})
    _wait_started(w)  # an outage while the consumer is still starting is retried inside a step
    redis.stop()
    wait_for(lambda: not health.check("readiness", w.health_dir)[0], 30, "readiness to fail")
    time.sleep(1.5)
    ok, why = health.check("liveness", w.health_dir, max_age=1)  # the heartbeat is older than 1 s
    assert ok and "reconnecting" in why
    restarted = RedisServer(tmp_path / "redis", port=redis.port).start()
    try:
        wait_for(lambda: health.check("readiness", w.health_dir)[0], 60, "readiness after the outage")
        assert not (w.health_dir / "reconnecting").exists()
    finally:
        w.stop()
        restarted.stop()


def test_a_worker_only_consumes_its_own_queues(workers, celery_app):
    workers("scraping", name="only-scraping", extra_args=SLOW)
    on_training = celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="training")
    on_scraping = celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="scraping")
    assert on_scraping.get(timeout=30) == "done"
    workers("training", name="only-training", extra_args=SLOW)  # the one that must run it
    assert on_training.get(timeout=30) == "done"
    assert AsyncResult(on_training.id, app=celery_app).worker.startswith("only-training@")


def test_a_worker_registers_only_the_tasks_of_its_queues(workers, celery_app, redis_server):
    workers("default", extra_args=SLOW)
    # a labeling task pushed onto `default` by mistake: the default worker never imported it
    misrouted = celery_app.send_task("imagineer.labeling.label_batch", kwargs={}, queue="default")
    assert celery_app.send_task("imagineer.maintenance.record_disk_usage", queue="default").get(timeout=60)
    wait_for(lambda: redis_server.client().llen("default.dead") == 1, 30, "the misrouted task in default.dead")
    assert json.loads(redis_server.client().lindex("default.dead", 0))["headers"]["id"] == misrouted.id


def test_pickle_messages_are_refused_never_executed(workers, celery_app):
    w = workers("default", extra_args=SLOW)
    evil = celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="default", serializer="pickle")
    ok = celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="default")
    assert ok.get(timeout=30) == "done"
    assert AsyncResult(evil.id, app=celery_app).state == "PENDING"
    assert "application/x-python-serialize" in w.log()


def test_sigterm_lets_the_running_task_finish(workers, celery_app):
    w = workers("default", extra_args=SLOW)
    running = celery_app.send_task("tests.sleep", kwargs={"seconds": 3}, queue="default")
    wait_for(lambda: running.state == "STARTED", 20, "the task to start")
    assert w.stop() == 0  # warm shutdown: the exit waits for the task
    assert running.get(timeout=5) == "done"


def test_a_child_killed_mid_task_requeues_the_task(workers, celery_app):
    import os
    import signal

    w = workers("default", extra_args=SLOW)
    running = celery_app.send_task("tests.sleep", kwargs={"seconds": 2}, queue="default")
    wait_for(lambda: running.state == "STARTED", 20, "the task to start")
    first_pid = running.info["pid"]
    os.kill(first_pid, signal.SIGKILL)  # what the OOM killer does
    # task_reject_on_worker_lost: the message goes back to the queue and runs again to the end
    assert running.get(timeout=60) == "done"
    assert w.log().count(f"[{running.id}] received") == 2, "the task was not delivered a second time"
