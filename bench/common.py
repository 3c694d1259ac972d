"""What every figure shares: statistics, worker processes, the chart's sizing, prefilled queues.

Runs of a figure and of its baseline alternate (A B A B ...) so that a load that comes and goes
(another suite on the same two cores) hits both alike; each figure reports the median over the
repetitions and the spread (min-max), and the ratio of the medians.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import yaml
from imagineer_worker import systemd
from imagineer_worker.testing.services import stop_process

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "imagineer-workers"
PYTHON = sys.executable
LIGHT_QUEUES = ("default", "scraping", "labeling")
# What the chart's `imagineer.workerArgs` adds besides -A/-Q/--concurrency/--hostname (templates/_groups.tpl);
# tests/bench checks this against the rendered chart when helm is there. BENCH_CHART_FLAGS="" measures
# the workers as the chart started them before (with mingle and gossip).
CHART_EXTRA_FLAGS: tuple[str, ...] = tuple(os.environ.get("BENCH_CHART_FLAGS",
                                                          "--without-mingle --without-gossip").split())


# --- statistics ----------------------------------------------------------------------------------

def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the runs themselves."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def alternate(reps: int, variants: Sequence[str], run: Callable[[str, int], float | dict[str, Any]],
              log: Callable[[str], None]) -> dict[str, list[Any]]:
    """``run(variant, rep)`` for rep in 1..reps, the variants alternating within each rep.

    The order rotates each rep (A B C, B C A, ...) so that no variant always runs first.
    """
    out: dict[str, list[Any]] = {v: [] for v in variants}
    for rep in range(reps):
        order = list(variants[rep % len(variants):]) + list(variants[:rep % len(variants)])
        for variant in order:
            value = run(variant, rep)
            out[variant].append(value)
            shown = value if not isinstance(value, dict) else {k: v for k, v in value.items() if
                                                               isinstance(v, (int, float))}
            log(f"  rep {rep + 1}/{reps} {variant}: {_fmt(shown)}")
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return " ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


# --- the chart's sizing (values.yaml is the single source) ----------------------------------------

@dataclass(frozen=True)
class Group:
    name: str
    queues: tuple[str, ...]
    concurrency: int
    memory_limit: int
    extra_args: tuple[str, ...]
    image: str


def chart_groups() -> dict[str, Group]:
    """Each group as the chart renders it (``render systemd``'s reading of the values: one reading)."""
    values = systemd.load_values(CHART)
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    groups = {}
    for name, g in systemd.groups(values).items():
        limits = (g.get("resources") or {}).get("limits") or {}
        groups[name] = Group(name=name, queues=tuple(g["queues"]), concurrency=int(g["concurrency"]),
                             memory_limit=int(systemd.quantity(limits.get("memory", "0"),
                                                               f"workers.{name}.resources.limits.memory")),
                             extra_args=tuple(g.get("extraArgs") or ()),
                             image=f"{g['image']['repository']}:{app_version}")
    return groups


def worker_args(app: str, group: Group, *, concurrency: int | None = None, hostname: str | None = None) -> list[str]:
    """``celery`` arguments as the chart builds them (``imagineer.workerArgs``), with ``-A app``."""
    return ["-A", app, "worker", "--pool=prefork", "--loglevel=INFO", "-Q", ",".join(group.queues),
            f"--concurrency={concurrency or group.concurrency}", f"--hostname={hostname or group.name}@%h",
            *CHART_EXTRA_FLAGS, *group.extra_args]


def vcpus() -> int:
    return len(os.sched_getaffinity(0))


# --- settings of the two apps ---------------------------------------------------------------------

# Keys of the project's settings that name project code or only concern beat: the bare app leaves them out.
PROJECT_ONLY_KEYS = ("worker_consumer", "beat_schedule", "beat_scheduler")


def guide_conf(broker: str) -> dict[str, Any]:
    """The project's own Celery settings (the guide's), as JSON, without project code."""
    from imagineer_worker.celery_app import celery_config
    from imagineer_worker.config import load_settings

    conf = celery_config(load_settings({"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": broker}))
    conf = {k: v for k, v in conf.items() if k not in PROJECT_ONLY_KEYS and not k.startswith("redbeat_")}
    json.dumps(conf)  # the bare app gets it through the environment
    return conf


def defaults_conf(broker: str) -> dict[str, Any]:
    """Celery's defaults: only where the broker and the results are."""
    return {"broker_url": broker, "result_backend": broker}


# --- Redis ---------------------------------------------------------------------------------------

def db_url(base: str, db: int) -> str:
    return base.rsplit("/", 1)[0] + f"/{db}"


def result_key(task_id: str) -> str:
    return f"celery-task-meta-{task_id}"


def produce(broker: str, queue: str, count: int, *, task: str = "bench.noop", kwargs: dict[str, Any] | None = None,
            prefix: str = "bench") -> list[str]:
    """Publish ``count`` task messages to ``queue`` (a staging database): returns their ids."""
    from celery import Celery

    producer = Celery("bench-producer", broker=broker)
    ids = [f"{prefix}-{queue}-{i:06d}" for i in range(count)]
    with producer.producer_or_acquire() as prod:
        for task_id in ids:
            producer.send_task(task, kwargs=kwargs or {}, queue=queue, task_id=task_id, producer=prod)
    return ids


def copy_queue(client: redis.Redis, queue: str, db: int) -> None:
    """Put the staged messages of ``queue`` (this client's db) into ``queue`` of ``db``, atomically."""
    if not client.copy(queue, queue, destination_db=db, replace=True):
        raise RuntimeError(f"no staged messages for {queue}")


@dataclass
class Finished:
    starts: list[float]
    done: list[float]


def wait_results(client: redis.Redis, ids: Sequence[str], queue: str, timeout: float) -> Finished:
    """Wait until every task in ``ids`` has a SUCCESS result; their start times (the tasks' return
    values) and their ``date_done``. Cheap polling: the queue's length first, then the results."""
    deadline = time.monotonic() + timeout
    keys = [result_key(i) for i in ids]
    while client.llen(queue) and time.monotonic() < deadline:
        time.sleep(0.05)
    while time.monotonic() < deadline:
        values = client.mget(keys)
        if all(v is not None and b'"SUCCESS"' in v for v in values):
            metas = [json.loads(v) for v in values]
            return Finished(starts=[float(m["result"]) for m in metas],
                            done=[datetime.fromisoformat(m["date_done"]).timestamp() for m in metas])
        time.sleep(0.02)
    missing = sum(1 for v in client.mget(keys) if v is None or b'"SUCCESS"' not in v)
    raise TimeoutError(f"{missing} of {len(ids)} tasks unfinished after {timeout:.0f}s")


def clear_results(client: redis.Redis, ids: Iterable[str]) -> None:
    keys = [result_key(i) for i in ids]
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i:i + 1000])


