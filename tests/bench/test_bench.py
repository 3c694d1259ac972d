"""The bench's smoke (``make bench-smoke``, part of ``make test``): every figure is produced.

Tiny counts and one repetition (``bench.run --quick``): this checks that the bench runs and that
``results.json`` holds a number for every figure, and that its Markdown table has a row for each.
It judges no figure: a benchmark never fails CI on noise (the figures are ``make bench``'s).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import common  # noqa: E402

# Each figure and the numbers it must hold (paths into results.json's "figures").
EXPECTED = {
    "throughput": [f"tasks_per_second.{v}.median" for v in
                   ("project", "bare", "bare_defaults", "bare_no_prefetch")]
    + ["cpu_ms_per_task.project.median", "cpu_ms_per_task.bare.median"]
    + [f"latency_ms.{load}.{app}.{q}.median" for load in ("idle", "load") for app in ("project", "bare")
       for q in ("p50", "p95", "p99")],
    "startup": [f"queues.{q}.{app}.{k}.median" for q in common.LIGHT_QUEUES for app in ("project", "bare")
                for k in ("ready_seconds", "rss", "pss", "rss_at_guide_concurrency", "rss_fraction_of_limit")],
    "containers": [f"queues.{q}.{app}.median" for q in common.LIGHT_QUEUES for app in ("project", "bare")]
    + ["probe_seconds.median"],
    "images": ["base.mb"] + [f"images.{g}.{k}" for g in ("default", "scraping", "labeling", "training")
                             for k in ("mb", "delta_mb")],
    "scaling": ["drain_seconds.1 worker.median", "drain_seconds.2 workers.median", "speedup"],
    "training": ["project.seconds_per_step.median", "reference.seconds_per_step.median", "ratio"],
}


def _get(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    data["_stdout"] = proc.stdout
    return dict(data)


@pytest.mark.parametrize("figure", list(EXPECTED))
def test_every_figure_has_its_numbers(results: dict[str, Any], figure: str) -> None:
    assert figure in results["figures"], f"{figure} missing from results.json"
    for path in EXPECTED[figure]:
        value = _get(results["figures"][figure], path)
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, f"{figure}.{path} = {value!r}"


def test_light_workers_never_load_torch(results: dict[str, Any]) -> None:
    for queue, entry in results["figures"]["startup"]["queues"].items():
        assert entry["project"]["torch_loaded"] is False, queue
        assert entry["bare"]["imagineer_loaded"] is False, f"the bare app imported imagineer_worker ({queue})"


def test_the_table_has_a_row_per_figure(results: dict[str, Any]) -> None:
    table = results["_stdout"]
    for number in ("1 throughput", "2 latency", "3 memory", "4 start-up", "5 images", "6 scaling", "7 LoRA CPU",
                   "8 LoRA GPU"):
        assert f"| {number} |" in table, number


def test_gpu_script_runs_its_code_path_on_the_cpu(tmp_path: Path) -> None:
    """bench/gpu.sh --device cpu --tiny: the SD-1.5 architecture (narrow), both loops, the table."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "BENCH_GPU_OUT": str(out), "PY": sys.executable}
    proc = subprocess.run(["bash", "bench/gpu.sh", "--device", "cpu", "--tiny"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["size"] == "sd15-mini"
    assert data["project"]["steps_per_second"]["median"] > 0 and data["reference"]["steps_per_second"]["median"] > 0
    assert "| 8 LoRA (cpu) |" in proc.stdout


def test_bench_starts_workers_with_the_charts_arguments() -> None:
    """bench/common.py mirrors the chart's ``imagineer.workerArgs``: compare with real helm when present."""
    helm = os.environ.get("HELM") or str(REPO / ".tools" / "bin" / "helm")  # make bench-smoke depends on tools
    proc = subprocess.run([helm, "template", "r", str(common.CHART), "--set", "broker.url=redis://r:6379/0"],
                          capture_output=True, text=True, timeout=120, check=True)
    deployments = {d["metadata"]["name"].removeprefix("r-imagineer-workers-"): d
                   for d in yaml.safe_load_all(proc.stdout) if d and d.get("kind") == "Deployment"}
    for name, group in common.chart_groups().items():
        args = deployments[name]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args == common.worker_args("imagineer_worker.celery_app", group), name
