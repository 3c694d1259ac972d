"""Scenario 5: poison in the queues — raw items that are not Celery messages, keys of the wrong type.

Every shape below is pushed straight into the ``default`` list (as a buggy producer or another
application sharing the database would), each followed by a valid task. The documented outcome:
each poison item lands in ``default.dead`` exactly once — byte for byte when it never was a kombu
message, as the same JSON when it was a kombu message that Celery refuses — with one
``operation=dead_letter`` log line, and every valid task completes once. Queue keys of another
Redis type (a string, hash, set or sorted set, one of them a priority sub-queue key) make the worker
log one ``operation=queue_key_type`` line per key and set those queues aside while it serves
``default``; once the keys are deleted it resumes them by itself. The same runs again with
``IMAGINEER_REDIS_KEY_PREFIX`` set, where every key is ``<prefix><name>``.
"""

from __future__ import annotations

import base64
import json
import pickle
import time
import uuid
from typing import Any

import pytest
import redis
from imagineer_worker.testing.services import wait_for

from tests.reliability.harness import (
    Supervisor,
    System,
    Trial,
    conduct,
    first_finish_after,
    json_logs,
    wait_finished,
)

PRIORITY_SEP = "\x06\x16"  # kombu's separator of priority sub-queues: "<queue>\x06\x16<priority>"
WRONG_TYPES = ("string", "hash", "set", "zset")
WRONG_KEYS = ("labeling", "scraping", f"training{PRIORITY_SEP}3")


