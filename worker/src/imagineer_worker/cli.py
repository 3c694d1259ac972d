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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagineer_worker import health, systemd
from imagineer_worker.config import QUEUES, ConfigError, load_settings

TASK_PREFIX = "imagineer."
QUEUE_ALERT_LENGTH = 25  # the guide's alert threshold
BEAT_MAX_AGE_HOURS = 12.0  # the guide's "no record_disk_usage run in 12 hours"
BEAT_GRACE_SECONDS = 300  # a fresh beat's first sample may come this late and still be pending


def _app():  # type: ignore[no-untyped-def]
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


@dataclass
class Check:
    name: str
    verdict: str  # PASS | WARN | PEND (not due yet: not a failure) | FAIL
    detail: str
    fix: str = ""


def _check_broker(app: Any, timeout: float) -> Check:
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            conn.default_channel.client.ping()
    except Exception as exc:
        return Check("broker reachable", "FAIL", f"{type(exc).__name__}: {exc}",
                     "check CELERY_BROKER_URL, the Redis service and its TLS CA")
    return Check("broker reachable", "PASS", conn.as_uri())


def _check_consumers(app: Any, queues: Sequence[str], timeout: float) -> tuple[list[Check], dict[str, Any]]:
    inspector = app.control.inspect(timeout=timeout)
    active = inspector.active_queues() or {}
    consumers: dict[str, list[str]] = {q: [] for q in queues}
    for worker, worker_queues in active.items():
        for q in worker_queues:
            consumers.setdefault(q["name"], []).append(worker)
    checks = []
    for q in queues:
        if consumers[q]:
            checks.append(Check(f"queue {q}: consumers", "PASS", ", ".join(sorted(consumers[q]))))
        else:
            checks.append(Check(f"queue {q}: consumers", "FAIL", "no worker consumes it: tasks stay PENDING",
                                f"start a worker with -Q {q} (check the queue name for typos)"))
    return checks, (inspector.conf() or {})


def _check_lengths(app: Any, queues: Sequence[str]) -> list[Check]:
    """Each queue's key type and length (priority sub-lists included) and its dead-letter list."""
    from imagineer_worker.deadletter import DEAD_SUFFIX, plain_client

    checks = []
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        client = plain_client(channel)
        for q in queues:
            wrong = channel.wrong_type_key(q, client)
            if wrong:
                key, kind = wrong
                checks.append(Check(f"queue {q}: key type", "FAIL", f"{key!r} is a Redis {kind}, not a list: "
                                    "workers skip this queue", f"inspect it (redis-cli TYPE {key}), then DEL or "
                                    "RENAME it; workers resume by themselves"))
                continue
            n = sum(int(client.llen(key)) for key in channel.queue_keys(q))
            verdict = "WARN" if n > QUEUE_ALERT_LENGTH else "PASS"
            checks.append(Check(f"queue {q}: length", verdict, f"{n} waiting",
                                "scale the worker group (kubectl scale)" if verdict == "WARN" else ""))
            dead_key = channel.global_keyprefix + q + DEAD_SUFFIX
            dead = int(client.llen(dead_key)) if client.type(dead_key) in (b"list", "list") else 0
            if dead:
                checks.append(Check(f"queue {q}: dead letters", "WARN", f"{dead} in {dead_key}",
                                    f"read them (redis-cli LRANGE {dead_key} 0 9); replay one after a fix with "
                                    f"LMOVE {dead_key} {channel.global_keyprefix}{q} LEFT LEFT, or DEL the list"))
    return checks


def _check_worker_conf(confs: dict[str, Any]) -> list[Check]:
    if not confs:
        return [Check("worker settings", "WARN", "no worker answered `inspect conf`")]
    bad_prefetch = {w: c.get("worker_prefetch_multiplier") for w, c in confs.items()
                    if c.get("worker_prefetch_multiplier") != 1}
    expires = {w: c.get("result_expires") for w, c in confs.items()}
    no_expiry = [w for w, e in expires.items() if not e]
    return [
        Check("prefetch multiplier", "FAIL" if bad_prefetch else "PASS",
              f"not 1 on {bad_prefetch}" if bad_prefetch else f"1 on {len(confs)} worker(s)",
              "set worker_prefetch_multiplier=1 (Redis memory spikes otherwise)" if bad_prefetch else ""),
        Check("result_expires", "FAIL" if no_expiry else "PASS",
              f"never expire on {no_expiry}" if no_expiry else
              ", ".join(sorted({f'{e}s' for e in expires.values()})),
              "set CELERY_RESULT_EXPIRES (orphaned results fill Redis)" if no_expiry else ""),
    ]


def _check_beat(app: Any, max_age_hours: float) -> Check:
    # not at import: probes stay light
    from imagineer_worker.celery_app import disk_sample_schedule
    from imagineer_worker.tasks.maintenance import BEAT_STARTED, DISK_USAGE_LAST_RUN

    client, key = app.backend.client, load_settings().key
    raw = client.get(key(DISK_USAGE_LAST_RUN))
    if raw is None:
        started = client.get(key(BEAT_STARTED))
        _, interval = disk_sample_schedule(load_settings())
        if started is not None and time.time() - float(started) < interval + BEAT_GRACE_SECONDS:
            since = (time.time() - float(started)) / 60
            return Check("beat: record_disk_usage", "PEND",
                         f"beat started {since:.0f} min ago; the first sample is due within {interval / 3600:g} h")
        return Check("beat: record_disk_usage", "FAIL",
                     "never ran (no record in the result backend)" + ("" if started else "; beat never started"),
                     "deploy the dedicated beat; check it consumes IMAGINEER_MAINTENANCE_QUEUE")
    age_h = (time.time() - float(raw)) / 3600
    if age_h > max_age_hours:
        return Check("beat: record_disk_usage", "FAIL", f"last ran {age_h:.1f} h ago (limit {max_age_hours:g} h)",
                     "beat not running or clock skew: check the beat pod and NTP")
    return Check("beat: record_disk_usage", "PASS", f"last ran {age_h * 60:.0f} min ago")


CHECKS = ("broker", "consumers", "lengths", "settings", "beat")


def run_doctor(queues: Sequence[str], timeout: float, beat_max_age_hours: float,
               only: Sequence[str] = CHECKS) -> list[Check]:
    app = _app()
    broker = _check_broker(app, timeout)
    if broker.verdict == "FAIL":
        return [broker]
    checks = [broker]
    if "consumers" in only or "settings" in only:
        consumer_checks, confs = _check_consumers(app, queues, timeout)
        checks += consumer_checks if "consumers" in only else []
    if "lengths" in only:
        checks += _check_lengths(app, queues)
    if "settings" in only:
        checks += _check_worker_conf(confs)
    if "beat" in only:
        checks.append(_check_beat(app, beat_max_age_hours))
    return checks


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
    checks = run_doctor(queues, args.timeout, args.beat_max_age_hours, only)
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
    shown = {k: ("<redacted>" if k in ("broker_url", "result_backend") else str(v))
             for k, v in settings.as_dict().items()}
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
    p.add_argument("--beat-max-age-hours", type=float, default=BEAT_MAX_AGE_HOURS)
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
