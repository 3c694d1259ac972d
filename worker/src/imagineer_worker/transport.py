"""kombu's Redis transport with one hook: any queue content is consumed safely.

Stock kombu (5.7) stops the whole worker with ``Unrecoverable error`` on two kinds of queue
content a producer bug or another application sharing the database can leave behind:

- a raw list item that is not a kombu message (plain text, a JSON array, an object without
  ``properties``): ``loads`` or ``Message()`` raises inside the consumer and the item, already
  popped, is gone without a trace. On Kubernetes: one restart per item.
- a key named like a queue that holds another Redis type: ``BRPOP`` answers ``WRONGTYPE`` for the
  whole command, so the worker exits at start-up for all of its queues, naming no key.

A third gap is in kombu's ``BRPOP`` itself: it removes the message from the list before the worker
has recorded it as unacknowledged, so a worker killed in between (or while the reply is still in
flight) loses the message for good; tests/reliability scenario 7 lost 1 task in 50,000 that way
under repeated ``kill -9``.

The hook is the pair of channel methods by which a consuming worker receives messages
(``Channel._brpop_start`` sends the command, ``Channel._brpop_read`` reads the reply, with or
without the event loop):

- the pop is a Lua script (:data:`POP_AND_RECORD`) that takes the first item of the consumed keys
  in kombu's order and records it in kombu's ``unacked`` hash in the same atomic step; kombu's
  visibility-timeout restore brings it back whatever happens to the worker afterwards. When the
  keys are empty the channel waits with ``BLMOVE k k RIGHT RIGHT`` (blocks, moves nothing) and pops
  again.
- each popped item is screened before kombu parses it. One that is not a well-formed message is
  moved, byte for byte, to ``<queue>.dead`` (bounded by ``dead_letter_max_length``), logged once as
  ``operation=dead_letter``, and the channel reports "nothing received", so the worker goes on.
- a ``WRONGTYPE`` error makes the channel look up which consumed key has the wrong type, log one
  line naming the key, its type and the fix (``operation=queue_key_type``), and stop consuming that
  queue only; it checks again every :data:`RECHECK_SECONDS` and resumes once the key is fixed.

:func:`install` registers these classes for the ``redis``, ``rediss`` and ``sentinel`` schemes
when the app is created; ``worker/tests/test_transport.py`` fails if a kombu upgrade consumes by
another path and bypasses the hook.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import time
from typing import Any

import kombu.transport as kombu_transport
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.transport.virtual import Empty
from redis.exceptions import NoScriptError, ResponseError

from imagineer_worker.deadletter import dead_letter, plain_client

log = logging.getLogger(__name__)

RECHECK_SECONDS = 30.0  # how often a queue with a wrong-typed key is looked at again


def message_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a message kombu's virtual transport can deliver (``None``: it is)."""
    return screen(raw)[1]


def screen(raw: bytes) -> tuple[dict[str, Any], None] | tuple[None, str]:
    """``(payload, None)`` for a message kombu's virtual transport can deliver, else ``(None, why)``.

    Mirrors what ``kombu.transport.virtual.Message`` and the Redis ``QoS.append`` read, so that
    nothing that passes here can raise in the consumer.
    """
    try:
        payload = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except ValueError as exc:
        return None, f"not JSON ({exc.__class__.__name__}: {exc})"
    except RecursionError:
        return None, "JSON nested too deeply to parse"
    if not isinstance(payload, dict):
        return None, f"JSON {type(payload).__name__}, not a message object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return None, "no 'properties' object"
    if not isinstance(properties.get("delivery_tag"), str):
        return None, "no 'properties.delivery_tag' string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not isinstance(info.get("exchange"), str) \
            or not isinstance(info.get("routing_key"), str):
        return None, "no 'properties.delivery_info' with exchange and routing_key"
    for key in ("headers",):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            return None, f"'{key}' is not an object"
    for key in ("content-type", "content-encoding"):
        if payload.get(key) is not None and not isinstance(payload[key], str):
            return None, f"'{key}' is not a string"
    body = payload.get("body")
    if body and not isinstance(body, str):
        return None, "'body' is not a string"
    if body and properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body.encode(), validate=True)
        except (binascii.Error, ValueError):
            return None, "'body' is not valid base64"
    return payload, None


