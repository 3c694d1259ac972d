"""Where a worker's time goes: py-spy over a worker draining no-op tasks (for docs/benchmarks.md).

    .venv/bin/pip install py-spy==0.4.3   # not a dependency of the bench itself
    .venv/bin/python -m bench.profile --app project --tasks 5000
    .venv/bin/python -m bench.profile --app bare --tasks 5000

Samples the worker's main process and its prefork children (``--subprocesses``) while they drain
``--tasks`` no-op tasks, writes ``bench/profiles/<app>.txt`` (py-spy's collapsed stacks, for
flamegraph tools) and prints, per process role, the share of samples whose stack passes through
each of a few places: the project's modules, kombu's Redis transport, logging, the result backend,
events.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench import common

MARKERS = {
    "imagineer_worker (any frame)": "imagineer_worker",
    "imagineer transport screen": "message_problem",
    "logging (format+write)": "logging/__init__.py",
    "json log formatter": "logging_config.py",
    "result backend (store_result)": "store_result",
    "task events (send)": "events/dispatcher.py",
    "kombu redis transport": "kombu/transport/redis.py",
    "billiard pool dispatch": "billiard/pool.py",
    "redis client": "redis/connection.py",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=("project", "bare"), default="project")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=common.ROOT / "bench" / "profiles")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy==0.4.3", file=sys.stderr)
        return 2
    from imagineer_worker.testing.services import RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    server = RedisServer(workdir / "redis").start()
    try:
        group = common.chart_groups()["default"]
        queue = group.queues[0]
        url = common.db_url(server.url, 1)
        if args.app == "project":
            worker = common.project_worker("default", url, workdir, group)
        else:
            worker = common.bare_worker("default", common.guide_conf(url), workdir, group)
        ids = common.produce(common.db_url(server.url, 0), queue, args.tasks)
        staging = redis.Redis.from_url(common.db_url(server.url, 0))
        worker.start()
        worker.wait_ready()
        time.sleep(1)
        args.out.mkdir(parents=True, exist_ok=True)
        raw = args.out / f"{args.app}.txt"
        spy_proc = subprocess.Popen([spy, "record", "--subprocesses", "--format", "raw", "--rate", str(args.rate),
                                     "--output", str(raw), "--pid", str(worker.proc.pid)],  # type: ignore[union-attr]
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        common.copy_queue(staging, queue, 1)
        finished = common.wait_results(redis.Redis.from_url(url), ids, queue, timeout=600)
        spy_proc.send_signal(2)
        spy_proc.wait(30)
        seconds = max(finished.done) - min(finished.starts)
        print(f"{args.app}: {args.tasks} tasks in {seconds:.2f}s = {args.tasks / seconds:.0f}/s")
        worker.stop()
        report(raw)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(raw: Path) -> None:
    """Per role (main process / pool children): busy samples and the share through each marker."""
    roles: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    busy: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        role = "children" if "billiard/pool.py" in stack and "workloop" in stack else "main"
        if "poll" in stack.rsplit(";", 1)[-1] or "select" in stack.rsplit(";", 1)[-1]:
            continue  # idle in the event loop
        busy[role] += n
        for label, marker in MARKERS.items():
            if marker in stack:
                roles[role][label] += n
    for role in ("main", "children"):
        total = busy[role] or 1
        print(f"\n{role}: {busy[role]} busy samples")
        for label, n in roles[role].most_common():
            print(f"  {label:34s} {100 * n / total:5.1f} %")


if __name__ == "__main__":
    sys.exit(main())