def _template(s: System, prefix: str) -> dict[str, Any]:
    """A real task message as kombu stores it, taken back out of ``default`` before any worker runs."""
    s.app.send_task("reliability.work", kwargs={"seconds": 0}, queue="default")
    raw = s.client().rpop(f"{prefix}default")
    assert raw is not None
    return json.loads(raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


RAW, REFUSED, FAILS = "raw", "refused", "fails"  # expected outcomes, see poison_shapes


def poison_shapes(template: dict[str, Any]) -> dict[str, tuple[bytes, str]]:
    """name -> (raw item, expected outcome).

    ``RAW``: not a kombu message, kept in the dead list byte for byte. ``REFUSED``: a kombu
    message Celery refuses (undecodable, disallowed content, unknown format or task, not a task
    message), kept as the same JSON. ``FAILS``: a task message whose arguments the task cannot take:
    FAILURE in the result backend, acknowledged once.
    """

    def variant(change: Any) -> dict[str, Any]:
        m = json.loads(json.dumps(template))
        task_id = str(uuid.uuid4())  # each its own task id, as separate producers' messages would have
        m["headers"]["id"] = m["headers"]["root_id"] = m["properties"]["correlation_id"] = task_id
        m["properties"]["delivery_tag"] = str(uuid.uuid4())
        change(m)
        return m

    def dumps(m: Any) -> bytes:
        return json.dumps(m).encode()

    def drop(path: list[str]) -> Any:
        def change(m: dict[str, Any]) -> None:
            target = m
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
        return change

    def put(path: list[str], value: Any) -> Any:
        def change(m: dict[str, Any]) -> None:
            target = m
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        return change

    whole = dumps(template)
    raw: dict[str, bytes] = {
        "plain text": b"hello, I am not a message",
        "empty item": b"",
        "whitespace": b"  \n\t ",
        "not UTF-8": b"\xff\xfe\xfd\x00 binary",
        "JSON array": b"[1, 2, 3]",
        "JSON string": b'"a string"',
        "JSON number": b"42",
        "JSON null": b"null",
        "JSON true": b"true",
        "empty object": b"{}",
        "object without properties": b'{"body": "eA==", "headers": {}}',
        "truncated message": whole[: len(whole) // 2],
        "deeply nested JSON": b"[" * 100_000 + b"]" * 100_000,
        "1 MiB of garbage": b"x" * (1 << 20),
        "properties not an object": dumps(variant(put(["properties"], "x"))),
        "no delivery_tag": dumps(variant(drop(["properties", "delivery_tag"]))),
        "delivery_tag a number": dumps(variant(put(["properties", "delivery_tag"], 7))),
        "no delivery_info": dumps(variant(drop(["properties", "delivery_info"]))),
        "delivery_info without routing_key": dumps(variant(drop(["properties", "delivery_info", "routing_key"]))),
        "headers a list": dumps(variant(put(["headers"], [1, 2]))),
        "content-type a number": dumps(variant(put(["content-type"], 5))),
        "body a number": dumps(variant(put(["body"], 123))),
        "body not base64": dumps(variant(put(["body"], "!!! not base64 !!!"))),
    }
    refused: dict[str, bytes] = {
        "body not JSON": dumps(variant(put(["body"], _b64(b"not json {")))),
        "pickle body": dumps(variant(lambda m: m.update({"content-type": "application/x-python-serialize",
                                                         "body": _b64(pickle.dumps(([], {}, {})))}))),
        "unknown content type": dumps(variant(put(["content-type"], "application/x-unknown"))),
        "no task header": dumps(variant(put(["headers"], {}))),
        "unregistered task": dumps(variant(put(["headers", "task"], "no.such.task"))),
        "body not an args/kwargs triple": dumps(variant(put(["body"], _b64(b'"just a string"')))),
        "body a pair": dumps(variant(put(["body"], _b64(b'[[], {"seconds": 0}]')))),
        "body of four": dumps(variant(put(["body"], _b64(b'[[], {"seconds": 0}, {}, 1]')))),
        "embed not an object": dumps(variant(put(["body"], _b64(b'[[], {"seconds": 0}, 5]')))),
        "embed null": dumps(variant(put(["body"], _b64(b'[[], {"seconds": 0}, null]')))),
    }
    # A registered task whose arguments it cannot take fails (TypeError), is acknowledged and never
    # retried, like any invalid payload (tasks/base.py): its end state is FAILURE, not the dead list.
    failing: dict[str, bytes] = {
        "args not a list": dumps(variant(put(["body"], _b64(b'[5, {}, {}]')))),
        "kwargs not an object": dumps(variant(put(["body"], _b64(b'[[], [1], {}]')))),
        "kwargs null": dumps(variant(put(["body"], _b64(b'[[], null, {}]')))),
        "unknown keyword argument": dumps(variant(put(["body"], _b64(b'[[], {"no_such_arg": 1}, {}]')))),
    }
    return {**{k: (v, RAW) for k, v in raw.items()}, **{k: (v, REFUSED) for k, v in refused.items()},
            **{k: (v, FAILS) for k, v in failing.items()}}


def _wrong_type(c: redis.Redis, key: str, kind: str) -> None:
    c.delete(key)
    {"string": lambda: c.set(key, "x"), "hash": lambda: c.hset(key, "f", "v"), "set": lambda: c.sadd(key, "m"),
     "zset": lambda: c.zadd(key, {"m": 1})}[kind]()


def _matches(item: bytes, dead: bytes, as_json: bool) -> bool:
    if dead == item:
        return True
    if not as_json:
        return False
    try:
        return bool(json.loads(dead) == json.loads(item))
    except ValueError:
        return False


def _count_dead_letters(t: Trial, s: System, prefix: str, shapes: dict[str, tuple[bytes, str]],
                        label: str) -> None:
    """Each poison item in ``<prefix>default.dead`` exactly once, as it sat in the queue (or, for
    ``FAILS``, a FAILURE result for its task id)."""
    unmatched = [bytes(x) for x in s.client().lrange(f"{prefix}default.dead", 0, -1)]
    for name, (item, outcome) in shapes.items():
        t.sent += 1
        if outcome == FAILS:
            task_id = json.loads(item)["headers"]["id"]
            result = s.app.AsyncResult(task_id)
            if result.state == "FAILURE" and isinstance(result.result, TypeError):
                t.completed += 1
            else:
                t.lost += 1
                t.notes.append(f"{label}: poison {name!r} ended {result.state}, not FAILURE (TypeError)")
            continue
        hit = next((d for d in unmatched if _matches(item, d, outcome == REFUSED)), None)
        if hit is None:
            t.lost += 1
            t.notes.append(f"{label}: poison {name!r} is not in {prefix}default.dead")
            continue
        unmatched.remove(hit)
        t.dead_lettered += 1
    t.check(not unmatched, f"{len(unmatched)} unexpected item(s) in {prefix}default.dead, e.g. {unmatched[:1]!r}"[:300])


def _poison_trial(sc, ledger: redis.Redis, i: int, prefix: str) -> Trial:  # type: ignore[no-untyped-def]
    s = sc.system(i, env={"IMAGINEER_REDIS_KEY_PREFIX": prefix} if prefix else None)
    c = s.client()

    def body(t: Trial) -> None:
        template = _template(s, prefix)
        kinds = WRONG_TYPES[i % 4:] + WRONG_TYPES[:i % 4]
        wrong = {f"{prefix}{key}": kind for key, kind in zip(WRONG_KEYS, kinds, strict=False)}
        for key, kind in wrong.items():
            _wrong_type(c, key, kind)
        w = s.worker("default,labeling,scraping,training", name="w", concurrency=2)
        restart = Supervisor(s, w)  # a worker that exits is restarted (and the crash reported)
        shapes = poison_shapes(template)
        for item, _ in shapes.values():
            c.lpush(f"{prefix}default", item)
            s.send(1, seconds=0.05)
        try:
            wait_finished(ledger, list(s.sent), 180, "every valid task between the poison items", tick=restart)
        finally:
            t.problems.extend(f"the worker crashed on a queue item: {crash}" for crash in restart.crashes)
            _count_dead_letters(t, s, prefix, shapes, f"trial {i}{' (prefix)' if prefix else ''}")
        lines = [e for e in restart.logs() if e.get("operation") == "dead_letter"]
        expected = sum(outcome != FAILS for _, outcome in shapes.values())
        t.check(len(lines) == expected, f"{len(lines)} dead_letter log lines for {expected} dead-lettered items")
        t.check(c.llen(f"{prefix}default") == 0, "items left in the default queue")
        wait_for(lambda: c.hlen(f"{prefix}unacked") == 0, 30, "no message left unacknowledged")
        # the wrong-typed keys: one line each naming key, type and fix; the other queues kept going
        for key, kind in wrong.items():  # one line per key (from each worker process that got that far)
            per_process = [[e for e in json_logs(proc) if e.get("operation") == "queue_key_type"
                            and e.get("status") == "set_aside" and e.get("key") == key] for proc in s.workers]
            about = [e for lines in per_process for e in lines]
            t.check(bool(about) and all(len(lines) <= 1 for lines in per_process)
                    and all(e.get("type") == kind and "DEL" in e.get("message", "") for e in about),
                    f"queue_key_type lines for {key!r} ({kind}): {[len(x) for x in per_process]} per worker "
                    "process, expected one naming the type and the fix")
        fixed = time.time()
        for key in wrong:
            c.delete(key)
        resumed = s.send(1, queue="labeling") + s.send(1, queue="scraping") + s.send(1, queue="training")
        wait_finished(ledger, resumed, 120, "the set-aside queues to be consumed again once their keys are fixed",
                      tick=restart)
        first = first_finish_after(ledger, resumed, fixed)
        t.recovery_s = None if first is None else first - fixed
        t.check(restart.current.proc is not None and restart.current.proc.poll() is None, "the worker exited")

    return conduct(s, ledger, body)


@pytest.mark.timeout(900)
def test_poison_items_and_wrong_typed_queue_keys(scenario, ledger: redis.Redis) -> None:
    sc = scenario("5 poison items + wrong-typed queue keys")
    sc.run(lambda i: _poison_trial(sc, ledger, i, ""))


@pytest.mark.timeout(900)
def test_poison_items_with_a_key_prefix(scenario, ledger: redis.Redis) -> None:
    sc = scenario("5 poison items, IMAGINEER_REDIS_KEY_PREFIX set")
    sc.run(lambda i: _poison_trial(sc, ledger, i, "tenant-a:"))
