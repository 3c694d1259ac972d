"""The Pod Security Standards' ``restricted`` profile (which includes ``baseline``) as a checker.

https://kubernetes.io/docs/concepts/security/pod-security-standards/ (Kubernetes v1.31): each rule
below is one control of that page, named after it, and returns one ``Violation`` per offending
field, so a failure says which rule broke and where. Containers means ``containers``,
``initContainers`` and ``ephemeralContainers``. The smoke test (tests/smoke) installs into a
namespace that enforces ``restricted``; this is the same check offline, over every rendering.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Baseline: capabilities a container may add (restricted narrows it to NET_BIND_SERVICE).
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
RESTRICTED_CAPABILITIES = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"

# Rule names (the page's controls).
HOST_PROCESS = "baseline/hostProcess"
HOST_NAMESPACES = "baseline/hostNamespaces"
PRIVILEGED = "baseline/privileged"
BASELINE_CAPS = "baseline/capabilities"
HOST_PATH = "baseline/hostPathVolumes"
HOST_PORTS = "baseline/hostPorts"
APPARMOR = "baseline/appArmor"
SELINUX = "baseline/seLinux"
PROC_MOUNT = "baseline/procMount"
BASELINE_SECCOMP = "baseline/seccomp"
SYSCTLS = "baseline/sysctls"
VOLUME_TYPES = "restricted/volumeTypes"
PRIVILEGE_ESCALATION = "restricted/allowPrivilegeEscalation"
RUN_AS_NON_ROOT = "restricted/runAsNonRoot"
RUN_AS_USER = "restricted/runAsUser"
RESTRICTED_SECCOMP = "restricted/seccomp"
RESTRICTED_CAPS = "restricted/capabilities"


@dataclass(frozen=True)
class Violation:
    rule: str
    where: str  # the offending field, e.g. "containers[worker].securityContext.privileged"
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.where}: {self.detail}"


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("containers", "initContainers", "ephemeralContainers"):
        for c in spec.get(field) or []:
            yield f"{field}[{c.get('name', '?')}]", c


def _sc(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("securityContext") or {}


def host_process(spec, meta):
    if (_sc(spec).get("windowsOptions") or {}).get("hostProcess"):
        yield Violation(HOST_PROCESS, "securityContext.windowsOptions.hostProcess", "must be unset or false")
    for where, c in _containers(spec):
        if (_sc(c).get("windowsOptions") or {}).get("hostProcess"):
            yield Violation(HOST_PROCESS, f"{where}.securityContext.windowsOptions.hostProcess",
                            "must be unset or false")


def host_namespaces(spec, meta):
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield Violation(HOST_NAMESPACES, field, "must be unset or false")


def privileged(spec, meta):
    for where, c in _containers(spec):
        if _sc(c).get("privileged"):
            yield Violation(PRIVILEGED, f"{where}.securityContext.privileged", "must be unset or false")


def baseline_capabilities(spec, meta):
    for where, c in _containers(spec):
        for cap in set((_sc(c).get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES:
            yield Violation(BASELINE_CAPS, f"{where}.securityContext.capabilities.add", f"{cap} is not allowed")


def host_path_volumes(spec, meta):
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            yield Violation(HOST_PATH, f"volumes[{v.get('name')}].hostPath", "hostPath volumes are forbidden")


def host_ports(spec, meta):
    for where, c in _containers(spec):
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                yield Violation(HOST_PORTS, f"{where}.ports[{p.get('name', p.get('containerPort'))}].hostPort",
                                "must be unset or 0")


def app_armor(spec, meta):
    def check(where, profile):
        if profile and profile.get("type") not in ("RuntimeDefault", "Localhost"):
            yield Violation(APPARMOR, where, f"type {profile.get('type')!r}: only RuntimeDefault or Localhost")

    yield from check("securityContext.appArmorProfile", _sc(spec).get("appArmorProfile"))
    for where, c in _containers(spec):
        yield from check(f"{where}.securityContext.appArmorProfile", _sc(c).get("appArmorProfile"))
    for key, value in ((meta or {}).get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and value != "runtime/default" and not value.startswith("localhost/"):
            yield Violation(APPARMOR, f"metadata.annotations[{key}]", f"{value!r}: only runtime/default or localhost/*")


def se_linux(spec, meta):
    def check(where, options):
        options = options or {}
        if options.get("type", "") not in SELINUX_TYPES:
            yield Violation(SELINUX, f"{where}.type", f"{options['type']!r} is not an allowed type")
        for field in ("user", "role"):
            if options.get(field):
                yield Violation(SELINUX, f"{where}.{field}", "must be unset")

    yield from check("securityContext.seLinuxOptions", _sc(spec).get("seLinuxOptions"))
    for where, c in _containers(spec):
        yield from check(f"{where}.securityContext.seLinuxOptions", _sc(c).get("seLinuxOptions"))


def proc_mount(spec, meta):
    for where, c in _containers(spec):
        if _sc(c).get("procMount", "Default") != "Default":
            yield Violation(PROC_MOUNT, f"{where}.securityContext.procMount", "must be unset or Default")


def sysctls(spec, meta):
    for s in _sc(spec).get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            yield Violation(SYSCTLS, "securityContext.sysctls", f"{s.get('name')} is not in the safe set")


def baseline_seccomp(spec, meta):
    if (_sc(spec).get("seccompProfile") or {}).get("type") == "Unconfined":
        yield Violation(BASELINE_SECCOMP, "securityContext.seccompProfile.type", "must not be Unconfined")
    for where, c in _containers(spec):
        if (_sc(c).get("seccompProfile") or {}).get("type") == "Unconfined":
            yield Violation(BASELINE_SECCOMP, f"{where}.securityContext.seccompProfile.type", "must not be Unconfined")


def volume_types(spec, meta):
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            yield Violation(VOLUME_TYPES, f"volumes[{v.get('name')}]", f"{sorted(kinds - RESTRICTED_VOLUME_TYPES)} "
                            f"not in {sorted(RESTRICTED_VOLUME_TYPES)}")


def privilege_escalation(spec, meta):
    for where, c in _containers(spec):
        if _sc(c).get("allowPrivilegeEscalation") is not False:
            yield Violation(PRIVILEGE_ESCALATION, f"{where}.securityContext.allowPrivilegeEscalation",
                            "must be set to false")


def run_as_non_root(spec, meta):
    pod_level = _sc(spec).get("runAsNonRoot")
    if pod_level is False:
        yield Violation(RUN_AS_NON_ROOT, "securityContext.runAsNonRoot", "must not be false")
    for where, c in _containers(spec):
        value = _sc(c).get("runAsNonRoot")
        if value is False or (value is None and pod_level is not True):
            yield Violation(RUN_AS_NON_ROOT, f"{where}.securityContext.runAsNonRoot",
                            "must be true here or at the pod level")


def run_as_user(spec, meta):
    if _sc(spec).get("runAsUser") == 0:
        yield Violation(RUN_AS_USER, "securityContext.runAsUser", "must not be 0")
    for where, c in _containers(spec):
        if _sc(c).get("runAsUser") == 0:
            yield Violation(RUN_AS_USER, f"{where}.securityContext.runAsUser", "must not be 0")


def restricted_seccomp(spec, meta):
    allowed = ("RuntimeDefault", "Localhost")
    pod_type = (_sc(spec).get("seccompProfile") or {}).get("type")
    if pod_type is not None and pod_type not in allowed:
        yield Violation(RESTRICTED_SECCOMP, "securityContext.seccompProfile.type",
                        f"{pod_type!r}: RuntimeDefault or Localhost")
    for where, c in _containers(spec):
        c_type = (_sc(c).get("seccompProfile") or {}).get("type")
        if c_type is not None and c_type not in allowed:
            yield Violation(RESTRICTED_SECCOMP, f"{where}.securityContext.seccompProfile.type",
                            f"{c_type!r}: RuntimeDefault or Localhost")
        elif c_type is None and pod_type not in allowed:
            yield Violation(RESTRICTED_SECCOMP, f"{where}.securityContext.seccompProfile",
                            "RuntimeDefault or Localhost here or at the pod level")


def restricted_capabilities(spec, meta):
    for where, c in _containers(spec):
        caps = _sc(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            yield Violation(RESTRICTED_CAPS, f"{where}.securityContext.capabilities.drop", "must contain ALL")
        for cap in set(caps.get("add") or []) - RESTRICTED_CAPABILITIES:
            yield Violation(RESTRICTED_CAPS, f"{where}.securityContext.capabilities.add",
                            f"{cap}: only NET_BIND_SERVICE may be added")


RULES: tuple[Callable[[dict[str, Any], dict[str, Any]], Iterator[Violation]], ...] = (
    host_process, host_namespaces, privileged, baseline_capabilities, host_path_volumes, host_ports, app_armor,
    se_linux, proc_mount, sysctls, baseline_seccomp,
    volume_types, privilege_escalation, run_as_non_root, run_as_user, restricted_seccomp, restricted_capabilities,
)


def check_restricted(spec: dict[str, Any], metadata: dict[str, Any] | None = None) -> list[Violation]:
    """Every ``restricted`` violation of one pod spec (with its metadata, for AppArmor annotations)."""
    return [v for rule in RULES for v in rule(spec, metadata or {})]


WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}


def pod_templates(objects: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """``"Kind/name" -> (pod metadata, pod spec)`` for every object that creates pods."""
    pods = {}
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "Pod":
            template = obj
        elif kind in WORKLOAD_KINDS:
            template = obj["spec"]["template"]
        elif kind == "CronJob":
            template = obj["spec"]["jobTemplate"]["spec"]["template"]
        else:
            continue
        pods[f"{kind}/{name}"] = (template.get("metadata") or {}, template["spec"])
    return pods
