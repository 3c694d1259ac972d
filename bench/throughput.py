"""Figures 1 and 2: throughput of warm workers, and enqueue-to-start latency.

Throughput: ``n`` no-op tasks are published once into a staging database; each run copies them
(``COPY``, atomic) into the queue of a worker that has been up and idle for a while, and counts
from the first task's start to the last task's ``date_done``. Every variant has its own database of
one ``redis-server``, so idle workers do not see each other's events; the runs alternate.

Variants: ``project`` is ``imagineer_worker.celery_app`` as the chart starts it (prefork, the
guide's concurrency and settings); ``bare`` is a Celery app with the very same settings and no
project code (the goal: project / bare >= 1.00); ``bare_defaults`` is Celery with its defaults
(early ack, prefetch 4, no events): what the guide's settings cost; ``*_no_prefetch`` add
``worker_disable_prefetch`` (Celery >= 5.6), which keeps the guide's guarantees.
``bench/README.md`` has more variants to try by hand (events off, no ``task_track_started``).

Latency: tasks sent one at a time at a steady rate, at idle (far apart) and at half the measured
throughput of ``project``; per run p50/p95/p99 of (task start - send time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench import common

STAGING_DB = 0


class Fleet:
    """The idle, warm workers of the throughput variants, one database each."""

    def __init__(self, base_url: str, workdir: Path, variants: dict[str, Callable[[str, str], common.Worker]]) -> None:
        self.base_url, self.workdir = base_url, workdir
        self.dbs = {name: db for db, name in enumerate(variants, start=1)}
        self.workers = {name: make(name, common.db_url(base_url, self.dbs[name])) for name, make in variants.items()}

    def __enter__(self) -> Fleet:
        for worker in self.workers.values():
            worker.start()
        for worker in self.workers.values():
            worker.wait_ready(120)
        return self

    def __exit__(self, *exc: Any) -> None:
        for worker in self.workers.values():
            worker.stop()

    def client(self, name: str) -> redis.Redis:
        return redis.Redis.from_url(common.db_url(self.base_url, self.dbs[name]))


def variants(base_url: str, workdir: Path, group: common.Group) -> dict[str, Callable[[str, str], common.Worker]]:
    guide = common.guide_conf("redis://unused")

    def bare(conf: dict[str, Any]) -> Callable[[str, str], common.Worker]:
        return lambda name, url: common.bare_worker(
            name, {**conf, "broker_url": url, "result_backend": url}, workdir, group)

    return {
        "project": lambda name, url: common.project_worker(name, url, workdir, group),
        "bare": bare(guide),
        "bare_defaults": bare(common.defaults_conf("redis://unused")),
        "bare_no_prefetch": bare({**guide, "worker_disable_prefetch": True}),
    }


def measure_throughput(fleet: Fleet, staging: redis.Redis, ids: list[str], queue: str, name: str) -> dict[str, float]:
    """Tasks per second, and the worker's CPU time per task (main process + children), which
    a busy machine disturbs far less than wall time."""
    client = fleet.client(name)
    common.clear_results(client, ids)
    pids = fleet.workers[name].pids()
    cpu = common.cpu_seconds(pids)
    common.copy_queue(staging, queue, fleet.dbs[name])
    finished = common.wait_results(client, ids, queue, timeout=300)
    cpu = common.cpu_seconds(pids) - cpu
    return {"tasks_per_second": len(ids) / (max(finished.done) - min(finished.starts)),
            "cpu_ms_per_task": 1000 * cpu / len(ids)}


def measure_latency(fleet: Fleet, name: str, queue: str, count: int, rate: float) -> dict[str, float]:
    """Send ``count`` no-op tasks at ``rate`` per second; percentiles of start - send, in ms."""
    from celery import Celery

    url = common.db_url(fleet.base_url, fleet.dbs[name])
    client = fleet.client(name)
    producer = Celery("bench-latency", broker=url)
    prefix = f"lat-{name}-{time.monotonic_ns()}"
    sent: dict[str, float] = {}
    with producer.producer_or_acquire() as prod:
        producer.send_task("bench.noop", queue=queue, task_id=f"{prefix}-warm", producer=prod)
        start = time.monotonic() + 0.05
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            task_id = f"{prefix}-{i}"
            sent[task_id] = time.time()
            producer.send_task("bench.noop", queue=queue, task_id=task_id, producer=prod)
    finished = common.wait_results(client, list(sent), queue, timeout=120)
    latencies = [(s - t) * 1000 for s, t in zip(finished.starts, sent.values(), strict=True)]
    common.clear_results(client, [*sent, f"{prefix}-warm"])
    return {f"p{q}": common.percentile(latencies, q) for q in (50, 95, 99)}


def run(base_url: str, workdir: Path, *, reps: int, tasks: int, latency_tasks: int,
        log: Callable[[str], None]) -> dict[str, Any]:
    group = common.chart_groups()["default"]
    queue = group.queues[0]
    staging = redis.Redis.from_url(common.db_url(base_url, STAGING_DB))
    staging.delete(queue)
    ids = common.produce(common.db_url(base_url, STAGING_DB), queue, tasks)
    out: dict[str, Any] = {"tasks": tasks, "concurrency": group.concurrency, "queue": queue}
    with Fleet(base_url, workdir / "throughput", variants(base_url, workdir / "throughput", group)) as fleet:
        names = list(fleet.workers)
        # one untimed pass each: every child has run a task before the clock starts
        for name in names:
            measure_throughput(fleet, staging, ids, queue, name)
        log(f"throughput: {tasks} no-op tasks, {reps} alternating runs of {', '.join(names)}")
        runs = common.alternate(reps, names, lambda n, _rep: measure_throughput(fleet, staging, ids, queue, n), log)
        for key in ("tasks_per_second", "cpu_ms_per_task"):
            out[key] = {name: common.summary([v[key] for v in values]) for name, values in runs.items()}

        rate = out["tasks_per_second"]["project"]["median"] / 2
        idle_rate, idle_tasks = 25.0, max(10, latency_tasks // 5)
        log(f"latency: {idle_tasks} tasks at idle ({idle_rate:.0f}/s), {latency_tasks} at {rate:.0f}/s (half of "
            "project's throughput), project vs bare")
        lat: dict[str, Any] = {"load_rate": rate, "idle_rate": idle_rate, "tasks": latency_tasks,
                               "idle_tasks": idle_tasks}
        for label, r, count in (("idle", idle_rate, idle_tasks), ("load", rate, latency_tasks)):
            runs = common.alternate(reps, ["project", "bare"],
                                    lambda n, _rep, r=r, c=count: measure_latency(fleet, n, queue, c, r), log)
            lat[label] = {name: {q: common.summary([v[q] for v in values]) for q in ("p50", "p95", "p99")}
                          for name, values in runs.items()}
        out["latency_ms"] = lat
    return out
