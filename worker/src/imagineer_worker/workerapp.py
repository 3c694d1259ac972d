"""``celery worker``'s program for this app: it imports only the task modules of its queues.

Loaded by name from :class:`imagineer_worker.celery_app.ImagineerCelery` when a worker starts, so
beat, the CLI and the probes never import Celery's worker program.
"""

from __future__ import annotations

from typing import Any

from celery.apps.worker import Worker as CeleryWorker

from imagineer_worker.celery_app import task_modules
from imagineer_worker.config import get_settings


class Worker(CeleryWorker):  # type: ignore[misc]
    """Celery's worker program; ``include`` becomes the modules routed to the ``-Q`` queues."""

    def __init__(self, *args: Any, queues: Any = None, **kwargs: Any) -> None:
        self.app.conf.include = task_modules(get_settings(), queues)
        super().__init__(*args, queues=queues, **kwargs)
