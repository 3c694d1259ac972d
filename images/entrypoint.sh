#!/bin/sh
# The images' entrypoint: celery, unless the first argument is a program on PATH.
#   docker run IMAGE                            -> celery <CMD: -A imagineer_worker.celery_app worker ...>
#   docker run IMAGE -A imagineer_worker.celery_app report   -> celery -A ... report
#   docker run IMAGE python -c 'import torch'   -> python -c ...
#   docker run IMAGE imagineer-workers probe liveness
# `exec` replaces this shell, so celery (or the program) is PID 1 and receives SIGTERM itself.
# The chart sets command: ["celery"], which bypasses this script altogether.
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ] && command -v "$1" >/dev/null 2>&1; then
  exec "$@"
fi
exec celery "$@"
