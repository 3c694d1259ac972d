"""kube-score over the chart's renderings: no CRITICAL finding except the checks ignored on purpose.

kube-score (pinned in tools.mk, path in ``KUBE_SCORE``) scores ``helm template`` output with every
default check. The checks switched off are in ``IGNORED`` (every rendering) and ``IGNORED_IN`` (some
renderings) below and nowhere else (``kube-score/ignore`` annotations are disabled), and each is
explained in the chart README's section "kube-score: checks ignored on purpose"; a test keeps the
lists equal, another fails once an ignored check no longer fires (then its entry is stale: remove
it here and in the README).
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
    # Images are pinned to immutable version tags (the chart's appVersion), so IfNotPresent runs the
    # same bits as Always, without a registry round trip per pod start and while the registry is
    # down; the offline kind cluster (make smoke) has no registry at all (images are side-loaded).
    "container-image-pull-policy": "immutable version tags",
}

# Checks switched off in some renderings only: {check: (renderings, reason)}; also in the README.
IGNORED_IN: dict[str, tuple[tuple[str, ...], str]] = {
    # networkPolicy.enabled is off by default (where Redis, DNS and Prometheus run and whether the
    # CNI enforces policies are the cluster's business) and in staging (a shared cluster);
    # values-prod.yaml turns it on, and test_prod_has_no_network_policy_or_disruption_budget_finding
    # scores prod with nothing about them ignored.
    "pod-networkpolicy": (("default", "staging"), "NetworkPolicies are off in these values"),
}

# kube-score's grades (scorecard.Grade).
CRITICAL, WARNING = 1, 5
RENDERINGS = ["default", "staging", "prod"]


def ignored_for(values_file: str) -> list[str]:
    """The checks ignored when scoring this rendering: IGNORED, and IGNORED_IN's for it."""
    return [*IGNORED, *(check for check, (renderings, _) in IGNORED_IN.items() if values_file in renderings)]


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
    report = kube_score(_render(values_file), ignored=ignored_for(values_file))
    scored = {o["type_meta"]["kind"] for o in report}
    assert {"Deployment", "Pod", "Service"} <= scored, f"kube-score scored too little: {scored}"
    critical = findings(report, CRITICAL)
    assert not critical, "kube-score CRITICAL findings (fix the chart, or ignore on purpose: IGNORED and " \
                         "the chart README):\n" + "\n".join(critical)


def test_kube_score_catches_a_new_critical():
    """The parsing is not vacuous: a writable root filesystem is reported as CRITICAL."""
    report = kube_score(_render("default", {"containerSecurityContext": {"readOnlyRootFilesystem": False}}),
                        ignored=ignored_for("default"))
    critical = findings(report, CRITICAL)
    assert any("[container-security-context-readonlyrootfilesystem]" in f for f in critical), critical


def test_every_ignored_check_still_fires():
    """An ignore whose check no longer fires (anywhere for IGNORED, in each of its renderings for
    IGNORED_IN) is stale: remove it here and from the chart README."""
    fired: dict[str, set[str]] = {}
    for values_file in RENDERINGS:
        for line in findings(kube_score(_render(values_file), ignored=[]), CRITICAL):
            fired.setdefault(re.search(r"\[([a-z0-9-]+)\]", line).group(1), set()).add(values_file)
    stale = sorted(set(IGNORED) - set(fired))
    stale += sorted(f"{check} in {r}" for check, (renderings, _) in IGNORED_IN.items()
                    for r in renderings if r not in fired.get(check, set()))
    assert not stale, f"ignored kube-score checks that no longer fire: {stale}"


# kube-score's checks about NetworkPolicies and PodDisruptionBudgets.
POLICY_CHECKS = {"pod-networkpolicy", "networkpolicy-targets-pod", "deployment-has-poddisruptionbudget",
                 "poddisruptionbudget-has-policy", "statefulset-has-poddisruptionbudget"}


def test_prod_has_no_network_policy_or_disruption_budget_finding():
    """values-prod.yaml: every pod isolated both ways, every policy targets a pod, every multi-replica
    Deployment has a budget with a policy; nothing ignored, critical or warning."""
    report = kube_score(_render("prod"), ignored=[])
    ids = {c["check"]["id"] for o in report for c in o["checks"]}
    assert POLICY_CHECKS - {"statefulset-has-poddisruptionbudget"} <= ids, f"checks not run: {ids}"
    lines = [line for grade in (CRITICAL, WARNING) for line in findings(report, grade)
             if re.search(r"\[([a-z0-9-]+)\]", line).group(1) in POLICY_CHECKS]
    assert not lines, "\n".join(lines)


def test_each_ignored_check_is_explained_in_the_chart_readme():
    readme = (CHART / "README.md").read_text()
    match = re.search(r"^### kube-score: checks ignored on purpose\n(.*?)(?=^#)", readme, re.M | re.S)
    assert match, "the chart README lacks its section 'kube-score: checks ignored on purpose'"
    explained = set(re.findall(r"^\| `([a-z0-9-]+)` \|", match.group(1), re.M))
    ignored = set(IGNORED) | set(IGNORED_IN)
    assert explained == ignored, f"README explains {sorted(explained)}, the test ignores {sorted(ignored)}"

