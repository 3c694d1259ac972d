"""A per-domain rate limit shared by every scraping worker and process, through Redis.

The scraping task's fetches (:mod:`imagineer_worker.netguard`) wait here for their domain's slot,
so the guide's "rate-limit externally" holds however many scraping pods run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class RedisLike(Protocol):
    def set(self, name: str, value: str, *, nx: bool, px: int) -> Any: ...
    def pttl(self, name: str) -> Any: ...
    def pexpire(self, name: str, time: int) -> Any: ...


@dataclass
class DomainRateLimiter:
    """At most one request per ``interval`` seconds to a domain, across every worker and process.

    The slot is a Redis key ``SET ... NX PX interval``: whoever creates it may send; everyone
    else sleeps for the key's remaining TTL and tries again. Nothing needs releasing, so a
    crashed worker cannot leave a domain locked for longer than one interval.
    """

    client: RedisLike
    interval: float
    prefix: str = "imagineer:ratelimit:"
    sleep: Callable[[float], None] = time.sleep

    def acquire(self, domain: str) -> float:
        """Block until this process may send to ``domain``; returns the seconds it waited."""
        if self.interval <= 0:
            return 0.0
        interval_ms = max(1, round(self.interval * 1000))
        key = self.prefix + domain.lower()
        if self.client.set(key, "1", nx=True, px=interval_ms):
            return 0.0
        started = time.monotonic()
        while True:
            ttl = int(self.client.pttl(key))
            if ttl == -1:  # a key without expiry (set by hand?) would block the domain forever
                self.client.pexpire(key, interval_ms)
                ttl = interval_ms
            if ttl > 0:
                self.sleep(min(ttl, interval_ms) / 1000)
            if self.client.set(key, "1", nx=True, px=interval_ms):
                return time.monotonic() - started
