"""Figure 6: scaling out the scraping group: time to drain I/O-bound tasks with 1 vs 2 workers.

``tasks`` tasks that each sleep 50 ms (I/O-bound, like a fetch) are copied at once into the
``scraping`` queue of one worker process, or of two worker processes sharing the queue (two pods
of the group), each with the group's concurrency from the chart. The drain time runs from the copy
to the last ``date_done``; the goal is a speed-up of at least 1.8x with two. The workers stay up
between runs; the runs alternate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench import common

SLEEP_SECONDS = 0.05


def run(base_url: str, workdir: Path, *, reps: int, tasks: int, log: Callable[[str], None]) -> dict[str, Any]:
    group = common.chart_groups()["scraping"]
    queue = group.queues[0]
    staging_url = common.db_url(base_url, 0)
    staging = redis.Redis.from_url(staging_url)
    staging.delete(queue)
    ids = common.produce(staging_url, queue, tasks, task="bench.sleep", kwargs={"seconds": SLEEP_SECONDS},
                         prefix="sleep")
    dbs = {"1 worker": 6, "2 workers": 7}
    wd = workdir / "scaling"
    workers = [common.project_worker(f"scraping-a{i}", common.db_url(base_url, dbs["1 worker"]), wd, group)
               for i in range(1)]
    workers += [common.project_worker(f"scraping-b{i}", common.db_url(base_url, dbs["2 workers"]), wd, group)
                for i in range(2)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.wait_ready(120)

        def one(variant: str, _rep: int) -> float:
            client = redis.Redis.from_url(common.db_url(base_url, dbs[variant]))
            common.clear_results(client, ids)
            started = time.time()
            common.copy_queue(staging, queue, dbs[variant])
            finished = common.wait_results(client, ids, queue, timeout=600)
            return max(finished.done) - started

        log(f"scaling: {tasks} tasks of {SLEEP_SECONDS * 1000:.0f} ms, 1 vs 2 scraping workers "
            f"(concurrency {group.concurrency} each), {reps} alternating runs")
        runs = common.alternate(reps, list(dbs), one, log)
    finally:
        for worker in workers:
            worker.stop()
    out = {"tasks": tasks, "sleep_seconds": SLEEP_SECONDS, "concurrency": group.concurrency,
           "drain_seconds": {variant: common.summary(values) for variant, values in runs.items()}}
    drain = out["drain_seconds"]
    out["speedup"] = common.ratio(drain["1 worker"]["median"], drain["2 workers"]["median"])
    return out
