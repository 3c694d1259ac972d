"""Maintenance jobs run by beat on ``IMAGINEER_MAINTENANCE_QUEUE``: disk samples and purges.

``record_disk_usage`` appends one sample per run to ``metrics/disk_usage.jsonl`` (bounded to
``disk_samples_keep`` lines) and stores its run time in Redis, because the guide's beat alert
("no record_disk_usage run in 12 hours") and ``doctor`` need a liveness signal that does not
depend on results that expire.

The purges delete whole job / dataset directories whose *newest* mtime anywhere inside is older
than the threshold, so a directory something is still writing to (a running job, its ``.lock``)
is kept by the age rule itself. Safety rules, since these run unattended against a shared PVC:

- only direct children of ``training/`` or ``scrapes/`` are candidates, never the area roots;
- an entry that is itself a symlink is skipped (neither followed nor removed) and reported in
  ``skipped``: its target may be outside the data dir, and a link is not ours to judge;
- every candidate is resolved with ``storage.inside`` before deletion;
- walks use ``lstat`` and never follow links, and ``shutil.rmtree`` unlinks symlinks found
  inside a directory instead of descending into them, so nothing outside is read or deleted.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import shared_task
from pydantic import Field, StrictBool

from imagineer_worker.config import get_settings
from imagineer_worker.storage import AREAS, UnsafePathError, atomic_write_bytes, inside, safe_id
from imagineer_worker.tasks import names
from imagineer_worker.tasks.base import ImagineerTask, Payload, validate

log = logging.getLogger(__name__)

LAST_RUN_KEY = "imagineer:maintenance:last_run:{name}"
DISK_USAGE_LAST_RUN = LAST_RUN_KEY.format(name="record_disk_usage")  # doctor's beat-liveness check
BEAT_STARTED = "imagineer:beat:started"  # set by beat at start-up (celery_app), read by doctor
DISK_USAGE_FILE = "disk_usage.jsonl"
_DAY = 86400.0


class NoPayload(Payload):
    """``record_disk_usage`` takes no arguments; any keyword is a mistake."""


class PurgePayload(Payload):
    max_age_days: float | None = Field(None, ge=0)  # None: the configured threshold
    # Strict: a string like "false" must not silently decide whether data is deleted.
    dry_run: StrictBool = False


def _mark_run(task: ImagineerTask, name: str) -> float:
    """Store the run time where ``doctor`` and the beat-liveness alert look for it."""
    now = time.time()
    task.app.backend.client.set(get_settings().key(LAST_RUN_KEY.format(name=name)), f"{now:.3f}")
    return now


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers of one file (beat can duplicate a run during a rollout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _walk(root: Path) -> tuple[int, int, float]:
    """(regular-file bytes, regular-file count, newest mtime) under ``root``, never following links.

    The newest mtime covers directories and symlinks themselves (``lstat``), so a fresh
    ``.lock`` file or a just-created subdirectory both count as activity.
    """
    size = files = 0
    try:
        newest = root.lstat().st_mtime
    except FileNotFoundError:
        return 0, 0, 0.0
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we walked
            newest = max(newest, st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))
            elif stat.S_ISREG(st.st_mode):
                size += st.st_size
                files += 1
    return size, files, newest


# --- disk usage -------------------------------------------------------------------------------


@shared_task(name=names.RECORD_DISK_USAGE, base=ImagineerTask, bind=True)
def record_disk_usage(self: ImagineerTask, **payload: Any) -> dict[str, Any]:
    """Sample bytes and files per data area plus the volume's usage; keep the last N samples."""
    validate(NoPayload, payload)
    settings = get_settings()
    data = self.data
    root = inside(data.root, data.root)
    metrics = data.area("metrics")
    metrics.mkdir(parents=True, exist_ok=True)
    areas: dict[str, dict[str, int]] = {}
    for name in AREAS:
        area = data.area(name)
        if area.is_symlink():  # an area must be a real directory; never measure elsewhere
            areas[name] = {"bytes": 0, "files": 0}
            continue
        size, files, _ = _walk(area)
        areas[name] = {"bytes": size, "files": files}
    disk = shutil.disk_usage(root)
    now = time.time()
    sample = {
        "timestamp": datetime.fromtimestamp(now, UTC).isoformat(),
        "unix_time": round(now, 3),
        "data_dir": str(root),
        "areas": areas,
        "disk": {"total": disk.total, "used": disk.used, "free": disk.free},
    }

    path = inside(data.root, metrics / DISK_USAGE_FILE)
    keep = settings.disk_samples_keep
    line = json.dumps(sample, sort_keys=True) + "\n"
    with _locked(metrics / f".{DISK_USAGE_FILE}.lock"):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
        lines = [ln if ln.endswith("\n") else ln + "\n" for ln in lines if ln.strip()]
        if len(lines) + 1 > keep:
            # Trimming rewrites the file: atomically, so a reader never sees it half-written.
            atomic_write_bytes(path, "".join([*lines, line][-keep:]).encode())
        else:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line)
    _mark_run(self, "record_disk_usage")
    log.info(
        "disk usage: %d bytes free of %d", disk.free, disk.total,
        extra={"operation": "disk_usage", "areas": areas, "disk_free": disk.free,
               "disk_total": disk.total, "samples_keep": keep},
    )
    return sample


