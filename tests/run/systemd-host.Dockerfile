# A host without Kubernetes, as a container: Debian's systemd as PID 1 and Debian's redis-server,
# with the worker package in /opt/venv as `pip install` would leave it (the default worker image's
# venv, plus a .pth for its /opt/app). tests/run/test_systemd_host.py builds it
# (imagineer/systemd-host:<appVersion>), installs the rendered units and drives them with systemctl.
ARG WORKER_IMAGE
FROM ${WORKER_IMAGE}
USER root
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd systemd-sysv redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && echo /opt/app > "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/imagineer-app.pth" \
 && mkdir -p /opt/imagineer /etc/imagineer \
 && systemctl mask getty.target console-getty.service systemd-logind.service
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/lib/systemd/systemd"]