# --- processes -----------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def memory_of(pid: int) -> dict[str, int]:
    """RSS and PSS in bytes (``smaps_rollup``): RSS counts pages shared with the parent in each
    child; PSS splits them, which is close to what the cgroup's memory limit charges."""
    out = {"rss": 0, "pss": 0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            out[name.lower()] = int(rest.split()[0]) * 1024
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes so far (``/proc/PID/stat``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def maps_torch(pid: int) -> bool:
    """Whether the process has any of torch's shared libraries mapped (i.e. imported torch)."""
    try:
        return "/torch/lib/" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:.0f}s")
        time.sleep(0.01)


@dataclass
class Worker:
    """One ``celery worker`` process (prefork), its log, and its ready file."""

    name: str
    args: list[str]
    env: dict[str, str]
    workdir: Path
    ready_file: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> Worker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([PYTHON, "-m", "celery", *self.args], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir)
        return self

    def wait_ready(self, timeout: float = 60) -> float:
        """Seconds from the process start to its ready file."""
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log()[-3000:]}")
            time.sleep(0.005)
        return time.monotonic() - self.started_at

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid, *children(self.proc.pid)]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout)


def project_env(broker: str, workdir: Path, name: str) -> dict[str, str]:
    return {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": broker,
            "IMAGINEER_HEALTH_DIR": str(workdir / f"{name}.health"),
            "IMAGINEER_DATA_DIR": str(workdir / "data")}


def project_worker(name: str, broker: str, workdir: Path, group: Group, *, concurrency: int | None = None,
                   overrides: dict[str, Any] | None = None) -> Worker:
    env = project_env(broker, workdir, name)
    if overrides:
        env["BENCH_CONF_OVERRIDES"] = json.dumps(overrides)
    return Worker(name=name, args=worker_args("bench.apps.project", group, concurrency=concurrency, hostname=name),
                  env=env, workdir=workdir, ready_file=workdir / f"{name}.health" / "ready")


def bare_worker(name: str, conf: dict[str, Any], workdir: Path, group: Group, *,
                concurrency: int | None = None) -> Worker:
    ready = workdir / f"{name}.ready" / "ready"
    env = {"BENCH_CONF": json.dumps(conf), "BENCH_READY_FILE": str(ready)}
    return Worker(name=name, args=worker_args("bench.apps.bare", group, concurrency=concurrency, hostname=name),
                  env=env, workdir=workdir, ready_file=ready)
