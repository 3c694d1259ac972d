"""``imagineer-workers doctor``: the guide's troubleshooting table as checks, one verdict each.

On-call does not have to remember which ``celery inspect`` answers which symptom. The checks are
also what the demo runs at its end (:func:`run_doctor`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from imagineer_worker.config import Settings, load_settings

QUEUE_ALERT_LENGTH = 25  # the guide's alert threshold
GUIDE_BEAT_MAX_AGE_HOURS = 12.0  # the guide's "no record_disk_usage run in 12 hours"
BEAT_GRACE_SECONDS = 300  # a fresh beat's first sample may come this late and still be pending


@dataclass
class Check:
    name: str
    verdict: str  # PASS | WARN | PEND (not due yet: not a failure) | FAIL
    detail: str
    fix: str = ""


def _check_broker(app: Any, timeout: float) -> Check:
    # not at import: `imagineer-workers probe` shares this module's importer and stays light
    from imagineer_worker.deadletter import plain_client
    from imagineer_worker.transport import redis_too_old, redis_version

    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            conn.default_channel.client.ping()
            client = plain_client(conn.default_channel)
            version, too_old = redis_version(client), redis_too_old(client)
    except Exception as exc:
        return Check("broker reachable", "FAIL", f"{type(exc).__name__}: {exc}",
                     "check CELERY_BROKER_URL, the Redis service and its TLS CA")
    if too_old:
        return Check("broker reachable", "FAIL", f"{too_old}: {conn.as_uri()}", "upgrade the broker")
    shown = f"Redis {'.'.join(map(str, version))}, " if version else ""
    return Check("broker reachable", "PASS", shown + conn.as_uri())


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
            n = sum(cast(int, client.llen(key)) for key in channel.queue_keys(q))
            verdict = "WARN" if n > QUEUE_ALERT_LENGTH else "PASS"
            checks.append(Check(f"queue {q}: length", verdict, f"{n} waiting",
                                "scale the worker group (kubectl scale)" if verdict == "WARN" else ""))
            dead_key = channel.global_keyprefix + q + DEAD_SUFFIX
            dead = cast(int, client.llen(dead_key)) if client.type(dead_key) in (b"list", "list") else 0
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


def beat_max_age_hours(settings: Settings) -> float:
    """How long ``record_disk_usage`` may go without a run before beat counts as broken.

    Twice its interval (one whole run missed, the next one late), at least the guide's 12 hours:
    with the guide's 6-hour interval that is the guide's figure, and a 12-hour interval (staging)
    does not sit on the edge. The chart's ImagineerBeatMissedRun window follows the same rule
    (``imagineer.beatMaxAge``); tests/chart/test_monitoring.py checks that they agree.
    """
    interval_hours = settings.disk_sample_minutes / 60 if settings.disk_sample_minutes else settings.disk_sample_hours
    return max(GUIDE_BEAT_MAX_AGE_HOURS, 2.0 * interval_hours)


def run_doctor(app: Any, queues: Sequence[str], timeout: float, beat_max_age: float | None = None,
               only: Sequence[str] = CHECKS) -> list[Check]:
    """Every check in ``only``; the beat threshold defaults to :func:`beat_max_age_hours`."""
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
        max_age = beat_max_age if beat_max_age is not None else beat_max_age_hours(load_settings())
        checks.append(_check_beat(app, max_age))
    return checks
