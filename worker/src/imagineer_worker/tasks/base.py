"""The base class of every Imagineer task: payload validation that fails fast, never retries."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from imagineer_worker.config import get_settings
from imagineer_worker.redelivery import Task
from imagineer_worker.storage import DataDir, UnsafePathError

M = TypeVar("M", bound=BaseModel)


class InvalidPayload(ValueError):  # noqa: N818 - reads as a task state: the payload is invalid
    """Bad task input. The task fails with this message; it is never retried."""


class Payload(BaseModel):
    """Base of every task's payload model: unknown keys are typos, so they are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validate(model: type[M], payload: dict[str, Any]) -> M:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'payload'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidPayload(f"invalid payload for {model.__name__}: {problems}") from None


class ImagineerTask(Task):
    """Tasks take keyword arguments only (JSON objects) and validate them with a Payload model."""

    abstract = True
    # A malformed payload or an unsafe path fails the same way on every delivery: acknowledge
    # it and record the failure instead of requeueing it forever.
    throws = (InvalidPayload, UnsafePathError)

    @property
    def data(self) -> DataDir:
        return DataDir(get_settings().data_dir)
