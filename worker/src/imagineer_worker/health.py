"""Liveness and readiness files for Kubernetes probes, without broadcasting to the fleet.

``celery inspect ping`` as a probe sends a broadcast through the broker, costs seconds of CPU
per call and restarts healthy pods on a broker blip (celery#4079). Instead a consumer bootstep
writes two files in ``health.dir``:

- ``ready`` exists while the consumer is connected and consuming (removed when it stops, e.g.
  on a broker connection loss, so the pod leaves the Service without being killed);
- ``alive`` is touched every ``HEARTBEAT_SECONDS`` by the worker's own event loop, so a hung main
  process shows up as a stale file;
- ``reconnecting`` exists while the consumer is down and Celery retries the broker: the event loop
  does not tick then, but restarting the pod would not bring Redis back, so liveness passes while
  readiness fails (a broker outage must not restart the whole fleet).

``imagineer-workers probe liveness|readiness`` checks them (exit 0 healthy, 1 not). This module
imports nothing heavy: a probe runs every few seconds and must cost milliseconds, not the quarter
second that importing celery takes. The bootstep that writes the files is in ``celery_app``.
"""

from __future__ import annotations

import time
from pathlib import Path

HEARTBEAT_SECONDS = 10.0
DEFAULT_MAX_AGE = 60.0


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{time.time():.3f}\n")


def check(kind: str, health_dir: Path, max_age: float = DEFAULT_MAX_AGE) -> tuple[bool, str]:
    """Probe verdict for ``kind`` in ``("liveness", "readiness")``."""
    name = "alive" if kind == "liveness" else "ready"
    path = health_dir / name
    reconnecting = health_dir / "reconnecting"
    if kind == "liveness" and reconnecting.exists():
        since = time.time() - reconnecting.stat().st_mtime
        return True, f"the worker has been reconnecting to the broker for {since:.0f}s"
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"{path} is missing: the worker is not {'running' if name == 'alive' else 'consuming'}"
    if kind == "liveness" and age > max_age:
        return False, f"{path} is {age:.0f}s old (limit {max_age:.0f}s): the worker's event loop is stuck"
    return True, f"{path} is {age:.0f}s old"
