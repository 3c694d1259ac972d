"""The training queue's task: ``imagineer.training.train_lora``.

The payload is validated and the manifest checked (every image present and decodable) before
anything heavy loads, so a bad request fails in milliseconds with a message naming the field and
is never retried. torch, diffusers, transformers and peft are imported inside the task body, in
the prefork child: importing this module (the worker's parent does, through ``include``) never
loads torch and never initialises CUDA.

Redelivery is part of the design, not an accident: with late acks a job can arrive twice (a worker
lost, the hard limit, a broker reconnect, or an operator resubmitting after
``TrainingInterrupted``). The same ``job_id`` resumes from its newest checkpoint, or returns the
finished result without training again.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError
from pydantic import Field, field_validator
from redis.exceptions import RedisError

from imagineer_worker.storage import safe_id
from imagineer_worker.tasks import names
from imagineer_worker.tasks.base import ImagineerTask, InvalidPayload, Payload, validate
from imagineer_worker.training.dataset import load_manifest
from imagineer_worker.training.errors import (
    BaseModelError,
    DatasetError,
    JobBusy,
    JobConflict,
    TrainingDiverged,
    TrainingInterrupted,
)
from imagineer_worker.training.job import JobFiles, TrainConfig, completed_result
from imagineer_worker.training.softlimit import soft_limit_deferred

log = logging.getLogger(__name__)

TASK_NAME = names.TRAIN_LORA
# PROGRESS updates go to the result backend at most this often (plus the last step): one Redis
# write per step would be thousands of writes for a fast GPU job and nobody polls that fast.
PROGRESS_INTERVAL_SECONDS = 0.5


_DEFAULTS = TrainConfig("", "", "")  # the defaults live in TrainConfig (the diffusers example's)


class TrainLoraPayload(Payload):
    """``imagineer.training.train_lora`` keyword arguments: TrainConfig's fields, with their bounds."""

    job_id: Annotated[str, Field(strict=True)]
    base_model: Annotated[str, Field(strict=True, min_length=1, max_length=512)]
    manifest: Annotated[str, Field(strict=True, min_length=1, max_length=1024)]
    steps: Annotated[int, Field(strict=True, ge=1, le=100_000)] = _DEFAULTS.steps
    rank: Annotated[int, Field(strict=True, ge=1, le=256)] = _DEFAULTS.rank
    learning_rate: Annotated[float, Field(strict=True, gt=0, le=1, allow_inf_nan=False)] = _DEFAULTS.learning_rate
    resolution: Annotated[int, Field(strict=True, ge=8, le=1024, multiple_of=8)] = _DEFAULTS.resolution
    batch_size: Annotated[int, Field(strict=True, ge=1, le=64)] = _DEFAULTS.batch_size
    checkpoint_every: Annotated[int, Field(strict=True, ge=1, le=100_000)] = _DEFAULTS.checkpoint_every
    seed: Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)] = _DEFAULTS.seed

    @field_validator("job_id")
    @classmethod
    def _job_id_is_a_path_component(cls, value: str) -> str:
        return safe_id(value, "job_id")  # it names training/<job_id>/

    @field_validator("base_model")
    @classmethod
    def _base_model_is_one_word(cls, value: str) -> str:
        if value != value.strip() or any(ch.isspace() for ch in value):
            raise ValueError("must be a model directory or hub id without whitespace")
        return value


class _Progress:
    """The trainer's progress callback: throttled ``PROGRESS`` states on the task's result."""

    def __init__(self, task: ImagineerTask, job_id: str) -> None:
        self.task, self.job_id = task, job_id
        self._last = 0.0

    def __call__(self, step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if step != total and now - self._last < PROGRESS_INTERVAL_SECONDS:
            return
        self._last = now
        if self.task.request.id is None:  # called directly, not through a worker
            return
        try:
            self.task.update_state(state="PROGRESS",
                                   meta={"step": step, "total": total, "loss": loss, "job_id": self.job_id})
        except (OSError, RedisError, OperationalError) as exc:
            # A result-backend blip must not end hours of training; the next update may get through.
            log.warning("training job %s: progress update failed: %s", self.job_id, exc,
                        extra={"operation": "training", "job_id": self.job_id})


@shared_task(
    name=TASK_NAME,
    base=ImagineerTask,
    bind=True,
    # Expected outcomes, recorded as the task's failure without an error traceback in the log.
    throws=(*ImagineerTask.throws, TrainingInterrupted, JobBusy, TrainingDiverged),
)
def train_lora(self: ImagineerTask, **payload: Any) -> dict[str, Any]:
    """Train a LoRA for ``payload["base_model"]`` on a manifest; resumable by ``job_id``.

    Returns ``{job_id, weights, metadata, steps, final_loss, resumed_from, device, dtype, reused}``
    with ``weights`` and ``metadata`` relative to the data directory.
    """
    request = validate(TrainLoraPayload, payload)
    config = TrainConfig(**request.model_dump())
    data = self.data
    try:
        dataset = load_manifest(data, config.manifest)
        # Cheap path first: a finished job is answered without importing torch at all.
        finished = completed_result(JobFiles(data.training_dir(config.job_id)), config.job_id,
                                    config.fingerprint(dataset.sha256))
    except (DatasetError, JobConflict) as exc:
        raise InvalidPayload(str(exc)) from None
    if finished is not None:
        return finished.as_dict(data.root.resolve())

    try:
        # Never cut an ``import torch`` in half: a soft limit during the import is raised after it.
        with soft_limit_deferred():
            from imagineer_worker.training.lora import train_lora as run_training
    except SoftTimeLimitExceeded:
        raise TrainingInterrupted(
            f"soft time limit reached while loading the training libraries, before any step; "
            f"deliver job {config.job_id} again to resume"
        ) from None

    try:
        result = run_training(config, data=data, dataset=dataset, progress=_Progress(self, config.job_id))
    except (BaseModelError, JobConflict) as exc:
        raise InvalidPayload(str(exc)) from None
    return result.as_dict(data.root.resolve())
