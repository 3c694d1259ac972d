"""The dead-letter lists: where queue content the workers cannot run is kept, never dropped.

Each queue ``q`` has a list ``q.dead`` (under ``redis.key_prefix``), bounded by
``dead_letter_max_length`` (the oldest items go first). It holds items exactly as they sat in the
queue, so ``LMOVE q.dead q LEFT LEFT`` replays the newest one after a fix. Four paths lead there,
each logged once as JSON with the queue, the size and the first bytes:

- ``operation=dead_letter``: a raw item that is not a kombu message (:mod:`.transport`), or a
  message Celery cannot use: undecodable or disallowed content (e.g. pickle), an unknown message
  format, a task this worker does not know, an invalid task (:class:`Consumer`).
- ``operation=redelivery_cap``: a task delivered more than ``max_deliveries`` times (:mod:`.redelivery`),
  kept without kombu's ``redelivered`` marks so that a replay starts counting afresh.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from celery.worker.consumer import Consumer as CeleryConsumer

from imagineer_worker.config import get_settings

log = logging.getLogger(__name__)

DEAD_SUFFIX = ".dead"
HEAD_BYTES = 64  # how much of an item the log line shows


def plain_client(channel: Any) -> redis.Redis:
    """A client on ``channel``'s pool (TLS, Sentinel) that prefixes nothing: callers give full keys.

    kombu's prefixed client prefixes only the commands kombu itself uses (``LPUSH`` yes, ``LTRIM``
    and ``TYPE`` no), so our own commands name the full key instead of half-relying on it.
    """
    return redis.Redis(connection_pool=channel.pool)


def dead_letter(channel: Any, queue: str, raw: bytes, reason: str, *, operation: str = "dead_letter",
                **fields: Any) -> None:
    """Keep ``raw`` at the head of ``<queue>.dead`` (bounded) and log it once as JSON.

    The list holds the items exactly as they sat in the queue:
    ``LMOVE <queue>.dead <queue> LEFT LEFT`` replays the newest one.
    """
    key = channel.global_keyprefix + queue + DEAD_SUFFIX
    try:
        pipe = plain_client(channel).pipeline(transaction=False)
        pipe.lpush(key, raw)
        pipe.ltrim(key, 0, get_settings().dead_letter_max_length - 1)
        pipe.execute()
        kept = True
    except Exception as exc:  # the broker went away: the log line is all that is left
        kept, reason = False, f"{reason}; could not keep it in {key}: {exc}"
    head = raw[:HEAD_BYTES].decode("utf-8", "backslashreplace")
    log.error("%s: queue %s, %d bytes, moved to %s: %s (first bytes: %r)",
              operation.replace("_", " "), queue, len(raw), key if kept else "nowhere", reason, head,
              extra={"operation": operation, "queue": queue, "size": len(raw), "head": head,
                     "dead_letter_list": key if kept else None, "reason": reason, **fields})


def raw_item(message: Any) -> bytes:
    """A consumed message as it sat in its Redis list (kombu's virtual transport keeps it in ``_raw``)."""
    raw = getattr(message, "_raw", None)
    return json.dumps(raw if raw is not None else message.payload).encode()


def dead_letter_message(message: Any, reason: str, *, fresh: bool = False, **fields: Any) -> None:
    """Keep a consumed message in its queue's dead-letter list (Redis transports only).

    ``fresh``: drop kombu's ``redelivered`` marks, so that a replay counts as a first delivery.
    """
    channel = getattr(message, "channel", None)
    queue = (message.delivery_info or {}).get("routing_key")
    if channel is None or queue is None or not hasattr(channel, "global_keyprefix"):
        return
    raw = raw_item(message)
    if fresh:
        item = json.loads(raw)
        item.get("headers", {}).pop("redelivered", None)
        item.get("properties", {}).get("delivery_info", {}).pop("redelivered", None)
        raw = json.dumps(item).encode()
    dead_letter(channel, queue, raw, reason, **fields)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, keeping each message it refuses in the dead-letter list.

    Celery already refuses such messages without looping (ack or reject, and a log line); it then
    drops them. Each hook keeps a copy first and lets Celery do the rest.
    """

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        dead_letter_message(message, f"cannot decode the body: {exc!r}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        dead_letter_message(message, "not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter_message(message, f"task not registered on this worker: {exc!r}",
                            task=(message.headers or {}).get("task"))
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter_message(message, f"invalid task message: {exc!r}")
        super().on_invalid_task(body, message, exc)
