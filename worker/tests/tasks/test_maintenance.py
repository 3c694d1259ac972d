"""Maintenance through a real default worker with its own data dir (so purges touch nothing else)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from imagineer_worker.testing.services import CeleryProcess, RedisServer

TIMEOUT = 30
DAY = 86400


@pytest.fixture(scope="module")
def maint_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("maint-data")


@pytest.fixture(scope="module")
def maint_worker(module_workers: Any, maint_data: Path) -> CeleryProcess:
    return module_workers("default", env={"IMAGINEER_DATA_DIR": str(maint_data),
                                          "IMAGINEER_DISK_SAMPLES_KEEP": "3"})


@pytest.fixture
def data(maint_worker: CeleryProcess, maint_data: Path) -> Path:
    """The worker's data dir, emptied before each test (the worker is idle between tests)."""
    for child in maint_data.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return maint_data


def _run(celery_app: Any, name: str, **kwargs: Any) -> Any:
    result = celery_app.send_task(f"imagineer.maintenance.{name}", kwargs=kwargs)
    result.get(timeout=TIMEOUT, propagate=False)
    return result


def _write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def _age(root: Path, days: float) -> None:
    """Set every mtime under ``root`` (links themselves included, bottom-up) ``days`` back."""
    t = time.time() - days * DAY
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), (t, t), follow_symlinks=False)
    os.utime(root, (t, t), follow_symlinks=False)


