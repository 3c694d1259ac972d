"""Render-and-run: the chart's pod specs, executed as containers from the built images.

The chart tests prove what the manifests *say*; these prove that what they say *works*: each
rendered Deployment runs as ``docker run`` with exactly its command, args, env, security context,
limits and volumes (``pods.plan``), against a real Redis on loopback, and the tests drive it the
way production does (tasks through the broker, probes through ``docker exec``, SIGTERM via
``docker stop``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from imagineer_worker.tasks.maintenance import DISK_USAGE_LAST_RUN
from imagineer_worker.testing.fixture_site import FixtureSite

from tests.run.fleet import Fleet, docker, exec_in, logs, run_values

APP = "imagineer_worker.celery_app"
DISK_USAGE = "imagineer.maintenance.record_disk_usage"
LIVENESS_MAX_AGE = 15  # rendered into the probe; above the worker's 10 s heartbeat


def inspect_json(container: str, command: str) -> dict[str, Any]:
    """The guide's ``celery -A <app> inspect <command>``, run inside the worker container."""
    proc = exec_in(container, "celery", "-A", APP, "inspect", command, "--json", "--timeout", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def probe(fleet: Fleet, component: str, kind: str) -> tuple[int, str]:
    """Run the rendered exec probe as the kubelet does: ``docker exec`` with the rendered command."""
    proc = exec_in(fleet.pods[component].name, *fleet.pods[component].probes[kind], timeout=30)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def wait_probe(fleet: Fleet, component: str, kind: str, want_ok: bool, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        rc, out = probe(fleet, component, kind)
        if (rc == 0) == want_ok:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"{kind} probe still rc={rc} after {timeout:.0f}s: {out}")
        time.sleep(1)


# --- staging: the guide's single preview worker ---------------------------------------------------


@pytest.fixture(scope="class")
def staging(fleet_factory: Callable[..., Fleet]) -> Fleet:
    values = run_values(workerDefaults={"livenessProbe": {"maxAgeSeconds": LIVENESS_MAX_AGE}})
    fleet = fleet_factory("staging", values)
    assert set(fleet.pods) == {"preview", "beat"}, "staging renders the preview worker and beat only"
    fleet.wait_ready("preview")
    return fleet


class TestStaging:
    def test_preview_consumes_exactly_default_scraping_labeling(self, staging: Fleet) -> None:
        """One container serves the three light queues; a training task waits for a consumer."""
        node = staging.hostname("preview")
        active = inspect_json(staging.pods["preview"].name, "active_queues")
        assert set(active) == {node}
        assert {q["name"] for q in active[node]} == {"default", "scraping", "labeling"}

        app = staging.app()
        stranded = app.send_task(DISK_USAGE, queue="training")
        ran = [app.send_task(DISK_USAGE, queue=q) for q in ("default", "scraping", "labeling")]
        for result in ran:
            result.get(timeout=60)
            assert result.worker == node
        time.sleep(1)
        assert app.AsyncResult(stranded.id).state == "PENDING"
        assert staging.redis.client().llen(f"{staging.key_prefix}training") == 1
        assert staging.key_prefix == "imagineer:"  # values-staging.yaml: a Redis shared with other applications

    def test_guide_troubleshooting_commands_list_the_worker(self, staging: Fleet) -> None:
        """``celery -A <app> inspect active`` and ``inspect stats`` work inside the container."""
        node, name = staging.hostname("preview"), staging.pods["preview"].name
        assert set(inspect_json(name, "active")) == {node}
        stats = inspect_json(name, "stats")
        assert set(stats) == {node}
        # staging's concurrency 2, capped by the worker at the container's vCPUs (--cpus 2 here)
        assert stats[node]["pool"]["max-concurrency"] == min(2, os.cpu_count() or 1)

    def test_probes_follow_the_worker(self, staging: Fleet) -> None:
        """Both probes pass when healthy; liveness fails when the main loop hangs, readiness
        fails when the consumer loses the broker, and both recover without a restart.

        A hung worker is simulated with SIGSTOP to PID 1 (celery's main process, sent from the
        host so the PID-namespace init protection does not apply): the heartbeat file goes stale
        while the ``ready`` file stays, which is the case liveness exists for. The rendered
        ``--max-age`` is set to 15 s through ``workerDefaults.livenessProbe.maxAgeSeconds``.
        """
        name = staging.pods["preview"].name
        assert probe(staging, "preview", "readiness")[0] == 0
        assert probe(staging, "preview", "liveness")[0] == 0

        docker("kill", "-s", "STOP", name, check=True)
        try:
            out = wait_probe(staging, "preview", "liveness", want_ok=False, timeout=LIVENESS_MAX_AGE + 25)
            assert "stuck" in out
            assert probe(staging, "preview", "readiness")[0] == 0  # still consuming: no flapping
        finally:
            docker("kill", "-s", "CONT", name, check=True)
        wait_probe(staging, "preview", "liveness", want_ok=True, timeout=20)

        staging.redis.stop()
        out = wait_probe(staging, "preview", "readiness", want_ok=False, timeout=30)
        assert "missing" in out
        rc, out = probe(staging, "preview", "liveness")  # a broker outage must not restart the fleet
        assert rc == 0 and "reconnecting" in out, out
        staging.redis.start()  # the same port and data: the fleet is whole again for any later test
        wait_probe(staging, "preview", "readiness", want_ok=True, timeout=60)


# --- prod: the dedicated beat, and a warm shutdown ------------------------------------------------
# The four groups consuming exactly their queues and the scrape -> label -> disk usage -> training
# pipeline run in the smoke test, through real pods on a real cluster (tests/smoke, step 6); here
# what a single container shows best: beat's schedule and SIGTERM in the middle of a task.


def _prod(fleet_factory: Callable[..., Fleet], components: set[str]) -> Fleet:
    # values-prod.yaml reads the broker URL from an external Secret with a CA; here the chart's
    # own Secret carries the loopback URL instead (plain redis://, no CA).
    values = run_values(broker={"existingSecret": "", "caSecret": ""}, config={"diskSampleMinutes": 1})
    values["config"]["file"]["scraping"]["domain_interval_seconds"] = 0
    fleet = fleet_factory("prod", values, components=components)
    for component in components - {"beat"}:
        fleet.wait_ready(component)
    return fleet


@pytest.fixture(scope="class")
def prod(fleet_factory: Callable[..., Fleet]) -> Fleet:
    return _prod(fleet_factory, {"default", "beat"})


class TestProd:
    def test_beat_schedules_record_disk_usage_and_the_default_worker_runs_it(self, prod: Fleet) -> None:
        """The beat container (no data volume, read-only root) sends ``record_disk_usage`` on the
        rendered schedule, here ``config.diskSampleMinutes: 1`` (every minute, on the minute), and
        the default container, which consumes the maintenance queue, runs it."""
        beat, default = prod.pods["beat"].name, prod.pods["default"].name
        client = prod.redis.client()
        client.delete(DISK_USAGE_LAST_RUN)  # earlier tests ran the task by hand
        sent = f"Sending due task record-disk-usage ({DISK_USAGE})"
        deadline = time.monotonic() + 90  # the next minute boundary, plus start-up
        while time.monotonic() < deadline and not (
                sent in logs(beat, tail=200) and client.get(DISK_USAGE_LAST_RUN) is not None):
            time.sleep(1)
        beat_log = logs(beat, tail=200)
        assert sent in beat_log, beat_log
        assert client.get(DISK_USAGE_LAST_RUN) is not None, logs(default, tail=100)
        assert "Traceback" not in beat_log and '"level": "ERROR"' not in beat_log, beat_log
        assert f"{DISK_USAGE}[" in logs(default, tail=400)
        samples = (prod.data_dir / "metrics" / "disk_usage.jsonl").read_text().splitlines()
        assert json.loads(samples[-1])["data_dir"] == "/data"

    def test_docker_stop_during_a_task_is_a_warm_shutdown(self, fleet_factory: Callable[..., Fleet],
                                                          fixture_site: FixtureSite) -> None:
        """SIGTERM (``docker stop``, waiting the rendered terminationGracePeriodSeconds) lets the
        running task finish before the worker exits 0. A scraping container of its own: it stops it."""
        prod = _prod(fleet_factory, {"scraping"})
        app = prod.app()
        result = app.send_task("imagineer.scraping.scrape_dataset",
                               kwargs={"dataset_id": "slow", "urls": [f"{fixture_site.base_url}/slow.png?s=4"]})
        deadline = time.monotonic() + 30
        while result.state == "PENDING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert result.state in ("STARTED", "PROGRESS"), result.state  # running, not yet done
        name = prod.pods["scraping"].name
        stopping = time.monotonic()
        docker("stop", name, timeout=120, check=True)
        assert time.monotonic() - stopping > 1, "docker stop returned at once: the task cannot have run on"
        assert result.state == "SUCCESS", result.result
        assert result.result["images"] == 1 and result.worker == prod.hostname("scraping")
        assert docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0", logs(name)
