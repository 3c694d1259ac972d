"""A cap on redeliveries: a task that kills its worker every time fails instead of looping.

``task_reject_on_worker_lost`` requeues a task whose prefork child died (SIGKILL, the OOM killer,
a GPU fault), and the visibility timeout redelivers one whose whole worker died. Both are right
once; for a job that kills its process every time they are an endless loop that also takes a
worker down on each turn.

kombu marks every message it puts back (``delivery_info.redelivered``). The worker's main
process counts redeliveries per task id in Redis (``imagineer:deliveries:<id>``, expiring with the
visibility timeout's horizon) before the task reaches the pool; first deliveries cost nothing. The
delivery past ``max_deliveries`` is not run: the task is marked FAILURE with
:class:`DeliveryLimitExceeded`, a ``task-failed`` event carries it to the exporter
(``celery_task_failed_total{exception="DeliveryLimitExceeded"}``), the message goes to
``<queue>.dead`` as it sat in the queue, and one ``operation=redelivery_cap`` line is logged.

The hook is Celery's documented ``Task.Strategy``: :func:`capped_strategy` wraps the default
strategy. Every task of the app gets it through :class:`Task` (the app's ``task_cls``). The same
wrapper handles two kinds of malformed task messages before they reach the pool:

- one Celery cannot even build a request from (a body that is not an ``[args, kwargs, embed]``
  triple or whose ``embed`` is not an object, headers without an id) becomes
  ``InvalidTaskError``, which the consumer refuses (and :mod:`.deadletter` keeps) instead of
  exiting (or, for ``embed``, running the task and leaving it ``PENDING``);
- one whose ``kwargs`` is not a mapping fails with ``TypeError``, like ``args`` that are not a
  list do inside the task. Stock Celery raises that in the pool child *before* it has a request
  to report on: the message was acknowledged with no result and no trace but a warning, so a
  client waited on ``PENDING`` forever.
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Mapping
from typing import Any

from celery import Task as CeleryTask
from celery.app.task import Context
from celery.exceptions import InvalidTaskError
from celery.worker.request import Request as CeleryRequest
from celery.worker.strategy import default as default_strategy

from imagineer_worker.config import get_settings
from imagineer_worker.deadletter import dead_letter_message

log = logging.getLogger(__name__)

DELIVERIES_KEY = "imagineer:deliveries:{id}"


class _RejectedArguments(Exception):  # noqa: N818 - internal signal, never leaves this module
    """Raised by :class:`Request` for arguments no task can take; carries the ``TypeError`` to report."""

    def __init__(self, error: TypeError) -> None:
        super().__init__(str(error))
        self.error = error


class DeliveryLimitExceeded(RuntimeError):  # noqa: N818 - the exception name is what alerts match on
    """The task was delivered more often than ``max_deliveries`` (its worker died each time)."""


def count_delivery(app: Any, task_id: str) -> int:
    """This delivery's number: 1 + redeliveries counted so far (kept as long as a redelivery can come)."""
    settings = get_settings()
    key = settings.key(DELIVERIES_KEY.format(id=task_id))
    pipe = app.backend.client.pipeline(transaction=False)
    pipe.incr(key).expire(key, 2 * settings.visibility_timeout + settings.task_time_limit)
    redeliveries, _ = pipe.execute()
    return int(redeliveries) + 1


