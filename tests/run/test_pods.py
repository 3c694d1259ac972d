"""The Deployment → ``docker run`` translation itself, on the prod rendering (no containers), and the
host-side httpGet probe."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helm import by_kind, container, render_chart
from tests.run.fleet import APP_VERSION, http_get, run_values
from tests.run.pods import HttpGetProbe, UnsupportedFieldError, bytes_of, cpus_of, expand, plan


def test_quantities() -> None:
    assert bytes_of("512Mi") == 512 * 2**20 and bytes_of("16Gi") == 16 * 2**30 and bytes_of("1G") == 10**9
    assert cpus_of("250m") == 0.25 and cpus_of("2") == 2.0 and cpus_of(4) == 4.0
    with pytest.raises(UnsupportedFieldError):
        bytes_of("12 parsecs")


def test_training_pod_maps_every_field(tmp_path: Path) -> None:
    """Security context, limits, volumes, env from the Secret; the GPU and excess CPUs are reported."""
    url = "redis://127.0.0.1:6399/0"
    objects = render_chart(run_values(broker={"existingSecret": "", "caSecret": "", "url": url}),
                           values_file="prod")
    deployment = by_kind(objects, "Deployment")["release-imagineer-workers-training"]
    pod = plan(deployment, objects, name="imr-t", workdir=tmp_path / "w", data_dir=tmp_path / "data", host_cpus=2)
    argv = " ".join(pod.run_args)
    for option in ("--user 10001:10001", "--group-add 10001", "--read-only", "--cap-drop ALL",
                   "--security-opt no-new-privileges", f"--memory {16 * 2**30}", "--cpus 2",
                   "--stop-timeout 1860", "--network host", "--hostname imr-t", "--entrypoint celery",
                   "--tmpfs /tmp:rw,exec,nosuid,nodev,mode=1777,size=1073741824",
                   f"type=bind,source={tmp_path / 'data'},target=/data",
                   f"type=bind,source={tmp_path / 'w' / 'config'},target=/etc/imagineer/config,readonly"):
        assert option in argv
    assert pod.run_args[-len(pod.args) - 1:] == [f"imagineer/worker-training:{APP_VERSION}", *pod.args]
    assert pod.env["CELERY_BROKER_URL"] == url == pod.env["CELERY_RESULT_BACKEND"]
    assert "allow_networks" in (tmp_path / "w" / "config" / "config.yaml").read_text()
    assert any("nvidia.com/gpu" in s for s in pod.skipped) and any("limits.cpu 4" in s for s in pod.skipped)
    assert pod.probes["liveness"] == ["imagineer-workers", "probe", "liveness", "--max-age", "60"]


def test_unknown_volume_kinds_are_refused(tmp_path: Path) -> None:
    objects = render_chart(run_values(broker={"url": "redis://127.0.0.1:6399/0"}), values_file="staging")
    deployment = by_kind(objects, "Deployment")["release-imagineer-workers-preview"]
    deployment["spec"]["template"]["spec"]["volumes"][0] = {"name": "tmp", "hostPath": {"path": "/"}}
    with pytest.raises(UnsupportedFieldError, match="volume tmp"):
        plan(deployment, objects, name="imr-u", workdir=tmp_path, data_dir=tmp_path)


# --- $(VAR) expansion, ports and httpGet probes (the exporter's and Flower's pods) -----------------

EXPANSION_ENV = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}


@pytest.mark.parametrize(("text", "expanded"), [
    # the cases of Kubernetes' own expansion tests (third_party/forked/golang/expansion)
    ("$(VAR_A)", "A"),
    ("___$(VAR_B)___", "___B___"),
    ("$(VAR_A)-1", "A-1"),
    ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
    ("foo\\$(VAR_C)bar", "foo\\Cbar"),
    ("$(VAR_EMPTY)", ""),
    ("$(VAR_REF)", "$(VAR_A)"),  # one pass: a value is never expanded again
    ("$$(VAR_B)", "$(VAR_B)"),  # $$ escapes
    ("$$$(VAR_A)", "$A"),
    ("$$$$(VAR_A)", "$$(VAR_A)"),
    ("$(VAR_DNE)", "$(VAR_DNE)"),  # undefined: kept as written
    ("$(VAR_A", "$(VAR_A"),  # unclosed: kept
    ("$VAR_A", "$VAR_A"),  # no parenthesis: not a reference
    ("$()", "$()"),
    ("$", "$"),
    ("$$", "$"),
    ("x$", "x$"),
    ("--$($($($($--", "--$($($($($--"),
    ("$($(VAR_A))", "$($(VAR_A))"),  # the name runs to the first ")": "$(VAR_A", undefined
    ("?_$(VAR_A)_$$(VAR_B)_$(VAR_DNE)_$", "?_A_$(VAR_B)_$(VAR_DNE)_$"),
])
def test_expand_like_the_kubelet(text: str, expanded: str) -> None:
    assert expand(text, EXPANSION_ENV) == expanded


def _exporter_objects(port: int = 19808, **exporter: Any) -> list[dict[str, Any]]:
    values = run_values(broker={"existingSecret": "", "caSecret": "", "url": "redis://127.0.0.1:6399/0"},
                        exporter={"enabled": True, "port": port, **exporter})
    return render_chart(values, values_file="prod")


def _exporter(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(objects, "Deployment")["release-imagineer-workers-exporter"]


def test_exporter_pod_expands_the_broker_url_and_keeps_its_http_probes(tmp_path: Path) -> None:
    """``--broker-url=$(CELERY_BROKER_URL)`` reaches the container with the Secret's URL; the
    ``metrics`` port and the httpGet probes on it are planned on 127.0.0.1."""
    objects = _exporter_objects()
    deployment = _exporter(objects)
    assert "--broker-url=$(CELERY_BROKER_URL)" in container(deployment)["args"]
    pod = plan(deployment, objects, name="imr-e", workdir=tmp_path, data_dir=tmp_path, host_cpus=2)
    assert pod.command == ["celery-exporter"]
    assert "--broker-url=redis://127.0.0.1:6399/0" in pod.args
    assert not any("$(" in a for a in pod.run_args), pod.run_args
    assert pod.run_args[pod.run_args.index("--entrypoint") + 1] == "celery-exporter"
    assert pod.run_args[-len(pod.args) - 1:] == [f"imagineer/celery-exporter:{APP_VERSION}", *pod.args]
    assert pod.ports == {"metrics": 19808}
    assert pod.probes == {}  # no exec probe
    assert pod.http_probes["readiness"] == HttpGetProbe(path="/health", port=19808, timeout_seconds=10)
    assert pod.http_probes["readiness"].url == "http://127.0.0.1:19808/health"
    assert set(pod.http_probes) <= {"startup", "liveness", "readiness"}
    argv = " ".join(pod.run_args)
    for option in ("--user 10001:10001", "--read-only", "--cap-drop ALL", "--security-opt no-new-privileges",
                   "--tmpfs /tmp:", "--network host"):
        assert option in argv


def test_env_values_expand_from_the_variables_defined_before_them(tmp_path: Path) -> None:
    objects = _exporter_objects()
    deployment = _exporter(objects)
    c = container(deployment)
    c["env"] += [{"name": "URL_COPY", "value": "$(CELERY_BROKER_URL)"},
                 {"name": "LITERAL", "value": "$$(CELERY_BROKER_URL) $(LATER)"},
                 {"name": "LATER", "value": "x"}]
    c["args"] = [*c["args"], "--static-label=url=$(URL_COPY)", "--static-label=lit=$$(LITERAL)", "$(LATER)"]
    pod = plan(deployment, objects, name="imr-e", workdir=tmp_path, data_dir=tmp_path)
    assert pod.env["URL_COPY"] == "redis://127.0.0.1:6399/0"
    assert pod.env["LITERAL"] == "$(CELERY_BROKER_URL) $(LATER)"  # LATER is defined after it
    assert pod.args[-3:] == ["--static-label=url=redis://127.0.0.1:6399/0", "--static-label=lit=$(LITERAL)", "x"]


@pytest.mark.parametrize(("probe", "match"), [
    ({"tcpSocket": {"port": "metrics"}}, "only exec or httpGet"),
    ({"grpc": {"port": 19808}}, "only exec or httpGet"),
    ({"httpGet": {"path": "/health", "port": "metrics", "host": "10.0.0.1"}}, r"httpGet\.\['host'\]"),
    ({"httpGet": {"path": "/health", "port": "http"}}, "names no container port"),
])
def test_unsupported_probes_are_refused(tmp_path: Path, probe: dict[str, Any], match: str) -> None:
    objects = _exporter_objects()
    deployment = _exporter(objects)
    container(deployment)["readinessProbe"] = {**probe, "periodSeconds": 5}
    with pytest.raises(UnsupportedFieldError, match=match):
        plan(deployment, objects, name="imr-e", workdir=tmp_path, data_dir=tmp_path)


def test_probe_numbers_headers_and_ports(tmp_path: Path) -> None:
    """A numeric port needs no name; headers and scheme are kept; a hostPort other than the
    containerPort has no meaning on the host network and is refused."""
    objects = _exporter_objects()
    deployment = _exporter(objects)
    c = container(deployment)
    c["livenessProbe"] = {"httpGet": {"path": "/", "port": 19808, "scheme": "HTTPS",
                                      "httpHeaders": [{"name": "X-Probe", "value": "1"}]}}
    pod = plan(deployment, objects, name="imr-e", workdir=tmp_path, data_dir=tmp_path)
    assert pod.http_probes["liveness"] == HttpGetProbe(path="/", port=19808, scheme="HTTPS",
                                                       headers=(("X-Probe", "1"),), timeout_seconds=1)
    assert pod.http_probes["liveness"].url == "https://127.0.0.1:19808/"
    c["ports"][0]["hostPort"] = 19808  # the same port: what --network host gives anyway
    plan(deployment, objects, name="imr-e", workdir=tmp_path, data_dir=tmp_path)
    c["ports"][0]["hostPort"] = 80
    with pytest.raises(UnsupportedFieldError, match="hostPort"):
        plan(deployment, objects, name="imr-e", workdir=tmp_path, data_dir=tmp_path)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = {"/ok": 200, "/moved": 302, "/fail": 500}.get(self.path, 404)
        body = self.headers.get("User-Agent", "").encode()
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_http_get_succeeds_from_200_to_399_like_the_kubelet() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        ok, detail = http_get(HttpGetProbe(path="/ok", port=port))
        assert ok and "200 kube-probe/" in detail, detail
        assert http_get(HttpGetProbe(path="/moved", port=port))[0]
        ok, detail = http_get(HttpGetProbe(path="/fail", port=port))
        assert not ok and ": 500" in detail, detail
        assert not http_get(HttpGetProbe(path="/nothing", port=port))[0]
    finally:
        server.shutdown()
        server.server_close()
    ok, detail = http_get(HttpGetProbe(path="/ok", port=port))  # nothing listens any more
    assert not ok and "refused" in detail.lower(), detail
