"""promtool (installed by ``make tools``) for the chart's Prometheus rules and the dashboard's PromQL."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.chart.helm import REPO

PROMTOOL = shlex.split(os.environ.get("PROMTOOL", str(REPO / ".tools" / "bin" / "promtool")))


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120)


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def check_rules(rule_file: Path) -> None:
    """``promtool check rules`` with every lint fatal; raise with its report on any problem."""
    proc = _run("check", "rules", "--lint=all", "--lint-fatal", rule_file)
    if proc.returncode != 0:
        raise AssertionError(f"promtool check rules {rule_file.name} failed:\n{proc.stdout}{proc.stderr}")


def test_rules(test_file: Path) -> subprocess.CompletedProcess[str]:
    """``promtool test rules``; the caller decides what the result must be."""
    return _run("test", "rules", test_file)


test_rules.__test__ = False  # a helper, not a pytest test


def version() -> str:
    return _run("--version").stdout.splitlines()[0]
