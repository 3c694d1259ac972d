"""JSON log lines for log aggregation.

Every line carries timestamp, level, logger, message, hostname, the current task's id, name and
queue (when a task is running), and ``operation`` (e.g. ``config_reload``, ``concurrency``,
``scrape``). Extra fields passed with ``extra={...}`` are kept, so aggregation can filter on them.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_HOSTNAME = socket.gethostname()


# What ``json.dumps(entry, default=str)`` would build again for every line.
_ENCODER = json.JSONEncoder(default=str)
_get_current_task: Any = None


def _task_fields() -> dict[str, Any]:
    global _get_current_task
    if _get_current_task is None:  # not at import: the CLI's probes never import celery
        from celery._state import get_current_task

        _get_current_task = get_current_task
    # The task behind ``celery.current_task``, without its proxy: each access through the proxy
    # looked the task up again, and this runs for every log line (a third of a JSON line's cost).
    task = _get_current_task()
    request = getattr(task, "request", None) if task is not None else None
    if request is None or request.id is None:
        return {}
    delivery = request.delivery_info or {}
    return {
        "task_id": request.id,
        "task_name": task.name,
        "queue": delivery.get("routing_key") or delivery.get("queue"),
        "worker": request.hostname,
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "hostname": _HOSTNAME,
            "process": record.process,
            "operation": None,
        }
        entry.update(_task_fields())
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


def configure_logging(level: str | int = "INFO", fmt: str = "json") -> None:
    """Route the root logger (and so Celery's loggers) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
