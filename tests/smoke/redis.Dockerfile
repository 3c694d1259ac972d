# The smoke test's Redis: Debian's redis-server on the local base image (no registry needed).
# Built by tests/smoke/smoke.sh as imagineer/smoke-redis:bookworm and loaded into the kind nodes.
ARG BASE_IMAGE=imagineer/base-python:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/*
USER 10001:10001
ENTRYPOINT ["redis-server"]
