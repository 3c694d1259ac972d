"""The benchmark's tasks, registered on both apps with identical bodies.

Nothing here imports ``imagineer_worker``: the bare app must run without any project code.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def register(app: Any) -> None:
    @app.task(name="bench.noop")
    def noop() -> float:
        """Does nothing; returns when it started (``time.time()``), for throughput and latency."""
        return time.time()

    @app.task(name="bench.sleep")
    def sleep(seconds: float = 0.05) -> float:
        """An I/O-bound task: a fixed sleep (the scaling figure)."""
        started = time.time()
        time.sleep(seconds)
        return started

    @app.task(name="bench.probe")
    def probe() -> dict[str, Any]:
        """What the prefork child has imported (torch must never be there in a light worker)."""
        return {"pid": os.getpid(), "torch": "torch" in sys.modules,
                "imagineer_worker": any(m.split(".")[0] == "imagineer_worker" for m in sys.modules)}
