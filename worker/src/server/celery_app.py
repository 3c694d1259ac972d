"""``server.celery_app.celery`` is ``imagineer_worker.celery_app.celery`` (see ``server``)."""

from imagineer_worker.celery_app import app, celery

__all__ = ["app", "celery"]
