"""The rendered systemd units on a real systemd: a container with systemd as PID 1 (a host without
Kubernetes), Debian's redis-server, the package in /opt/venv. What ``systemd-analyze verify`` cannot
show: the hardened services start and run tasks, ``%%h`` reaches Celery as ``%h``, the health files
land where the probe reads them, and ``systemctl stop`` is a warm shutdown that lets a running task
finish (KillMode=mixed: systemd's default, control-group, would SIGTERM the prefork children too and
lose the task with WorkerLostError).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.run.fleet import APP_VERSION, POD_UID, docker

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARTIFACTS = HERE / "artifacts"
IMAGE = f"imagineer/systemd-host:{APP_VERSION}"
VENV = "/opt/venv"
UNITS = ("imagineer-worker-default", "imagineer-worker-labeling", "imagineer-beat")
# Test-sized limits (as tests/reliability): the stop timeout is hard + margin = 15 s.
VALUES = {
    "celery": {"softTimeLimitSeconds": 8, "hardTimeLimitSeconds": 10, "visibilityTimeoutSeconds": 15,
               "shutdownMarginSeconds": 5},
    # A task module for the warm-shutdown check, from WorkingDirectory (celery puts it on sys.path).
    "workers": {"default": {"extraArgs": ["--include=slow_tasks"]}},
}


def sh(name: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return docker("exec", name, "sh", "-c", script, timeout=timeout)


def wait_until(name: str, script: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        proc = sh(name, script)
        if proc.returncode == 0:
            return proc.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {script}\n{proc.stdout}{proc.stderr}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    build = docker("build", "-q", "--network", "host", "--build-arg",
                   f"WORKER_IMAGE=imagineer/worker-default:{APP_VERSION}", "-t", IMAGE,
                   "-f", str(HERE / "systemd-host.Dockerfile"), str(HERE), timeout=900)
    assert build.returncode == 0, build.stderr
    tmp = tmp_path_factory.mktemp("systemd")
    (tmp / "values.yaml").write_text(yaml.safe_dump(VALUES))
    out = tmp / "units"
    groups = [a for u in UNITS for a in ("--group", u.removeprefix("imagineer-").removeprefix("worker-"))]
    render = subprocess.run([sys.executable, "-m", "imagineer_worker.cli", "render", "systemd", "--values",
                             str(tmp / "values.yaml"), "--out", str(out), "--venv", VENV, *groups],
                            capture_output=True, text=True, timeout=120)
    assert render.returncode == 0, render.stderr
    shutil.copy(REPO / "worker" / "tests" / "support" / "slow_tasks.py", out)
    (out / "secrets.env").write_text("CELERY_BROKER_URL=redis://127.0.0.1:6379/0\n"
                                     "CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/0\n")

    name = f"imagineer-systemd-{uuid.uuid4().hex[:8]}"
    # systemd as PID 1 needs the cgroup tree: a private namespace on cgroup v2, the host's on v1.
    cgroup = (["--cgroupns=private"] if Path("/sys/fs/cgroup/cgroup.controllers").exists()
              else ["--cgroupns=host", "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw"])
    docker("run", "-d", "--name", name, "--label", "imagineer-run-test", "--privileged", *cgroup,
           "--tmpfs", "/run", "--tmpfs", "/run/lock", "--hostname", "imagineer-host", IMAGE, check=True)
    try:
        wait_until(name, "systemctl is-system-running | grep -qE 'running|degraded'")
        docker("cp", f"{out}/.", f"{name}:/tmp/units", check=True)
        install = sh(name, f"""set -e
            cp /tmp/units/*.service /etc/systemd/system/
            install -m 0644 /tmp/units/config.yaml /etc/imagineer/config.yaml
            install -m 0600 /tmp/units/secrets.env /etc/imagineer/secrets.env
            install -m 0644 /tmp/units/slow_tasks.py /opt/imagineer/slow_tasks.py
            chown {POD_UID}:{POD_UID} /data
            systemctl daemon-reload
            systemctl enable --now {' '.join(UNITS)}""")
        assert install.returncode == 0, install.stderr
        yield name
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        journal = sh(name, "journalctl --no-pager -o short-precise " + " ".join(f"-u {u}" for u in UNITS))
        (ARTIFACTS / "systemd-host-journal.log").write_text(journal.stdout + journal.stderr)
        docker("rm", "-f", name)


def submit(host: str, *args: str) -> dict[str, str]:
    proc = sh(host, "imagineer-workers submit " + " ".join(args))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[0])


def result(host: str, task_id: str) -> dict[str, object]:
    return json.loads(sh(host, f"redis-cli get celery-task-meta-{task_id}").stdout or "null") or {}


def test_installed_units_verify_with_their_real_paths(host):
    units = " ".join(f"{u}.service" for u in UNITS)
    proc = sh(host, f"cd /etc/systemd/system && systemd-analyze verify --man=no {units}")
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_hardened_services_run_tasks(host):
    for unit in UNITS:
        wait_until(host, f"systemctl is-active -q {unit}")
    wait_until(host, "runuser -u imagineer -- env IMAGINEER_HEALTH_DIR=/run/imagineer/default "
                     "imagineer-workers probe readiness")
    task = submit(host, "maintenance.record_disk_usage")
    wait_until(host, f"redis-cli get celery-task-meta-{task['task_id']} | grep -q SUCCESS")
    assert result(host, task["task_id"])["worker"] == "default@imagineer-host"  # %%h in the unit, %h to Celery
    wait_until(host, "redis-cli exists redbeat::lock | grep -qx 1")  # beat holds its lock

    pid = sh(host, "systemctl show -p MainPID --value imagineer-worker-default").stdout.strip()
    status = dict(line.split(":\t", 1) for line in sh(host, f"cat /proc/{pid}/status").stdout.splitlines()
                  if ":\t" in line)
    assert status["Uid"].split()[0] == str(POD_UID) and status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2" and int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    memory = sh(host, "systemctl show -p MemoryMax --value imagineer-worker-default").stdout.strip()
    assert int(memory) == 512 * 1024**2  # the chart's limit for the default group


def test_systemctl_stop_lets_the_running_task_finish(host):
    wait_until(host, "systemctl is-active -q imagineer-worker-default")
    wait_until(host, "runuser -u imagineer -- env IMAGINEER_HEALTH_DIR=/run/imagineer/default "
                     "imagineer-workers probe readiness")
    task = submit(host, "tests.sleep", "--queue", "default", "--kwargs", "'{\"seconds\": 5}'")
    wait_until(host, f"redis-cli get celery-task-meta-{task['task_id']} | grep -q STARTED")
    stop = sh(host, "systemctl stop imagineer-worker-default", timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert result(host, task["task_id"]).get("status") == "SUCCESS", result(host, task["task_id"])
    shown = sh(host, "systemctl show -p Result -p ExecMainStatus imagineer-worker-default").stdout.split()
    assert shown == ["Result=success", "ExecMainStatus=0"], shown
    sh(host, "systemctl start imagineer-worker-default")
