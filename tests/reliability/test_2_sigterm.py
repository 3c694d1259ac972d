"""Scenario 2: SIGTERM mid-task, as a rollout sends it: the running tasks finish inside the grace period.

The grace period is the chart's own: the worker Deployments' ``terminationGracePeriodSeconds``
rendered by ``helm template`` with the test-sized time limits (by default the hard limit plus
``celery.shutdownMarginSeconds``; without helm, that rule read from values.yaml). The old worker must
finish what it runs, exit 0 within the grace period, and never leave a task to be run a second time;
the new pod (started at the same moment, as a rolling update does) takes the queued tasks.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
import yaml
from imagineer_worker.testing.services import wait_for

from tests.reliability.harness import (
    CHART,
    HARD_LIMIT,
    SOFT_LIMIT,
    Trial,
    chart_grace_period,
    conduct,
    executions,
    row,
    running_execution,
    wait_finished,
)


def test_the_grace_period_is_the_charts() -> None:
    """What helm renders is the documented default: hard limit + shutdown margin."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    grace, _ = chart_grace_period()
    assert values["workerDefaults"]["terminationGracePeriodSeconds"] is None
    assert grace == HARD_LIMIT + values["celery"]["shutdownMarginSeconds"] > HARD_LIMIT


@pytest.mark.timeout(600)
def test_sigterm_mid_task_finishes_within_the_grace_period(scenario, ledger: redis.Redis) -> None:
    name = "2 SIGTERM mid-task (rollout)"
    sc = scenario(name)
    grace, source = chart_grace_period()
    row(name).notes.append(f"grace period {grace}s ({source})")

    def trial(i: int) -> Trial:
        s = sc.system(i)

        def body(t: Trial) -> None:
            old = s.worker("default", name="old", concurrency=2)
            running = s.send(2, seconds=SOFT_LIMIT - 3)  # long, but inside the soft limit
            queued = s.send(4, seconds=0.5)
            wait_for(lambda: all(running_execution(ledger, x) for x in running), 60, "two tasks to start")
            assert old.proc is not None
            old.proc.send_signal(signal.SIGTERM)
            signalled = time.time()
            s.worker("default", name="new", concurrency=2, wait=False)  # the rolling update's new pod
            try:
                rc = old.proc.wait(grace)
            except subprocess.TimeoutExpired:
                t.problems.append(f"the worker did not exit within the {grace}s grace period")
                s.kill_group(old)
                return
            exited = time.time() - signalled
            t.recovery_s = exited
            t.check(rc == 0, f"warm shutdown exited {rc}, not 0")
            t.check(exited <= grace, f"warm shutdown took {exited:.1f}s > grace {grace}s")
            for x in running:
                runs = executions(ledger, [x])[x]
                t.check(len(runs) == 1 and runs[0].finished and runs[0].host.startswith("old@"),
                        f"task {x} running at SIGTERM: {len(runs)} run(s), not one finished by the old worker")
            wait_finished(ledger, running + queued, 120, "the new worker to take the queued tasks")
            log = Path(old.log_path).read_text(errors="replace")
            t.check("Warm shutdown" in log, "the old worker's log shows no warm shutdown")

        return conduct(s, ledger, body)

    sc.run(trial)
