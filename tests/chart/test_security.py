"""kube-score over the chart's renderings: no CRITICAL finding except the checks ignored on purpose.

kube-score (pinned in tools.mk, path in ``KUBE_SCORE``) scores ``helm template`` output with every
default check. The checks switched off are in ``IGNORED`` below and nowhere else (``kube-score/ignore``
annotations are disabled), and each is explained in the chart README's section
"kube-score: checks ignored on purpose"; a test keeps the two lists equal, another fails once an
ignored check no longer fires (then its entry is stale: remove it here and in the README).
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from tests.chart.helm import CHART, KUBE_VERSION, REPO, _tool, render_manifest

KUBE_SCORE = _tool("KUBE_SCORE", str(REPO / ".tools" / "bin" / "kube-score"))

# The only place kube-score checks are switched off; the chart README says why for each.
IGNORED: dict[str, str] = {
    # No NetworkPolicy in the chart yet: removed by issue 12.
    "pod-networkpolicy": "removed by issue 12",
    # No PodDisruptionBudget in the chart yet (prod runs 2 replicas of three groups): removed by issue 12.
    "deployment-has-poddisruptionbudget": "removed by issue 12",
    # Images are pinned to immutable version tags (the chart's appVersion), so IfNotPresent runs the
    # same bits as Always, without a registry round trip per pod start and while the registry is
    # down; the offline kind cluster (make smoke) has no registry at all (images are side-loaded).
    "container-image-pull-policy": "immutable version tags",
}

# kube-score's grades (scorecard.Grade).
CRITICAL, WARNING = 1, 5
RENDERINGS = ["default", "staging", "prod"]


def _kube_version() -> str:
    major, minor = KUBE_VERSION.lstrip("v").split(".")[:2]
    return f"v{major}.{minor}"


def kube_score(manifest: str, *, ignored: list[str] | None = None) -> list[dict[str, Any]]:
    """Run ``kube-score score`` (JSON output) on a manifest; return its objects with their checks."""
    ignored = list(IGNORED) if ignored is None else ignored
    cmd = [*KUBE_SCORE, "score", "--output-format", "json", "--kubernetes-version", _kube_version(),
           "--disable-ignore-checks-annotations", "--disable-optional-checks-annotations"]
    for check in ignored:
        cmd += ["--ignore-test", check]
    proc = subprocess.run([*cmd, "-"], input=manifest, capture_output=True, text=True, timeout=120)
    # Exit 1 means "found a CRITICAL"; anything else, or output that is not JSON, is a failure to run.
    if proc.returncode not in (0, 1):
        raise AssertionError(f"kube-score failed (exit {proc.returncode}):\n{proc.stderr}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"kube-score printed no JSON ({exc}):\n{proc.stdout[:2000]}\n{proc.stderr}") from None


def findings(report: list[dict[str, Any]], grade: int) -> list[str]:
    """One line per (object, check, comment) at this grade, as `kube-score --output-format ci` would."""
    lines = []
    for obj in report:
        kind, name = obj["type_meta"]["kind"], obj["object_meta"]["name"]
        for check in obj["checks"]:
            if check["skipped"] or check["grade"] != grade:
                continue
            for comment in check["comments"] or [{"path": "", "summary": check["check"]["name"]}]:
                path = f"({comment['path']}) " if comment.get("path") else ""
                lines.append(f"{kind}/{name}: [{check['check']['id']}] {path}{comment['summary']}")
    return sorted(lines)


def _render(values_file: str, values: dict[str, Any] | None = None) -> str:
    return render_manifest(values, values_file=None if values_file == "default" else values_file)


@pytest.mark.parametrize("values_file", RENDERINGS)
def test_kube_score_reports_no_critical(values_file):
    report = kube_score(_render(values_file))
    scored = {o["type_meta"]["kind"] for o in report}
    assert {"Deployment", "Pod", "Service"} <= scored, f"kube-score scored too little: {scored}"
    critical = findings(report, CRITICAL)
    assert not critical, "kube-score CRITICAL findings (fix the chart, or ignore on purpose: IGNORED and " \
                         "the chart README):\n" + "\n".join(critical)


def test_kube_score_catches_a_new_critical():
    """The parsing is not vacuous: a writable root filesystem is reported as CRITICAL."""
    report = kube_score(_render("default", {"containerSecurityContext": {"readOnlyRootFilesystem": False}}))
    critical = findings(report, CRITICAL)
    assert any("[container-security-context-readonlyrootfilesystem]" in f for f in critical), critical


def test_every_ignored_check_still_fires():
    """An ignore whose check no longer fires anywhere is stale (issue 12 adds the NetworkPolicies and
    PodDisruptionBudgets): remove it from IGNORED and from the chart README."""
    fired = set()
    for values_file in RENDERINGS:
        for line in findings(kube_score(_render(values_file), ignored=[]), CRITICAL):
            fired.add(re.search(r"\[([a-z0-9-]+)\]", line).group(1))
    stale = sorted(set(IGNORED) - fired)
    assert not stale, f"ignored kube-score checks that no longer fire: {stale}"


def test_each_ignored_check_is_explained_in_the_chart_readme():
    readme = (CHART / "README.md").read_text()
    match = re.search(r"^### kube-score: checks ignored on purpose\n(.*?)(?=^#)", readme, re.M | re.S)
    assert match, "the chart README lacks its section 'kube-score: checks ignored on purpose'"
    explained = set(re.findall(r"^\| `([a-z0-9-]+)` \|", match.group(1), re.M))
    assert explained == set(IGNORED), f"README explains {sorted(explained)}, the test ignores {sorted(IGNORED)}"

