"""Scenario 4: a task that allocates past its container's memory limit.

The worker runs inside a memory cgroup of its own with the ``default`` group's limit (512 MiB, the
guide's figure): the kernel mechanism behind ``docker run --memory`` and a pod's
``resources.limits.memory`` (see ``cgroup.py`` and ``tests/README.md``). The task touches 1 GiB, so
the kernel's OOM killer SIGKILLs the prefork child — the worker's main process must survive it. With
``task_reject_on_worker_lost`` the task is requeued and killed again; the redelivery cap
(``IMAGINEER_MAX_DELIVERIES``, 3) ends the loop: the task fails naming the cap and its message goes
to ``default.dead``. A normal task sent afterwards runs.
"""

from __future__ import annotations

import time

import pytest
import redis
from imagineer_worker.testing.services import wait_for

from tests.reliability.cgroup import CgroupCeleryProcess, MemoryCgroup
from tests.reliability.harness import Trial, conduct, executions, json_logs, wait_finished

LIMIT_MIB = 512  # the guide's memory for the default queue
ALLOC_MIB = 1024
MAX_DELIVERIES = 3


@pytest.mark.timeout(900)
def test_a_task_past_its_memory_limit_hits_the_redelivery_cap(scenario, ledger: redis.Redis) -> None:
    name = "4 task past its cgroup memory limit (OOM kill)"
    sc = scenario(name)
    # A real memory cgroup is the point of this scenario: where none can be made (not root, no
    # memory controller) it fails with the reason instead of passing silently.
    MemoryCgroup("imagineer-reliability-probe", LIMIT_MIB << 20).create().remove()

    def trial(i: int) -> Trial:
        s = sc.system(i, env={"IMAGINEER_MAX_DELIVERIES": str(MAX_DELIVERIES)})
        cgroup = MemoryCgroup(f"imagineer-reliability-{int(time.time())}-{i}", LIMIT_MIB << 20).create()

        def body(t: Trial) -> None:
            w = s.worker("default", name="limited", concurrency=2, cls=CgroupCeleryProcess, cgroup=cgroup)
            assert w.proc is not None
            main_pid = w.proc.pid
            t.check(main_pid in cgroup.pids(), "the worker is not in its memory cgroup")
            [hog] = s.send(1, alloc_mb=ALLOC_MIB)
            wait_for(lambda: hog in s.dead_task_ids(["default"]), 300, "the task to reach the redelivery cap")
            runs = executions(ledger, [hog])[hog]
            t.recovery_s = time.time() - runs[0].start if runs else None
            t.check(len(runs) == MAX_DELIVERIES and not any(r.finished for r in runs),
                    f"{len(runs)} execution(s) of the task, expected {MAX_DELIVERIES}, none finished")
            kills = cgroup.oom_kills()
            t.check(kills >= MAX_DELIVERIES, f"the kernel OOM-killed {kills} process(es), expected {MAX_DELIVERIES}")
            result = s.app.AsyncResult(hog)
            t.check(result.state == "FAILURE" and "max_deliveries" in str(result.result),
                    f"the task's state is {result.state} ({result.result!r}), not FAILURE naming the cap")
            capped = [e for e in json_logs(w) if e.get("operation") == "redelivery_cap"]
            t.check(len(capped) == 1, f"{len(capped)} redelivery_cap log lines, expected one")
            lost = [e for e in json_logs(w) if "WorkerLostError" in str(e.get("message", "")) + str(e.get("exception"))]
            t.check(bool(lost), "no WorkerLostError in the worker log: the child was not killed")
            after = s.send(1, seconds=0.2)
            wait_finished(ledger, after, 60, "a normal task after the capped one")
            t.check(w.proc.poll() is None and w.proc.pid == main_pid, "the worker's main process did not survive")

        try:
            return conduct(s, ledger, body, dead=lambda: s.dead_task_ids(["default"]))
        finally:
            cgroup.remove()

    sc.run(trial)
