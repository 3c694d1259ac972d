"""Every pod the chart renders meets the Pod Security Standards' ``restricted`` profile.

The checker (tests/chart/pod_security.py) names the rule a pod breaks. The renderings: the default
values, values-staging.yaml, values-prod.yaml and one with every optional pod and volume on
(Flower, the Redis CA Secret, no claim); ``helm template`` includes the ``helm test`` pod. The
negative tests show the checker catches each rule on a mutated copy of a rendered pod, and a value
override that breaks the profile.
"""

from __future__ import annotations

import copy

import pytest

from tests.chart import pod_security as pss
from tests.chart.helm import render_chart

ALL_OPTIONAL_ON = {
    "flower": {"enabled": True, "basicAuth": {"username": "ops", "password": "pw"}},
    "broker": {"url": "rediss://redis:6380/0", "caSecret": "redis-ca"},
    "persistence": {"enabled": False},
    "priorityClasses": {"create": True},
}
RENDERINGS = {
    "default": ({}, None),
    "staging": ({}, "staging"),
    "prod": ({}, "prod"),
    "all-optional-on": (ALL_OPTIONAL_ON, None),
}


def _pods(name: str) -> dict[str, tuple[dict, dict]]:
    values, values_file = RENDERINGS[name]
    return pss.pod_templates(render_chart(values, values_file=values_file))


@pytest.mark.parametrize("rendering", list(RENDERINGS))
def test_every_rendered_pod_meets_the_restricted_profile(rendering):
    pods = _pods(rendering)
    components = {name.split("-")[-1] for name in pods}
    # Not vacuous: the workers, beat, the exporter and the helm test pod are all checked.
    assert {"beat", "exporter", "queues"} <= components, sorted(pods)
    assert "Pod/release-imagineer-workers-test-queues" in pods, sorted(pods)
    if rendering == "all-optional-on":
        assert "Deployment/release-imagineer-workers-flower" in pods, sorted(pods)
    violations = [f"{name}: {v}" for name, (meta, spec) in pods.items() for v in pss.check_restricted(spec, meta)]
    assert not violations, "\n".join(violations)


def _container_sc(spec: dict) -> dict:
    return spec["containers"][0].setdefault("securityContext", {})


# (mutation of a rendered pod spec, the rule it must trip)
MUTATIONS = [
    (lambda s, m: s["securityContext"].setdefault("windowsOptions", {}).update(hostProcess=True), pss.HOST_PROCESS),
    (lambda s, m: s.update(hostNetwork=True), pss.HOST_NAMESPACES),
    (lambda s, m: s.update(hostPID=True), pss.HOST_NAMESPACES),
    (lambda s, m: s.update(hostIPC=True), pss.HOST_NAMESPACES),
    (lambda s, m: _container_sc(s).update(privileged=True), pss.PRIVILEGED),
    (lambda s, m: _container_sc(s)["capabilities"].update(add=["SYS_ADMIN"]), pss.BASELINE_CAPS),
    (lambda s, m: _container_sc(s)["capabilities"].update(add=["CHOWN"]), pss.RESTRICTED_CAPS),
    (lambda s, m: _container_sc(s)["capabilities"].update(drop=["NET_RAW"]), pss.RESTRICTED_CAPS),
    (lambda s, m: s["volumes"].append({"name": "host", "hostPath": {"path": "/var/run"}}), pss.HOST_PATH),
    (lambda s, m: s["volumes"].append({"name": "nfs", "nfs": {"server": "nfs", "path": "/"}}), pss.VOLUME_TYPES),
    (lambda s, m: s["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]), pss.HOST_PORTS),
    (lambda s, m: _container_sc(s).update(appArmorProfile={"type": "Unconfined"}), pss.APPARMOR),
    (lambda s, m: m.setdefault("annotations", {}).update(
        {"container.apparmor.security.beta.kubernetes.io/worker": "unconfined"}), pss.APPARMOR),
    (lambda s, m: _container_sc(s).update(seLinuxOptions={"type": "spc_t"}), pss.SELINUX),
    (lambda s, m: s["securityContext"].update(seLinuxOptions={"user": "system_u"}), pss.SELINUX),
    (lambda s, m: _container_sc(s).update(procMount="Unmasked"), pss.PROC_MOUNT),
    (lambda s, m: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), pss.SYSCTLS),
    (lambda s, m: s["securityContext"].update(seccompProfile={"type": "Unconfined"}), pss.BASELINE_SECCOMP),
    (lambda s, m: s["securityContext"].pop("seccompProfile"), pss.RESTRICTED_SECCOMP),
    (lambda s, m: _container_sc(s).update(allowPrivilegeEscalation=True), pss.PRIVILEGE_ESCALATION),
    (lambda s, m: _container_sc(s).pop("allowPrivilegeEscalation"), pss.PRIVILEGE_ESCALATION),
    (lambda s, m: (s["securityContext"].pop("runAsNonRoot"), _container_sc(s).pop("runAsNonRoot")),
     pss.RUN_AS_NON_ROOT),
    (lambda s, m: _container_sc(s).update(runAsNonRoot=False), pss.RUN_AS_NON_ROOT),
    (lambda s, m: _container_sc(s).update(runAsUser=0), pss.RUN_AS_USER),
    (lambda s, m: s.setdefault("initContainers", []).append(
        {"name": "init", "image": "x", "securityContext": {"privileged": True}}), pss.PRIVILEGED),
]


@pytest.fixture(scope="module")
def rendered_worker() -> tuple[dict, dict]:
    return _pods("default")["Deployment/release-imagineer-workers-default"]


@pytest.mark.parametrize(("mutate", "rule"), MUTATIONS, ids=[f"{i}-{r}" for i, (_, r) in enumerate(MUTATIONS)])
def test_the_checker_names_the_rule_a_mutated_pod_breaks(rendered_worker, mutate, rule):
    meta, spec = copy.deepcopy(rendered_worker)
    assert not pss.check_restricted(spec, meta)
    mutate(spec, meta)
    rules = {v.rule for v in pss.check_restricted(spec, meta)}
    assert rule in rules, f"expected {rule}, got {sorted(rules)}"


def test_a_value_override_that_breaks_the_profile_is_caught_on_every_pod():
    objects = render_chart({"podSecurityContext": {"runAsNonRoot": False, "runAsUser": 0},
                            "containerSecurityContext": {"runAsNonRoot": False,
                                                         "allowPrivilegeEscalation": True}})
    pods = pss.pod_templates(objects)
    assert pods
    for name, (meta, spec) in pods.items():
        rules = {v.rule for v in pss.check_restricted(spec, meta)}
        assert {pss.RUN_AS_NON_ROOT, pss.RUN_AS_USER, pss.PRIVILEGE_ESCALATION} <= rules, (name, rules)
