"""Managed-Redis transports for real: ``rediss://`` with CA verification, and Redis Sentinel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imagineer_worker.testing.services import CeleryProcess, RedisServer, free_port, make_tls_files, wait_for

SLOW = ["--include=tests.support.slow_tasks"]
CLI = [sys.executable, "-m", "imagineer_worker.cli"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_redis(tls_files, tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-tls"),
                         tls=(tls_files["cert"], tls_files["key"], tls_files["ca"])).start()
    yield server
    server.stop()


def _tls_env(url: str, ca: Path) -> dict[str, str]:
    return {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "IMAGINEER_REDIS_CA_CERT": str(ca)}


def test_worker_and_client_run_a_task_over_verified_tls(tls_redis, tls_files, tmp_path):
    env = _tls_env(tls_redis.url, tls_files["ca"])
    worker = CeleryProcess("tls", env=env, logdir=tmp_path, extra_args=SLOW).start()
    try:
        submit = subprocess.run(
            [*CLI, "submit", "tests.sleep", "--kwargs", '{"seconds": 0}', "--wait", "--timeout", "30"],
            env={**worker.env}, capture_output=True, text=True, timeout=60)
        assert submit.returncode == 0, submit.stderr
        assert submit.stdout.strip().endswith('"done"')
    finally:
        worker.stop()
    assert tls_redis.url.startswith("rediss://")


def test_a_server_certificate_from_another_ca_is_refused(tls_redis, tls_files):
    env = _tls_env(tls_redis.url, tls_files["other_ca"])
    doctor = subprocess.run([*CLI, "doctor", "--timeout", "2"],
                            env={**__import__("os").environ, **env}, capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 1
    assert "FAIL  broker reachable" in doctor.stdout
    assert "certificate verify failed" in doctor.stdout


def test_workers_follow_the_sentinel_master(tmp_path, redis_server):
    master = RedisServer(tmp_path / "master").start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor imagineer 127.0.0.1 {master.port} 1\n")
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        import redis

        probe = redis.Redis(port=port)
        wait_for(lambda: _answers(probe), 10, "redis sentinel")
        url = f"sentinel://127.0.0.1:{port}/0"
        env = {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url,
               "IMAGINEER_REDIS_SENTINEL_MASTER": "imagineer"}
        worker = CeleryProcess("sentinel", env=env, logdir=tmp_path, extra_args=SLOW).start()
        try:
            submit = subprocess.run(
                [*CLI, "submit", "tests.sleep", "--kwargs", '{"seconds": 0}', "--wait",
                 "--timeout", "30"], env=worker.env, capture_output=True, text=True, timeout=60)
            assert submit.returncode == 0, submit.stderr
            assert submit.stdout.strip().endswith('"done"')
            # the task really went through the master the sentinel named
            assert any(master.client().scan_iter("celery-task-meta-*"))
        finally:
            worker.stop()
    finally:
        sentinel.terminate()
        sentinel.wait(10)
        master.stop()


def _answers(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False
