"""Queue content a worker must survive: poison items, wrong-typed keys, refused messages, a key prefix.

Each end-to-end test pushes the bad content while a real worker runs, then proves the worker still
consumes (a real task sent after it completes) and that nothing looped (the dead-letter list holds
each item exactly once).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import time
import uuid

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from imagineer_worker import transport
from imagineer_worker.celery_app import create_app
from imagineer_worker.config import load_settings
from imagineer_worker.testing.services import wait_for

SLOW = ["--include=tests.support.slow_tasks"]

# Every malformed shape we could think of: not UTF-8, not JSON, JSON that is not a message object,
# objects missing or mistyping each field kombu's virtual Message and the Redis QoS read.
_PROPS = {"delivery_tag": "t", "delivery_info": {"exchange": "", "routing_key": "default"}, "body_encoding": "base64"}
POISON: dict[str, bytes] = {
    "plain text": b"hello, not a message",
    "empty": b"",
    "not utf-8": b"\xff\xfe\x00garbage",
    "json number": b"42",
    "json string": b'"a string"',
    "json null": b"null",
    "json array": b'[1, 2, {"properties": {}}]',
    "empty object": b"{}",
    "truncated json": b'{"body": "eyJ',
    "properties not an object": json.dumps({"body": "", "properties": "x"}).encode(),
    "no delivery tag": json.dumps({"body": "", "properties": {"delivery_info": _PROPS["delivery_info"]}}).encode(),
    "delivery tag not a string": json.dumps({"body": "", "properties": {**_PROPS, "delivery_tag": 7}}).encode(),
    "no delivery info": json.dumps({"body": "", "properties": {"delivery_tag": "t"}}).encode(),
    "no routing key": json.dumps({"body": "", "properties": {**_PROPS, "delivery_info": {"exchange": ""}}}).encode(),
    "headers not an object": json.dumps({"body": "", "headers": [], "properties": _PROPS}).encode(),
    "body not a string": json.dumps({"body": {"a": 1}, "properties": _PROPS}).encode(),
    "body not base64": json.dumps({"body": "!!!not base64!!!", "properties": _PROPS}).encode(),
    "content-type not a string": json.dumps({"body": "", "content-type": 1, "properties": _PROPS}).encode(),
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
}


def _dead(redis_server, queue: str = "default", prefix: str = "") -> list[bytes]:
    return list(reversed(redis_server.client().lrange(f"{prefix}{queue}.dead", 0, -1)))


def _log_events(worker, operation: str) -> list[dict]:
    events = []
    for line in worker.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("operation") == operation:
            events.append(entry)
    return events


@pytest.mark.parametrize("shape", sorted(POISON))
def test_each_malformed_shape_is_named(shape):
    assert transport.message_problem(POISON[shape])


def test_a_real_message_passes_the_screen(celery_app, redis_server):
    queue = f"screen-{uuid.uuid4().hex[:8]}"
    celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue=queue)
    celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue=queue, priority=6)  # priority sub-list
    raws = [raw for key in (queue, f"{queue}\x06\x166") for raw in redis_server.client().lrange(key, 0, -1)]
    assert len(raws) == 2
    assert [transport.message_problem(raw) for raw in raws] == [None, None]


def test_the_hook_is_on_the_path_kombu_consumes_by(celery_app):
    """Fails when a kombu upgrade consumes another way, or stops using our classes."""
    for url, cls in (("redis://127.0.0.1:1/0", transport.Transport), ("rediss://127.0.0.1:1/0", transport.Transport),
                     ("sentinel://127.0.0.1:1;sentinel://127.0.0.1:2", transport.SentinelTransport)):
        assert kombu.Connection(url).transport_cls and type(kombu.Connection(url).transport) is cls
    # the poller sends the consuming command through _brpop_start and reads it through handlers["BRPOP"]
    assert "channel._brpop_start()" in inspect.getsource(kombu_redis.MultiChannelPoller._register_BRPOP)
    # each delivered message is recorded through qos.append, and restored from kombu's unacked hash
    # in the [payload, exchange, routing_key] format POP_AND_RECORD writes
    assert "self.qos.append(message, message.delivery_tag)" in inspect.getsource(virtual.Channel.basic_consume)
    assert "M, EX, RK = loads(" in inspect.getsource(kombu_redis.QoS.restore_by_tag)
    with celery_app.connection_for_read() as conn:
        channel = conn.default_channel
        assert isinstance(channel, transport.Channel) and isinstance(channel.qos, transport._QoS)
        assert channel.handlers["BRPOP"].__func__ is transport.Channel._brpop_read
        assert (channel.unacked_key, channel.unacked_index_key) == ("unacked", "unacked_index")


@pytest.mark.parametrize("prefix", ["", "app1:"])
def test_a_message_is_recorded_unacked_in_the_same_step_that_pops_it(redis_server, monkeypatch, prefix):
    """A worker killed right after the pop (kombu's BRPOP lost the message there) leaves it restorable."""
    queue, client = f"atomic-{uuid.uuid4().hex[:8]}", redis_server.client()
    options = {"visibility_timeout": 1, "global_keyprefix": prefix}
    with kombu.Connection(redis_server.url, transport_options=options) as conn:
        conn.SimpleQueue(queue).put({"n": 1})
        channel = conn.channel()
        channel.basic_consume(queue, False, lambda message: None, consumer_tag="t")

        def killed(payload, queue):  # what the worker does after the pop never happens
            raise SystemExit("killed between the pop and the consumer")

        monkeypatch.setattr(channel.connection, "_deliver", killed)
        conn.transport.cycle._register_BRPOP(channel)  # how the poller sends the consuming command
        with pytest.raises(SystemExit):
            channel._brpop_read()
        assert client.llen(f"{prefix}{queue}") == 0
        [tag] = client.hkeys(f"{prefix}unacked")
        assert client.zscore(f"{prefix}unacked_index", tag) is not None
        # the restore any worker of the app runs once the visibility timeout has passed
        wait_for(lambda: channel.qos.restore_visible() or client.llen(f"{prefix}{queue}") == 1, 30,
                 "the message back in its queue")
        restored = json.loads(client.lindex(f"{prefix}{queue}", 0))
        assert restored["properties"]["delivery_tag"] == tag.decode()
        assert restored["properties"]["delivery_info"]["redelivered"] is True
        assert client.hlen(f"{prefix}unacked") == 0


def test_a_channel_closes_in_one_go_when_the_reply_in_flight_is_lost(redis_server, monkeypatch):
    """kombu's close stopped halfway when the reply in flight was lost with the connection; Celery's
    next close, after kombu had detached the transport, then stopped the worker with an
    AttributeError (tests/reliability scenario 3)."""
    conn = kombu.Connection(redis_server.url)
    conn.SimpleQueue("close-test").put({"n": 1})
    channel = conn.default_channel
    channel.basic_consume("close-test", False, lambda message: None, consumer_tag="t")
    conn.drain_events(timeout=5)  # delivered, not acknowledged: the close restores it
    assert channel.qos._delivered
    channel._waiting = True
    conn.transport.cycle._register_BRPOP(channel)  # the blocking wait is in flight ...

    def lost(*args, **kwargs):  # ... and its reply is lost with the connection
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(channel.client, "parse_response", lost)
    channel.close()
    assert channel.closed
    assert redis_server.client().llen("close-test") == 1  # restored
    conn.close()


def test_a_consumer_takes_messages_from_every_key_it_consumes(redis_server):
    """Queues and priority sub-lists alike, although the blocking wait covers one key of them."""
    queues = [f"wake-{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    with kombu.Connection(redis_server.url) as conn:
        got = []
        consumers = [conn.SimpleQueue(q) for q in queues]
        for priority, q in ((0, queues[1]), (6, queues[0]), (0, queues[0])):
            conn.Producer().publish({"q": q, "priority": priority}, routing_key=q, priority=priority,
                                    declare=[consumers[queues.index(q)].queue])
        with conn.Consumer([c.queue for c in consumers], callbacks=[lambda body, m: (got.append(body), m.ack())]):
            deadline = time.monotonic() + 10
            while len(got) < 3 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=1)
        assert sorted((b["q"], b["priority"]) for b in got) == sorted(
            [(queues[1], 0), (queues[0], 6), (queues[0], 0)])
        assert redis_server.client().hlen("unacked") == 0


def test_poison_items_are_dead_lettered_once_and_the_worker_keeps_consuming(workers, celery_app, redis_server):
    w = workers("default", extra_args=SLOW)
    client = redis_server.client()
    results = []
    for raw in POISON.values():  # interleaved with real tasks, pushed while the worker runs
        client.lpush("default", raw)
        results.append(celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="default"))
    assert [r.get(timeout=60) for r in results] == ["done"] * len(POISON)
    wait_for(lambda: len(_dead(redis_server)) == len(POISON), 30, "every poison item in default.dead")
    assert sorted(_dead(redis_server)) == sorted(POISON.values())  # byte for byte, each once
    events = _log_events(w, "dead_letter")
    assert len(events) == len(POISON)
    assert {e["queue"] for e in events} == {"default"} and all(e["dead_letter_list"] == "default.dead" for e in events)
    assert {e["size"] for e in events} == {len(raw) for raw in POISON.values()}
    assert client.llen("default") == 0 and w.proc.poll() is None


