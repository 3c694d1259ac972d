"""Worker configuration: defaults < ``config.yaml`` (``IMAGINEER_CONFIG``) < environment.

Every setting is declared once in ``FIELDS``: its YAML key, its environment variable, its type,
its default (the operations guide's value) and its bounds. Loading never raises a traceback at
start-up: ``ConfigError`` carries one message naming the offending key, and the entry points print
it and exit.

Kubernetes updates a mounted ConfigMap in place (an atomic symlink swap), so ``ConfigWatcher``
re-reads the file when its resolved target or mtime changes and keeps the last good settings when
the new file is invalid.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

QUEUES: tuple[str, ...] = ("default", "training", "scraping", "labeling")
CONFIG_ENV = "IMAGINEER_CONFIG"


class ConfigError(ValueError):
    """An invalid setting; the message names the key (YAML path and environment variable)."""


@dataclass(frozen=True)
class Field:
    name: str  # attribute of Settings and YAML path ("scraping.max_response_bytes")
    type: type
    default: Any
    env: str = ""  # environment variable; derived from the name when empty
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""

    @property
    def env_name(self) -> str:
        return self.env or "IMAGINEER_" + self.name.replace(".", "_").upper()

    @property
    def attr(self) -> str:
        return self.name.replace(".", "_")


FIELDS: tuple[Field, ...] = (
    # --- broker and results (the guide's CELERY_* variables) -----------------------------------
    Field("broker_url", str, "redis://localhost:6379/0", env="CELERY_BROKER_URL"),
    Field("result_backend", str, "redis://localhost:6379/0", env="CELERY_RESULT_BACKEND"),
    Field("result_expires", int, 86400, env="CELERY_RESULT_EXPIRES", minimum=60,
          help="seconds a task result stays in Redis"),
    Field("redis.ca_cert", str, "", help="CA bundle for rediss:// URLs (empty: system CAs)"),
    Field("redis.sentinel_master", str, "", help="master name for sentinel:// URLs"),
    Field("redis.key_prefix", str, "",
          help="prefix of every key the workers and beat write (a Redis shared with other applications)"),
    # --- time limits: one place, the chart passes the same numbers -----------------------------
    Field("task_soft_time_limit", int, 25 * 60, minimum=1),
    Field("task_time_limit", int, 30 * 60, minimum=1),
    Field("visibility_timeout", int, 3600, minimum=1,
          help="seconds before Redis redelivers an unacked task; must exceed task_time_limit"),
    # --- redelivery: a task that kills its worker every time must not loop ----------------------
    Field("max_deliveries", int, 3, minimum=1,
          help="deliveries of one task id before it fails and its message is dead-lettered"),
    Field("dead_letter_max_length", int, 10000, minimum=1,
          help="length bound of each <queue>.dead list (the oldest items are dropped)"),
    # --- beat schedule (the guide's IMAGINEER_* variables) -------------------------------------
    Field("beat.lock_timeout", int, 60, minimum=2,
          help="seconds a dead beat holds RedBeat's lock; a second beat waits for it, never fires twice"),
    Field("maintenance_queue", str, "default", choices=QUEUES),
    Field("expected_queues", list, [],
          help="the queues this deployment consumes (the chart sets them); doctor checks these, empty: all four"),
    Field("purge_training_hour", int, 3, minimum=0, maximum=23),
    Field("purge_scrape_hour", int, 4, minimum=0, maximum=23),
    Field("disk_sample_hours", int, 6, minimum=1, maximum=24),
    Field("disk_sample_minutes", int, 0, minimum=0, maximum=59,
          help="when set, sample disk usage every N minutes instead (tests, debugging)"),
    # --- storage ------------------------------------------------------------------------------
    Field("data_dir", Path, Path("/data")),
    Field("purge.training_max_age_days", float, 14.0, minimum=0),
    Field("purge.scrape_max_age_days", float, 30.0, minimum=0),
    Field("disk_samples_keep", int, 1000, minimum=1),
    # --- scraping -----------------------------------------------------------------------------
    Field("scraping.allow_networks", list, [],
          help="CIDRs or host names the scraper may reach although private/loopback"),
    Field("scraping.timeout_seconds", float, 10.0, minimum=0.1),
    Field("scraping.max_response_bytes", int, 20 * 1024 * 1024, minimum=1),
    Field("scraping.max_redirects", int, 5, minimum=0, maximum=20),
    Field("scraping.domain_interval_seconds", float, 1.0, minimum=0,
          help="minimum time between two requests to one domain, shared by all scrapers"),
    Field("scraping.user_agent", str, "imagineer-scraper/1.0"),
    # --- worker behaviour ---------------------------------------------------------------------
    Field("config_reload_seconds", float, 10.0, minimum=0.1),
    Field("health.dir", Path, Path("/tmp/imagineer-health"),
          help="where the worker writes its liveness/readiness files for the probes"),
    Field("log_format", str, "json", choices=("json", "text")),
)

_BY_NAME = {f.name: f for f in FIELDS}


def _settings_fields() -> list[tuple[str, Any, Any]]:
    out = []
    for f in FIELDS:
        default = f.default
        factory = (lambda d=default: list(d)) if isinstance(default, list) else None
        fld = dataclasses.field(default_factory=factory) if factory else dataclasses.field(default=default)
        out.append((f.attr, f.type, fld))
    # The YAML file the settings came from ("" when none): the worker watches it for reloads.
    out.append(("source", str, dataclasses.field(default="", compare=False)))
    return out


_Base = dataclasses.make_dataclass("_Base", _settings_fields(), frozen=True)


class Settings(_Base):  # type: ignore[misc, valid-type]
    """Validated, immutable settings. Attributes are the field names with dots as underscores."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.attr) for f in FIELDS}

    def key(self, name: str) -> str:
        """A Redis key the workers write, under ``redis.key_prefix`` (kombu's ``global_keyprefix``)."""
        return f"{self.redis_key_prefix}{name}"

    def diff(self, other: Settings) -> dict[str, tuple[Any, Any]]:
        """Keys whose value differs, as ``{key: (self value, other value)}``."""
        a, b = self.as_dict(), other.as_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name not in _BY_NAME:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _coerce(f: Field, raw: Any, where: str) -> Any:
    """Convert one raw value (YAML scalar or env string) to the field's type, with bounds."""
    label = f"{f.name} ({where})"
    try:
        value: Any
        if f.type is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = int(str(raw).strip()) if not isinstance(raw, int | float) else int(raw)
        elif f.type is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        elif f.type is list:
            if isinstance(raw, str):
                value = [item.strip() for item in raw.split(",") if item.strip()]
            elif isinstance(raw, list) and all(isinstance(i, str) for i in raw):
                value = list(raw)
            else:
                raise ValueError
        elif f.type is Path:
            if not isinstance(raw, str | Path) or not str(raw).strip():
                raise ValueError
            value = Path(str(raw))
        else:
            if not isinstance(raw, str):
                raise ValueError
            value = raw
    except (TypeError, ValueError):
        raise ConfigError(f"invalid {label}: {raw!r} is not a valid {f.type.__name__}") from None
    if f.minimum is not None and value < f.minimum:
        raise ConfigError(f"invalid {label}: {value!r} is below the minimum {f.minimum:g}")
    if f.maximum is not None and value > f.maximum:
        raise ConfigError(f"invalid {label}: {value!r} is above the maximum {f.maximum:g}")
    if f.choices is not None and value not in f.choices:
        raise ConfigError(f"invalid {label}: {value!r} is not one of {', '.join(f.choices)}")
    return value