# --- purges -----------------------------------------------------------------------------------


def _is_safe_id(name: str) -> bool:
    """Only a valid dataset id can have a companion directory (others: e.g. a leftover temp dir)."""
    try:
        safe_id(name)
    except UnsafePathError:
        return False
    return True


def _remove(path: Path) -> None:
    shutil.rmtree(path)  # unlinks symlinks inside the tree, never descends into them


def _purge(
    task: ImagineerTask, area: str, payload: dict[str, Any], default_days: float,
    companion: str | None = None,
) -> dict[str, Any]:
    """Remove stale direct children of ``area`` (and ``companion/<same name>`` with them)."""
    p = validate(PurgePayload, payload)
    max_age_days = default_days if p.max_age_days is None else p.max_age_days
    data = task.data
    root = data.root.resolve()
    area_dir = inside(root, data.area(area))  # an area that is a link out of the data dir fails
    cutoff = time.time() - max_age_days * _DAY
    removed: list[str] = []
    skipped: list[str] = []
    errors: list[dict[str, str]] = []
    kept = 0
    freed = 0
    entries = sorted(os.scandir(area_dir), key=lambda e: e.name) if area_dir.is_dir() else []
    for entry in entries:
        rel = f"{area}/{entry.name}"
        if entry.is_symlink():
            skipped.append(rel)
            log.warning("purge: skipping symlink %s (never followed nor removed)", rel,
                        extra={"operation": "purge", "area": area, "path": rel, "status": "skipped"})
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue  # stray files at the area root are not jobs or datasets
        try:
            candidate = inside(root, Path(entry.path))
            targets = [candidate]
            if companion is not None and _is_safe_id(entry.name):
                other = data.area(companion) / entry.name
                if other.is_dir() and not other.is_symlink():
                    targets.append(inside(root, other))
        except UnsafePathError as exc:
            skipped.append(rel)
            log.warning("purge: skipping %s: %s", rel, exc,
                        extra={"operation": "purge", "area": area, "path": rel, "status": "skipped"})
            continue
        walks = [_walk(t) for t in targets]
        newest = max(w[2] for w in walks)  # labels written recently keep their scrape too
        if newest >= cutoff:
            kept += 1
            continue
        for target, (size, _, _) in zip(targets, walks, strict=True):
            target_rel = target.relative_to(root).as_posix()
            if not p.dry_run:
                try:
                    _remove(target)
                except OSError as exc:
                    errors.append({"path": target_rel, "error": str(exc)})
                    log.error("purge: cannot remove %s: %s", target_rel, exc,
                              extra={"operation": "purge", "area": area, "path": target_rel,
                                     "status": "error"})
                    continue
            removed.append(target_rel)
            freed += size
            log.info("purge: %s %s (%d bytes, newest change %s)",
                     "would remove" if p.dry_run else "removed", target_rel, size,
                     datetime.fromtimestamp(newest, UTC).isoformat(),
                     extra={"operation": "purge", "area": area, "path": target_rel, "bytes": size,
                            "dry_run": p.dry_run, "status": "removed"})
    _mark_run(task, task.name.rsplit(".", 1)[-1])
    result = {"removed": removed, "kept": kept, "dry_run": p.dry_run, "freed_bytes": freed,
              "skipped": skipped, "errors": errors, "max_age_days": max_age_days}
    log.info("purge of %s: %d removed, %d kept, %d bytes freed%s", area, len(removed), kept, freed,
             " (dry run)" if p.dry_run else "",
             extra={"operation": "purge", "area": area, "removed": len(removed), "kept": kept,
                    "freed_bytes": freed, "dry_run": p.dry_run, "max_age_days": max_age_days})
    return result


@shared_task(name=names.PURGE_STALE_TRAINING, base=ImagineerTask, bind=True)
def purge_stale_training(self: ImagineerTask, **payload: Any) -> dict[str, Any]:
    """Delete ``training/<job_id>/`` directories unchanged for ``max_age_days`` (default 14)."""
    return _purge(self, "training", payload, get_settings().purge_training_max_age_days)


@shared_task(name=names.PURGE_STALE_SCRAPES, base=ImagineerTask, bind=True)
def purge_stale_scrapes(self: ImagineerTask, **payload: Any) -> dict[str, Any]:
    """Delete stale ``scrapes/<id>/`` (default 30 days) and their ``labels/<id>/`` with them."""
    return _purge(self, "scrapes", payload, get_settings().purge_scrape_max_age_days, companion="labels")