def test_the_dead_letter_list_is_bounded(workers, celery_app, redis_server):
    workers("default", env={"IMAGINEER_DEAD_LETTER_MAX_LENGTH": "3"}, extra_args=SLOW)
    for i in range(5):
        redis_server.client().lpush("default", f"junk {i}".encode())
    celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="default").get(timeout=60)
    assert _dead(redis_server) == [b"junk 2", b"junk 3", b"junk 4"]  # the newest three, oldest first


def test_wrong_typed_queue_key_sets_only_that_queue_aside_until_fixed(workers, celery_app, redis_server):
    client = redis_server.client()
    w = workers("default,labeling", extra_args=SLOW)
    client.hset("labeling", "not", "a list")  # while the worker runs
    first = celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="default")
    assert first.get(timeout=60) == "done"
    wait_for(lambda: _log_events(w, "queue_key_type"), 30, "the wrong-type log line")
    [event] = _log_events(w, "queue_key_type")
    fields = (event["key"], event["type"], event["queue"], event["status"])
    assert fields == ("labeling", "hash", "labeling", "set_aside")
    assert "DEL or RENAME" in event["message"]
    for _ in range(3):  # still consuming its other queue, and the line is not repeated
        assert celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="default").get(timeout=60) == "done"
    assert len(_log_events(w, "queue_key_type")) == 1

    client.delete("labeling")  # the fix: the worker resumes by itself
    late = celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="labeling")
    assert late.get(timeout=transport.RECHECK_SECONDS + 60) == "done"
    assert [e["status"] for e in _log_events(w, "queue_key_type")] == ["set_aside", "resumed"]
    assert w.proc.poll() is None


