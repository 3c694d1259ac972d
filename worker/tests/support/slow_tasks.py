"""A test-only task module (loaded with ``celery worker --include``) for time-limit behaviour."""

from __future__ import annotations

import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded


@shared_task(name="tests.sleep", bind=True)
def sleep(self, seconds: float, ignore_soft_limit: bool = False) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            if not ignore_soft_limit:
                return "soft-limit"
    return "done"


@shared_task(name="tests.die", bind=True)
def die(self) -> None:  # type: ignore[no-untyped-def]
    """Count this run in the result backend, then SIGKILL the prefork child (an OOM kill on every try)."""
    import os
    import signal

    self.app.backend.client.incr(f"tests:runs:{self.request.id}")
    os.kill(os.getpid(), signal.SIGKILL)
