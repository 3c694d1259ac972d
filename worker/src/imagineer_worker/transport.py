"""kombu's Redis transport with one hook: any queue content is consumed safely.

Stock kombu (5.7) stops the whole worker with ``Unrecoverable error`` on two kinds of queue
content a producer bug or another application sharing the database can leave behind:

- a raw list item that is not a kombu message (plain text, a JSON array, an object without
  ``properties``): ``loads`` or ``Message()`` raises inside the consumer and the item, already
  popped, is gone without a trace. On Kubernetes: one restart per item.
- a key named like a queue that holds another Redis type: ``BRPOP`` answers ``WRONGTYPE`` for the
  whole command, so the worker exits at start-up for all of its queues, naming no key.

The hook sits where kombu reads ``BRPOP`` replies, the single path by which a consuming worker
receives messages (``Channel._brpop_read``, with or without the event loop):

- the channel's Redis client class screens each ``BRPOP`` reply before kombu parses it. A reply
  that is not a well-formed message raises :class:`PoisonItem`; the channel moves the raw item,
  byte for byte, to ``<queue>.dead`` (bounded by ``dead_letter_max_length``), logs it once as
  ``operation=dead_letter`` and reports "nothing received", so the worker goes on consuming.
- a ``WRONGTYPE`` error makes the channel look up which consumed key has the wrong type, log one
  line naming the key, its type and the fix (``operation=queue_key_type``), and stop consuming that
  queue only; it checks again every :data:`RECHECK_SECONDS` and resumes once the key is fixed.

:func:`install` registers these classes for the ``redis``, ``rediss`` and ``sentinel`` schemes
when the app is created; ``worker/tests/test_transport.py`` fails if a kombu upgrade moves the
parsing elsewhere and bypasses the hook.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import time
from typing import Any

import kombu.transport as kombu_transport
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from redis.exceptions import ResponseError

from imagineer_worker.deadletter import dead_letter, plain_client

log = logging.getLogger(__name__)

RECHECK_SECONDS = 30.0  # how often a queue with a wrong-typed key is looked at again


class PoisonItem(Exception):  # noqa: N818 - reads as what the item is
    """A queue item that is not a kombu message; carries what is needed to dead-letter it."""

    def __init__(self, queue: str, raw: bytes, reason: str) -> None:
        super().__init__(reason)
        self.queue, self.raw, self.reason = queue, raw, reason


def message_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a message kombu's virtual transport can deliver (``None``: it is).

    Mirrors what ``kombu.transport.virtual.Message`` and the Redis ``QoS.append`` read, so that
    nothing that passes here can raise in the consumer.
    """
    try:
        payload = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8"
    except ValueError as exc:
        return f"not JSON ({exc.__class__.__name__}: {exc})"
    except RecursionError:
        return "JSON nested too deeply to parse"
    if not isinstance(payload, dict):
        return f"JSON {type(payload).__name__}, not a message object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "no 'properties' object"
    if not isinstance(properties.get("delivery_tag"), str):
        return "no 'properties.delivery_tag' string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not isinstance(info.get("exchange"), str) \
            or not isinstance(info.get("routing_key"), str):
        return "no 'properties.delivery_info' with exchange and routing_key"
    for key in ("headers",):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            return f"'{key}' is not an object"
    for key in ("content-type", "content-encoding"):
        if payload.get(key) is not None and not isinstance(payload[key], str):
            return f"'{key}' is not a string"
    body = payload.get("body")
    if body and not isinstance(body, str):
        return "'body' is not a string"
    if body and properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body.encode(), validate=True)
        except (binascii.Error, ValueError):
            return "'body' is not valid base64"
    return None


class _ScreenedReplies:
    """Redis client mixin: a ``BRPOP`` reply that is not a message raises :class:`PoisonItem`."""

    sep = kombu_redis.Channel.sep

    def parse_response(self, connection: Any, command_name: str | bytes, **options: Any) -> Any:
        reply = super().parse_response(connection, command_name, **options)  # type: ignore[misc]
        if command_name == "BRPOP" and reply:
            key, item = reply
            problem = message_problem(item if isinstance(item, bytes) else str(item).encode())
            if problem:
                key = key.decode() if isinstance(key, bytes) else str(key)
                raise PoisonItem(key.rsplit(self.sep, 1)[0], item, problem)
        return reply


class ScreenedRedis(_ScreenedReplies, redis.Redis):
    """The plain client, screened."""


