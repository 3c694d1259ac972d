"""One training job's directory, identity and result; no torch, so the task can use it cheaply.

A job is identified by its ``job_id`` (the directory ``training/<job_id>/``) and *fingerprinted*
by everything that decides its result: base model, dataset hash and hyper-parameters. A second
delivery of the same id with the same fingerprint resumes from a checkpoint or returns the
finished result; with another fingerprint it is a ``JobConflict``, never a silent mix of two
trainings in one directory.

Layout::

    training/<job_id>/pytorch_lora_weights.safetensors   final LoRA (diffusers format)
    training/<job_id>/metadata.json                      status, loss curve, parameters, times
    training/<job_id>/checkpoints/step-<N>/              resumable state, the last two kept
    training/<job_id>/.lock                              flock held while a process trains
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagineer_worker.storage import read_json
from imagineer_worker.training.errors import JobBusy, JobConflict

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
METADATA_NAME = "metadata.json"


@dataclass(frozen=True)
class TrainConfig:
    """What a training job asks for (the task payload minus transport concerns)."""

    job_id: str
    base_model: str  # local diffusers directory or hub id, loaded with from_pretrained
    manifest: str  # relative to the data directory
    steps: int = 100
    rank: int = 4
    learning_rate: float = 1e-4
    resolution: int = 512
    batch_size: int = 1
    checkpoint_every: int = 500
    seed: int = 0

    def fingerprint(self, dataset_sha256: str) -> dict[str, Any]:
        """The inputs that decide the result. ``checkpoint_every`` is not one: resuming restores
        every random state, so where the checkpoints fall does not change the weights."""
        return {
            "base_model": self.base_model,
            "dataset_sha256": dataset_sha256,
            "steps": self.steps,
            "rank": self.rank,
            "learning_rate": self.learning_rate,
            "resolution": self.resolution,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class JobFiles:
    dir: Path

    @property
    def weights(self) -> Path:
        return self.dir / WEIGHTS_NAME

    @property
    def metadata(self) -> Path:
        return self.dir / METADATA_NAME

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def lock(self) -> Path:
        return self.dir / ".lock"

    def read_metadata(self) -> dict[str, Any] | None:
        try:
            data = read_json(self.metadata)
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class TrainResult:
    job_id: str
    weights: Path
    metadata: Path
    steps: int
    final_loss: float
    resumed_from: int | None
    device: str
    dtype: str
    reused: bool = False  # True: the job had already finished; nothing was trained

    def as_dict(self, root: Path | None = None) -> dict[str, Any]:
        """JSON-able; with ``root`` the paths are relative to it (the data directory), so API pods
        that mount the volume elsewhere can still find the files."""
        out = asdict(self)
        for key in ("weights", "metadata"):
            path: Path = out[key]
            if root is not None and path.is_relative_to(root):
                path = path.relative_to(root)
            out[key] = str(path)
        return out


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def describe_mismatch(stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    keys = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    return ", ".join(f"{k}: {stored.get(k)!r} != {wanted.get(k)!r}" for k in keys)


def check_fingerprint(job_id: str, what: str, stored: dict[str, Any] | None, wanted: dict[str, Any]) -> None:
    if stored != wanted:
        raise JobConflict(
            f"job {job_id} already has {what} for other inputs ({describe_mismatch(stored or {}, wanted)}); "
            "use a new job_id"
        )


def completed_result(files: JobFiles, job_id: str, fingerprint: dict[str, Any]) -> TrainResult | None:
    """The finished job's result when its weights and metadata exist, ``None`` when not finished.

    Raises ``JobConflict`` when it finished with another fingerprint.
    """
    meta = files.read_metadata()
    if meta is None or meta.get("status") != "completed" or not files.weights.is_file():
        return None
    check_fingerprint(job_id, "finished weights", meta.get("fingerprint"), fingerprint)
    return TrainResult(
        job_id=job_id,
        weights=files.weights,
        metadata=files.metadata,
        steps=int(meta["completed_steps"]),
        final_loss=float(meta["final_loss"]),
        resumed_from=meta.get("resumed_from"),
        device=str(meta.get("device")),
        dtype=str(meta.get("dtype")),
        reused=True,
    )


@contextlib.contextmanager
def job_lock(files: JobFiles, job_id: str) -> Iterator[None]:
    """Exclusive, non-blocking: a redelivered message (visibility timeout, worker lost) must not
    train into the same directory while the first delivery is still running. The kernel drops the
    lock when the process dies, so a crash never leaves a stale lock behind."""
    files.dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(files.lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobBusy(
                f"job {job_id} is being trained by another process; not starting a second copy"
            ) from None
        yield
    finally:
        os.close(fd)
