"""``make demo``: the whole job on one machine, on a real Redis, with real worker processes.

Starts ``redis-server`` on a free loopback port, one worker per queue with the guide's
concurrency (default 2, training 1, scraping 2, labeling 4 — each capped at the vCPUs), a beat,
and a local web site; then runs scrape → labeling → a tiny LoRA training → maintenance through
the queues, and prints queues, workers and task results. Exit code 0 only if every step succeeded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagineer_worker.tasks import names
from imagineer_worker.testing.fixture_site import FixtureSite
from imagineer_worker.testing.services import CeleryProcess, RedisServer

GUIDE_WORKERS = {"default": 2, "training": 1, "scraping": 2, "labeling": 4}


@dataclass
class Step:
    name: str
    task: str
    kwargs: dict[str, Any]
    timeout: float = 300


@dataclass
class Outcome:
    step: Step
    task_id: str
    queue: str
    state: str
    seconds: float
    summary: str


def _summary(result: Any) -> str:
    if not isinstance(result, dict):
        return str(result)[:70]
    keys = ("images", "duplicates", "skipped", "labeled", "unlabeled", "steps", "final_loss", "device",
            "removed", "dry_run")
    parts = []
    for k in keys:
        if k in result:
            v = result[k]
            v = f"{v:.4f}" if isinstance(v, float) else (len(v) if isinstance(v, list) else v)
            parts.append(f"{k}={v}")
    if "areas" in result:
        parts.append("bytes=" + str(sum(a["bytes"] for a in result["areas"].values())))
    return " ".join(parts)[:80]


def run_step(app: Any, step: Step) -> Outcome:
    started = time.monotonic()
    result = app.send_task(step.task, kwargs=step.kwargs)
    print(f"-> {step.name}: {step.task} ({result.id})", flush=True)
    last = None
    while not result.ready() and time.monotonic() - started < step.timeout:
        info = result.info if result.state == "PROGRESS" else None
        if info and info != last and "step" in info:
            print(f"   step {info['step']}/{info['total']} loss {info.get('loss', 0):.4f}", flush=True)
            last = info
        time.sleep(0.2)
    seconds = time.monotonic() - started
    state = result.state if result.ready() else "TIMEOUT"
    queue = getattr(result, "queue", None) or "?"
    summary = _summary(result.result) if state == "SUCCESS" else repr(result.result)[:80]
    return Outcome(step, result.id, queue, state, seconds, summary)


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def status(app: Any, outcomes: list[Outcome]) -> None:
    from imagineer_worker.doctor import run_doctor

    inspector = app.control.inspect(timeout=3)
    active_queues = inspector.active_queues() or {}
    stats = inspector.stats() or {}
    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        lengths = {q: client.llen(q) for q in GUIDE_WORKERS}
    consumers = {q: sorted(w for w, qs in active_queues.items() if q in {x["name"] for x in qs})
                 for q in GUIDE_WORKERS}
    print_table("Queues", ["queue", "waiting", "consumers"],
                [[q, lengths[q], ", ".join(consumers[q]) or "NONE"] for q in GUIDE_WORKERS])
    print_table("Workers", ["worker", "queues", "concurrency", "tasks done"],
                [[w, ",".join(q["name"] for q in active_queues.get(w, [])),
                  s.get("pool", {}).get("max-concurrency", "?"), sum(s.get("total", {}).values())]
                 for w, s in sorted(stats.items())])
    print_table("Tasks", ["step", "task", "queue", "state", "seconds", "result"],
                [[o.step.name, o.step.task.removeprefix("imagineer."), o.queue, o.state, f"{o.seconds:.1f}",
                  o.summary] for o in outcomes])
    checks = run_doctor(app, list(GUIDE_WORKERS), timeout=3)
    print_table("Doctor", ["verdict", "check", "detail"], [[c.verdict, c.name, c.detail] for c in checks])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".demo"))
    parser.add_argument("--steps", type=int, default=30, help="LoRA training steps")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    data = workdir / "data"
    data.mkdir(parents=True)

    redis = RedisServer(workdir / "redis").start()
    os.environ.update({
        "CELERY_BROKER_URL": redis.url, "CELERY_RESULT_BACKEND": redis.url,
        "IMAGINEER_DATA_DIR": str(data), "IMAGINEER_SCRAPING_ALLOW_NETWORKS": "127.0.0.1/32",
        "IMAGINEER_SCRAPING_DOMAIN_INTERVAL_SECONDS": "0.1", "HF_HUB_OFFLINE": "1",
        "IMAGINEER_LOG_FORMAT": "json",
    })
    print(f"redis-server on {redis.url}; data in {data}; logs in {workdir / 'logs'}", flush=True)
    site = FixtureSite().start()
    procs = [CeleryProcess(q, env={}, logdir=workdir / "logs", queues=q, concurrency=n)
             for q, n in GUIDE_WORKERS.items()]
    procs.append(CeleryProcess("beat", env={}, logdir=workdir / "logs", beat=True))
    try:
        for p in procs:
            p.start(wait=False)
        from imagineer_worker.training.tiny import build_tiny_pipeline

        model = build_tiny_pipeline(workdir / "models" / "tiny-sd")
        for p in procs:
            if not p.beat:
                p.wait_ready()
        print(f"workers up: {', '.join(p.name for p in procs)}; tiny model in {model}", flush=True)

        from imagineer_worker.celery_app import celery

        steps = [
            Step("scrape", names.SCRAPE_DATASET,
                 {"dataset_id": "demo", "page_url": f"{site.base_url}/gallery.html"}),
            Step("label", names.LABEL_DATASET,
                 {"dataset_id": "demo", "batch_size": 2, "default_caption": "a square"}),
            Step("train", names.TRAIN_LORA,
                 {"job_id": "demo-lora", "base_model": str(model), "manifest": "labels/demo/manifest.json",
                  "steps": args.steps, "resolution": 64, "checkpoint_every": 10}, timeout=900),
            Step("disk usage", names.RECORD_DISK_USAGE, {}),
            Step("purge training", names.PURGE_STALE_TRAINING, {"dry_run": True}),
            Step("purge scrapes", names.PURGE_STALE_SCRAPES, {"dry_run": True}),
        ]
        outcomes: list[Outcome] = []
        for step in steps:
            outcome = run_step(celery, step)
            outcomes.append(outcome)
            if outcome.state != "SUCCESS":
                print(f"   {step.name} ended {outcome.state}: {outcome.summary}", file=sys.stderr)
                break
        status(celery, outcomes)
        ok = len(outcomes) == len(steps) and all(o.state == "SUCCESS" for o in outcomes)
        print(f"\ndemo: {'every step succeeded' if ok else 'FAILED'}")
        return 0 if ok else 1
    finally:
        for p in reversed(procs):
            p.stop()
        site.stop()
        redis.stop()


if __name__ == "__main__":
    raise SystemExit(main())
