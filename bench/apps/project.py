"""The project's app, ``imagineer_worker.celery_app``, exactly as the images run it, plus the bench's tasks.

``BENCH_CONF_OVERRIDES`` (JSON), when set, is applied over the project's settings: the bench uses it
to try settings that keep the guide's guarantees (e.g. ``worker_disable_prefetch``), never to change
what ``project`` measures.
"""

from __future__ import annotations

import json
import os

from imagineer_worker.celery_app import celery

from bench.apps.tasks import register

if os.environ.get("BENCH_CONF_OVERRIDES"):
    celery.conf.update(json.loads(os.environ["BENCH_CONF_OVERRIDES"]))
register(celery)
app = celery