def test_a_worker_starts_although_one_of_its_queue_keys_has_the_wrong_type(workers, celery_app, redis_server):
    redis_server.client().set("labeling", "a string")
    w = workers("default,labeling", extra_args=SLOW)  # ready: it did not exit at start-up
    assert celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="default").get(timeout=60) == "done"
    wait_for(lambda: _log_events(w, "queue_key_type"), 30, "the wrong-type log line")
    assert _log_events(w, "queue_key_type")[0]["type"] == "string"


def test_messages_celery_refuses_are_kept_in_the_dead_letter_list(workers, celery_app, redis_server):
    w = workers("default", extra_args=SLOW)
    unknown = celery_app.send_task("tests.no_such_task", queue="default")
    with kombu.Connection(redis_server.url) as conn:
        producer = conn.Producer()
        headers = {"task": "tests.sleep", "lang": "py"}
        # pickle: a remote-code-execution vector, never run
        producer.publish({"seconds": 0}, routing_key="default", serializer="pickle",
                         headers={**headers, "id": str(uuid.uuid4())})
        # bodies Celery cannot build a request from (stock Celery 5.7 exits with "Unrecoverable error")
        producer.publish("just a string", routing_key="default", serializer="json",
                         headers={**headers, "id": str(uuid.uuid4())})
        producer.publish([[], {}, {}], routing_key="default", serializer="json", headers=headers)  # no id
        # an embed that is not an object: stock Celery ran the task, then its pool callback raised
        # and the task stayed PENDING for good
        for embed in (5, None):
            producer.publish([[], {"seconds": 0}, embed], routing_key="default", serializer="json",
                             headers={**headers, "id": str(uuid.uuid4())})
    after = celery_app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="default")
    assert after.get(timeout=60) == "done"
    wait_for(lambda: len(_dead(redis_server)) == 6, 30, "every refused message in default.dead")
    kept = [json.loads(raw) for raw in _dead(redis_server)]
    assert kept[0]["headers"]["id"] == unknown.id
    assert kept[1]["content-type"] == "application/x-python-serialize"
    reasons = [e["reason"] for e in _log_events(w, "dead_letter")]
    assert "not registered" in reasons[0] and "ContentDisallowed" in reasons[1]
    assert "malformed task message" in reasons[2] and "malformed task message" in reasons[3]
    assert ["(embed) is not an object" in r for r in reasons[4:]] == [True, True]
    assert w.proc.poll() is None


