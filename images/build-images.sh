#!/usr/bin/env bash
# Build the images from a prepared context, with the wheels served from the host.
#   images/build-images.sh CONTEXT WHEELHOUSE PORT BASE_IMAGE TAG FOLDER=REPOSITORY...
# e.g. `default=imagineer/worker-default exporter=imagineer/celery-exporter`: images/FOLDER/Dockerfile
# is built as REPOSITORY:TAG, in the order given. Called by `make images` (images.mk, whose IMAGES
# is that list), which prepares CONTEXT (lock files, entrypoint, exporter launcher, the worker
# wheel) and WHEELHOUSE (every locked wheel) first.
#
# Each of those Dockerfiles is a few lines FROM imagineer/runtime-LOCK:TAG, the shared stages
# (images/runtime/Dockerfile) over images/LOCK.lock: this script builds that runtime first, once
# per run, with the final stage and build arguments `runtime_args` gives for LOCK. The OCI labels
# every image has (version, revision = the git commit, source, licenses) are added here, last, so
# a new commit re-labels the images without rebuilding a layer.
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
# The final stage and build arguments of the runtime over images/LOCK.lock (into the array `args`).
runtime_args() {
  case $1 in
    light|training) args=(--target worker) ;;
    flower) args=(--target worker --build-arg DATA_DIR=) ;;  # Flower reads only the broker: no /data
    exporter) args=(--target venv --build-arg "PRUNE=src/test_*.py src/__pycache__/test_*.pyc") ;;
    *) echo "images/build-images.sh has no runtime for images/$1.lock" >&2; return 2 ;;
  esac
  args+=(--build-arg "LOCK=$1.lock")
}
# The runtime an image's Dockerfile starts FROM.
runtime_of() { sed -n 's|^FROM imagineer/runtime-\([a-z]*\):.*|\1|p' "images/$1/Dockerfile"; }

# Check every spec before building anything (the training build alone takes minutes).
for spec in "$@"; do
  case $spec in
    ?*=?*) [ -f "images/${spec%%=*}/Dockerfile" ] || { echo "no images/${spec%%=*}/Dockerfile" >&2; exit 2; }
           runtime=$(runtime_of "${spec%%=*}")
           [ -n "$runtime" ] || { echo "images/${spec%%=*}/Dockerfile starts FROM no imagineer/runtime-LOCK" >&2; exit 2; }
           runtime_args "$runtime" || exit 2 ;;
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

# build DOCKERFILE IMAGE DOCKER-BUILD-ARGS...: -q keeps the log short; a failed build still prints
# pip's error.
build() {
  local dockerfile=$1 image=$2 start; shift 2
  echo "== $image"
  start=$(date +%s)
  "$DOCKER" build -q --network host -f "$dockerfile" -t "$image" "$@" "$context" >/dev/null
  echo "   built in $(( $(date +%s) - start )) s"
}

built=" "
for spec in "$@"; do
  folder=${spec%%=*}
  runtime=$(runtime_of "$folder")
  if [[ $built != *" $runtime "* ]]; then
    runtime_args "$runtime"
    build images/runtime/Dockerfile "imagineer/runtime-$runtime:$tag" "${args[@]}" \
      --build-arg BASE_IMAGE="$base" --build-arg WHEELHOUSE_URL="http://127.0.0.1:$port/"
    built+="$runtime "
  fi
  build "images/$folder/Dockerfile" "${spec#*=}:$tag" --build-arg TAG="$tag" \
    --label org.opencontainers.image.version="$tag" --label org.opencontainers.image.revision="$revision" \
    --label org.opencontainers.image.source="${IMAGE_SOURCE:-https://github.com/imagineer/imagineer-workers}" \
    --label org.opencontainers.image.licenses=Apache-2.0
done

base_size=$("$DOCKER" image inspect -f '{{.Size}}' "$base")
printf '%-40s %10s %14s\n' IMAGE SIZE "OVER BASE"
printf '%-40s %8d MB %12s\n' "$base" $((base_size / 1000000)) -
for spec in "$@"; do
  image=${spec#*=}:$tag
  size=$("$DOCKER" image inspect -f '{{.Size}}' "$image")
  printf '%-40s %8d MB %9d MB\n' "$image" $((size / 1000000)) $(((size - base_size) / 1000000))
done
