"""``imagineer-workers``: submit tasks, check a deployment (``doctor``), serve probes.

``doctor`` turns the guide's troubleshooting table into checks with one verdict each, so on-call
does not have to remember which ``celery inspect`` answers which symptom.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imagineer_worker import health, systemd
from imagineer_worker.config import QUEUES, ConfigError, load_settings, redact
from imagineer_worker.doctor import CHECKS, run_doctor

TASK_PREFIX = "imagineer."


def _app() -> Any:
    from imagineer_worker.celery_app import celery

    return celery


# --- submit ----------------------------------------------------------------------------------------


def _task_name(name: str) -> str:
    """``scraping.scrape_dataset`` is short for ``imagineer.scraping.scrape_dataset``."""
    short = name.split(".", 1)[0] in {"training", "scraping", "labeling", "maintenance"}
    return TASK_PREFIX + name if short else name


def _describe(state: str, info: Any) -> str:
    if state == "PROGRESS" and isinstance(info, dict):
        if "step" in info and "total" in info:
            loss = f" loss {info['loss']:.4f}" if isinstance(info.get("loss"), int | float) else ""
            return f"step {info['step']}/{info['total']}{loss}"
        if "done" in info and "total" in info:
            return f"{info['done']}/{info['total']}"
    return state


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        kwargs = json.loads(Path(args.kwargs_file).read_text() if args.kwargs_file else args.kwargs)
    except (OSError, ValueError) as exc:
        print(f"submit: --kwargs must be a JSON object: {exc}", file=sys.stderr)
        return 2
    if not isinstance(kwargs, dict):
        print("submit: --kwargs must be a JSON object", file=sys.stderr)
        return 2
    app = _app()
    options = {"queue": args.queue} if args.queue else {}
    result = app.send_task(_task_name(args.task), kwargs=kwargs, **options)
    print(json.dumps({"task_id": result.id, "task": _task_name(args.task)}))
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    last = ""
    while not result.ready():
        if time.monotonic() > deadline:
            print(f"submit: no result after {args.timeout:.0f}s (state {result.state})", file=sys.stderr)
            return 1
        line = _describe(result.state, result.info)
        if line != last:
            print(f"  {line}", file=sys.stderr)
            last = line
        time.sleep(0.5)
    if result.failed():
        print(f"submit: task failed: {result.result!r}", file=sys.stderr)
        return 1
    print(json.dumps(result.result, indent=2, default=str))
    return 0


# --- doctor ----------------------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.queues is None:  # the deployment's own queues (the chart sets them), else all four
        queues = load_settings().expected_queues or list(QUEUES)
    else:
        queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    only = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        print(f"doctor: unknown check {unknown[0]!r}; choose from {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    checks = run_doctor(_app(), queues, args.timeout, args.beat_max_age_hours, only)
    if args.json:
        print(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{c.verdict:<4}  {c.name:<{width}}  {c.detail}" + (f"\n      fix: {c.fix}" if c.fix else ""))
    failed = sum(c.verdict == "FAIL" for c in checks)
    print(f"doctor: {len(checks)} checks, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


# --- probe / config ----------------------------------------------------------------------------


def cmd_probe(args: argparse.Namespace) -> int:
    ok, why = health.check(args.kind, load_settings().health_dir, args.max_age)
    print(why)
    return 0 if ok else 1


def cmd_config(args: argparse.Namespace) -> int:
    settings = load_settings()
    shown = {k: redact(k, v) for k, v in settings.as_dict().items()}
    print(json.dumps(shown, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagineer-workers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", help="enqueue a task, e.g. submit scraping.scrape_dataset --kwargs '{...}'")
    p.add_argument("task", help="task name, with or without the 'imagineer.' prefix")
    p.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    p.add_argument("--kwargs-file", help="read the JSON keyword arguments from a file")
    p.add_argument("--queue", help="override the routed queue")
    p.add_argument("--wait", action="store_true", help="wait for the result, showing progress")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (default 3600)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("doctor", help="check broker, consumers, queue lengths, settings and beat")
    p.add_argument("--queues", help="queues that must have a consumer (default: IMAGINEER_EXPECTED_QUEUES, "
                   "which the chart sets to the queues its groups consume; else all four)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for worker replies")
    p.add_argument("--beat-max-age-hours", type=float, default=None,
                   help="default: twice the record_disk_usage interval, at least 12 (the chart's alert uses the same)")
    p.add_argument("--checks", default=",".join(CHECKS),
                   help=f"comma list of checks to run (default: all of {','.join(CHECKS)})")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("probe", help="Kubernetes probe from the worker's health files (exit 0 = healthy)")
    p.add_argument("kind", choices=("liveness", "readiness"))
    p.add_argument("--max-age", type=float, default=health.DEFAULT_MAX_AGE)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("config", help="validate the configuration and print it (secrets redacted)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("render", help="render deployment files from the chart's values (render systemd ...)")
    systemd.add_parser(p.add_subparsers(dest="target", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"imagineer-workers: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
