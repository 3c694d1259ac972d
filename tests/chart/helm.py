"""A render harness for the chart, in the spirit of Airflow's ``render_chart``.

Every rendering runs the real ``helm template`` (installed by ``make tools``) and every object it
returns is validated by kubeconform against the strict, offline Kubernetes and CRD schemas.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "imagineer-workers"
VALUES_FILES = {"default": None, "staging": REPO / "values-staging.yaml", "prod": REPO / "values-prod.yaml"}


def _tool(var: str, default: str) -> list[str]:
    return shlex.split(os.environ.get(var, default))


HELM = _tool("HELM", str(REPO / ".tools" / "bin" / "helm"))
KUBECONFORM = _tool("KUBECONFORM", str(REPO / ".tools" / "bin" / "kubeconform"))
KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.31.0")
_SCHEMAS = REPO / ".tools" / "schemas"
# The same offline, strict schemas as tools.mk's KUBECONFORM_FLAGS: never kubeconform's web default.
KUBECONFORM_FLAGS = shlex.split(os.environ.get("KUBECONFORM_FLAGS", "")) or [
    "-strict", "-summary", "-kubernetes-version", KUBE_VERSION,
    "-schema-location", f"{_SCHEMAS}/{{{{ .NormalizedKubernetesVersion }}}}-local{{{{ .StrictSuffix }}}}/"
                        "{{ .ResourceKind }}{{ .KindSuffix }}.json",
    "-schema-location", f"{_SCHEMAS}/crds/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
]


class RenderError(Exception):
    """``helm template`` failed; the message is helm's error output."""


def _helm_template(values: dict[str, Any] | None, values_file: Path | None, show_only: list[str],
                   name: str, namespace: str) -> str:
    cmd = [*HELM, "template", name, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    if values_file is not None:
        cmd += ["--values", str(values_file)]
    if values:
        cmd += ["--values", "-"]
    for template in show_only:
        cmd += ["--show-only", template]
    proc = subprocess.run(cmd, input=yaml.safe_dump(values or {}), capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    return proc.stdout


def validate(manifest: str) -> None:
    """kubeconform -strict on the whole rendering; raise with its report on any invalid object."""
    proc = subprocess.run([*KUBECONFORM, *KUBECONFORM_FLAGS, "-"], input=manifest, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"kubeconform rejected the rendering:\n{proc.stdout}{proc.stderr}")


def render_manifest(values: dict[str, Any] | None = None, *, values_file: str | Path | None = None,
                    show_only: list[str] | None = None, name: str = "release",
                    namespace: str = "imagineer") -> str:
    """Render with real helm and return the manifest text (``---`` separated), kubeconform-validated."""
    file = VALUES_FILES.get(values_file, values_file) if isinstance(values_file, str) else values_file
    manifest = _helm_template(values, Path(file) if file else None, show_only or [], name, namespace)
    validate(manifest)
    return manifest


def render_chart(values: dict[str, Any] | None = None, *, values_file: str | Path | None = None,
                 show_only: list[str] | None = None, name: str = "release",
                 namespace: str = "imagineer") -> list[dict[str, Any]]:
    """Render with real helm and return the objects, each validated by kubeconform."""
    manifest = render_manifest(values, values_file=values_file, show_only=show_only, name=name,
                               namespace=namespace)
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def render_error(values: dict[str, Any], **kwargs: Any) -> str:
    """Render values that must fail; return helm's message."""
    try:
        render_chart(values, **kwargs)
    except RenderError as exc:
        return str(exc)
    raise AssertionError(f"helm template accepted invalid values: {values}")


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def container(obj: dict[str, Any], index: int = 0) -> dict[str, Any]:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] != "Pod" else obj["spec"]
    return spec["containers"][index]


def env_of(obj: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(obj)["env"]}


# Deployments that are not worker groups, by their app.kubernetes.io/component label.
SERVICE_COMPONENTS = {"beat", "exporter", "flower"}


def worker_groups(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The worker groups' Deployments by group name (their component label)."""
    deployments = (o for o in objects if o["kind"] == "Deployment")
    return {c: o for o in deployments
            if (c := o["metadata"]["labels"]["app.kubernetes.io/component"]) not in SERVICE_COMPONENTS}


def celery_app_deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployments running the workers' Celery app (workers, beat, Flower): not the exporter."""
    return {n: d for n, d in by_kind(objects, "Deployment").items()
            if d["metadata"]["labels"]["app.kubernetes.io/component"] != "exporter"}