# Pops the first non-empty queue key and, in the same atomic step, records the message where
# kombu's QoS keeps unacknowledged ones (the ``unacked`` hash and its ``unacked_index``), in
# kombu's own format ``[payload, exchange, routing_key]``. KEYS: unacked, unacked_index, then the
# queue keys in kombu's BRPOP order. Returns ``{key, item, delivery_tag}`` (the tag is false for
# an item that is not a message: it is not recorded, the worker dead-letters it) or nil.
POP_AND_RECORD = """
for i = 3, #KEYS do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, m = pcall(cjson.decode, item)
    local p = ok and type(m) == 'table' and m['properties']
    local info = type(p) == 'table' and p['delivery_info']
    if type(info) == 'table' and type(p['delivery_tag']) == 'string'
        and type(info['exchange']) == 'string' and type(info['routing_key']) == 'string' then
      local now = redis.call('TIME')
      redis.call('ZADD', KEYS[2], now[1] + now[2] / 1000000, p['delivery_tag'])
      redis.call('HSET', KEYS[1], p['delivery_tag'],
        '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ',' .. cjson.encode(info['routing_key']) .. ']')
      return {KEYS[i], item, p['delivery_tag']}
    end
    return {KEYS[i], item, false}
  end
end
return nil
"""
POP_AND_RECORD_SHA = hashlib.sha1(POP_AND_RECORD.encode()).hexdigest()
# The longest an idle worker of several queues takes to see a message on a queue it does not wait
# on; one of a single queue waits on its main list for ``brpop_timeout`` (1 s), and a message on
# one of its priority sub-lists waits that long at most (under load every pop looks at all keys).
MULTI_QUEUE_WAIT_SECONDS = 0.25
MIN_REDIS = (6, 2)  # BLMOVE, the wait that moves nothing


def redis_version(client: redis.Redis) -> tuple[int, ...] | None:
    """The server's version, or ``None`` where ``INFO`` is not allowed (some managed services)."""
    try:
        version = str(client.info("server")["redis_version"])  # type: ignore[index]
    except (ResponseError, KeyError, TypeError):
        return None
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def redis_too_old(client: redis.Redis) -> str | None:
    """One line naming the server's version when it is older than :data:`MIN_REDIS`, else ``None``."""
    version = redis_version(client)
    if version is None or version >= MIN_REDIS:
        return None
    return (f"the broker runs Redis {'.'.join(map(str, version))}; imagineer workers need Redis "
            f"{'.'.join(map(str, MIN_REDIS))} or later (BLMOVE)")


def require_redis(client: redis.Redis) -> None:
    """Stop the worker with :func:`redis_too_old`'s line (Celery logs it as the unrecoverable error)."""
    if problem := redis_too_old(client):
        raise RuntimeError(problem)


class _QoS(kombu_redis.QoS):
    """kombu's QoS, minus the write :data:`POP_AND_RECORD` already made for a message."""

    def append(self, message: Any, delivery_tag: str) -> None:
        recorded = self.channel._recorded
        if delivery_tag in recorded:
            recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]  # bookkeeping only
        else:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]