def _check_network(entry: str) -> None:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        if not entry.replace("-", "").replace(".", "").isalnum():
            raise ConfigError(
                f"invalid scraping.allow_networks: {entry!r} is neither a CIDR nor a host name"
            ) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a config file into flat ``{dotted.key: value}``; unknown keys are errors (typos)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {CONFIG_ENV}={path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"malformed YAML in {CONFIG_ENV}={path}{where}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{CONFIG_ENV}={path} must hold a mapping of settings, not {type(data).__name__}")
    flat = _flatten(data)
    unknown = sorted(set(flat) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]} in {CONFIG_ENV}={path}")
    return flat


def load_settings(environ: Mapping[str, str] | None = None, path: Path | None = None) -> Settings:
    """Build settings from defaults, the YAML file (``IMAGINEER_CONFIG`` or ``path``) and env."""
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    from_file = read_yaml(path) if path is not None else {}
    values: dict[str, Any] = {}
    for f in FIELDS:
        if f.env_name in env and env[f.env_name] != "":
            values[f.attr] = _coerce(f, env[f.env_name], f"environment {f.env_name}")
        elif f.name in from_file:
            values[f.attr] = _coerce(f, from_file[f.name], f"{path}")
    settings = Settings(**values, source=str(path) if path else "")
    for entry in settings.scraping_allow_networks:
        _check_network(entry)
    if settings.task_soft_time_limit >= settings.task_time_limit:
        raise ConfigError(
            "invalid task_soft_time_limit: "
            f"{settings.task_soft_time_limit}s must be below task_time_limit ({settings.task_time_limit}s)"
        )
    if settings.visibility_timeout <= settings.task_time_limit:
        raise ConfigError(
            f"invalid visibility_timeout: {settings.visibility_timeout}s must exceed task_time_limit "
            f"({settings.task_time_limit}s), or Redis redelivers tasks that are still running"
        )
    if any(c.isspace() or c in "*?[]" for c in settings.redis_key_prefix):
        raise ConfigError(f"invalid redis.key_prefix: {settings.redis_key_prefix!r} has blanks or glob characters")
    if settings.redis_ca_cert and not Path(settings.redis_ca_cert).is_file():
        raise ConfigError(f"invalid redis.ca_cert: {settings.redis_ca_cert} is not a readable file")
    return settings


