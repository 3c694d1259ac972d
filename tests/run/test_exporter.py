"""The Celery exporter, rendered and run, scraped as Prometheus would.

values-prod.yaml with the harness's run overrides and the exporter on a free port (the containers
share this machine's network). Of the rendered Deployments only the ``default`` worker group and
the exporter (``<fullname>-exporter``) run, against the harness's loopback ``redis-server``; the
other groups stay rendered, so their queues are in the exporter's ``--queues`` although nothing
consumes them. The exporter container gets exactly the rendered ``command``/``args``, with the
kubelet's ``$(CELERY_BROKER_URL)`` expansion from its env (the chart's Secret), and its httpGet
probes are run from the host on the rendered ``metrics`` port.

- a queue without a consumer (``labeling``) shows its backlog: 30 messages → ``celery_queue_length 30``;
- a task run by the default worker counts in ``celery_task_succeeded_total`` and the worker is up
  (``celery_worker_up`` 1; the exporter labels workers with the *host* part of the node name,
  i.e. the pod name, not ``default@<pod>``);
- the rendered readiness probe (``/health``: the exporter reaches the broker) and liveness probe pass;
- with a CA configured (``broker.caSecret``), the image's launcher uses TLS for a ``rediss://`` URL
  only, exactly as the workers do: both a plain and a TLS Redis make the exporter healthy;
- SIGTERM ends the exporter (PID 1 in its pod) with exit code 0.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from imagineer_worker.testing.services import RedisServer, free_port, make_tls_files, wait_for
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.run.fleet import APP_VERSION, Fleet, docker, logs, run_values

DISK_USAGE = "imagineer.maintenance.record_disk_usage"
UNCONSUMED = "labeling"  # rendered (so in --queues), its worker not started
BACKLOG = 30
METRICS_TIMEOUT = 60.0
SCRAPE_TIMEOUT = 20.0  # each /metrics runs two `inspect` broadcasts (1 s timeout each) first


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a text-format scrape, with prometheus_client's own parser."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def select(samples: list[Sample], metric: str, /, **labels: str) -> list[Sample]:
    """The samples of ``metric`` whose labels include ``labels`` (``name=`` is a label here)."""
    return [s for s in samples if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())]


# --- the rendered exporter, live ------------------------------------------------------------------


class Monitored(NamedTuple):
    fleet: Fleet
    metrics_url: str


def scrape(url: str) -> list[Sample]:
    """GET /metrics as Prometheus does (straight to the target, no proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=SCRAPE_TIMEOUT) as resp:
        assert resp.status == 200
        return parse_metrics(resp.read().decode())


def wait_metrics(monitored: Monitored, what: str, predicate: Callable[[list[Sample]], bool],
                 timeout: float = METRICS_TIMEOUT) -> list[Sample]:
    """Scrape until ``predicate`` holds; on timeout fail with the last scrape and the exporter's log."""
    deadline, samples = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        samples = scrape(monitored.metrics_url)
        if predicate(samples):
            return samples
        time.sleep(0.5)
    celery = "\n".join(f"{s.name}{s.labels} {s.value}" for s in samples if s.name.startswith("celery_"))
    name = monitored.fleet.pods["exporter"].name
    raise AssertionError(f"{what}: not seen within {timeout:.0f}s. Last scrape:\n{celery}\n{logs(name)}")


def value(samples: list[Sample], metric: str, /, **labels: str) -> float | None:
    """The sum over the matching series (e.g. every ``hostname``/``queue_name``), None if none."""
    found = select(samples, metric, **labels)
    return sum(s.value for s in found) if found else None


@pytest.fixture(scope="class")
def monitored(fleet_factory: Callable[..., Fleet]) -> Monitored:
    port = free_port()  # --network host: not 9808, whatever else runs on this machine
    values = run_values(broker={"existingSecret": "", "caSecret": ""}, exporter={"enabled": True, "port": port})
    fleet = fleet_factory("prod", values, components={"default", "exporter"})
    assert set(fleet.pods) == {"default", "exporter"}
    fleet.wait_ready("default")
    fleet.wait_ready("exporter")  # its readiness probe: GET /health on the metrics port
    exporter = fleet.pods["exporter"]
    assert exporter.ports == {"metrics": port}
    return Monitored(fleet, f"http://127.0.0.1:{port}/metrics")


def rendered_exporter(fleet: Fleet) -> dict[str, Any]:
    return next(o for o in fleet.objects if o["kind"] == "Deployment"
                and o["metadata"]["labels"]["app.kubernetes.io/component"] == "exporter")


