#!/usr/bin/env bash
# Build the images from a prepared context, with the wheels served from the host.
#   images/build-images.sh CONTEXT WHEELHOUSE PORT BASE_IMAGE TAG FOLDER=REPOSITORY...
# e.g. `default=imagineer/worker-default exporter=imagineer/celery-exporter`: images/FOLDER/Dockerfile
# is built as REPOSITORY:TAG, in the order given. Called by `make images` (images.mk, whose IMAGES
# is that list), which prepares CONTEXT (lock files, entrypoint, exporter launcher, the worker
# wheel) and WHEELHOUSE (every locked wheel) first.
#
# Why HTTP and not COPY: the training wheels are ~2.7 GB. Copied into the context they would be
# sent to the daemon on every build and stored once more in the builder's layers; served by a
# throwaway http.server on 127.0.0.1 (reachable from the build with --network host) pip fetches
# them only when the lock changed, i.e. when the RUN layer is rebuilt anyway. pip runs with
# --no-index and --require-hashes, so nothing else than these files can come in.
#
# Builder: the classic one (DOCKER_BUILDKIT=0). Debian's docker.io 20.10 has BuildKit in the
# daemon, but the client here may be a newer CLI without the buildx plugin, which then refuses
# DOCKER_BUILDKIT=1; the Dockerfiles use nothing the classic builder lacks (no RUN --mount).
set -euo pipefail
context=$1 wheelhouse=$2 port=$3 base=$4 tag=$5; shift 5
DOCKER=${DOCKER:-docker}
export DOCKER_BUILDKIT=0
# Check every spec before building anything (the training build alone takes minutes).
for spec in "$@"; do
  case $spec in
    ?*=?*) [ -f "images/${spec%%=*}/Dockerfile" ] || { echo "no images/${spec%%=*}/Dockerfile" >&2; exit 2; } ;;
    *) echo "bad image spec '$spec': expected FOLDER=REPOSITORY" >&2; exit 2 ;;
  esac
done
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || revision="$revision-dirty"

if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$port))!=0)"; then
  echo "port 127.0.0.1:$port is already in use: set WHEELHOUSE_PORT to a free port" >&2; exit 1
fi
python3 -m http.server --bind 127.0.0.1 --directory "$wheelhouse" "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
  sleep 0.1
done

for spec in "$@"; do
  folder=${spec%%=*} image=${spec#*=}:$tag
  echo "== $image"
  start=$(date +%s)
  # -q keeps the log short; a failed build still prints pip's error.
  "$DOCKER" build -q --network host -f "images/$folder/Dockerfile" -t "$image" \
    --build-arg BASE_IMAGE="$base" --build-arg WHEELHOUSE_URL="http://127.0.0.1:$port/" \
    --build-arg VERSION="$tag" --build-arg REVISION="$revision" \
    "$context" >/dev/null
  echo "   built in $(( $(date +%s) - start )) s"
done

base_size=$("$DOCKER" image inspect -f '{{.Size}}' "$base")
printf '%-40s %10s %14s\n' IMAGE SIZE "OVER BASE"
printf '%-40s %8d MB %12s\n' "$base" $((base_size / 1000000)) -
for spec in "$@"; do
  image=${spec#*=}:$tag
  size=$("$DOCKER" image inspect -f '{{.Size}}' "$image")
  printf '%-40s %8d MB %9d MB\n' "$image" $((size / 1000000)) $(((size - base_size) / 1000000))
done
