"""Fixtures: a real ``redis-server`` on loopback, the chart rendered for it, its pods as containers.

``fleet_factory(values_file, values)`` renders the chart (real helm + kubeconform,
``tests/chart/helm.py``) with the Secret pointing at a fresh loopback Redis and starts one container
per rendered Deployment (``pods.plan``) except the exporter, or exactly the given ``components``
(the exporter too when named). Tests then wait for each pod's own startup or readiness probe
(``Fleet.wait_ready``: exec or httpGet), as the kubelet would. Every container is removed at
teardown, whatever the test did to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from imagineer_worker.testing.fixture_site import FixtureSite
from imagineer_worker.testing.services import RedisServer

from tests.chart.helm import render_chart
from tests.run.fleet import APP_VERSION, POD_UID, STARTED_ON_REQUEST, Fleet, docker
from tests.run.pods import plan

FLEETS: list[tuple[str, Fleet]] = []  # for the start-up times in the terminal summary


def own(path: Path) -> None:
    """Give the "PVC" to the pod's user/fsGroup (as fsGroup would); via a root container if we are not root."""
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", f"{POD_UID}:{POD_UID}", str(path)], check=True)
    else:
        docker("run", "--rm", "--user", "0", "--network", "none", "--mount", f"type=bind,source={path},target=/v",
               "--entrypoint", "chown", f"imagineer/worker-default:{APP_VERSION}", "-R", f"{POD_UID}:{POD_UID}", "/v",
               check=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Record (not assert) how long each image took from ``docker run`` to its startup probe passing."""
    for values_file, fleet in FLEETS:
        times = ", ".join(f"{c} ({fleet.pods[c].image}) {s:.1f}s" for c, s in fleet.ready_seconds.items())
        if times:
            terminalreporter.write_line(f"render-and-run {values_file}: docker run → ready: {times}")


@pytest.fixture(scope="session", autouse=True)
def _docker_and_images() -> None:
    """The suite needs the engine and the images from ``make images``; say so instead of erroring."""
    if shutil.which("docker") is None or docker("info", timeout=30).returncode != 0:
        pytest.fail("no Docker engine answers: `make docker-engine` starts one", pytrace=False)
    images = [f"imagineer/worker-{queue}" for queue in ("default", "scraping", "labeling", "training")]
    for image in (*images, "imagineer/celery-exporter", "imagineer/flower"):
        if docker("image", "inspect", f"{image}:{APP_VERSION}").returncode != 0:
            pytest.fail(f"image {image}:{APP_VERSION} is missing: run `make images`", pytrace=False)


@pytest.fixture(scope="class")
def fixture_site() -> Iterator[FixtureSite]:
    site = FixtureSite("127.0.0.1").start()
    yield site
    site.stop()


@pytest.fixture(scope="class")
def fleet_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Fleet]]:
    """Render + run; the containers, the Redis and the files go at the end of the test class."""
    started: list[str] = []
    servers: list[RedisServer] = []

    def launch(values_file: str, values: dict[str, Any], *,
               prepare: Callable[[Path], None] | None = None,
               components: Collection[str] | None = None) -> Fleet:
        """``components``: start only these rendered Deployments (by ``app.kubernetes.io/component``),
        e.g. the exporter and one worker while the other groups stay rendered (their queues in the
        exporter's ``--queues``) but unconsumed; default: every Deployment but ``STARTED_ON_REQUEST``."""
        workdir = tmp_path_factory.mktemp(f"run-{values_file}")
        redis = RedisServer(workdir / "redis").start()
        servers.append(redis)
        values = {**values, "broker": {**values.get("broker", {}), "url": redis.url}}
        objects = render_chart(values, values_file=values_file)
        data_dir = workdir / "data"
        data_dir.mkdir()
        if prepare is not None:
            prepare(data_dir)  # e.g. the tiny model, built on the host
        own(data_dir)
        data_dir.chmod(0o2775)
        fleet = Fleet(redis=redis, objects=objects, data_dir=data_dir)
        FLEETS.append((values_file, fleet))
        deployments = {obj["metadata"]["labels"]["app.kubernetes.io/component"]: obj
                       for obj in objects if obj["kind"] == "Deployment"}
        missing = set(components or ()) - set(deployments)
        assert not missing, f"the rendering has no Deployment for {sorted(missing)}: {sorted(deployments)}"
        run_id = uuid.uuid4().hex[:6]
        for component, obj in deployments.items():
            if component not in (components if components is not None else
                                 set(deployments) - STARTED_ON_REQUEST):
                continue
            name = f"imr-{run_id}-{component}"
            pod = plan(obj, objects, name=name, workdir=workdir / component, data_dir=data_dir)
            started.append(name)
            fleet.started_at[component] = time.monotonic()
            docker(*pod.run_args[1:], check=True)
            fleet.pods[component] = pod
        return fleet

    yield launch
    for name in started:
        docker("rm", "-f", "-v", name)
    for server in servers:
        server.stop()
