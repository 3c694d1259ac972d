"""Docker helpers and ``Fleet``: a rendered release running as containers on this machine."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from celery import Celery
from imagineer_worker.testing.services import RedisServer

from tests.chart.helm import CHART
from tests.run.pods import ContainerPlan

APP_VERSION = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])  # the images' tag
POD_UID = 10001  # the chart's runAsUser / fsGroup; the data "PVC" directory is owned by it
READY_TIMEOUT = 120.0


def docker(*args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], check=False, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} failed: {proc.stderr.strip()}")
    return proc


def logs(name: str, tail: int = 60) -> str:
    proc = docker("logs", "--tail", str(tail), name)
    return proc.stdout + proc.stderr


def running(name: str) -> bool:
    return docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"


def exec_in(name: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``docker exec`` as the probes and on-call run commands: in the container, with its env."""
    return docker("exec", name, *cmd, timeout=timeout)



@dataclass
class Fleet:
    """The rendered release running as containers, one per Deployment (replicas: 1 each)."""

    redis: RedisServer
    objects: list[dict[str, Any]]
    data_dir: Path
    pods: dict[str, ContainerPlan] = field(default_factory=dict)  # by app.kubernetes.io/component
    started_at: dict[str, float] = field(default_factory=dict)  # time.monotonic() at docker run
    ready_seconds: dict[str, float] = field(default_factory=dict)  # docker run → startup probe passes

    def app(self) -> Celery:
        """A client on the fleet's Redis with the project's own routes and serializers."""
        from imagineer_worker.celery_app import create_app
        from imagineer_worker.config import load_settings

        env = {"CELERY_BROKER_URL": self.redis.url, "CELERY_RESULT_BACKEND": self.redis.url,
               "IMAGINEER_HEALTH_DIR": str(self.data_dir.parent / "client-health")}
        return create_app(load_settings(environ=env))

    def hostname(self, component: str) -> str:
        """The celery node name of a worker: its ``--hostname=<group>@%h`` with %h = pod name."""
        pod = self.pods[component]
        arg = next(a for a in pod.args if a.startswith("--hostname="))
        return arg.removeprefix("--hostname=").replace("%h", pod.name)

    def wait_ready(self, component: str, timeout: float = READY_TIMEOUT) -> float:
        """Poll the rendered startup probe (``docker exec``) until it passes; return the seconds."""
        pod, started = self.pods[component], time.monotonic()
        probe = pod.probes["startup"]
        while time.monotonic() - started < timeout:
            if not running(pod.name):
                raise AssertionError(f"{pod.name} exited before it was ready:\n{logs(pod.name)}")
            if exec_in(pod.name, *probe, timeout=30).returncode == 0:
                self.ready_seconds[component] = time.monotonic() - self.started_at.get(component, started)
                return self.ready_seconds[component]
            time.sleep(1)
        raise AssertionError(f"{pod.name} not ready after {timeout:.0f}s:\n{logs(pod.name)}")


def run_values(**extra: Any) -> dict[str, Any]:
    """Values every run uses: the loopback fixture site is allowed, the local images are used."""
    values: dict[str, Any] = {
        "image": {"registry": ""},  # prod names registry.imagineer.internal; the images are local
        "config": {"file": {"scraping": {"allow_networks": ["127.0.0.1/32"]}}},
    }
    for key, value in extra.items():
        values[key] = {**values.get(key, {}), **value}
    return values
