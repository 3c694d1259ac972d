"""``make bench``: every figure against its baseline, ``bench/results.json`` and a Markdown table.

    .venv/bin/python -m bench.run                 # the full run (about 12 minutes on 2 CPUs)
    .venv/bin/python -m bench.run --quick         # BENCH_QUICK=1: tiny counts, 1 repetition (CI smoke)
    .venv/bin/python -m bench.run --only throughput,images

Figures: throughput, latency (bench/throughput.py), memory and process start-up
(bench/startup.py), container start-up (bench/startup.py), images (bench/images.py), scaling
(bench/scaling.py), training on the CPU (bench/training.py). The GPU figure is bench/gpu.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common, report

FIGURES = ("throughput", "startup", "containers", "images", "scaling", "training")

FULL = {"reps": 5, "tasks": 1000, "latency_tasks": 300, "memory_tasks": 1000, "scaling_tasks": 2000,
        "training_steps": 25, "training_warmup": 5}
QUICK = {"reps": 1, "tasks": 100, "latency_tasks": 30, "memory_tasks": 50, "scaling_tasks": 40,
         "training_steps": 6, "training_warmup": 2}


def machine() -> dict[str, Any]:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()
    return {"cores": os.cpu_count(), "vcpus": common.vcpus(), "memory_gib": round(mem / 2**30, 1), "cpu": cpu,
            "python": platform.python_version(), "load_at_start": [round(x, 2) for x in load]}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("celery", "kombu", "redis", "torch", "diffusers", "peft")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1",
                        help="tiny counts, one repetition: checks that every figure is produced (BENCH_QUICK=1)")
    parser.add_argument("--only", default="", help=f"comma list of {', '.join(FIGURES)}")
    parser.add_argument("--reps", type=int, help="repetitions (default 5, quick 1)")
    parser.add_argument("--out", type=Path, default=common.ROOT / "bench" / "results.json")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (worker logs)")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.reps:
        sizes["reps"] = args.reps
    only = [f for f in args.only.split(",") if f] or list(FIGURES)
    unknown = set(only) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s): {', '.join(sorted(unknown))}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from imagineer_worker.testing.services import RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="imagineer-bench-"))
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick,
                               "sizes": sizes, "machine": machine(), "versions": versions(), "figures": {}}
    began = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {line}", flush=True)

    server = RedisServer(workdir / "redis").start()
    try:
        reps = sizes["reps"]
        for figure in only:
            started = time.monotonic()
            results["figures"][figure] = run_figure(figure, server.url, workdir, sizes, reps=reps, log=log)
            results["figures"][figure]["seconds"] = round(time.monotonic() - started, 1)
            server.client().flushall()
    finally:
        server.stop()
        subprocess.run("docker ps -aq --filter label=imagineer-bench | xargs -r docker rm -f", shell=True,
                       capture_output=True, check=False)
        if args.keep:
            log(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["total_seconds"] = round(time.monotonic() - began, 1)
    results["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table = report.markdown(results)
    if args.markdown:
        args.markdown.write_text(table)
    print()
    print(table)
    print(f"\nwrote {args.out} in {results['total_seconds']:.0f}s")
    return 0


def run_figure(figure: str, url: str, workdir: Path, sizes: dict[str, int], *, reps: int, log: Any) -> dict[str, Any]:
    if figure == "throughput":
        from bench import throughput

        return throughput.run(url, workdir, reps=reps, tasks=sizes["tasks"], latency_tasks=sizes["latency_tasks"],
                              log=log)
    if figure == "startup":
        from bench import startup

        return startup.run_process(url, workdir, reps=reps, tasks=sizes["memory_tasks"], log=log)
    if figure == "containers":
        from bench import startup

        return startup.run_containers(url, workdir, reps=reps, log=log)
    if figure == "images":
        from bench import images

        return images.run()
    if figure == "scaling":
        from bench import scaling

        return scaling.run(url, workdir, reps=reps, tasks=sizes["scaling_tasks"], log=log)
    if figure == "training":
        out = workdir / "training.json"
        cmd = [sys.executable, "-m", "bench.training", "--size", "tiny", "--device", "cpu", "--reps", str(reps),
               "--steps", str(sizes["training_steps"]), "--warmup", str(sizes["training_warmup"]),
               "--workdir", str(workdir / "training"), "--out", str(out)]
        proc = subprocess.Popen(cmd, cwd=common.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONPATH": str(common.ROOT)})
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(("training", "  rep")):
                log(line.rstrip())
        if proc.wait() != 0:
            raise RuntimeError(f"bench.training exited with {proc.returncode}")
        return dict(json.loads(out.read_text()))
    raise ValueError(figure)


if __name__ == "__main__":
    sys.exit(main())
