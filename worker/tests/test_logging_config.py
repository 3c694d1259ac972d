"""JSON log lines carry the fields log aggregation filters on."""

from __future__ import annotations

import json
import logging

from imagineer_worker.logging_config import JsonFormatter


def _format(record: logging.LogRecord) -> dict:
    return json.loads(JsonFormatter().format(record))


def test_json_line_has_the_standard_fields_and_extras():
    record = logging.LogRecord("imagineer_worker.config", logging.INFO, __file__, 1,
                               "config reloaded from %s", ("/etc/imagineer/config.yaml",), None)
    record.operation = "config_reload"
    record.changes = {"purge_training_hour": {"old": "3", "new": "5"}}
    entry = _format(record)
    assert entry["message"] == "config reloaded from /etc/imagineer/config.yaml"
    assert entry["level"] == "INFO" and entry["logger"] == "imagineer_worker.config"
    assert entry["operation"] == "config_reload"
    assert entry["changes"]["purge_training_hour"]["new"] == "5"
    assert entry["timestamp"].endswith("+00:00") and entry["hostname"]


def test_exceptions_are_kept_in_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_inside_a_task_the_line_names_the_task_and_its_queue():
    from celery import Celery
    from celery._state import _task_stack

    app = Celery("logging-test")

    @app.task(name="imagineer.tests.noop")
    def noop() -> None: ...

    record = logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1, "done", (), None)
    assert "task_id" not in _format(record)  # no task running
    noop.push_request(id="t-1", delivery_info={"routing_key": "labeling", "exchange": ""}, hostname="labeling@h")
    _task_stack.push(noop)
    try:
        entry = _format(record)
    finally:
        _task_stack.pop()
        noop.pop_request()
    assert (entry["task_id"], entry["task_name"], entry["queue"], entry["worker"]) == (
        "t-1", "imagineer.tests.noop", "labeling", "labeling@h")
