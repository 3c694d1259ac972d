#!/usr/bin/env bash
# Build a local base image IMAGE from Debian bookworm with debootstrap + `docker import`: no
# registry is needed (none is reachable here).
#   images/build-base.sh [IMAGE [PACKAGES]]
# The default, imagineer/base-python:bookworm, has Debian's python3 (3.11), python3-venv (for
# `python3 -m venv`) and ca-certificates, nothing else; the kind node image (cluster/) builds its
# roots with other PACKAGES (a comma list for debootstrap --include).
# The mirror is the one apt already uses (deb822 debian.sources, else sources.list), so a machine
# pinned to a snapshot builds the same tree.
set -euo pipefail
IMAGE=${1:-imagineer/base-python:bookworm}
PYTHON_PACKAGES=python3,python3-venv,ca-certificates
PACKAGES=${2:-$PYTHON_PACKAGES}
DOCKER=${DOCKER:-docker}
SUITE=bookworm

mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  # the first URIs of a stanza whose Suites names bookworm (not bookworm-security)
  mirror=$(awk '/^URIs:/{u=$2} /^Suites:/{for(i=2;i<=NF;i++) if($i=="'$SUITE'"){print u; exit}}' \
    /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1=="deb" && $3=="'$SUITE'" {print $2; exit}' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null; then
  echo "installing debootstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

root=$(mktemp -d /tmp/imagineer-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap $SUITE from $mirror"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" >/dev/null
# apt lists and caches are not needed in the image (nothing installs with apt on top of it).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
if [ "$PACKAGES" != "$PYTHON_PACKAGES" ]; then
  tar -C "$root" -c . | "$DOCKER" import --change 'ENV LANG=C.UTF-8' - "$IMAGE" >/dev/null
  echo "base: $IMAGE ($PACKAGES)"
  exit 0
fi
tar -C "$root" -c . | "$DOCKER" import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$IMAGE" >/dev/null
"$DOCKER" run --rm "$IMAGE" python3 -c 'import sys, venv, ssl; print("base:", sys.version.split()[0])'