def test_record_disk_usage_samples_trims_and_marks_run(celery_app: Any, data: Path,
                                                       redis_server: RedisServer, tmp_path: Path) -> None:
    _write(data / "scrapes" / "a" / "images" / "x.png", 1000)
    _write(data / "scrapes" / "a" / "manifest.json", 234)
    _write(data / "labels" / "a" / "items" / "x.json", 10)
    (data / "training").mkdir()
    outside = tmp_path / "outside"
    _write(outside / "big.bin", 5000)
    (data / "training" / "link").symlink_to(outside)  # not followed: counts nothing

    samples = []
    for _ in range(4):
        result = _run(celery_app, "record_disk_usage")
        assert result.state == "SUCCESS", result.result
        samples.append(result.result)

    last = samples[-1]
    assert last["areas"]["scrapes"] == {"bytes": 1234, "files": 2}
    assert last["areas"]["labels"] == {"bytes": 10, "files": 1}
    assert last["areas"]["training"] == {"bytes": 0, "files": 0}
    disk = last["disk"]
    assert 0 <= disk["free"] <= disk["total"]
    assert 0 < disk["used"] <= disk["total"]

    lines = (data / "metrics" / "disk_usage.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == samples[-3:]  # IMAGINEER_DISK_SAMPLES_KEEP=3

    stored = redis_server.client().get("imagineer:maintenance:last_run:record_disk_usage")
    assert stored is not None
    assert abs(float(stored) - last["unix_time"]) < 5


def _training_tree(data: Path, outside: Path) -> None:
    training = data / "training"
    _write(training / "job-old" / "lora.safetensors", 300)
    _write(training / "job-old" / "checkpoints" / "step-1.bin", 700)
    _age(training / "job-old", 20)
    _write(training / "job-new" / "meta.json", 5)
    _write(training / "job-running" / "checkpoints" / "step-1.bin", 100)
    _age(training / "job-running", 20)
    _write(training / "job-running" / ".lock", 0)  # fresh: the job is alive
    # Old directory with a symlink to a directory outside the data dir: only the link goes.
    _write(outside / "precious" / "keep.bin", 50)
    _write(training / "job-linked" / "out.bin", 1)
    (training / "job-linked" / "shared").symlink_to(outside / "precious")
    _age(outside, 20)
    _age(training / "job-linked", 20)
    # A top-level symlink to outside: skipped, never followed.
    _write(outside / "other" / "data.bin", 40)
    _age(outside / "other", 20)
    (training / "linked-job").symlink_to(outside / "other")
    os.utime(training / "linked-job", (time.time() - 20 * DAY,) * 2, follow_symlinks=False)
    _write(training / "stray.txt", 3)
    _age(training / "stray.txt", 20)


def test_purge_stale_training(celery_app: Any, data: Path, tmp_path: Path, redis_server: RedisServer) -> None:
    outside = tmp_path / "outside"
    _training_tree(data, outside)
    training = data / "training"
    before = sorted(p.name for p in training.iterdir())

    dry = _run(celery_app, "purge_stale_training", dry_run=True).result
    assert dry["dry_run"] is True
    assert sorted(dry["removed"]) == ["training/job-linked", "training/job-old"]
    assert dry["freed_bytes"] == 1001
    assert sorted(p.name for p in training.iterdir()) == before  # nothing removed

    done = _run(celery_app, "purge_stale_training").result  # default threshold: 14 days
    assert done["dry_run"] is False
    assert sorted(done["removed"]) == ["training/job-linked", "training/job-old"]
    assert (done["kept"], done["freed_bytes"]) == (2, 1001)
    assert done["skipped"] == ["training/linked-job"]
    assert sorted(p.name for p in training.iterdir()) == ["job-new", "job-running", "linked-job", "stray.txt"]
    # Nothing outside the data dir was followed or deleted.
    assert (outside / "precious" / "keep.bin").read_bytes() == b"x" * 50
    assert (outside / "other" / "data.bin").read_bytes() == b"x" * 40
    assert redis_server.client().get("imagineer:maintenance:last_run:purge_stale_training") is not None

    # A smaller explicit threshold reaches the running job, whose .lock is only seconds old: kept.
    again = _run(celery_app, "purge_stale_training", max_age_days=0.5).result
    assert (again["removed"], again["kept"]) == ([], 2)


def test_purge_stale_scrapes_removes_their_labels(celery_app: Any, data: Path) -> None:
    for name in ("ds-old", "ds-new", "ds-relabeled"):
        _write(data / "scrapes" / name / "images" / "a.png", 100)
        _write(data / "labels" / name / "manifest.json", 10)
    _write(data / "labels" / "orphan" / "manifest.json", 10)
    for name in ("ds-old", "ds-relabeled"):
        _age(data / "scrapes" / name, 40)
    for name in ("ds-old", "orphan"):
        _age(data / "labels" / name, 40)

    done = _run(celery_app, "purge_stale_scrapes").result  # default threshold: 30 days
    assert sorted(done["removed"]) == ["labels/ds-old", "scrapes/ds-old"]
    assert (done["kept"], done["freed_bytes"]) == (2, 110)
    assert sorted(p.name for p in (data / "scrapes").iterdir()) == ["ds-new", "ds-relabeled"]
    # Labels written recently keep their (old) scrape; labels without a scrape are not ours.
    assert sorted(p.name for p in (data / "labels").iterdir()) == ["ds-new", "ds-relabeled", "orphan"]
    assert (data / "scrapes").is_dir()  # the area roots stay
    assert (data / "labels").is_dir()


def test_invalid_payloads_fail_without_retry(celery_app: Any, data: Path) -> None:
    _write(data / "training" / "job-old" / "x.bin", 1)
    _age(data / "training" / "job-old", 30)
    cases = [
        ("purge_stale_training", {"max_age_days": -1}, "max_age_days"),
        ("purge_stale_scrapes", {"dry_run": "no"}, "dry_run"),
        ("purge_stale_training", {"max_age_day": 1}, "max_age_day"),
        ("record_disk_usage", {"keep": 3}, "keep"),
    ]
    for name, kwargs, needle in cases:
        result = _run(celery_app, name, **kwargs)
        assert result.state == "FAILURE", (name, kwargs)
        assert type(result.result).__name__ == "InvalidPayload"
        assert needle in str(result.result)
        assert not result.retries
    assert (data / "training" / "job-old" / "x.bin").exists()