class TestExporter:
    def test_the_container_runs_the_rendered_args_with_the_broker_url_expanded(self, monitored: Monitored) -> None:
        fleet = monitored.fleet
        deployment = rendered_exporter(fleet)
        assert deployment["metadata"]["name"].endswith("-exporter")
        spec = deployment["spec"]["template"]["spec"]["containers"][0]
        assert spec["name"] == "exporter" and spec["command"] == ["celery-exporter"]
        assert "--broker-url=$(CELERY_BROKER_URL)" in spec["args"]
        queues = next(a for a in spec["args"] if a.startswith("--queues=")).removeprefix("--queues=").split(",")
        consumed = {"default", "scraping", "labeling", "training"}  # every enabled queue, and its dead-letter list
        assert set(queues) == consumed | {f"{q}.dead" for q in consumed}
        pod = fleet.pods["exporter"]
        running_args = docker("inspect", "-f", "{{json .Args}}", pod.name, check=True).stdout
        assert f'"--broker-url={fleet.redis.url}"' in running_args, running_args
        assert "$(" not in running_args

    def test_a_queue_without_consumer_shows_its_backlog(self, monitored: Monitored) -> None:
        fleet = monitored.fleet
        # Listed by --queues, so the series exists before any worker consumed the queue.
        wait_metrics(monitored, f"celery_queue_length{{queue_name={UNCONSUMED!r}}} 0",
                     lambda s: value(s, "celery_queue_length", queue_name=UNCONSUMED) == 0)
        app = fleet.app()
        for _ in range(BACKLOG):
            app.send_task(DISK_USAGE, queue=UNCONSUMED)
        assert fleet.redis.client().llen(UNCONSUMED) == BACKLOG
        samples = wait_metrics(monitored, f"celery_queue_length{{queue_name={UNCONSUMED!r}}} {BACKLOG}",
                               lambda s: value(s, "celery_queue_length", queue_name=UNCONSUMED) == BACKLOG)
        assert value(samples, "celery_active_worker_count", queue_name=UNCONSUMED) == 0
        assert value(samples, "celery_queue_length", queue_name="default") == 0

    def test_a_task_on_the_default_worker_counts_and_the_worker_is_up(self, monitored: Monitored) -> None:
        fleet = monitored.fleet
        host = fleet.pods["default"].name  # the worker is default@<pod name>; the label is the pod name
        assert fleet.hostname("default") == f"default@{host}"
        before = value(scrape(monitored.metrics_url), "celery_task_succeeded_total", name=DISK_USAGE) or 0.0
        result = fleet.app().send_task(DISK_USAGE)
        result.get(timeout=60)
        assert result.worker == fleet.hostname("default")
        samples = wait_metrics(
            monitored, f"celery_task_succeeded_total{{name={DISK_USAGE!r}}} > {before}",
            lambda s: (value(s, "celery_task_succeeded_total", name=DISK_USAGE) or 0.0) >= before + 1)
        assert value(samples, "celery_task_succeeded_total", name=DISK_USAGE, hostname=host) == before + 1
        assert value(samples, "celery_task_failed_total", name=DISK_USAGE) in (None, 0.0)
        samples = wait_metrics(monitored, f"celery_worker_up{{hostname={host!r}}} 1",
                               lambda s: value(s, "celery_worker_up", hostname=host) == 1)
        assert value(samples, "celery_active_worker_count", queue_name="default") == 1

    def test_the_rendered_probes_pass(self, monitored: Monitored) -> None:
        fleet = monitored.fleet
        pod = fleet.pods["exporter"]
        assert pod.http_probes["readiness"].path == "/health"
        ok, detail = fleet.probe("exporter", "readiness")
        assert ok and "Connected to the broker" in detail, detail
        for kind in pod.http_probes:
            ok, detail = fleet.probe("exporter", kind)
            assert ok, f"{kind}: {detail}"


# --- TLS only for rediss:// ----------------------------------------------------------------------


def _healthy(url: str) -> bool:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_exporter(name: str, url: str, port: int, *docker_args: str) -> None:
    """The exporter image alone, as its Deployment runs it, until /health answers."""
    docker("run", "-d", "--name", name, "--label", "imagineer-run-test", "--network", "host",
           "--user", "10001:10001", *docker_args, f"imagineer/celery-exporter:{APP_VERSION}",
           f"--broker-url={url}", "--host=127.0.0.1", f"--port={port}", "--retry-interval=1", check=True)
    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}/health"), METRICS_TIMEOUT, f"exporter /health on {url}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{logs(name)}") from None


@pytest.mark.parametrize("tls", [False, True], ids=["redis-url", "rediss-url"])
def test_the_exporter_uses_the_ca_for_rediss_urls_only(tls: bool, tmp_path: Any) -> None:
    """The chart always hands the exporter the CA when broker.caSecret is set (as for the workers);
    with a redis:// URL it must not turn TLS on (it once did: X509 NO_CERTIFICATE_OR_CRL_FOUND)."""
    files = make_tls_files(tmp_path / "tls")
    server = RedisServer(tmp_path / "redis", tls=(files["cert"], files["key"], files["ca"]) if tls else None).start()
    port = free_port()
    name = f"imagineer-exporter-{'rediss' if tls else 'redis'}-{port}"
    try:
        start_exporter(name, server.url, port, "-e", "IMAGINEER_REDIS_CA_CERT=/ca/ca.crt",
                       "--mount", f"type=bind,source={files['ca']},target=/ca/ca.crt,readonly")
    finally:
        docker("rm", "-f", name)
        server.stop()


def test_sigterm_stops_the_exporter_cleanly(tmp_path: Any) -> None:
    """PID 1 in its pod: SIGTERM (a rollout, a drain) must end it with exit code 0, not leave it to
    the SIGKILL after the grace period (exit code 137)."""
    server = RedisServer(tmp_path / "redis").start()
    port = free_port()
    name = f"imagineer-exporter-stop-{port}"
    try:
        start_exporter(name, server.url, port)
        docker("stop", "--time", "60", name, timeout=90, check=True)
        assert docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0", logs(name)
    finally:
        docker("rm", "-f", name)
        server.stop()
