"""Fixtures that start real services: one redis-server per test session, real celery workers.

The broker URL and data dir are set in the environment before ``imagineer_worker.celery_app`` is
imported, so the test process (the client) and every worker subprocess share them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagineer_worker.testing.fixture_site import FixtureSite
from imagineer_worker.testing.services import CeleryProcess, RedisServer

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="imagineer-tests-"))
_REDIS = RedisServer(_SESSION_DIR / "redis")


def pytest_sessionstart(session: pytest.Session) -> None:
    _REDIS.start()
    os.environ.update({
        "CELERY_BROKER_URL": _REDIS.url,
        "CELERY_RESULT_BACKEND": _REDIS.url,
        "IMAGINEER_DATA_DIR": str(_SESSION_DIR / "data"),
        "IMAGINEER_SCRAPING_ALLOW_NETWORKS": "127.0.0.1/32",
        "IMAGINEER_SCRAPING_DOMAIN_INTERVAL_SECONDS": "0",
        "IMAGINEER_LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    })
    os.environ.pop("IMAGINEER_CONFIG", None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _REDIS.stop()
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    return _REDIS


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["IMAGINEER_DATA_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def celery_app():  # type: ignore[no-untyped-def]
    from imagineer_worker.celery_app import celery

    return celery


WorkerFactory = Callable[..., CeleryProcess]


class _Workers:
    """Starts celery processes for a test scope and always stops them (SIGTERM, then SIGKILL)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[CeleryProcess] = []

    def __call__(self, queues: str = "default", *, name: str | None = None, concurrency: int = 1,
                 env: dict[str, str] | None = None, beat: bool = False, extra_args: list[str] | None = None,
                 wait: bool = True) -> CeleryProcess:
        name = name or f"{queues.replace(',', '-')}-{len(self.started)}"
        proc = CeleryProcess(name=name, env=dict(env or {}), logdir=self.logdir, queues=queues,
                             concurrency=concurrency, beat=beat, extra_args=extra_args or [])
        self.started.append(proc)
        return proc.start(wait=wait)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


def _purge_queues() -> None:
    """Drop messages left by an earlier test so a fresh worker only sees this test's tasks."""
    _REDIS.client().flushdb()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerFactory]:
    _purge_queues()
    started = _Workers(tmp_path / "logs")
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def module_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerFactory]:
    _purge_queues()
    started = _Workers(tmp_path_factory.mktemp("logs"))
    yield started
    started.stop_all()


@pytest.fixture(scope="session")
def fixture_site() -> Iterator[FixtureSite]:
    site = FixtureSite().start()
    yield site
    site.stop()