# --- the process-wide current settings and their reload -----------------------------------------

_lock = threading.Lock()
_current: Settings | None = None


def get_settings() -> Settings:
    """The current settings (loaded on first use; replaced by ``ConfigWatcher`` on reload)."""
    global _current
    with _lock:
        if _current is None:
            _current = load_settings()
        return _current


def set_settings(settings: Settings | None) -> None:
    global _current
    with _lock:
        _current = settings


def redact(key: str, value: Any) -> str:
    """A setting as logs and ``imagineer-workers config`` show it: URLs (they may carry a password) hidden."""
    return "<redacted>" if key in ("broker_url", "result_backend") else str(value)


@dataclass
class ConfigWatcher:
    """Reload the settings file when it changes; keep the last good settings on an invalid file.

    ``check()`` costs one ``stat`` and is safe to call before every task; ``start()`` runs it on a
    daemon thread every ``config_reload_seconds`` so the reload is logged even when idle.
    """

    path: Path
    _signature: tuple[str, float, int] | None = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        self._signature = self._stat()

    def _stat(self) -> tuple[str, float, int] | None:
        try:
            real = os.path.realpath(self.path)
            st = os.stat(real)
        except OSError:
            return None
        return real, st.st_mtime, st.st_size

    def check(self, announce: bool = True) -> bool:
        """Reload if the file changed; return True when new settings were applied.

        ``announce=False`` (prefork children) logs at debug level: the main process already
        logged the same reload.
        """
        signature = self._stat()
        if signature is None or signature == self._signature:
            return False
        self._signature = signature
        old = get_settings()
        try:
            new = load_settings()
        except ConfigError as exc:
            log.log(logging.ERROR if announce else logging.DEBUG,
                    "config reload rejected, keeping the last good config: %s", exc,
                    extra={"operation": "config_reload", "status": "rejected"})
            return False
        changes = {k: {"old": redact(k, a), "new": redact(k, b)} for k, (a, b) in old.diff(new).items()}
        set_settings(new)
        log.log(logging.INFO if announce else logging.DEBUG, "config reloaded from %s: %s", self.path,
                ", ".join(sorted(changes)) or "no setting changed",
                extra={"operation": "config_reload", "status": "applied", "changes": changes})
        return True

    def start(self) -> threading.Thread:
        def run() -> None:
            while not self._stop.wait(get_settings().config_reload_seconds):
                self.check()

        thread = threading.Thread(target=run, name="config-watcher", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
