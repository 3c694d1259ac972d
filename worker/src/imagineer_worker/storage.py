"""The data directory's layout and the only ways tasks write into it.

Layout under ``data_dir`` (a PVC shared by scraping, labeling and training)::

    scrapes/<dataset_id>/images/<sha256>.<ext>   scraped files, named by content hash
    scrapes/<dataset_id>/manifest.json           what was scraped, from where, with alt text
    labels/<dataset_id>/items/<sha256>.json      one label record per image (idempotent)
    labels/<dataset_id>/manifest.json            training manifest: images + captions
    training/<job_id>/                           checkpoints, LoRA weights, metadata
    metrics/disk_usage.jsonl                     record_disk_usage samples

Identifiers from payloads become path components only after ``safe_id`` and every resolved path
is checked to stay inside ``data_dir``: a task can never write or delete outside it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

AREAS = ("scrapes", "labels", "training", "metrics")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UnsafePathError(ValueError):
    pass


def safe_id(value: str, what: str = "id") -> str:
    """A payload identifier usable as one path component (no separators, no '..')."""
    if not isinstance(value, str) or not _ID.match(value) or ".." in value:
        raise UnsafePathError(
            f"invalid {what} {value!r}: use 1-128 characters of letters, digits, '.', '_' or '-'"
        )
    return value


def inside(root: Path, path: Path) -> Path:
    """Resolve ``path`` and make sure it lies within ``root`` (symlinks resolved)."""
    root_r = root.resolve()
    resolved = path.resolve()
    if resolved != root_r and not resolved.is_relative_to(root_r):
        raise UnsafePathError(f"{path} resolves outside the data directory {root_r}")
    return resolved


class DataDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def area(self, name: str) -> Path:
        """One of the data directory's top-level areas; a name outside :data:`AREAS` is a bug.

        Raised, not asserted: ``python -O`` drops asserts, and this guards where files are written.
        """
        if name not in AREAS:
            raise ValueError(f"unknown data area {name!r}: one of {', '.join(AREAS)}")
        return self.root / name

    def scrape_dir(self, dataset_id: str) -> Path:
        return inside(self.root, self.area("scrapes") / safe_id(dataset_id, "dataset_id"))

    def labels_dir(self, dataset_id: str) -> Path:
        return inside(self.root, self.area("labels") / safe_id(dataset_id, "dataset_id"))

    def training_dir(self, job_id: str) -> Path:
        return inside(self.root, self.area("training") / safe_id(job_id, "job_id"))

    def resolve(self, relative: str | Path) -> Path:
        """A path given relative to the data dir (e.g. a manifest in a payload), checked."""
        p = Path(relative)
        return inside(self.root, p if p.is_absolute() else self.root / p)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file + rename so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other pods (the API) read the shared volume
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
