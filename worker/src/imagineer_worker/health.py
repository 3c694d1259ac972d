"""Liveness and readiness files for Kubernetes probes, without broadcasting to the fleet.

``celery inspect ping`` as a probe sends a broadcast through the broker, costs seconds of CPU
per call and restarts healthy pods on a broker blip (celery#4079). Instead a consumer bootstep
writes two files in ``health.dir``:

- ``ready`` exists while the consumer is connected and consuming (removed when it stops, e.g.
  on a broker connection loss, so the pod leaves the Service without being killed);
- ``alive`` is touched every ``HEARTBEAT_SECONDS`` by the worker's own event loop, so a hung main
  process shows up as a stale file.

``imagineer-workers probe liveness|readiness`` checks them (exit 0 healthy, 1 not).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from celery import bootsteps

from imagineer_worker.config import get_settings

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
DEFAULT_MAX_AGE = 60.0


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{time.time():.3f}\n")


class HealthFiles(bootsteps.StartStopStep):
    """Consumer bootstep: ``ready`` while consuming, ``alive`` refreshed by the event loop."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.dir = Path(get_settings().health_dir)
        self._timer: Any = None

    def start(self, parent: Any) -> None:
        _touch(self.dir / "alive")
        _touch(self.dir / "ready")
        self._timer = parent.timer.call_repeatedly(HEARTBEAT_SECONDS, _touch, (self.dir / "alive",))
        log.info("worker ready; health files in %s", self.dir, extra={"operation": "health"})

    def stop(self, parent: Any) -> None:
        (self.dir / "ready").unlink(missing_ok=True)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        (self.dir / "alive").unlink(missing_ok=True)


def check(kind: str, health_dir: Path, max_age: float = DEFAULT_MAX_AGE) -> tuple[bool, str]:
    """Probe verdict for ``kind`` in ``("liveness", "readiness")``."""
    name = "alive" if kind == "liveness" else "ready"
    path = health_dir / name
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"{path} is missing: the worker is not {'running' if name == 'alive' else 'consuming'}"
    if kind == "liveness" and age > max_age:
        return False, f"{path} is {age:.0f}s old (limit {max_age:.0f}s): the worker's event loop is stuck"
    return True, f"{path} is {age:.0f}s old"
