"""``imagineer-workers render systemd`` without helm: Helm's merge rules, quantities, escaping, the CLI.

That the units run exactly what the chart's Deployments run is proven against real ``helm template``
in ``tests/chart/test_systemd.py``; this file pins the pieces and the command's behaviour.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imagineer_worker import systemd

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "imagineer-workers"
PROD = REPO / "values-prod.yaml"
STAGING = REPO / "values-staging.yaml"
MARKER = "s3cr3t-M4RKER-pw"


def render(out: Path, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagineer_worker.cli", "render", "systemd", "--out", str(out),
                           *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


# --- Helm's merge, as observed with helm v3.22 (tests/chart/test_systemd.py renders both) -----------


def test_user_null_removes_a_chart_default_and_is_kept_where_the_chart_has_none():
    chart = {"a": {"x": 1, "y": [1]}, "b": 2}
    user = systemd.merge_user_values([{"a": {"x": None, "z": None}}, {"b": 3}])
    assert systemd.coalesce(user, chart) == {"a": {"y": [1], "z": None}, "b": 3}


def test_later_values_files_win_and_a_null_in_a_later_file_still_removes():
    merged = systemd.merge_user_values([{"a": {"x": 1, "y": 2}}, {"a": {"x": None}}])
    assert merged == {"a": {"x": None, "y": 2}}
    assert systemd.coalesce(merged, {"a": {"x": 5}}) == {"a": {"y": 2}}


def test_group_values_override_worker_defaults_even_when_empty_or_null():
    values = {"workerDefaults": {"extraArgs": ["--foo"], "terminationGracePeriodSeconds": 100,
                                 "resources": {"limits": {"ephemeral-storage": "2Gi"}}},
              "workers": {"g": {"extraArgs": [], "terminationGracePeriodSeconds": None,
                                "resources": {"limits": {"memory": "1Gi"}}}}}
    g = systemd.group_values(values, "g")
    assert g["extraArgs"] == [] and g["terminationGracePeriodSeconds"] is None
    assert g["resources"] == {"limits": {"ephemeral-storage": "2Gi", "memory": "1Gi"}}


def test_grace_period_is_the_groups_or_hard_limit_plus_margin():
    values = {"celery": {"hardTimeLimitSeconds": 1800, "shutdownMarginSeconds": 60}}
    assert systemd.grace_seconds(values, {"terminationGracePeriodSeconds": None}) == 1860
    assert systemd.grace_seconds(values, {}) == 1860
    assert systemd.grace_seconds(values, {"terminationGracePeriodSeconds": 2000}) == 2000


# --- quantities and escaping -------------------------------------------------------------------------


@pytest.mark.parametrize(("quantity", "expected"), [
    ("16Gi", "16G"), ("512Mi", "512M"), ("1536Mi", "1536M"), ("2G", "1953125K"), ("1000001", "1000001"),
    ("1Ti", "1T"), (1073741824, "1G"),
])
def test_memory_limits_in_systemd_units(quantity, expected):
    assert systemd.memory_max(quantity, "x") == expected


@pytest.mark.parametrize("bad", ["16K", "16 Gi", "16gi", "Gi", ""])
def test_quantities_the_chart_schema_refuses_are_refused(bad):
    """The same suffixes as the chart's schema and its imagineer.memoryGi ("K" is not Kubernetes')."""
    with pytest.raises(systemd.RenderError, match="is not a Kubernetes quantity"):
        systemd.quantity(bad, "workers.x.resources.limits.memory")


def test_every_kubernetes_suffix_is_read():
    assert [systemd.quantity(q, "x") for q in ("1Pi", "1Ei", "2P", "3E", "1500m")] == [2**50, 2**60, 2e15, 3e18, 1.5]


@pytest.mark.parametrize(("quantity", "expected"), [("2", "200%"), (4, "400%"), ("250m", "25%"), ("1500m", "150%"),
                                                    ("0.5", "50%"), ("125m", "13%")])
def test_cpu_limits_as_cpu_quota(quantity, expected):
    assert systemd.cpu_quota(quantity, "x") == expected


def test_exec_words_and_environment_are_escaped_for_systemd():
    assert systemd.exec_word("--hostname=training@%h") == "--hostname=training@%%h"
    assert systemd.exec_word("--y=$HOME") == "--y=$$HOME"
    assert systemd.exec_word("two words") == '"two words"'
    assert systemd.exec_word('a"b\\c') == '"a\\"b\\\\c"'
    assert systemd.exec_word("") == '""'
    assert systemd.environment_line("K", '50% "x"') == 'Environment="K=50%% \\"x\\""'


# --- the command ----------------------------------------------------------------------------------------


def test_prod_writes_one_unit_per_enabled_group_plus_beat_and_the_config(tmp_path):
    proc = render(tmp_path, "--values", PROD)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.yaml", "imagineer-beat.service", "imagineer-worker-default.service",
                     "imagineer-worker-labeling.service", "imagineer-worker-scraping.service",
                     "imagineer-worker-training.service"]
    assert sorted(Path(line).name for line in proc.stdout.split()) == names
    training = (tmp_path / "imagineer-worker-training.service").read_text()
    assert "ExecStart=/opt/imagineer/venv/bin/celery \\\n    -A imagineer_worker.celery_app worker \\\n" in training
    assert "--hostname=training@%%h" in training and "TimeoutStopSec=1860\n" in training


def test_staging_renders_only_its_preview_group(tmp_path):
    assert render(tmp_path, "--values", STAGING).returncode == 0
    assert sorted(p.name for p in tmp_path.glob("*.service")) == ["imagineer-beat.service",
                                                                   "imagineer-worker-preview.service"]
    preview = (tmp_path / "imagineer-worker-preview.service").read_text()
    assert "Description=Imagineer Celery Worker (preview: default, scraping, labeling queues)" in preview
    assert 'Environment="IMAGINEER_REDIS_KEY_PREFIX=imagineer:"' in preview
    assert "PrivateDevices=yes" in preview and "DeviceAllow" not in preview


def test_group_selects_units(tmp_path):
    proc = render(tmp_path, "--values", PROD, "--group", "training", "--group", "beat")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.glob("*.service")) == ["imagineer-beat.service",
                                                                   "imagineer-worker-training.service"]


@pytest.mark.parametrize(("args", "message"), [
    (["--values", "no-such-values.yaml"], "render systemd: --values no-such-values.yaml: no such file"),
    (["--values", str(PROD), "--group", "gpu"],
     "render systemd: unknown worker group 'gpu': these values define default, labeling, scraping, training "
     "(and beat)"),
    (["--values", str(STAGING), "--group", "training"],
     "render systemd: worker group 'training' is disabled in these values (workers.training.enabled: false)"),
    (["--chart", "/nonexistent"], "render systemd: --chart /nonexistent: no values.yaml there"),
    (["--venv", "relative/venv"], "render systemd: --venv must be an absolute path"),
])
def test_refusals_are_one_line_and_exit_2(tmp_path, args, message):
    proc = render(tmp_path / "out", *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(message), proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_grace_period_below_the_hard_limit_is_refused(tmp_path):
    values = tmp_path / "short.yaml"
    values.write_text(yaml.safe_dump({"workers": {"scraping": {"terminationGracePeriodSeconds": 600}}}))
    proc = render(tmp_path / "out", "--values", values)
    assert proc.returncode == 2
    assert proc.stderr.startswith("render systemd: workers.scraping.terminationGracePeriodSeconds (600) is below "
                                  "celery.hardTimeLimitSeconds (1800)")


def test_a_malformed_values_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers: [unclosed\n")
    proc = render(tmp_path / "out", "--values", bad)
    assert proc.returncode == 2 and proc.stderr.startswith(f"render systemd: malformed YAML in {bad}")


def test_no_secret_reaches_any_file(tmp_path):
    values = tmp_path / "secret.yaml"
    values.write_text(yaml.safe_dump({"broker": {
        "url": f"rediss://:{MARKER}@redis.internal:6380/0",
        "resultBackendUrl": f"rediss://:{MARKER}@redis.internal:6380/1"},
        "flower": {"enabled": True, "basicAuth": {"username": "u", "password": MARKER}}}))
    out = tmp_path / "out"
    proc = render(out, "--values", PROD, "--values", values)
    assert proc.returncode == 0, proc.stderr
    assert MARKER not in proc.stdout + proc.stderr
    for path in out.iterdir():
        text = path.read_text()
        assert MARKER not in text, path.name
        assert "CELERY_BROKER_URL=" not in text and "CELERY_RESULT_BACKEND=" not in text
        if path.suffix == ".service":
            assert "EnvironmentFile=/etc/imagineer/secrets.env\n" in text


def test_the_chart_is_found_from_the_checkout_elsewhere(tmp_path):
    proc = render(tmp_path / "out", cwd=tmp_path)  # not the repo's directory: found next to the package
    assert proc.returncode == 0, proc.stderr
    assert f"from {systemd.CHART_DIR}/values.yaml." in (tmp_path / "out" / "imagineer-beat.service").read_text()


def test_a_stale_unit_is_named_not_removed(tmp_path):
    (tmp_path / "imagineer-worker-gone.service").write_text("[Unit]\n")
    proc = render(tmp_path, "--values", STAGING)
    assert proc.returncode == 0
    assert "imagineer-worker-gone.service is not in these values" in proc.stderr
    assert (tmp_path / "imagineer-worker-gone.service").exists()


def test_options_shape_the_unit(tmp_path):
    proc = render(tmp_path, "--venv", "/srv/venv/", "--workdir", "/srv/app", "--user", "celeryw",
                  "--chart", CHART, "--group", "scraping")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "imagineer-worker-scraping.service").read_text()
    assert "ExecStart=/srv/venv/bin/celery \\\n" in text
    assert "WorkingDirectory=/srv/app\n" in text and "User=celeryw\nGroup=celeryw\n" in text
