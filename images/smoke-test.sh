#!/usr/bin/env bash
# Smoke test of a built light image against a real Redis on loopback, the way the chart runs it:
# non-root, read-only root filesystem, /tmp as tmpfs, a host directory at /data, --network host.
#   images/smoke-test.sh [IMAGE] [QUEUE]     (defaults: imagineer/worker-default:<tag>, default)
# Prints the time from `docker run` to the worker's readiness probe passing, then submits
# maintenance.record_disk_usage from the host venv and waits for the result.
set -euo pipefail
tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/imagineer-workers/Chart.yaml)
image=${1:-imagineer/worker-default:$tag}
queue=${2:-default}
DOCKER=${DOCKER:-docker}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d /tmp/imagineer-smoke.XXXXXX)
mkdir -p "$work/data" && chown 10001:10001 "$work/data"
name=imagineer-smoke-$$
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
redis=$!
cleanup() { "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true; kill "$redis" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done

export CELERY_BROKER_URL=redis://127.0.0.1:$port/0 CELERY_RESULT_BACKEND=redis://127.0.0.1:$port/1
start=$(date +%s.%N)
"$DOCKER" run -d --name "$name" --network host --read-only --tmpfs /tmp --user 10001:10001 \
  --cap-drop ALL --security-opt no-new-privileges -v "$work/data:/data" \
  -e CELERY_BROKER_URL -e CELERY_RESULT_BACKEND \
  "$image" -A imagineer_worker.celery_app worker -Q "$queue" --concurrency=1 --loglevel=INFO >/dev/null
for _ in $(seq 600); do
  if "$DOCKER" exec "$name" imagineer-workers probe readiness >/dev/null 2>&1; then break; fi
  sleep 0.1
done
"$DOCKER" exec "$name" imagineer-workers probe readiness
"$DOCKER" exec "$name" imagineer-workers probe liveness
echo "worker ready $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s after docker run"
if [ "$queue" = default ]; then
  IMAGINEER_DATA_DIR=$work/data timeout 120 .venv/bin/imagineer-workers submit maintenance.record_disk_usage --wait
fi
"$DOCKER" exec "$name" celery -A imagineer_worker.celery_app inspect ping
"$DOCKER" stop -t 30 "$name" >/dev/null
"$DOCKER" logs "$name" 2>&1 | tail -n 5
