"""The Celery application every Imagineer worker and beat runs: ``-A imagineer_worker.celery_app``.

The settings come from :mod:`imagineer_worker.config` (the operations guide's defaults) and are
the same for every queue: late acks, prefetch 1, 25/30 min time limits, JSON only, events on
(the exporter needs them). Importing this module never imports torch: the training task loads it
inside the task, in the prefork child, so CUDA is never initialised in the parent.
"""

from __future__ import annotations

import logging
import ssl
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, bootsteps, signals
from celery.schedules import crontab
from kombu.utils.objects import cached_property

from imagineer_worker import health, transport
from imagineer_worker.concurrency import available_vcpus, effective_concurrency
from imagineer_worker.config import CONFIG_ENV, ConfigError, ConfigWatcher, Settings, get_settings
from imagineer_worker.logging_config import configure_logging
from imagineer_worker.tasks import names

log = logging.getLogger(__name__)

TASK_MODULES = (
    "imagineer_worker.tasks.maintenance",
    "imagineer_worker.tasks.scraping",
    "imagineer_worker.tasks.labeling",
    "imagineer_worker.tasks.training",
)


def task_routes(settings: Settings) -> dict[str, dict[str, str]]:
    """Each task name prefix goes to its queue; maintenance goes where the config says."""
    return {
        "imagineer.training.*": {"queue": "training"},
        "imagineer.scraping.*": {"queue": "scraping"},
        "imagineer.labeling.*": {"queue": "labeling"},
        "imagineer.maintenance.*": {"queue": settings.maintenance_queue},
    }


def task_modules(settings: Settings, queues: Any) -> list[str]:
    """The task modules a worker consuming ``queues`` (``-Q``) imports: those routed to them.

    A ``default`` worker then never loads Pillow, the SSRF guard or the other queues' payload
    models (8 MiB of RSS over its three processes, docs/benchmarks.md), and cannot be made to run
    another queue's task by a misrouted message: it refuses it as unregistered (dead-lettered).
    Without ``-Q``, or with a queue no route names, every module is imported.
    """
    consumed = {q.strip() for q in (queues.split(",") if isinstance(queues, str) else queues or ()) if q.strip()}
    # "imagineer.training.*" -> imagineer_worker.tasks.training
    routed = {f"imagineer_worker.tasks.{prefix.split('.')[1]}": route["queue"]
              for prefix, route in task_routes(settings).items()}
    if not consumed or not consumed <= set(routed.values()):
        return list(TASK_MODULES)
    return [module for module in TASK_MODULES if routed[module] in consumed]


class ImagineerCelery(Celery):  # type: ignore[misc]
    """The Celery app class; its ``celery worker`` program is :class:`imagineer_worker.workerapp.Worker`
    (named, not imported: beat and the CLI never load Celery's worker program)."""

    @cached_property
    def Worker(self) -> Any:  # noqa: N802 - Celery's name
        return self.subclass_with_self("imagineer_worker.workerapp:Worker")


def disk_sample_schedule(settings: Settings) -> tuple[crontab, int]:
    """``record_disk_usage``'s cron and its interval in seconds (at most that long until its first run)."""
    if settings.disk_sample_minutes:  # a short interval for tests and debugging
        minutes = settings.disk_sample_minutes
        return crontab(minute=f"*/{minutes}"), minutes * 60
    hours = settings.disk_sample_hours
    return crontab(minute=0, hour=f"*/{hours}"), hours * 3600


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The guide's periodic jobs, in UTC, all on ``IMAGINEER_MAINTENANCE_QUEUE``.

    Each entry expires after its own interval so a backlog (beat running, no consumer) never
    floods the queue with stale copies once a worker comes back.
    """
    queue = settings.maintenance_queue
    disk_schedule, disk_seconds = disk_sample_schedule(settings)
    return {
        "record-disk-usage": {
            "task": names.RECORD_DISK_USAGE,
            "schedule": disk_schedule,
            "options": {"queue": queue, "expires": disk_seconds},
        },
        "purge-stale-training": {
            "task": names.PURGE_STALE_TRAINING,
            "schedule": crontab(minute=0, hour=settings.purge_training_hour),
            "options": {"queue": queue, "expires": 24 * 3600},
        },
        "purge-stale-scrapes": {
            "task": names.PURGE_STALE_SCRAPES,
            "schedule": crontab(minute=0, hour=settings.purge_scrape_hour),
            "options": {"queue": queue, "expires": 24 * 3600},
        },
    }


def redis_ssl_options(url: str, settings: Settings) -> dict[str, Any] | None:
    """TLS options for ``rediss://``: verify the server against the configured CA bundle."""
    if not url.startswith("rediss://"):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_cert:
        options["ssl_ca_certs"] = settings.redis_ca_cert
    return options


