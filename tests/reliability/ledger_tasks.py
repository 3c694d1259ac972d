"""Test-only tasks, loaded into the real workers with ``--include=tests.reliability.ledger_tasks``.

Every execution of ``reliability.work`` writes its start, a heartbeat every 0.2 s and its end to a
*ledger* Redis (``RELIABILITY_LEDGER_URL``), a server separate from the broker so that restarting or
stopping the broker never erases the record. Per task id the ledger holds one hash
``exec:<task id>`` with fields ``<execution>:start|beat|end|host|pid`` where ``<execution>`` is
unique per execution (pid + a random suffix). From that the suite counts executions, completed
executions, and executions of one task id that overlapped in time (a killed execution ends at its
last heartbeat).
"""

from __future__ import annotations

import os
import time
import uuid

import redis
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

HEARTBEAT_SECONDS = 0.2
_ledger: redis.Redis | None = None
_ledger_pid = 0


def ledger() -> redis.Redis:
    """One client per process (prefork children must not share the parent's socket)."""
    global _ledger, _ledger_pid
    if _ledger is None or _ledger_pid != os.getpid():
        _ledger = redis.Redis.from_url(os.environ["RELIABILITY_LEDGER_URL"], socket_timeout=10)
        _ledger_pid = os.getpid()
    return _ledger


def _allocate(megabytes: int) -> list[bytes]:
    """Really touch ``megabytes`` MiB (``b"x" * n`` fills every page, unlike calloc'd ``bytes(n)``)."""
    chunks = []
    for _ in range(0, megabytes, 16):
        chunks.append(b"\x01" * (16 * 1024 * 1024))
    return chunks


@shared_task(name="reliability.work", bind=True)
def work(self, seconds: float = 0.0, alloc_mb: int = 0) -> dict:  # type: ignore[no-untyped-def]
    """Run ``seconds`` (heartbeating into the ledger), optionally allocate ``alloc_mb`` MiB first."""
    key = f"exec:{self.request.id}"
    execution = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    now = time.time()
    queue = (self.request.delivery_info or {}).get("routing_key") or ""
    ledger().hset(key, mapping={f"{execution}:start": now, f"{execution}:beat": now, f"{execution}:queue": queue,
                                f"{execution}:host": self.request.hostname or "", f"{execution}:pid": os.getpid()})
    held = _allocate(alloc_mb) if alloc_mb else []
    deadline = time.monotonic() + seconds
    last_beat = time.monotonic()
    while time.monotonic() < deadline:
        try:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        except SoftTimeLimitExceeded:
            ledger().hset(key, f"{execution}:soft_limit", time.time())
            raise
        if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
            ledger().hset(key, f"{execution}:beat", time.time())
            last_beat = time.monotonic()
    del held
    ledger().hset(key, mapping={f"{execution}:beat": time.time(), f"{execution}:end": time.time()})
    return {"pid": os.getpid(), "execution": execution}
