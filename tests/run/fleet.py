"""Docker helpers and ``Fleet``: a rendered release running as containers on this machine."""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from celery import Celery
from imagineer_worker.testing.services import RedisServer

from tests.chart.helm import CHART, KUBE_VERSION
from tests.run.pods import ContainerPlan, HttpGetProbe

APP_VERSION = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])  # the images' tag
POD_UID = 10001  # the chart's runAsUser / fsGroup; the data "PVC" directory is owned by it
READY_TIMEOUT = 120.0
# Rendered in every fleet (the chart and values-prod.yaml enable it) but started only by a test that
# names it in ``fleet_factory(..., components=...)`` (test_exporter.py): it binds its port on this
# machine's network and the worker tests assert exactly their own pods.
STARTED_ON_REQUEST = frozenset({"exporter"})


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


def http_get(probe: HttpGetProbe) -> tuple[bool, str]:
    """One ``httpGet`` probe as the kubelet runs it: GET with its headers and ``timeoutSeconds``,
    success for a status from 200 to 399, no certificate check for HTTPS. From this machine on
    127.0.0.1 (the containers share its network), where the kubelet GETs the pod IP."""
    headers = {"User-Agent": f"kube-probe/{'.'.join(KUBE_VERSION.split('.')[:2])}", "Accept": "*/*",
               **dict(probe.headers)}
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    # No proxy from the environment: the kubelet's probes go straight to the pod.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(probe.url, headers=headers)
    try:
        with opener.open(request, timeout=probe.timeout_seconds) as resp:
            status, body = resp.status, resp.read(1024).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(1024).decode(errors="replace")
    except OSError as exc:  # refused, reset, timed out: a failed probe, as for the kubelet
        return False, f"GET {probe.url}: {exc}"
    return 200 <= status < 400, f"GET {probe.url}: {status} {body.strip()}"



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
               "IMAGINEER_HEALTH_DIR": str(self.data_dir.parent / "client-health"),
               "IMAGINEER_REDIS_KEY_PREFIX": self.key_prefix}
        return create_app(load_settings(environ=env))

    @property
    def key_prefix(self) -> str:
        """The release's Redis key prefix (``broker.keyPrefix``), as every pod gets it."""
        return next((p.env["IMAGINEER_REDIS_KEY_PREFIX"] for p in self.pods.values()
                     if "IMAGINEER_REDIS_KEY_PREFIX" in p.env), "")

    def hostname(self, component: str) -> str:
        """The celery node name of a worker: its ``--hostname=<group>@%h`` with %h = pod name."""
        pod = self.pods[component]
        arg = next(a for a in pod.args if a.startswith("--hostname="))
        return arg.removeprefix("--hostname=").replace("%h", pod.name)

    def probe(self, component: str, kind: str) -> tuple[bool, str]:
        """Run the rendered ``kind`` probe once: exec through ``docker exec``, httpGet from the host."""
        pod = self.pods[component]
        if kind in pod.http_probes:
            return http_get(pod.http_probes[kind])
        proc = exec_in(pod.name, *pod.probes[kind], timeout=30)
        return proc.returncode == 0, (proc.stdout + proc.stderr).strip()

    def wait_ready(self, component: str, timeout: float = READY_TIMEOUT) -> float:
        """Poll the rendered startup probe (the readiness probe where there is none; exec or
        httpGet) until it passes; return the seconds from ``docker run``."""
        pod, started = self.pods[component], time.monotonic()
        kinds = {*pod.probes, *pod.http_probes}
        kind = next((k for k in ("startup", "readiness") if k in kinds), None)
        if kind is None:
            raise AssertionError(f"{pod.deployment} renders neither a startup nor a readiness probe")
        detail = ""
        while time.monotonic() - started < timeout:
            if not running(pod.name):
                raise AssertionError(f"{pod.name} exited before it was ready:\n{logs(pod.name)}")
            ok, detail = self.probe(component, kind)
            if ok:
                self.ready_seconds[component] = time.monotonic() - self.started_at.get(component, started)
                return self.ready_seconds[component]
            time.sleep(1)
        raise AssertionError(f"{pod.name} not ready after {timeout:.0f}s ({kind} probe: {detail}):\n"
                             f"{logs(pod.name)}")


def run_values(**extra: Any) -> dict[str, Any]:
    """Values every run uses: the loopback fixture site is allowed, the local images are used.

    Flower is off unless a run turns it on with its own credentials (``flower={"enabled": True,
    "basicAuth": {...}}``, as ``test_flower.py`` does): values-staging.yaml enables it with an
    existing Secret that no rendering contains. The exporter stays rendered (values-prod's
    ServiceMonitor requires it) and is started on request only (``STARTED_ON_REQUEST``).
    """
    values: dict[str, Any] = {
        "image": {"registry": ""},  # prod names registry.imagineer.internal; the images are local
        "config": {"file": {"scraping": {"allow_networks": ["127.0.0.1/32"]}}},
        "flower": {"enabled": False},
    }
    for key, value in extra.items():
        values[key] = {**values.get(key, {}), **value}
    return values
