"""The Deployment → ``docker run`` translation itself, on the prod rendering (no containers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.helm import by_kind, render_chart
from tests.run.fleet import APP_VERSION, run_values
from tests.run.pods import UnsupportedFieldError, bytes_of, cpus_of, plan


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