def test_key_prefix_covers_every_key_the_worker_writes(workers, redis_server):
    prefix = "shared-app1:"
    env = {"IMAGINEER_REDIS_KEY_PREFIX": prefix}
    app = create_app(load_settings(environ={**_base_env(), **env}))
    client = redis_server.client()
    w = workers("default", env=env, extra_args=SLOW)
    client.lpush(f"{prefix}default", b"junk")
    assert app.send_task("tests.sleep", kwargs={"seconds": 0}, queue="default").get(timeout=60) == "done"
    assert app.send_task("imagineer.maintenance.record_disk_usage", queue="default").get(timeout=60)
    wait_for(lambda: _dead(redis_server, prefix=prefix) == [b"junk"], 30, "the poison item in the prefixed dead list")
    keys = [k.decode() for k in client.keys("*")]
    assert keys and all(k.startswith(prefix) for k in keys), sorted(keys)
    assert w.proc.poll() is None


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k.startswith(("CELERY_", "IMAGINEER_"))}


class _Info:
    def __init__(self, version: str | None) -> None:
        self.version = version

    def info(self, section: str) -> dict[str, str]:
        if self.version is None:
            raise redis.exceptions.ResponseError("NOPERM this user has no permissions to run the 'info' command")
        return {"redis_version": self.version}


@pytest.mark.parametrize(("version", "refused"), [
    ("6.0.16", True), ("5.0.7", True), ("6.2.0", False), ("7.0.15", False), ("7.4.2", False), (None, False)])
def test_a_broker_older_than_redis_6_2_is_named_at_start_up(version, refused):
    """BLMOVE (the wait) needs Redis 6.2; an older broker stops the worker with one clear line.
    A service that refuses INFO is not held against the broker."""
    if refused:
        with pytest.raises(RuntimeError, match=rf"the broker runs Redis {version}; imagineer workers need Redis 6.2"):
            transport.require_redis(_Info(version))
    else:
        transport.require_redis(_Info(version))


def test_the_real_broker_reports_its_version(redis_server):
    assert transport.redis_version(redis_server.client()) >= transport.MIN_REDIS