def redbeat_config(settings: Settings) -> dict[str, Any]:
    """Beat's schedule and lock in Redis (celery-redbeat): two beats never fire an entry twice.

    A second beat (a rollout overlap, a second release, ``kubectl scale``) blocks on the lock; a
    beat killed with -9 holds it at most ``beat.lock_timeout`` seconds. Beat renews the lock on
    every tick, so ticks come at least five times per lock period.
    """
    url = settings.broker_url
    options: dict[str, Any] = {}
    if url.startswith("sentinel://"):  # kombu's sentinel://h1:p1;sentinel://h2:p2 → redbeat's options
        parts = [urlsplit(part) for part in url.split(";") if part.strip()]
        options = {"sentinels": [(p.hostname, p.port or 26379) for p in parts],
                   "service_name": settings.redis_sentinel_master,
                   "password": parts[0].password, "db": int(parts[0].path.strip("/") or 0)}
        url = "redis-sentinel://" + parts[0].netloc.rsplit("@", 1)[-1]
    return {
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": url,
        "redbeat_redis_use_ssl": redis_ssl_options(settings.broker_url, settings),
        "redbeat_redis_options": options,
        "redbeat_key_prefix": settings.key("redbeat:"),
        "redbeat_lock_timeout": settings.beat_lock_timeout,
        "beat_max_loop_interval": max(1, settings.beat_lock_timeout // 5),
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.redis_sentinel_master:
        transport["master_name"] = settings.redis_sentinel_master
    if settings.redis_key_prefix:  # every broker and result key, from kombu and Celery alike
        transport["global_keyprefix"] = settings.redis_key_prefix
    return {
        "broker_url": settings.broker_url,
        # Celery's consumer, keeping the messages it refuses in the dead-letter lists (deadletter.py)
        "worker_consumer": "imagineer_worker.deadletter:Consumer",
        "result_backend": settings.result_backend,
        "broker_use_ssl": redis_ssl_options(settings.broker_url, settings),
        "redis_backend_use_ssl": redis_ssl_options(settings.result_backend, settings),
        "broker_transport_options": transport,
        "result_backend_transport_options": dict(transport),
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle payload from the broker would be remote code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": settings.result_expires,
        "result_extended": True,
        # The guide's settings for every queue.
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        # A child killed by the OOM killer or the hard limit requeues its task instead of
        # acking it; a broker connection loss cancels late-ack tasks so they do not run twice.
        "task_reject_on_worker_lost": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Those requeues are capped (redelivery.py); a redelivered task that already succeeded
        # (its worker died between the result and the ack) is not run again.
        "worker_deduplicate_successful_tasks": True,
        # Soft shutdown stays off on every queue: SIGTERM is a warm shutdown that lets running
        # tasks finish, and the chart's grace period exceeds the hard time limit.
        "worker_soft_shutdown_timeout": 0.0,
        "task_track_started": True,
        # The exporter builds its metrics from these events.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_default_queue": "default",
        "task_create_missing_queues": True,
        "task_routes": task_routes(settings),
        "beat_schedule": beat_schedule(settings),
        **redbeat_config(settings),
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
    }


class HealthFiles(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: ``ready`` while consuming, ``alive`` refreshed by the event loop."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.dir = Path(get_settings().health_dir)
        self._timer: Any = None

    def start(self, parent: Any) -> None:
        (self.dir / "reconnecting").unlink(missing_ok=True)
        health.touch(self.dir / "alive")
        health.touch(self.dir / "ready")
        self._timer = parent.timer.call_repeatedly(health.HEARTBEAT_SECONDS, health.touch, (self.dir / "alive",))
        log.info("worker ready; health files in %s", self.dir, extra={"operation": "health"})

    def stop(self, parent: Any) -> None:
        """The consumer stops on a broker connection loss too: not ready, but alive (reconnecting)."""
        (self.dir / "ready").unlink(missing_ok=True)
        health.touch(self.dir / "reconnecting")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        for name in ("alive", "reconnecting"):
            (self.dir / name).unlink(missing_ok=True)


def create_app(settings: Settings) -> Celery:
    # beat opens its schedule file here before any signal fires
    settings.health_dir.mkdir(parents=True, exist_ok=True)
    transport.install()  # kombu's Redis transport with the hook that dead-letters poison items
    app = ImagineerCelery("imagineer", include=list(TASK_MODULES), task_cls="imagineer_worker.redelivery:Task")
    app.conf.update(celery_config(settings))
    app.steps["consumer"].add(HealthFiles)
    return app


def _settings_or_exit() -> Settings:
    """Load settings at import; a bad value stops start-up with one line, not a traceback."""
    try:
        return get_settings()
    except ConfigError as exc:
        print(f"imagineer-worker: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


celery = create_app(_settings_or_exit())
app = celery  # ``celery -A imagineer_worker.celery_app`` finds either name


# --- worker process hooks ------------------------------------------------------------------------

_watcher: ConfigWatcher | None = None


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = "INFO", **_: Any) -> None:
    configure_logging(loglevel or "INFO", get_settings().log_format)


_startup_notes: list[tuple[int, str, dict[str, Any]]] = []  # logged once logging is set up


@signals.worker_init.connect
def _apply_concurrency_rule(sender: Any, **_: Any) -> None:
    """``concurrency = min(vCPU, configured)`` with vCPU from the cgroup quota (the guide's rule)."""
    configured = sender.concurrency if isinstance(sender.concurrency, int) else None
    vcpus = available_vcpus()
    sender.concurrency = effective_concurrency(configured, vcpus)
    _startup_notes.append((
        logging.INFO,
        f"concurrency {sender.concurrency} (configured {configured}, vCPU {vcpus} from cgroup quota/affinity)",
        {"operation": "concurrency", "configured": configured, "vcpus": vcpus,
         "effective": sender.concurrency},
    ))


@signals.worker_init.connect
def _warn_about_cli_time_limits(sender: Any, **_: Any) -> None:
    """Tasks carry the configured limits, so ``--time-limit`` flags would be silently ignored."""
    for flag, configured in (("time-limit", sender.app.conf.task_time_limit),
                             ("soft-time-limit", sender.app.conf.task_soft_time_limit)):
        value = getattr(sender, flag.replace("-", "_"))
        if value is not None and value != configured:
            env = "IMAGINEER_TASK_" + flag.replace("-", "_").upper()
            _startup_notes.append((logging.WARNING, f"--{flag}={value} is ignored: the limit is "
                                   f"{configured}s from {env}", {"operation": "time_limits"}))


@signals.worker_init.connect
def _create_config_watcher(**_: Any) -> None:
    """Take the config file's baseline before the consumer starts (and the pod turns ready)."""
    global _watcher
    path = get_settings().source
    if _watcher is None and path:
        _watcher = ConfigWatcher(Path(path))


@signals.worker_ready.connect
def _start_config_watcher(**_: Any) -> None:
    for level, message, extra in _startup_notes:
        log.log(level, message, extra=extra)
    if _watcher is not None:
        _watcher.start()
        log.info("watching %s=%s for changes", CONFIG_ENV, _watcher.path, extra={"operation": "config_reload"})


@signals.task_prerun.connect
def _refresh_config_in_child(**_: Any) -> None:
    """Prefork children inherit the watcher; a cheap stat before each task picks up a reload."""
    if _watcher is not None:
        _watcher.check(announce=False)


# --- beat process hooks --------------------------------------------------------------------------


@signals.beat_init.connect
def _record_beat_start(sender: Any, **_: Any) -> None:
    """Note when beat started, so ``doctor`` tells "first sample not due yet" from "beat is dead"."""
    from imagineer_worker.tasks.maintenance import BEAT_STARTED  # the tasks' module, not at import

    try:
        sender.app.backend.client.set(get_settings().key(BEAT_STARTED), f"{time.time():.3f}")
    except Exception as exc:  # beat reconnects by itself; doctor then reports the beat as failed
        log.warning("could not record beat's start in the result backend: %s", exc, extra={"operation": "beat"})
