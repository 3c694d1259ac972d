#!/usr/bin/env bash
# Start a Docker engine (Debian's docker.io) when none answers: `make docker-engine`.
# Needs root; logs to /tmp/dockerd.log. A daemon that already runs is left exactly as it is.
#
# On a host whose capability bounding set lacks capabilities the kernel knows (some VMs, this
# project's CI machine among them), Docker 20.10 cannot start any --privileged container, and so
# no kind node ("unable to apply caps"). Only there, and only for the daemon started here, runc is
# wrapped by cluster/docker/runc-capbnd (registered as the default runtime), which drops exactly
# the missing capabilities. cluster/README.md says how to do the same for a daemon of your own.
set -euo pipefail
DOCKER=${DOCKER:-docker}
if "$DOCKER" info >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null || { echo "no Docker engine: install Debian's docker.io (apt-get install docker.io)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "the Docker engine is not running and starting dockerd needs root: start it (or the docker service) as root" >&2; exit 1; }

args=()
last=$(cat /proc/sys/kernel/cap_last_cap)
bnd=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
if [ "$bnd" -ne $(( (1 << (last + 1)) - 1 )) ]; then
  wrapper=${IMAGINEER_CACHE:-$HOME/.cache/imagineer-workers}/docker/runc-capbnd
  mkdir -p "$(dirname "$wrapper")"
  install -m 0755 "$(dirname "$0")/../cluster/docker/runc-capbnd" "$wrapper"
  args=(--add-runtime "imagineer-runc=$wrapper" --default-runtime imagineer-runc)
  echo "the capability bounding set lacks some capabilities: runc is wrapped by $wrapper"
fi
echo "starting dockerd (log: /tmp/dockerd.log)"
nohup dockerd "${args[@]}" >/tmp/dockerd.log 2>&1 &
for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && exit 0; sleep 0.5; done
echo "dockerd did not come up within 30 s; last lines of /tmp/dockerd.log:" >&2
tail -n 20 /tmp/dockerd.log >&2
exit 1
