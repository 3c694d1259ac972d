"""A bare Celery app: the baseline. It never imports ``imagineer_worker``.

Settings come from ``BENCH_CONF`` (JSON): the bench passes either the project's own Celery settings
minus the keys that name project code (its consumer class, beat's scheduler), or Celery's defaults
with only the broker and the result backend. A consumer bootstep touches ``BENCH_READY_FILE`` at the
point where the project's worker writes its readiness file, so start-up is timed to the same event.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps

from bench.apps.tasks import register


class ReadyFile(bootsteps.StartStopStep):
    requires = {"celery.worker.consumer.tasks:Tasks"}  # the same place as the project's HealthFiles

    def start(self, parent: Any) -> None:
        path = os.environ.get("BENCH_READY_FILE")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text("ready\n")


celery = Celery("bench-bare")
celery.conf.update(json.loads(os.environ.get("BENCH_CONF") or "{}"))
celery.steps["consumer"].add(ReadyFile)
register(celery)
app = celery