class ScreenedPrefixedRedis(_ScreenedReplies, kombu_redis.PrefixedStrictRedis):
    """The ``global_keyprefix`` client, screened (kombu strips the prefix before we look)."""


class _ScreeningChannel:
    """Channel mixin: dead-letters poison items, sets aside queues whose key has the wrong type."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wrong_type: dict[str, float] = {}  # queue -> when to look at its key again
        super().__init__(*args, **kwargs)

    def _get_client(self) -> Any:
        prefix = self.global_keyprefix  # type: ignore[attr-defined]
        if prefix:
            return functools.partial(ScreenedPrefixedRedis, global_keyprefix=prefix)
        return ScreenedRedis

    def _brpop_start(self, timeout: Any = None) -> Any:
        if self._wrong_type:
            self._recheck_wrong_types()
        return super()._brpop_start(timeout)  # type: ignore[misc]

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[misc]
        except PoisonItem as poison:
            dead_letter(self, poison.queue, poison.raw, poison.reason)
            raise Empty() from None
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE") or not self._set_aside_wrong_types():
                raise
            raise Empty() from None

    def _size(self, queue: str) -> int:
        """A queue's length; 0 for a wrong-typed key, so declaring it does not stop the worker.

        The first ``BRPOP`` then names the key and sets the queue aside.
        """
        try:
            return int(super()._size(queue))  # type: ignore[misc]
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):  # kombu reads the length in a pipeline: the error is wrapped
                raise
            return 0

    def queue_keys(self, queue: str) -> list[str]:
        """The full Redis keys of ``queue``: the list and its priority sub-lists, with the prefix."""
        prefix = self.global_keyprefix  # type: ignore[attr-defined]
        return [prefix + self._q_for_pri(queue, pri) for pri in self.priority_steps]  # type: ignore[attr-defined]

    def wrong_type_key(self, queue: str, client: redis.Redis | None = None) -> tuple[str, str] | None:
        """``(key, type)`` of the first of ``queue``'s keys that exists and is not a list."""
        client = client or plain_client(self)
        for key in self.queue_keys(queue):
            kind = client.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind not in ("list", "none"):
                return key, kind
        return None

    def _set_aside_wrong_types(self) -> bool:
        """Stop consuming each queue whose key is not a list; False when none was found."""
        client, found = plain_client(self), False
        for queue in list(self._active_queues):  # type: ignore[attr-defined]
            bad = self.wrong_type_key(queue, client)
            if bad is None:
                continue
            key, kind = bad
            found = True
            self._active_queues.remove(queue)  # type: ignore[attr-defined]
            self._wrong_type[queue] = time.monotonic() + RECHECK_SECONDS
            log.error("queue key %r is a Redis %s, not a list: not consuming queue %s until it is; fix: "
                      "inspect it (redis-cli TYPE %s), then DEL or RENAME it; the worker resumes by itself",
                      key, kind, queue, key, extra={"operation": "queue_key_type", "queue": queue, "key": key,
                                                    "type": kind, "status": "set_aside"})
        self._update_queue_cycle()  # type: ignore[attr-defined]
        return found

    def _recheck_wrong_types(self) -> None:
        now = time.monotonic()
        due = [q for q, at in self._wrong_type.items() if at <= now]
        if not due:
            return
        client = plain_client(self)
        for queue in due:
            if self.wrong_type_key(queue, client) is not None:
                self._wrong_type[queue] = now + RECHECK_SECONDS
                continue
            del self._wrong_type[queue]
            self._active_queues.append(queue)  # type: ignore[attr-defined]
            log.warning("queue %s: its key is a list again; consuming it", queue,
                        extra={"operation": "queue_key_type", "queue": queue, "status": "resumed"})
        self._update_queue_cycle()  # type: ignore[attr-defined]


class Channel(_ScreeningChannel, kombu_redis.Channel):
    pass


class SentinelChannel(_ScreeningChannel, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


SCHEMES = {"redis": "Transport", "rediss": "Transport", "sentinel": "SentinelTransport"}


def install() -> None:
    """Make kombu resolve the Redis URL schemes to these classes, in this process.

    kombu looks transports up by URL scheme in ``TRANSPORT_ALIASES`` (and caches the result), on
    every connection and on a failover to the next Sentinel URL. Registering the scheme keeps the
    broker URL, its ``as_uri()`` and what Flower shows unchanged, unlike ``broker_transport``.
    """
    for scheme, cls in SCHEMES.items():
        kombu_transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{cls}"
        kombu_transport._transport_cache.pop(scheme, None)
