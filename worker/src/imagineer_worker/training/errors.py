"""Training failures, in a module without torch so that a Celery client can rebuild them.

Celery stores a task's exception as (module, class name, args) and the client re-imports the
module to raise the same type from ``AsyncResult.get()``: every exception here takes a single
message argument so that round trip works.
"""

from __future__ import annotations

# The names read as the outcome a client sees in a task result (N818 wants an "Error" suffix).
# ruff: noqa: N818


class DatasetError(ValueError):
    """The training manifest or one of its images is missing, empty or unreadable."""


class JobConflict(ValueError):
    """A job id delivered again with a different dataset or different hyper-parameters.

    Resuming or reusing would mix two trainings in one directory: the caller must pick a new id.
    """


class JobBusy(RuntimeError):
    """Another process is training the same job id right now (a duplicate delivery)."""


class TrainingInterrupted(RuntimeError):
    """The soft time limit stopped training; a checkpoint was saved and a new delivery resumes."""


class BaseModelError(ValueError):
    """The base model could not be loaded (no such local directory or hub id, or not cached offline)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; continuing would only write garbage weights."""
