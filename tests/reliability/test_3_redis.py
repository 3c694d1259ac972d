"""Scenario 3: the broker restarted mid-run (AOF persistence) and a 30 s broker outage.

Two workers share ``default`` (so a task put back too early could run on both at once) and each
has a queue of its own (``scraping`` / ``labeling``). Nobody restarts them. After Redis is back,
*new* tasks are sent to each worker's own queue: a worker that reconnected and answers pings but no
longer consumes (celery#8030 and its later variants) leaves them waiting and fails the trial. The
tasks that were running when Redis went away must complete exactly once as well.
"""

from __future__ import annotations

import time

import pytest
import redis
from imagineer_worker import health
from imagineer_worker.testing.services import wait_for

from tests.reliability.harness import (
    REDELIVERY_BOUND,
    Trial,
    conduct,
    executions,
    first_finish_after,
    running_execution,
    wait_finished,
)

OUTAGE_SECONDS = 30


def _redis_trial(sc, ledger: redis.Redis, i: int, down: float) -> Trial:  # type: ignore[no-untyped-def]
    s = sc.system(i, aof=True)

    def body(t: Trial) -> None:
        w1 = s.worker("default,scraping", name="w1", concurrency=2)
        w2 = s.worker("default,labeling", name="w2", concurrency=2)
        pids = {w.name: w.proc.pid for w in (w1, w2) if w.proc}
        before = s.send(4, seconds=4) + s.send(4, seconds=0.5)
        wait_for(lambda: sum(bool(running_execution(ledger, x)) for x in before) >= 3, 60, "tasks to start")
        back = s.restart_broker(down)
        only_w1 = s.send(3, seconds=0.2, queue="scraping")
        only_w2 = s.send(3, seconds=0.2, queue="labeling")
        shared = s.send(3, seconds=0.2, queue="default")
        wait_finished(ledger, only_w1 + only_w2 + shared, 180, "both workers to consume new tasks after the restart")
        first = first_finish_after(ledger, s.sent, back)
        t.recovery_s = None if first is None else first - back
        for ids, name in ((only_w1, "w1"), (only_w2, "w2")):
            hosts = {r.host.split("@")[0] for x in ids for r in executions(ledger, [x])[x] if r.finished}
            t.check(hosts == {name}, f"tasks on {name}'s own queue ran on {hosts}")
        wait_finished(ledger, before, REDELIVERY_BOUND, "the tasks running at the restart to complete")
        for w in (w1, w2):
            t.check(w.proc is not None and w.proc.poll() is None and w.proc.pid == pids[w.name],
                    f"{w.name} is not the same running process")
            t.check(health.check("readiness", w.health_dir)[0], f"{w.name} consumes but is not ready")

    return conduct(s, ledger, body)


@pytest.mark.timeout(900)
def test_redis_restarted_mid_run_with_aof(scenario, ledger: redis.Redis) -> None:
    sc = scenario("3 Redis restart mid-run (AOF)")
    sc.run(lambda i: _redis_trial(sc, ledger, i, 0))


@pytest.mark.timeout(900)
def test_a_30_second_redis_outage(scenario, ledger: redis.Redis) -> None:
    sc = scenario(f"3 Redis outage {OUTAGE_SECONDS} s")
    started = time.monotonic()
    sc.run(lambda i: _redis_trial(sc, ledger, i, OUTAGE_SECONDS))
    assert time.monotonic() - started >= OUTAGE_SECONDS
