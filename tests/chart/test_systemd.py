"""``imagineer-workers render systemd``: the units run what the chart's Deployments run.

For the chart defaults, staging and prod (and values that stress the merge and the quoting), the
units are rendered by the CLI and the chart by real ``helm template``, then compared:

* "equal ExecStart": the argv systemd executes (``unitfile.exec_argv``: continuations joined, quotes
  and escapes removed, ``%%`` -> ``%``, ``$$`` -> ``$``) has the venv's ``celery`` as its program,
  whose file name is the container's ``command[0]``, and the rest of it is exactly the container's
  ``command[1:] + args``, element by element;
* ``TimeoutStopSec`` is the pod's ``terminationGracePeriodSeconds`` (at least the hard time limit
  for workers);
* the environment is the container's literal env, except the two host paths (config file and health
  dir) and the images' ``HOME``/``PYTHON*``; the Secret-backed variables come only from the
  EnvironmentFile;
* ``MemoryMax``/``CPUQuota`` are the container's limits; ``config.yaml`` is the ConfigMap's.

Every unit passes ``systemd-analyze verify`` without a warning (Debian's systemd; ExecStart points at
this venv's ``celery`` so that verify finds an executable) and ``systemd-analyze security --offline``
at "OK" exposure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import unitfile
from tests.chart.helm import REPO, by_kind, container, render_chart, render_error, worker_groups

VENV = Path(sys.executable).parent.parent
HOST_ONLY_ENV = {"HOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
HOST_PATHS = {"IMAGINEER_CONFIG": "/etc/imagineer/config.yaml"}
SECURITY_THRESHOLD = 20  # "OK" exposure: at most 2.0 of 10
_BINARY = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
_SYSTEMD = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def render_units(tmp: Path, *values_files: Path, extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "imagineer_worker.cli", "render", "systemd", "--out", str(tmp), "--venv", str(VENV)]
    for f in values_files:
        cmd += ["--values", str(f)]
    return subprocess.run([*cmd, *(extra or [])], capture_output=True, text=True, timeout=120)


def units_in(out: Path) -> dict[str, dict[str, dict[str, list[str]]]]:
    """Unit name (group or beat) -> parsed unit."""
    units = {}
    for path in sorted(out.glob("*.service")):
        name = path.name.removesuffix(".service").removeprefix("imagineer-").removeprefix("worker-")
        units[name] = unitfile.parse(path.read_text())
    return units


def _one(unit: dict[str, dict[str, list[str]]], key: str, section: str = "Service") -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key} set {len(values)} times"
    return values[0]


def _bytes(quantity: str, table: dict[str, int]) -> int:
    for suffix, factor in table.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def _cpu_percent(quantity: str | int | float) -> int:
    q = str(quantity)
    return int(q.removesuffix("m")) // 10 if q.endswith("m") else int(float(q) * 100)


def assert_units_match_chart(out: Path, objects: list[dict[str, Any]]) -> None:
    deployments = worker_groups(objects)
    beat = [d for d in by_kind(objects, "Deployment").values()
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == "beat"]
    expected = dict(deployments) | ({"beat": beat[0]} if beat else {})
    units = units_in(out)
    assert set(units) == set(expected), "one unit per enabled group plus beat"
    for name, unit in units.items():
        deployment = expected[name]
        c = container(deployment)
        spec = deployment["spec"]["template"]["spec"]

        argv = unitfile.exec_argv(_one(unit, "ExecStart"))
        assert argv[0] == str(VENV / "bin" / "celery") and Path(argv[0]).name == c["command"][0], name
        assert argv[1:] == c["command"][1:] + c["args"], f"{name}: ExecStart differs from the Deployment"

        literal = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        secret = {e["name"] for e in c["env"] if "valueFrom" in e}
        timeout = int(_one(unit, "TimeoutStopSec"))
        assert timeout == spec["terminationGracePeriodSeconds"], name
        if name != "beat":
            assert timeout >= int(literal["IMAGINEER_TASK_TIME_LIMIT"]), f"{name}: stop timeout below the hard limit"
        assert _one(unit, "KillSignal") == "SIGTERM" and _one(unit, "KillMode") == "mixed"
        assert _one(unit, "Restart") == "on-failure" and _one(unit, "RestartSec") == "5"

        env = unitfile.environment(unit["Service"]["Environment"])
        assert not secret & set(env), f"{name}: a Secret-backed variable is written into the unit"
        assert unit["Service"]["EnvironmentFile"] == ["/etc/imagineer/secrets.env"]
        health = f"/run/imagineer/{name}"
        assert env["IMAGINEER_HEALTH_DIR"] == health and _one(unit, "RuntimeDirectory") == f"imagineer/{name}"
        assert {k: env[k] for k in HOST_PATHS} == HOST_PATHS
        host = HOST_ONLY_ENV | set(HOST_PATHS) | {"IMAGINEER_HEALTH_DIR"}
        assert {k: v for k, v in env.items() if k not in host} == \
            {k: v for k, v in literal.items() if k not in host}, f"{name}: environment differs from the pod's"

        limits = c.get("resources", {}).get("limits", {})
        if "memory" in limits:
            assert _bytes(_one(unit, "MemoryMax"), _SYSTEMD) == _bytes(str(limits["memory"]), _BINARY), name
        if "cpu" in limits:
            assert int(_one(unit, "CPUQuota").removesuffix("%")) == _cpu_percent(limits["cpu"]), name
        gpu = "nvidia.com/gpu" in limits
        assert ("PrivateDevices" in unit["Service"]) != gpu, f"{name}: a GPU group needs the host's /dev/nvidia*"
        if gpu:
            assert _one(unit, "DevicePolicy") == "closed"
            assert "char-nvidia-frontend rw" in unit["Service"]["DeviceAllow"]
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        data = literal["IMAGINEER_DATA_DIR"]
        assert (data in unit["Service"].get("ReadWritePaths", [])) == (data in mounts), name

        assert _one(unit, "User") == _one(unit, "Group") == "imagineer"
        for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                           "PrivateTmp": "yes", "CapabilityBoundingSet": ""}.items():
            assert _one(unit, key) == value, f"{name}: {key}"
        assert _one(unit, "WantedBy", "Install") == "multi-user.target"
        assert unit["Unit"]["After"][0] == "network.target redis.service"  # the guide's line

    configmap = next(iter(by_kind(objects, "ConfigMap").values()))
    assert yaml.safe_load((out / "config.yaml").read_text()) == yaml.safe_load(configmap["data"]["config.yaml"])


@pytest.mark.parametrize("values", ["default", "staging", "prod"])
def test_units_run_what_the_deployments_run(values, tmp_path):
    files = [] if values == "default" else [REPO / f"values-{values}.yaml"]
    proc = render_units(tmp_path, *files)
    assert proc.returncode == 0, proc.stderr
    assert_units_match_chart(tmp_path, render_chart(values_file=values if files else None))


def test_the_guide_units_pass_systemd_analyze_verify_and_security(tmp_path):
    for values in ("staging", "prod"):
        out = tmp_path / values
        assert render_units(out, REPO / f"values-{values}.yaml").returncode == 0
        for unit in sorted(out.glob("*.service")):
            unitfile.verify(unit)
            unitfile.security_exposure(unit, SECURITY_THRESHOLD)


# Values that exercise Helm's merge (nulls, empty lists, workerDefaults under each group), the
# `args` escape hatch with the guide's own snippet, and arguments systemd would otherwise rewrite.
TRICKY = {
    "workerDefaults": {"extraArgs": ["--foo"], "terminationGracePeriodSeconds": 2500},
    "workers": {
        "training": {"extraArgs": None,  # removes the chart's --max-tasks-per-child=1: workerDefaults' applies
                     "args": ["-A", "server.celery_app.celery", "worker", "--loglevel=INFO", "-Q", "training",
                              "--concurrency=1"]},
        "scraping": {"terminationGracePeriodSeconds": None, "extraArgs": []},
        "labeling": {"extraArgs": ["--x=50%", "--y=$HOME", "--z=${HOME}", "two words", 'quo"te', "back\\slash",
                                   "it's", "%h%%"],
                     "extraEnv": [{"name": "FOO", "value": "a %h $HOME \"q\" b\\c"},
                                  {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
        "default": {"resources": {"limits": {"memory": "768Mi", "cpu": "1500m"}}},
    },
    "celery": {"hardTimeLimitSeconds": 2400, "visibilityTimeoutSeconds": 4000, "shutdownMarginSeconds": 30},
    "broker": {"keyPrefix": "imagineer:", "sentinelMaster": "mymaster", "caSecret": "ca"},
    "beat": {"extraEnv": [{"name": "BEAT_X", "value": "1"}]},
    "config": {"file": {"scraping": {"allow_networks": ["10.0.0.0/8"]}}},
}


def test_merge_semantics_and_quoting_match_helm(tmp_path):
    values = tmp_path / "tricky.yaml"
    values.write_text(yaml.safe_dump(TRICKY))
    out = tmp_path / "units"
    proc = render_units(out, values)
    assert proc.returncode == 0, proc.stderr
    assert_units_match_chart(out, render_chart(TRICKY))
    units = units_in(out)
    assert unitfile.environment(units["labeling"]["Service"]["Environment"])["FOO"] == 'a %h $HOME "q" b\\c'
    text = (out / "imagineer-worker-labeling.service").read_text()
    assert "# CELERY_BROKER_URL, CELERY_RESULT_BACKEND, TOKEN: secrets" in text  # valueFrom: from secrets.env
    assert int(_one(units["scraping"], "TimeoutStopSec")) == 2430  # null: the hard limit + margin again
    for unit in sorted(out.glob("*.service")):
        unitfile.verify(unit)


@pytest.mark.parametrize("bad", [
    {"celery": {"softTimeLimitSeconds": 1800}},
    {"workers": {"training": {"concurrency": 2}}},
    {"workers": {"default": {"enabled": False}}},  # beat's maintenance queue without a consumer
    {"workers": {"training": {"checkpointSizeGi": 16}}},
    {"workers": {"scraping": {"terminationGracePeriodSeconds": 600}}},
])
def test_values_the_chart_refuses_are_refused(bad, tmp_path):
    helm_message = render_error(bad)
    values = tmp_path / "bad.yaml"
    values.write_text(yaml.safe_dump(bad))
    proc = render_units(tmp_path / "out", values)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("render systemd: ")
    value = line.removeprefix("render systemd: ").split()[0]  # the value to change, as the chart names it
    assert value in helm_message, (line, helm_message)