class _ScreeningChannel:
    """Channel mixin: pops and records atomically, dead-letters poison items, sets aside
    queues whose key has the wrong type."""

    QoS = _QoS
    _brpop_sent_at: Any  # kombu's: when the consuming command went out (its half-open check)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wrong_type: dict[str, float] = {}  # queue -> when to look at its key again
        self._recorded: set[str] = set()  # delivery tags POP_AND_RECORD wrote to the unacked hash
        self._waiting = False  # the next (or in-flight) command is the blocking wait, not the pop
        self._script_loaded = False
        super().__init__(*args, **kwargs)

    def _brpop_start(self, timeout: Any = None) -> None:
        """Send the next consuming command: the atomic pop, or (after an empty pop) the blocking wait.

        Replaces kombu's ``BRPOP``, which removes the item before the worker has recorded it: a
        worker killed in between (or while the reply is in flight) lost the message for good
        (seen in tests/reliability scenario 7: 1 task in 50,000 under repeated ``kill -9``).
        No Redis command blocks on several lists without popping, so the wait is
        ``BLMOVE k k RIGHT RIGHT`` (it leaves the list as it is) on the first key in kombu's
        order (see :data:`MULTI_QUEUE_WAIT_SECONDS` for the others).
        """
        if self._wrong_type:
            self._recheck_wrong_types()
        queues = self._queue_cycle.consume(len(self.active_queues))  # type: ignore[attr-defined]
        if not queues:
            return
        keys = [self.global_keyprefix + self._q_for_pri(queue, pri)  # type: ignore[attr-defined]
                for pri in self.priority_steps for queue in queues]  # type: ignore[attr-defined]
        if self._waiting:
            wait = self.brpop_timeout if timeout is None else timeout  # type: ignore[attr-defined]
            if len(queues) > 1:
                wait = min(wait or MULTI_QUEUE_WAIT_SECONDS, MULTI_QUEUE_WAIT_SECONDS)
            command: list[Any] = ["BLMOVE", keys[0], keys[0], "RIGHT", "RIGHT", wait or 0]
        else:
            if not self._script_loaded:
                client = plain_client(self)
                require_redis(client)
                client.script_load(POP_AND_RECORD)
                self._script_loaded = True
            prefix = self.global_keyprefix  # type: ignore[attr-defined]
            command = ["EVALSHA", POP_AND_RECORD_SHA, len(keys) + 2, prefix + self.unacked_key,  # type: ignore[attr-defined]
                       prefix + self.unacked_index_key, *keys]  # type: ignore[attr-defined]
        self._in_poll = self.client.connection  # type: ignore[attr-defined]
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command(*command)  # type: ignore[attr-defined]

    def _brpop_read(self, **options: Any) -> bool:
        """Read the reply of :meth:`_brpop_start`: deliver a popped message, or raise ``Empty``."""
        waited, self._waiting = self._waiting, False
        try:
            try:
                reply = self.client.parse_response(  # type: ignore[attr-defined]
                    self.client.connection, "BLMOVE" if waited else "EVALSHA", **options)  # type: ignore[attr-defined]
            except self.connection_errors:  # type: ignore[attr-defined]
                self.client.connection.disconnect()  # type: ignore[attr-defined]
                raise
            except ResponseError as exc:
                self._handle_error(exc)
                raise Empty() from None
            if waited:  # something arrived, or the wait timed out: pop next
                raise Empty()
            if not reply:
                self._waiting = True
                raise Empty()
            key, item, tag = reply
            queue = key.decode()[len(self.global_keyprefix):].rsplit(self.sep, 1)[0]  # type: ignore[attr-defined]
            payload, problem = screen(item)
            if problem is not None:
                dead_letter(self, queue, item, problem)
                if tag:  # recorded, but not a message kombu can deliver: never restore it
                    self._forget(tag)
                raise Empty()
            if tag:
                self._recorded.add(tag.decode())
            self._queue_cycle.rotate(queue)  # type: ignore[attr-defined]
            self.connection._deliver(payload, queue)  # type: ignore[attr-defined]
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.7
            if flush is not None:
                flush()

    def close(self) -> None:
        """kombu's close, which a reply lost with the connection no longer stops halfway.

        kombu's ``Channel.close`` first reads the reply of the consuming command in flight. Right
        after the broker went away that read raises, the close stops before the channel is marked
        closed, and Celery's second close (after kombu has detached the transport) then tries to
        restore the unacknowledged messages without connection details and stops the worker:
        ``Unrecoverable error: AttributeError("'NoneType' object has no attribute 'hostname'")``
        (tests/reliability scenario 3). The messages stay in the ``unacked`` hash either way and come
        back with the visibility timeout.
        """
        if self._in_poll:
            with contextlib.suppress(Empty, *self.connection_errors):  # type: ignore[attr-defined]
                self._brpop_read()
        super().close()  # type: ignore[misc]

    def _forget(self, tag: bytes) -> None:
        prefix = self.global_keyprefix  # type: ignore[attr-defined]
        pipe = plain_client(self).pipeline(transaction=False)
        pipe.hdel(prefix + self.unacked_key, tag.decode())  # type: ignore[attr-defined]
        pipe.zrem(prefix + self.unacked_index_key, tag)  # type: ignore[attr-defined]
        pipe.execute()

    def _handle_error(self, exc: ResponseError) -> None:
        """A wrong-typed key sets its queue aside; a flushed script cache is loaded again; else raise."""
        if isinstance(exc, NoScriptError):  # the server restarted or flushed its script cache
            self._script_loaded = False
        elif "WRONGTYPE" not in str(exc) or not self._set_aside_wrong_types():
            raise exc

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
