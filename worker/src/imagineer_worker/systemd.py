"""systemd units for hosts without Kubernetes, rendered from the chart's own values.

``imagineer-workers render systemd --values values-prod.yaml --out DIR`` reads the chart's
``values.yaml`` (the one source of the sizing table) merged with the ``--values`` files the way
Helm merges them, and writes one unit per enabled worker group plus one for beat, and the
``config.yaml`` the chart puts in its ConfigMap. Each unit runs the same ``celery`` command line
as the group's Deployment, with the same non-secret environment, the group's CPU and memory limits
and a stop timeout equal to the pod's grace period.

What is derived here mirrors the chart's ``templates/_groups.tpl``, ``templates/_pod.tpl`` and
``templates/{worker,beat}/deployment.yaml``
(``imagineer.group``, ``imagineer.workerArgs``, ``imagineer.env``, the grace period rule);
``tests/chart/test_systemd.py`` renders both with real ``helm template`` and requires the same
argv and grace period for the chart defaults, staging and prod, so a chart change that is not
mirrored here fails the chart tests.

The chart is read, not copied: the package carries no second ``values.yaml`` that could drift.
Render where the chart is (a checkout, or ``helm pull --untar``) and copy the units to the hosts.

Only this module's standard-library and PyYAML imports: rendering needs no broker and no Celery.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path("charts") / "imagineer-workers"
DEFAULT_VENV = "/opt/imagineer/venv"  # the guide's ExecStart
DEFAULT_WORKDIR = "/opt/imagineer"  # the guide's WorkingDirectory
DEFAULT_USER = "imagineer"  # uid/gid 10001 in the images: same owner on a shared /data
CONFIG_PATH = "/etc/imagineer/config.yaml"  # the guide's IMAGINEER_CONFIG
SECRETS_PATH = "/etc/imagineer/secrets.env"  # CELERY_BROKER_URL, CELERY_RESULT_BACKEND (mode 0600)
RUNTIME_PARENT = "imagineer"  # RuntimeDirectory=imagineer/<name>: /run/imagineer/<name>
CA_DIR = "/etc/imagineer/redis-ca"  # the chart's imagineer.redisCaDir: the same path on hosts
BEAT_GRACE_SECONDS = 30  # the beat Deployment's terminationGracePeriodSeconds
SECRET_VARIABLES = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
# The guide's ordering line, verbatim; network-online.target is added on a line of its own.
GUIDE_AFTER = "network.target redis.service"
# /proc/devices names of the NVIDIA driver's character devices: nvidia0..N, nvidiactl and
# nvidia-modeset (nvidia-frontend), nvidia-uvm and nvidia-uvm-tools, MIG capabilities (nvidia-caps).
NVIDIA_DEVICES = ("char-nvidia-frontend", "char-nvidia-uvm", "char-nvidia-caps")


class RenderError(ValueError):
    """Values or options that cannot be rendered; the message is one line naming the cause."""


# --- values: the chart's values.yaml and --values files, merged as Helm does --------------------


def find_chart(explicit: Path | None = None) -> Path:
    """The chart directory: ``--chart``, else the checkout this package runs from, else ./charts/..."""
    if explicit is not None:
        if not (explicit / "values.yaml").is_file():
            raise RenderError(f"--chart {explicit}: no values.yaml there (give the chart's directory)")
        return explicit
    candidates = [Path(__file__).resolve().parents[3] / CHART_DIR, Path.cwd() / CHART_DIR]
    for candidate in candidates:
        if (candidate / "values.yaml").is_file():
            return candidate
    raise RenderError(f"the chart's values.yaml was not found (looked in {candidates[0]} and ./{CHART_DIR}): "
                      "pass --chart DIR, a checkout's charts/imagineer-workers or `helm pull --untar` of the chart")


def _read_values(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RenderError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RenderError(f"malformed YAML in {path}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RenderError(f"{path} must hold a mapping of values, not {type(data).__name__}")
    return data


def merge_user_values(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several ``-f`` files: later ones win, maps merge key by key, nulls are kept (Helm's mergeMaps)."""
    out: dict[str, Any] = {}
    for layer in layers:
        out = merge_overwrite(out, layer)  # the same rule for maps; nulls stay
    return out


