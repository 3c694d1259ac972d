"""The two Celery apps the benchmark compares; see :mod:`bench.apps.bare` and :mod:`bench.apps.project`."""
