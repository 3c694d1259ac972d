"""Compatibility alias: the operations guide's ``-A server.celery_app.celery`` keeps working.

The guide (and existing systemd units and Helm values) name the app ``server.celery_app.celery``,
its path in the Imagineer monolith. In this package the app lives in
``imagineer_worker.celery_app``; this alias makes both spellings start the same app.
"""
