"""Figures 3 and 4: start-up of each light worker (process and container) and its memory.

Process (per light queue, project vs bare, alternating): ``celery worker`` with the chart's
arguments is started; the clock runs from the process start to its ready file (the project's
``HealthFiles`` bootstep, which the startup probe reads; the bare app touches its own file at the
same point of the consumer's start). Then ``tasks`` no-op tasks go through it and the RSS and PSS
of the main process and its prefork children are read (``/proc/PID/smaps_rollup``), and whether any
of them has torch's libraries mapped.

Memory is measured at the effective concurrency, ``min(vCPU, guide)`` (the project's rule; labeling
runs 2 of its 4 on a 2-vCPU machine), and reported at the guide's concurrency too: main process +
guide x the mean child, as a fraction of the group's memory limit in the chart.

Container (per light queue, project vs bare, alternating): ``docker run`` of the group's image from
``make images`` with the chart pod's arguments, user, read-only root filesystem and memory limit,
until the ready file appears in the container's ``/tmp`` (a host folder here). The baseline runs
``bench.apps.bare`` (mounted read-only) in the same image. Plus the startup probe's own run time
(``docker exec ... imagineer-workers probe readiness``).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench import common


def _memory(worker: common.Worker) -> dict[str, Any]:
    pids = worker.pids()
    mems = [common.memory_of(pid) for pid in pids]
    return {"rss": sum(m["rss"] for m in mems), "pss": sum(m["pss"] for m in mems),
            "main_rss": mems[0]["rss"], "child_rss": statistics.mean(m["rss"] for m in mems[1:]),
            "main_pss": mems[0]["pss"], "child_pss": statistics.mean(m["pss"] for m in mems[1:]),
            "children": len(pids) - 1, "torch_mapped": any(common.maps_torch(p) for p in pids)}


def _probe_children(url: str, queue: str, count: int) -> list[dict[str, Any]]:
    from celery import Celery

    client = Celery("bench-probe", broker=url, backend=url)
    results = [client.send_task("bench.probe", queue=queue) for _ in range(count)]
    return [r.get(timeout=60) for r in results]


def run_process(base_url: str, workdir: Path, *, reps: int, tasks: int, log: Callable[[str], None]) -> dict[str, Any]:
    groups = common.chart_groups()
    staging_url = common.db_url(base_url, 0)
    staging = redis.Redis.from_url(staging_url)
    ids = {}
    for queue in common.LIGHT_QUEUES:
        staging.delete(queue)
        ids[queue] = common.produce(staging_url, queue, tasks)
    guide = common.guide_conf("redis://unused")
    out: dict[str, Any] = {"tasks": tasks, "vcpus": common.vcpus(), "queues": {}}
    dbs = {"project": 1, "bare": 2}
    for queue in common.LIGHT_QUEUES:
        group = groups[queue]
        effective = min(common.vcpus(), group.concurrency)

        def one(variant: str, rep: int, group: common.Group = group, queue: str = queue,
                effective: int = effective) -> dict[str, Any]:
            url = common.db_url(base_url, dbs[variant])
            name = f"{queue}-{variant}-{rep}"
            wd = workdir / "startup"
            if variant == "project":
                worker = common.project_worker(name, url, wd, group)
            else:
                worker = common.bare_worker(name, {**guide, "broker_url": url, "result_backend": url}, wd, group,
                                            concurrency=effective)
            client = redis.Redis.from_url(url)
            common.clear_results(client, ids[queue])
            worker.start()
            try:
                ready = worker.wait_ready(120)
                common.copy_queue(staging, queue, dbs[variant])
                common.wait_results(client, ids[queue], queue, timeout=300)
                result = {"ready_seconds": ready, **_memory(worker)}
                probes = _probe_children(url, queue, 2 * effective)
                result["torch_in_child_modules"] = any(p["torch"] for p in probes)
                result["imagineer_in_child_modules"] = any(p["imagineer_worker"] for p in probes)
                return result
            finally:
                worker.stop()

        log(f"start-up and memory, {queue}: {reps} alternating runs of project, bare "
            f"(concurrency {effective} of {group.concurrency}), {tasks} tasks each")
        runs = common.alternate(reps, ["project", "bare"], one,
                                lambda line: log(line.split(" torch")[0]))
        entry: dict[str, Any] = {"guide_concurrency": group.concurrency, "effective_concurrency": effective,
                                 "memory_limit": group.memory_limit}
        for variant, values in runs.items():
            res: dict[str, Any] = {k: common.summary([v[k] for v in values]) for k in
                                   ("ready_seconds", "rss", "pss", "main_rss", "child_rss", "main_pss", "child_pss")}
            at_guide = [v["main_rss"] + group.concurrency * v["child_rss"] for v in values]
            res["rss_at_guide_concurrency"] = common.summary(at_guide)
            res["rss_fraction_of_limit"] = common.summary([a / group.memory_limit for a in at_guide])
            res["torch_loaded"] = any(v["torch_mapped"] or v["torch_in_child_modules"] for v in values)
            res["imagineer_loaded"] = any(v["imagineer_in_child_modules"] for v in values)
            entry[variant] = res
        out["queues"][queue] = entry
    return out


# --- containers ----------------------------------------------------------------------------------

def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def image_present(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30).returncode == 0


def _docker_run(name: str, image: str, group: common.Group, *, env: dict[str, str], args: list[str], tmp: Path,
                mounts: list[str]) -> list[str]:
    cmd = ["docker", "run", "-d", "--name", name, "--label", "imagineer-bench", "--network", "host",
           "--user", "10001:10001", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "--memory", str(group.memory_limit), "-v", f"{tmp}:/tmp",
           "--tmpfs", "/data:uid=10001,gid=10001", "--entrypoint", "celery"]
    for m in mounts:
        cmd += ["-v", m]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    return [*cmd, image, *args]


def run_containers(base_url: str, workdir: Path, *, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    groups = common.chart_groups()
    guide = common.guide_conf("redis://unused")
    out: dict[str, Any] = {"queues": {}}
    for queue in common.LIGHT_QUEUES:
        group = groups[queue]
        if not image_present(group.image):
            raise RuntimeError(f"image {group.image} is missing: make images")
        url = common.db_url(base_url, 3)

        def one(variant: str, rep: int, group: common.Group = group, url: str = url) -> float:
            name = f"imagineer-bench-{group.name}-{variant}-{rep}-{time.monotonic_ns()}"
            tmp = workdir / "containers" / name
            tmp.mkdir(parents=True)
            tmp.chmod(0o777)
            if variant == "project":
                env = {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url}
                args = common.worker_args("imagineer_worker.celery_app", group)
                ready, mounts = tmp / "imagineer-health" / "ready", []
            else:
                env = {"BENCH_CONF": json.dumps({**guide, "broker_url": url, "result_backend": url}),
                       "BENCH_READY_FILE": "/tmp/ready", "PYTHONPATH": "/opt/bench:/opt/app"}
                args = common.worker_args("bench.apps.bare", group)
                ready, mounts = tmp / "ready", [f"{common.ROOT / 'bench'}:/opt/bench/bench:ro"]
            cmd = _docker_run(name, group.image, group, env=env, args=args, tmp=tmp, mounts=mounts)
            started = time.monotonic()
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)
            try:
                while not ready.exists():
                    if time.monotonic() - started > 60:
                        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout
                        raise TimeoutError(f"{name} not ready after 60s:\n{logs[-2000:]}")
                    time.sleep(0.005)
                return time.monotonic() - started
            finally:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
                shutil.rmtree(tmp, ignore_errors=True)

        log(f"container start-up, {queue} ({group.image}): {reps} alternating runs of project, bare")
        runs = common.alternate(reps, ["project", "bare"], one, log)
        out["queues"][queue] = {variant: common.summary(values) for variant, values in runs.items()}
    out["probe_seconds"] = _probe_time(groups["default"], base_url, workdir, reps)
    return out


def _probe_time(group: common.Group, base_url: str, workdir: Path, reps: int) -> dict[str, Any]:
    """How long ``imagineer-workers probe readiness`` itself takes in a running container."""
    name = f"imagineer-bench-probe-{time.monotonic_ns()}"
    tmp = workdir / "containers" / name
    tmp.mkdir(parents=True)
    tmp.chmod(0o777)
    url = common.db_url(base_url, 3)
    cmd = _docker_run(name, group.image, group, env={"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url},
                      args=common.worker_args("imagineer_worker.celery_app", group), tmp=tmp, mounts=[])
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    try:
        common.wait_file(tmp / "imagineer-health" / "ready", 60)
        times = []
        for _ in range(reps):
            started = time.monotonic()
            subprocess.run(["docker", "exec", name, "imagineer-workers", "probe", "readiness"], check=True,
                           capture_output=True, timeout=30)
            times.append(time.monotonic() - started)
        return common.summary(times)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