def capped_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy, preceded by the delivery count of redelivered messages."""
    handle = default_strategy(task, app, consumer, **kwargs)
    dispatcher = consumer.event_dispatcher

    def handle_capped(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        info = message.delivery_info or {}
        if info.get("redelivered"):
            task_id = (message.headers or {}).get("id")
            cap = get_settings().max_deliveries
            if task_id and (delivery := count_delivery(app, task_id)) > cap:
                refuse(task, message, task_id=task_id, delivery=delivery, cap=cap, dispatcher=dispatcher)
                ack(log, consumer.connection_errors)
                return None
        try:
            return handle(message, body, ack, reject, callbacks, **kw)
        except _RejectedArguments as rejected:
            task_id = str((message.headers or {}).get("id"))
            log.error("task %s[%s] failed: %s", task.name, task_id, rejected.error,
                      extra={"operation": "malformed_arguments", "task_id": task_id, "task": task.name})
            fail(task, message, task_id=task_id, exc=rejected.error, dispatcher=dispatcher)
            ack(log, consumer.connection_errors)
            return None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # Celery builds the request here, in the consumer, and lets a malformed one (a body that
            # is not an [args, kwargs, embed] triple, headers without an id) stop the worker with
            # "Unrecoverable error". Past this point it catches everything itself (_process_task),
            # so what arrives here is the message's fault: the consumer refuses it (dead-letter).
            raise InvalidTaskError(f"malformed task message: {exc!r}") from exc

    return handle_capped


def refuse(task: Any, message: Any, *, task_id: str, delivery: int, cap: int, dispatcher: Any) -> None:
    """Fail the task for good and keep its message in the dead-letter list."""
    exc = DeliveryLimitExceeded(
        f"{task.name}[{task_id}] was delivered {delivery} times (max_deliveries={cap}): its worker process "
        "died on every try; the message is kept in the dead-letter list"
    )
    # Keep the message and reset its count first: whoever sees the FAILURE can already replay it.
    dead_letter_message(message, str(exc), fresh=True, operation="redelivery_cap", task_id=task_id, task=task.name,
                        deliveries=delivery)
    task.backend.client.delete(get_settings().key(DELIVERIES_KEY.format(id=task_id)))
    fail(task, message, task_id=task_id, exc=exc, dispatcher=dispatcher)


def fail(task: Any, message: Any, *, task_id: str, exc: Exception, dispatcher: Any) -> None:
    """Record FAILURE for a task that will not run, and tell the exporter (``task-failed``)."""
    headers = message.headers or {}
    request = Context(id=task_id, task=task.name, args=headers.get("argsrepr"), kwargs=headers.get("kwargsrepr"),
                      delivery_info=message.delivery_info, hostname=None, ignore_result=False)
    task.backend.mark_as_failure(task_id, exc, request=request, call_errbacks=False)
    if dispatcher is not None and dispatcher.enabled:
        dispatcher.send("task-failed", uuid=task_id, exception=repr(exc), traceback="")


class Request(CeleryRequest):  # type: ignore[misc]
    """Celery's request: refuses ``kwargs`` that are not a mapping, and its cancellation survives
    the broker being away.

    On a broker connection loss Celery terminates running late-ack tasks
    (``worker_cancel_long_running_tasks_on_connection_loss``) so that their redelivery cannot run
    beside them. It then writes a RETRY state to the result backend, which is the same Redis and
    is away too: the write raises before the request is marked cancelled, the terminated task is
    then taken for a revoked one, and after a quick broker restart its message was lost (seen in
    tests/reliability scenario 3). Marking first and logging the write's failure keeps the message
    unacknowledged, so it is redelivered like after a longer outage.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        embed = self._payload[2]
        if not isinstance(embed, Mapping):  # Celery reads it in the pool callback: PENDING forever
            raise InvalidTaskError(f"the body's third element (embed) is not an object: {reprlib.repr(embed)}")
        if not isinstance(self._kwargs, Mapping):
            raise _RejectedArguments(TypeError(
                f"{self.name}() keyword arguments must be a JSON object, got {type(self._kwargs).__name__}: "
                f"{reprlib.repr(self._kwargs)}"))

    def _announce_cancelled(self, emit_retry: bool = True) -> None:
        self._already_cancelled = True
        try:
            super()._announce_cancelled(emit_retry=emit_retry)
        except Exception as exc:  # the backend is away: the redelivery still comes
            log.warning("task %s[%s] cancelled after a broker connection loss; could not record it: %r",
                        self.name, self.id, exc, extra={"operation": "cancel_on_connection_loss"})


class Task(CeleryTask):  # type: ignore[misc]
    """The app's base task class (``task_cls``): every task gets the redelivery cap."""

    Strategy = f"{__name__}:capped_strategy"
    Request = f"{__name__}:Request"
