"""Worker configuration: defaults < ``config.yaml`` (``IMAGINEER_CONFIG``) < environment.

Every setting is declared once, as a typed field of :class:`Settings`: its type, its default (the
operations guide's value) and, through :func:`setting`, its YAML key, environment variable and
bounds; ``FIELDS`` reads them back for loading and validation. Loading never raises a traceback at
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
import typing
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


def setting(default: Any, *, key: str = "", env: str = "", minimum: float | None = None,
            maximum: float | None = None, choices: tuple[str, ...] | None = None, help: str = "") -> Any:
    """A :class:`Settings` field: its default, and its YAML key (``key``, when it has a dot),
    environment variable and bounds as metadata, read back into :data:`FIELDS`."""
    meta = {"key": key, "env": env, "minimum": minimum, "maximum": maximum, "choices": choices, "help": help}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Validated, immutable settings: one typed field per setting, its default the guide's value.

    Each field's :func:`setting` metadata carries its YAML key, environment variable and bounds;
    :data:`FIELDS` reads them back, so this class is the one table of settings.
    """

    # --- broker and results (the guide's CELERY_* variables) -----------------------------------
    broker_url: str = setting("redis://localhost:6379/0", env="CELERY_BROKER_URL")
    result_backend: str = setting("redis://localhost:6379/0", env="CELERY_RESULT_BACKEND")
    result_expires: int = setting(
        86400, env="CELERY_RESULT_EXPIRES", minimum=60, help="seconds a task result stays in Redis")
    redis_ca_cert: str = setting("", key="redis.ca_cert", help="CA bundle for rediss:// URLs (empty: system CAs)")
    redis_sentinel_master: str = setting("", key="redis.sentinel_master", help="master name for sentinel:// URLs")
    redis_key_prefix: str = setting(
        "", key="redis.key_prefix",
        help="prefix of every key the workers and beat write (a Redis shared with other applications)")
    # --- time limits: one place, the chart passes the same numbers -----------------------------
    task_soft_time_limit: int = setting(25 * 60, minimum=1)
    task_time_limit: int = setting(30 * 60, minimum=1)
    visibility_timeout: int = setting(
        3600, minimum=1, help="seconds before Redis redelivers an unacked task; must exceed task_time_limit")
    # --- redelivery: a task that kills its worker every time must not loop ----------------------
    max_deliveries: int = setting(
        3, minimum=1, help="deliveries of one task id before it fails and its message is dead-lettered")
    dead_letter_max_length: int = setting(
        10000, minimum=1, help="length bound of each <queue>.dead list (the oldest items are dropped)")
    # --- beat schedule (the guide's IMAGINEER_* variables) -------------------------------------
    beat_lock_timeout: int = setting(
        60, key="beat.lock_timeout", minimum=2,
        help="seconds a dead beat holds RedBeat's lock; a second beat waits for it, never fires twice")
    maintenance_queue: str = setting("default", choices=QUEUES)
    expected_queues: list[str] = setting(
        [], help="the queues this deployment consumes (the chart sets them); doctor checks these, empty: all four")
    purge_training_hour: int = setting(3, minimum=0, maximum=23)
    purge_scrape_hour: int = setting(4, minimum=0, maximum=23)
    disk_sample_hours: int = setting(6, minimum=1, maximum=24)
    disk_sample_minutes: int = setting(
        0, minimum=0, maximum=59, help="when set, sample disk usage every N minutes instead (tests, debugging)")
    # --- storage ------------------------------------------------------------------------------
    data_dir: Path = setting(Path('/data'))
    purge_training_max_age_days: float = setting(14.0, key="purge.training_max_age_days", minimum=0)
    purge_scrape_max_age_days: float = setting(30.0, key="purge.scrape_max_age_days", minimum=0)
    disk_samples_keep: int = setting(1000, minimum=1)
    # --- scraping -----------------------------------------------------------------------------
    scraping_allow_networks: list[str] = setting(
        [], key="scraping.allow_networks", help="CIDRs or host names the scraper may reach although private/loopback")
    scraping_timeout_seconds: float = setting(10.0, key="scraping.timeout_seconds", minimum=0.1)
    scraping_max_response_bytes: int = setting(20 * 1024 * 1024, key="scraping.max_response_bytes", minimum=1)
    scraping_max_redirects: int = setting(5, key="scraping.max_redirects", minimum=0, maximum=20)
    scraping_domain_interval_seconds: float = setting(
        1.0, key="scraping.domain_interval_seconds", minimum=0,
        help="minimum time between two requests to one domain, shared by all scrapers")
    scraping_user_agent: str = setting("imagineer-scraper/1.0", key="scraping.user_agent")
    # --- worker behaviour ---------------------------------------------------------------------
    config_reload_seconds: float = setting(10.0, minimum=0.1)
    health_dir: Path = setting(
        Path('/tmp/imagineer-health'), key="health.dir",
        help="where the worker writes its liveness/readiness files for the probes")
    log_format: str = setting("json", choices=('json', 'text'))
    # The YAML file the settings came from ("" when none): the worker watches it for reloads.
    source: str = dataclasses.field(default="", compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.attr) for f in FIELDS}

    def key(self, name: str) -> str:
        """A Redis key the workers write, under ``redis.key_prefix`` (kombu's ``global_keyprefix``)."""
        return f"{self.redis_key_prefix}{name}"

    def diff(self, other: Settings) -> dict[str, tuple[Any, Any]]:
        """Keys whose value differs, as ``{key: (self value, other value)}``."""
        a, b = self.as_dict(), other.as_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def _fields() -> tuple[Field, ...]:
    hints = typing.get_type_hints(Settings)
    out = []
    for f in dataclasses.fields(Settings):
        if f.name == "source":
            continue
        meta = f.metadata
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        out.append(Field(meta["key"] or f.name, typing.get_origin(hints[f.name]) or hints[f.name], default,
                         env=meta["env"], minimum=meta["minimum"], maximum=meta["maximum"],
                         choices=meta["choices"], help=meta["help"]))
    return tuple(out)


FIELDS: tuple[Field, ...] = _fields()

_BY_NAME = {f.name: f for f in FIELDS}


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