def coalesce(user: Mapping[str, Any], chart: Mapping[str, Any]) -> dict[str, Any]:
    """User values over the chart's defaults (Helm's coalesce): a user ``null`` removes the default.

    A null for a key the chart does not have stays null (Helm keeps it: the templates see it empty).
    """
    out = copy.deepcopy(dict(user))
    for key, default in chart.items():
        if key not in out:
            out[key] = copy.deepcopy(default)
        elif out[key] is None:
            del out[key]
        elif isinstance(out[key], dict) and isinstance(default, dict):
            out[key] = coalesce(out[key], default)
    return out


def load_values(chart: Path, values_files: Sequence[Path] = ()) -> dict[str, Any]:
    """The values ``helm template CHART -f FILE...`` would render with."""
    defaults = _read_values(chart / "values.yaml")
    return coalesce(merge_user_values([_read_values(p) for p in values_files]), defaults)


def merge_overwrite(dst: Mapping[str, Any], src: Mapping[str, Any]) -> dict[str, Any]:
    """Sprig's ``mergeOverwrite``: maps merge, any other ``src`` value (empty or null too) wins."""
    out = copy.deepcopy(dict(dst))
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_overwrite(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def group_values(values: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A group's effective values: ``workerDefaults`` overridden by ``workers.<name>`` (imagineer.group)."""
    group = (values.get("workers") or {}).get(name) or {}
    if not isinstance(group, dict):
        raise RenderError(f"workers.{name} must be a mapping, not {type(group).__name__}")
    return merge_overwrite(values.get("workerDefaults") or {}, group)


def groups(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every group by name in the chart's order (sorted), enabled or not."""
    return {name: group_values(values, name) for name in sorted(values.get("workers") or {})}


def consumed_queues(values: Mapping[str, Any]) -> list[str]:
    """Every queue an enabled group consumes, sorted (imagineer.consumedQueues)."""
    queues: set[str] = set()
    for name, g in groups(values).items():
        if g.get("enabled"):
            if not g.get("queues"):
                raise RenderError(f"workers.{name}.queues is required: the queues the group consumes, "
                                  f"e.g. [{name}] (or set workers.{name}.enabled: false)")
            queues.update(g["queues"])
    return sorted(queues)


# --- quantities ---------------------------------------------------------------------------------

# The suffixes the chart's schema accepts (and its imagineer.memoryGi reads): Kubernetes' own.
_UNITS: dict[str, float] = {"m": 0.001, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
                            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(" + "|".join(_UNITS) + r")?$")


def quantity(value: Any, path: str) -> float:
    """A Kubernetes quantity from the chart's values (``512Mi``, ``2``, ``250m``) as a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _QUANTITY.match(str(value))
    if not match:
        raise RenderError(f"{path} {value!r} is not a Kubernetes quantity")
    return float(match.group(1)) * _UNITS.get(match.group(2) or "", 1)


def memory_max(value: Any, path: str) -> str:
    """A memory limit as systemd writes it: K/M/G/T are powers of 1024, as Ki/Mi/Gi/Ti."""
    size = math.ceil(quantity(value, path))
    for suffix, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)


def cpu_quota(value: Any, path: str) -> str:
    """A CPU limit as a CPUQuota= percentage of one CPU (2 -> 200%, 250m -> 25%), rounded up."""
    return f"{max(1, math.ceil(round(quantity(value, path) * 100, 6)))}%"


def _gib(value: Any, path: str) -> float:
    return quantity(value, path) / 1024**3


# --- what the chart derives: args, grace period, environment ------------------------------------


def _gpus(g: Mapping[str, Any]) -> int:
    res = g.get("resources") or {}
    return max(int(g.get("gpus") or 0), int((res.get("limits") or {}).get("nvidia.com/gpu", 0)),
               int((res.get("requests") or {}).get("nvidia.com/gpu", 0)))


_GROUP_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def validate(values: Mapping[str, Any]) -> None:
    """The chart's render-time checks that shape a unit (imagineer.validateGlobal / validateGroup)."""
    c = values.get("celery") or {}
    soft, hard = int(c.get("softTimeLimitSeconds", 0)), int(c.get("hardTimeLimitSeconds", 0))
    if soft >= hard:
        raise RenderError(f"celery.softTimeLimitSeconds ({soft}) must be below celery.hardTimeLimitSeconds ({hard})")
    visibility = int(c.get("visibilityTimeoutSeconds", 0))
    if visibility <= hard:
        raise RenderError(f"celery.visibilityTimeoutSeconds ({visibility}) must exceed celery.hardTimeLimitSeconds "
                          f"({hard}): Redis would redeliver tasks that are still running")
    queues = consumed_queues(values)
    maintenance = (values.get("config") or {}).get("maintenanceQueue")
    if (values.get("beat") or {}).get("enabled") and maintenance not in queues:
        raise RenderError(f'config.maintenanceQueue "{maintenance}" is consumed by no enabled worker group: '
                          "beat's maintenance jobs would stay PENDING")
    for name, g in groups(values).items():
        if not g.get("enabled"):
            continue
        path = f"workers.{name}"
        if not _GROUP_NAME.fullmatch(name):
            raise RenderError(f"{path}: a group name must be lower-case letters, digits and '-' (it names the unit)")
        concurrency = g.get("concurrency")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise RenderError(f"{path}.concurrency must be an integer of at least 1 (got {concurrency!r})")
        if _gpus(g) > 0 and not g.get("args") and concurrency != 1:
            raise RenderError(f"{path}.concurrency must be 1 when {path} requests a GPU (got {concurrency}): "
                              "one job per GPU, as the guide requires")
        if _gpus(g) > 0 and g.get("args") and "--concurrency=1" not in g["args"]:
            raise RenderError(f"{path}.args must contain --concurrency=1 when {path} requests a GPU: one job per GPU")
        checkpoint = float(g.get("checkpointSizeGi") or 0)
        if checkpoint > 0:
            limit = ((g.get("resources") or {}).get("limits") or {}).get("memory")
            if not limit:
                raise RenderError(f"{path}.resources.limits.memory is required when {path}.checkpointSizeGi is set")
            needed = checkpoint * 1.3 * concurrency
            if _gib(limit, f"{path}.resources.limits.memory") < needed:
                raise RenderError(f"{path}.resources.limits.memory {limit} is below {path}.checkpointSizeGi x 1.3 x "
                                  f"concurrency = {needed:.1f}Gi (one checkpoint per task plus 30%)")
        hard = int(c.get("hardTimeLimitSeconds", 0))
        if grace_seconds(values, g) < hard:
            margin = hard + int(c.get("shutdownMarginSeconds", 0))
            raise RenderError(f"{path}.terminationGracePeriodSeconds ({grace_seconds(values, g)}) is below "
                              f"celery.hardTimeLimitSeconds ({hard}): systemctl stop (TimeoutStopSec) would SIGKILL a "
                              f"task that may still run; leave it null for the hard limit plus "
                              f"celery.shutdownMarginSeconds ({margin})")


def worker_args(values: Mapping[str, Any], name: str, g: Mapping[str, Any]) -> list[str]:
    """The ``celery`` arguments of a group's Deployment (imagineer.workerArgs)."""
    if g.get("args"):
        return [str(a) for a in g["args"]]
    c = values["celery"]
    return ["-A", str(c["app"]), "worker", "--pool=prefork", f"--loglevel={c['loglevel']}",
            "-Q", ",".join(g["queues"]), f"--concurrency={int(g['concurrency'])}", f"--hostname={name}@%h",
            "--without-mingle", "--without-gossip", *[str(a) for a in g.get("extraArgs") or []]]


def beat_args(values: Mapping[str, Any]) -> list[str]:
    c = values["celery"]
    return ["-A", str(c["app"]), "beat", f"--loglevel={c['loglevel']}"]


def grace_seconds(values: Mapping[str, Any], g: Mapping[str, Any]) -> int:
    """terminationGracePeriodSeconds (imagineer.gracePeriod): the group's, or when null the hard time
    limit plus the shutdown margin."""
    c = values["celery"]
    if g.get("terminationGracePeriodSeconds") is None:
        return int(c["hardTimeLimitSeconds"]) + int(c["shutdownMarginSeconds"])
    return int(g["terminationGracePeriodSeconds"])


def _str(value: Any) -> str:
    """A value as the chart's ``quote`` writes it (3.0 is "3": Helm reads YAML numbers as floats)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def chart_env(values: Mapping[str, Any], health_dir: str) -> list[tuple[str, str]]:
    """The non-secret part of imagineer.env, in its order; host paths for the config and health files."""
    c, cfg, broker = values["celery"], values["config"], values["broker"]
    env = [
        ("CELERY_RESULT_EXPIRES", c["resultExpiresSeconds"]),
        ("IMAGINEER_CONFIG", CONFIG_PATH),
        ("IMAGINEER_MAINTENANCE_QUEUE", cfg["maintenanceQueue"]),
        ("IMAGINEER_EXPECTED_QUEUES", ",".join(consumed_queues(values))),
        ("IMAGINEER_PURGE_TRAINING_HOUR", cfg["purgeTrainingHour"]),
        ("IMAGINEER_PURGE_SCRAPE_HOUR", cfg["purgeScrapeHour"]),
        ("IMAGINEER_DISK_SAMPLE_HOURS", cfg["diskSampleHours"]),
        ("IMAGINEER_DISK_SAMPLE_MINUTES", cfg["diskSampleMinutes"]),
        ("IMAGINEER_TASK_SOFT_TIME_LIMIT", c["softTimeLimitSeconds"]),
        ("IMAGINEER_TASK_TIME_LIMIT", c["hardTimeLimitSeconds"]),
        ("IMAGINEER_VISIBILITY_TIMEOUT", c["visibilityTimeoutSeconds"]),
        ("IMAGINEER_MAX_DELIVERIES", cfg["maxDeliveries"]),
        ("IMAGINEER_DEAD_LETTER_MAX_LENGTH", cfg["deadLetterMaxLength"]),
        ("IMAGINEER_DATA_DIR", values["persistence"]["mountPath"]),
        ("IMAGINEER_HEALTH_DIR", health_dir),
    ]
    if broker.get("caSecret"):
        env.append(("IMAGINEER_REDIS_CA_CERT", f"{CA_DIR}/{broker['caSecretKey']}"))
    if broker.get("sentinelMaster"):
        env.append(("IMAGINEER_REDIS_SENTINEL_MASTER", broker["sentinelMaster"]))
    if broker.get("keyPrefix"):
        env.append(("IMAGINEER_REDIS_KEY_PREFIX", broker["keyPrefix"]))
    return [(k, _str(v)) for k, v in env]


# What the images set (images/*/Dockerfile): HOME on the writable /tmp, unbuffered logs for journald.
IMAGE_ENV = [("HOME", "/tmp"), ("PYTHONUNBUFFERED", "1"), ("PYTHONDONTWRITEBYTECODE", "1")]


def _extra_env(entries: Any, path: str) -> tuple[list[tuple[str, str]], list[str]]:
    """extraEnv: literal values become Environment=; valueFrom entries must come from secrets.env."""
    literal, external = [], []
    for entry in entries or []:
        if not isinstance(entry, dict) or "name" not in entry:
            raise RenderError(f"{path} entries need a name (got {entry!r})")
        if "valueFrom" in entry:
            external.append(str(entry["name"]))
        else:
            literal.append((str(entry["name"]), _str(entry.get("value", ""))))
    return literal, external


# --- the unit file --------------------------------------------------------------------------------


def _escape_specifiers(text: str) -> str:
    return text.replace("%", "%%")


def _c_escape(text: str) -> str:
    return (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t"))


def exec_word(arg: str) -> str:
    """One ExecStart word: ``%`` and ``$`` doubled (no specifier or variable expansion), quoted if needed."""
    word = _escape_specifiers(arg).replace("$", "$$")
    if word in {"", ";"} or re.search(r"[\s\"'\\]", word):
        return f'"{_c_escape(word)}"'
    return word


def environment_line(name: str, value: str) -> str:
    """``Environment="NAME=value"``: quoted, C-escaped, ``%`` doubled (systemd expands specifiers there)."""
    return f'Environment="{_c_escape(_escape_specifiers(f"{name}={value}"))}"'


def exec_start(argv: Sequence[str]) -> str:
    """ExecStart= over several lines as in the guide: one option (with its value) per line."""
    lines: list[list[str]] = [[exec_word(argv[0])]]
    for arg in argv[1:]:
        if arg.startswith("-") or len(lines) == 1:
            lines.append([exec_word(arg)])
        else:
            lines[-1].append(exec_word(arg))
    return "ExecStart=" + " \\\n    ".join(" ".join(line) for line in lines)


@dataclass
class Unit:
    """One service: a worker group or beat."""

    name: str  # the group name, or "beat"
    description: str
    argv: list[str]  # the program (the venv's celery) and its arguments
    environment: list[tuple[str, str]]
    timeout_stop_seconds: int
    memory_max: str | None = None
    cpu_quota: str | None = None
    gpu: bool = False
    read_write_paths: list[str] = field(default_factory=list)
    external_env: list[str] = field(default_factory=list)  # extraEnv valueFrom names: set in secrets.env
    sources: list[str] = field(default_factory=list)

    @property
    def filename(self) -> str:
        return "imagineer-beat.service" if self.name == "beat" else f"imagineer-worker-{self.name}.service"

    def text(self, user: str, workdir: str) -> str:
        secrets = ", ".join([*SECRET_VARIABLES, *self.external_env])
        lines = [
            f"# {self.filename}: rendered by `imagineer-workers render systemd` from {' + '.join(self.sources)}.",
            "# Change the values and render again rather than editing this file.",
            "[Unit]",
            f"Description={self.description}",
            f"After={GUIDE_AFTER}",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"User={user}",
            f"Group={user}",
            f"# {secrets}: secrets, never in a unit file (root-owned, mode 0600; the unit fails without it)",
            f"EnvironmentFile={SECRETS_PATH}",
            *(environment_line(k, v) for k, v in self.environment),
            f"WorkingDirectory={workdir}",
            exec_start(self.argv),
            "Restart=on-failure",
            "RestartSec=5",
            "# SIGTERM to celery's main process only (KillMode=mixed, as Kubernetes signals PID 1): a warm",
            "# shutdown; running tasks finish. The rest of the group is killed when TimeoutStopSec runs out.",
            "KillSignal=SIGTERM",
            "KillMode=mixed",
            f"TimeoutStopSec={self.timeout_stop_seconds}",
        ]
        if self.memory_max or self.cpu_quota:
            lines.append("# The chart's resource limits (the worker caps its concurrency at the CPU quota).")
        if self.memory_max:
            lines.append(f"MemoryMax={self.memory_max}")
        if self.cpu_quota:
            lines.append(f"CPUQuota={self.cpu_quota}")
        lines += [
            "# Hardening: the pods' securityContext (non-root, no privilege escalation, read-only root",
            "# filesystem, all capabilities dropped, RuntimeDefault seccomp) in systemd's terms.",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
            "ProtectSystem=strict",
            *(f"ReadWritePaths={p}" for p in self.read_write_paths),
            f"RuntimeDirectory={RUNTIME_PARENT}/{self.name}",
            "ProtectHome=yes",
            "PrivateTmp=yes",
        ]
        if self.gpu:
            lines += ["# The GPU group: no private /dev; only the NVIDIA devices besides the pseudo devices.",
                      "DevicePolicy=closed", *(f"DeviceAllow={d} rw" for d in NVIDIA_DEVICES)]
        else:
            lines.append("PrivateDevices=yes")
        lines += [
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "ProtectProc=invisible",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "RestrictNamespaces=yes",
            "RestrictRealtime=yes",
            "RestrictSUIDSGID=yes",
            "LockPersonality=yes",
            "RemoveIPC=yes",
            "SystemCallArchitectures=native",
            "SystemCallFilter=@system-service",
            "SystemCallErrorNumber=EPERM",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
        ]
        return "\n".join(lines) + "\n"


def _description(name: str, queues: Sequence[str]) -> str:
    if list(queues) == [name]:
        return f"Imagineer Celery Worker ({name} queue)"  # the guide's wording
    return f"Imagineer Celery Worker ({name}: {', '.join(queues)} {'queue' if len(queues) == 1 else 'queues'})"


def _limits(resources: Any, path: str) -> tuple[str | None, str | None]:
    limits = (resources or {}).get("limits") or {}
    memory = memory_max(limits["memory"], f"{path}.limits.memory") if limits.get("memory") else None
    cpu = cpu_quota(limits["cpu"], f"{path}.limits.cpu") if limits.get("cpu") else None
    return memory, cpu


def build_units(values: Mapping[str, Any], *, venv: str = DEFAULT_VENV, only: Sequence[str] = (),
                sources: Sequence[str] = ()) -> list[Unit]:
    """One unit per enabled group (sorted, as the chart) and beat when enabled; ``only`` picks some."""
    validate(values)
    all_groups = groups(values)
    beat_enabled = bool((values.get("beat") or {}).get("enabled"))
    for name in only:
        if name == "beat":
            if not beat_enabled:
                raise RenderError("beat is disabled in these values (beat.enabled: false)")
        elif name not in all_groups:
            known = ", ".join(all_groups)
            raise RenderError(f"unknown worker group {name!r}: these values define {known} (and beat)")
        elif not all_groups[name].get("enabled"):
            raise RenderError(f"worker group {name!r} is disabled in these values (workers.{name}.enabled: false)")
    celery = f"{venv.rstrip('/')}/bin/celery"
    data_dir = str(values["persistence"]["mountPath"])
    units = []
    for name, g in all_groups.items():
        if not g.get("enabled") or (only and name not in only):
            continue
        health = f"/run/{RUNTIME_PARENT}/{name}"
        extra, external = _extra_env(g.get("extraEnv"), f"workers.{name}.extraEnv")
        memory, cpu = _limits(g.get("resources"), f"workers.{name}.resources")
        units.append(Unit(
            name=name, description=_description(name, g.get("queues") or []),
            argv=[celery, *worker_args(values, name, g)],
            environment=[*chart_env(values, health), *extra, *IMAGE_ENV],
            timeout_stop_seconds=grace_seconds(values, g), memory_max=memory, cpu_quota=cpu,
            gpu=_gpus(g) > 0, read_write_paths=[data_dir], external_env=external, sources=list(sources)))
    if beat_enabled and (not only or "beat" in only):
        beat = values["beat"]
        extra, external = _extra_env(beat.get("extraEnv"), "beat.extraEnv")
        memory, cpu = _limits(beat.get("resources"), "beat.resources")
        lock = [("IMAGINEER_BEAT_LOCK_TIMEOUT", _str(beat["lockTimeoutSeconds"]))]
        units.append(Unit(
            name="beat", description="Imagineer Celery Beat (periodic maintenance tasks)",
            argv=[celery, *beat_args(values)],
            environment=[*chart_env(values, f"/run/{RUNTIME_PARENT}/beat"), *lock, *extra, *IMAGE_ENV],
            timeout_stop_seconds=BEAT_GRACE_SECONDS, memory_max=memory, cpu_quota=cpu,
            external_env=external, sources=list(sources)))
    return units


def config_yaml(values: Mapping[str, Any], sources: Sequence[str] = ()) -> str:
    """The chart's ConfigMap ``config.yaml`` (``config.file``), for /etc/imagineer/config.yaml."""
    header = (f"# {CONFIG_PATH}: rendered by `imagineer-workers render systemd` from {' + '.join(sources)}\n"
              "# (the chart's config.file). Workers reload it in place when it changes.\n")
    return header + yaml.safe_dump((values.get("config") or {}).get("file") or {}, sort_keys=True)


# --- the command ------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    """``render systemd`` under the CLI's ``render`` command."""
    p = subparsers.add_parser(
        "systemd", help="systemd units for hosts without Kubernetes, from the chart's values",
        description="Write one unit per enabled worker group plus beat, and config.yaml, from the chart's "
                    "values.yaml merged with --values (as helm -f). Secrets stay out: the units read "
                    f"{SECRETS_PATH}.")
    p.add_argument("--values", "-f", dest="values", action="append", default=[], type=Path, metavar="FILE",
                   help="values file over the chart's values.yaml, as helm -f (repeatable, later ones win)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory to write the units into")
    p.add_argument("--chart", type=Path, metavar="DIR",
                   help=f"the chart directory (default: ./{CHART_DIR} of the checkout this package runs from)")
    p.add_argument("--venv", default=DEFAULT_VENV, help=f"the virtualenv with the package (default {DEFAULT_VENV})")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"WorkingDirectory= (default {DEFAULT_WORKDIR})")
    p.add_argument("--user", default=DEFAULT_USER, help=f"the dedicated user and group (default {DEFAULT_USER})")
    p.add_argument("--group", dest="only", action="append", default=[], metavar="NAME",
                   help="render only this worker group (or beat); repeatable (default: every enabled one)")
    p.set_defaults(func=cmd_render_systemd)


def _check_options(args: argparse.Namespace) -> None:
    for option in ("venv", "workdir"):
        value = getattr(args, option)
        if not value.startswith("/") or re.search(r"[\s%$\"'\\]", value):
            raise RenderError(f"--{option} must be an absolute path without spaces, quotes, % or $ (got {value!r})")
    if not re.fullmatch(r"[a-z_][a-z0-9_-]*\$?", args.user):
        raise RenderError(f"--user {args.user!r} is not a valid user name")


def render_files(args: argparse.Namespace) -> dict[str, str]:
    """File name -> content for ``args`` (the parsed ``render systemd`` options)."""
    _check_options(args)
    for path in args.values:
        if not path.is_file():
            raise RenderError(f"--values {path}: no such file")
    chart = find_chart(args.chart)
    values = load_values(chart, args.values)
    sources = [f"{CHART_DIR}/values.yaml", *(p.name for p in args.values)]
    units = build_units(values, venv=args.venv, only=args.only, sources=sources)
    files = {u.filename: u.text(args.user, args.workdir) for u in units}
    files["config.yaml"] = config_yaml(values, sources)
    return files


def cmd_render_systemd(args: argparse.Namespace) -> int:
    try:
        files = render_files(args)
        args.out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (args.out / name).write_text(text, encoding="utf-8")
    except RenderError as exc:
        print(f"render systemd: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"render systemd: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    for name in files:
        print(args.out / name)
    stale = sorted(p.name for p in args.out.glob("imagineer-*.service") if p.name not in files)
    for name in stale:
        print(f"render systemd: {args.out / name} is not in these values: disable and remove it "
              f"(systemctl disable --now {name})", file=sys.stderr)
    return 0
