"""Deferring Celery's soft time limit over code that must not be cut in half (no torch here).

billiard raises ``SoftTimeLimitExceeded`` from a ``SIGUSR1`` handler, i.e. between any two Python
bytecodes of the task: in the middle of an AdamW update (some parameters stepped, others not) or
of an ``import torch`` (a half-initialised module left in the child). Inside
``soft_limit_deferred()`` the signal is only recorded, and delivered when the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def soft_limit_deferred() -> Iterator[None]:
    """Hold back the soft time limit while the body runs, then raise it.

    Blocking the signal with ``pthread_sigmask`` would not do: torch's worker threads would still
    take it and Python would run the handler in the main thread anyway. Replacing the handler
    for the duration works for every thread; it needs the main thread (Celery's prefork children
    run tasks there; elsewhere this is a no-op).
    """
    sig = getattr(signal, "SIGUSR1", None)
    if sig is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(sig, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(sig, previous)
    if pending:
        if callable(previous):
            previous(sig, None)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(sig)
