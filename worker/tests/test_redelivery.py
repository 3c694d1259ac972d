"""The redelivery cap: a task that kills its worker process on every try ends dead-lettered, not looping."""

from __future__ import annotations

import json
import uuid

import kombu
import pytest

from imagineer_worker.redelivery import DELIVERIES_KEY, DeliveryLimitExceeded
from imagineer_worker.testing.services import wait_for
from tests.test_transport import _dead, _log_events

SLOW = ["--include=tests.support.slow_tasks"]


@pytest.mark.parametrize("cap", [1, 3])
def test_a_task_that_kills_its_child_every_time_fails_at_the_cap(workers, celery_app, redis_server, cap):
    client = redis_server.client()
    w = workers("default", env={"IMAGINEER_MAX_DELIVERIES": str(cap)}, extra_args=SLOW)
    doomed = celery_app.send_task("tests.die", queue="default")
    with pytest.raises(DeliveryLimitExceeded, match=rf"delivered {cap + 1} times \(max_deliveries={cap}\)"):
        doomed.get(timeout=120)
    assert int(client.get(f"tests:runs:{doomed.id}")) == cap  # it ran exactly `cap` times

    [kept] = [json.loads(raw) for raw in _dead(redis_server)]  # the message, as it sat in the queue
    assert kept["headers"]["id"] == doomed.id and kept["headers"]["task"] == "tests.die"
    [event] = _log_events(w, "redelivery_cap")
    assert (event["task_id"], event["deliveries"], event["queue"]) == (doomed.id, cap + 1, "default")
    assert client.get(DELIVERIES_KEY.format(id=doomed.id)) is None  # a replay after a fix counts afresh

    # the worker survived every kill and runs the next task
    assert celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="default").get(timeout=60) == "done"
    assert w.proc.poll() is None


def test_a_replayed_dead_letter_runs_again_with_a_fresh_count(workers, celery_app, redis_server):
    client = redis_server.client()
    workers("default", env={"IMAGINEER_MAX_DELIVERIES": "1"}, extra_args=SLOW)
    doomed = celery_app.send_task("tests.die", queue="default")
    with pytest.raises(DeliveryLimitExceeded):
        doomed.get(timeout=120)
    client.lmove("default.dead", "default", "LEFT", "LEFT")  # the documented replay
    wait_for(lambda: int(client.get(f"tests:runs:{doomed.id}") or 0) == 2, 60, "the replayed task to run again")
    wait_for(lambda: client.llen("default.dead") == 1, 60, "the replay to be dead-lettered again")


# body -> the exception its task fails with (stock Celery 5.7 acknowledged a non-mapping kwargs with
# no result at all: the client waited on PENDING forever)
MALFORMED_ARGUMENTS = {
    "kwargs a list": ([[], [1], {}], "keyword arguments must be a JSON object, got list"),
    "kwargs a string": ([[], "seconds=0", {}], "keyword arguments must be a JSON object, got str"),
    "kwargs null": ([[], None, {}], "keyword arguments must be a JSON object, got NoneType"),
    "args a number": ([5, {}, {}], "argument after \\* must be an iterable"),
    "an unknown keyword": ([[], {"no_such": 1}, {}], "unexpected keyword argument 'no_such'"),
}


def test_arguments_no_task_can_take_fail_with_type_error_once(workers, celery_app, redis_server):
    w = workers("default", extra_args=SLOW)
    ids = {}
    with kombu.Connection(redis_server.url) as conn:
        producer = conn.Producer()
        for name, (body, _) in MALFORMED_ARGUMENTS.items():
            ids[name] = str(uuid.uuid4())
            producer.publish(body, routing_key="default", serializer="json",
                             headers={"task": "tests.sleep", "lang": "py", "id": ids[name]})
    assert celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="default").get(timeout=60) == "done"
    for name, (_, message) in MALFORMED_ARGUMENTS.items():
        with pytest.raises(TypeError, match=message):
            celery_app.AsyncResult(ids[name]).get(timeout=30)
    assert redis_server.client().llen("default") == 0 and _dead(redis_server) == []  # acknowledged, never requeued
    assert {e["task_id"] for e in _log_events(w, "malformed_arguments")} == {ids[n] for n in ids if "kwargs" in n}
    assert w.proc.poll() is None
