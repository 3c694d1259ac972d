"""NOTES.txt names only objects the release has, for the default, staging and prod values.

`helm template` does not print the notes, and `helm install --dry-run=client` still wants a cluster,
so the notes are rendered from a copy of the chart in which NOTES.txt's text becomes a named
template that one extra template prints: the same text, values and helpers as at install time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, HELM, KUBE_VERSION, VALUES_FILES, by_kind, render_chart

FULL = "release-imagineer-workers"


def render_notes(values: dict[str, Any] | None = None, *, values_file: str | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / CHART.name
        shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("tests", "README.md"))
        notes = chart / "templates" / "NOTES.txt"
        (chart / "templates" / "_notes_under_test.tpl").write_text(
            '{{- define "notes-under-test" -}}\n' + notes.read_text() + "\n{{- end -}}\n")
        notes.unlink()
        (chart / "templates" / "notes-under-test.yaml").write_text(
            'notes: {{ include "notes-under-test" . | toJson }}\n')
        cmd = [*HELM, "template", "release", str(chart), "--namespace", "imagineer", "--kube-version", KUBE_VERSION,
               "--show-only", "templates/notes-under-test.yaml"]
        if values_file:
            cmd += ["--values", str(VALUES_FILES[values_file])]
        cmd += ["--values", "-"]
        proc = subprocess.run(cmd, input=yaml.safe_dump(values or {}), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return yaml.safe_load(proc.stdout)["notes"]


CASES = {
    "default": (None, None),
    "staging": ("staging", None),
    "prod": ("prod", None),
    "no beat, Flower": (None, {"beat": {"enabled": False}, "config": {"maintenanceQueue": "default"},
                               "flower": {"enabled": True, "basicAuth": {"username": "u", "password": "p"}}}),
    "no scraping group": (None, {"workers": {"scraping": {"enabled": False},
                                             "default": {"queues": ["default", "scraping"]}}}),
    "only training": (None, {"beat": {"enabled": False}, "exporter": {"enabled": False}, "tests": {"enabled": False},
                             "workers": {"default": {"enabled": False}, "scraping": {"enabled": False},
                                         "labeling": {"enabled": False}}}),
}


@pytest.mark.parametrize("case", CASES)
def test_every_object_the_notes_name_exists(case):
    values_file, values = CASES[case]
    notes = render_notes(values, values_file=values_file)
    objects = render_chart(values, values_file=values_file)
    deployments, services = set(by_kind(objects, "Deployment")), set(by_kind(objects, "Service"))
    named = set(re.findall(rf"\b{FULL}-[a-z0-9-]+[a-z0-9]", notes))
    assert named, notes
    for name in named:
        assert name in deployments | services, f"NOTES name {name}, which the {case} rendering lacks:\n{notes}"
    for name in re.findall(r"\bdeploy/([a-z0-9-]+)", notes):
        assert name in deployments, f"deploy/{name} in NOTES is no Deployment of the {case} rendering"
    for name in re.findall(r"\bsvc/([a-z0-9-]+)", notes):
        assert name in services, f"svc/{name} in NOTES is no Service of the {case} rendering"
    if "helm test" in notes:
        assert by_kind(objects, "Pod"), "NOTES suggest helm test, but there is no test pod"
    # Every enabled group's Deployment is listed.
    for name in deployments - {f"{FULL}-exporter", f"{FULL}-flower"}:
        assert name in notes


def test_staging_notes_use_the_preview_group():
    notes = render_notes(values_file="staging")
    assert f"exec deploy/{FULL}-preview -- imagineer-workers doctor" in notes
    assert f"scale deploy/{FULL}-preview --replicas=3" in notes
    assert f"{FULL}-default" not in notes and f"{FULL}-scraping" not in notes


def test_prod_notes_exec_into_the_maintenance_group_and_scale_scraping():
    notes = render_notes(values_file="prod")
    assert f"exec deploy/{FULL}-default -- celery" in notes
    assert f"scale deploy/{FULL}-scraping --replicas=3" in notes
    assert "NetworkPolicies restrict every pod of the release" in notes


def test_notes_warn_about_allow_list_host_names_under_network_policies():
    notes = render_notes({"networkPolicy": {"enabled": True, "redis": {"podSelector": {"app": "redis"}}},
                          "config": {"file": {"scraping": {"allow_networks": ["10.1.0.0/16", "files.internal"]}}}})
    assert "allow_networks names host names (files.internal)" in notes
    assert "10.1.0.0/16" not in notes


def test_notes_do_not_suggest_kubectl_scale_on_an_autoscaled_group():
    notes = render_notes({"workers": {"scraping": {"autoscaling": {"enabled": True, "mode": "keda"}}}})
    assert f"scale deploy/{FULL}-scraping" not in notes
    assert f"scale deploy/{FULL}-default --replicas=3" in notes
