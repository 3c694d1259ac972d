"""Scenario 1: ``kill -9`` mid-task — of one prefork child, and of the whole worker.

With late acks and ``task_reject_on_worker_lost`` a task whose child is killed goes back to the
queue at once and runs again; a task whose whole worker is killed stays in kombu's ``unacked``
hash until the visibility timeout has passed and a worker's restore sweep puts it back. Either way
it must complete exactly once, and never run in two places at the same time.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from imagineer_worker.testing.services import wait_for

from tests.reliability.harness import (
    REDELIVERY_BOUND,
    Trial,
    conduct,
    executions,
    pid_alive,
    running_execution,
    wait_finished,
    worker_children,
)


@pytest.mark.timeout(600)
def test_kill_9_of_a_prefork_child_mid_task(scenario, ledger: redis.Redis) -> None:
    sc = scenario("1 kill -9 prefork child mid-task")

    def trial(i: int) -> Trial:
        s = sc.system(i)

        def body(t: Trial) -> None:
            w = s.worker("default", concurrency=2)
            ids = s.send(4, seconds=3)
            wait_for(lambda: all(running_execution(ledger, x) for x in ids[:2]), 60, "two tasks to start")
            victim = ids[0]
            child = running_execution(ledger, victim)
            assert child is not None
            os.kill(child.pid, signal.SIGKILL)  # what the OOM killer does to one child
            killed_at = time.time()
            wait_finished(ledger, ids, 120, "every task, the killed one redelivered")
            runs = executions(ledger, [victim])[victim]
            t.recovery_s = max(r.last for r in runs if r.finished) - killed_at
            t.check(len(runs) == 2 and not runs[0].finished,
                    f"the killed task ran {len(runs)} time(s), expected the killed run plus one redelivery")
            t.check(w.proc is not None and w.proc.poll() is None, "the worker's main process died with its child")

        return conduct(s, ledger, body)

    sc.run(trial)


@pytest.mark.timeout(900)
def test_kill_9_of_the_whole_worker_then_a_new_worker(scenario, ledger: redis.Redis) -> None:
    sc = scenario("1 kill -9 worker main process mid-task, new worker")

    def trial(i: int) -> Trial:
        s = sc.system(i)

        def body(t: Trial) -> None:
            old = s.worker("default", name="old", concurrency=2)
            ids = s.send(6, seconds=3)
            wait_for(lambda: all(running_execution(ledger, x) for x in ids[:2]), 60, "two tasks to start")
            assert old.proc is not None
            children = worker_children(old.proc.pid)
            os.kill(old.proc.pid, signal.SIGKILL)  # the main process only, as `kill -9 <pid>`
            killed_at = time.time()
            old.proc.wait(30)
            # billiard's children exit when their parent is gone; an orphan would finish its task
            # while the redelivered copy runs again
            try:
                wait_for(lambda: not any(pid_alive(c) for c in children), 30, "the orphaned pool children to exit")
            except TimeoutError:
                t.problems.append(f"pool children {children} outlived their killed main process")
                s.kill_group(old)
            s.worker("default", name="new", concurrency=2)  # the Deployment's replacement pod
            wait_finished(ledger, ids, REDELIVERY_BOUND, "the new worker to run every task, the killed ones again")
            ends = [r.last for x in ids[:2] for r in executions(ledger, [x])[x] if r.finished]
            t.recovery_s = max(ends) - killed_at

        return conduct(s, ledger, body)

    sc.run(trial)
