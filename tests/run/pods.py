"""Turn a rendered Deployment into a ``docker run`` command line, field by field.

The render-and-run tests execute what the chart renders, not a hand-written copy of it: the
image, ``command`` (as ``--entrypoint``) and ``args``, every ``env`` entry (``secretKeyRef`` and
``configMapKeyRef`` resolved from the rendered Secret/ConfigMap), the pod and container
``securityContext``, ``resources.limits``, the volumes, the container ``ports`` and the probes.
What Docker cannot express raises ``UnsupportedFieldError`` instead of being silently dropped, so a
new field in the chart fails here first.

Mapping (Kubernetes → Docker):

- ``runAsUser``/``runAsGroup`` → ``--user UID:GID``; ``fsGroup`` → ``--group-add``;
  ``readOnlyRootFilesystem`` → ``--read-only``; ``capabilities.drop: [ALL]`` → ``--cap-drop ALL``;
  ``allowPrivilegeEscalation: false`` → ``--security-opt no-new-privileges``
  (``seccompProfile: RuntimeDefault`` is Docker's default profile already);
- ``limits.memory`` → ``--memory``; ``limits.cpu`` → ``--cpus`` (capped at this machine's CPUs:
  Docker refuses more); ``nvidia.com/gpu`` is *not* mapped (no GPU here) and is listed in
  ``ContainerPlan.skipped``;
- ``emptyDir`` → ``--tmpfs`` (exec, mode 1777, ``sizeLimit`` as size); ConfigMap/Secret volumes →
  their keys written to a host directory, bind-mounted (read-only when the mount says so);
  a ``persistentVolumeClaim`` → the given host data directory, owned by the pod's user/fsGroup;
- ``terminationGracePeriodSeconds`` → ``--stop-timeout`` so ``docker stop`` waits as the kubelet does;
- the pod's hostname (the pod name in Kubernetes) → ``--hostname`` = the container name, so a
  ``--hostname=default@%h`` worker is ``default@<container name>``;
- networking: ``--network host``, so the containers reach Redis and the fixture site on 127.0.0.1;
  a ``containerPort`` is therefore a port on this machine's loopback (``hostPort``/``hostIP``
  other than that are refused);
- ``$(VAR)`` references in ``command``, ``args`` and ``env[].value`` are expanded as the kubelet
  does (``expand``): from the container's environment (for an ``env`` value, from the variables
  defined before it), ``$$`` is a literal ``$``, an undefined reference stays as written;
- probes: ``exec`` probes are kept as the command (``ContainerPlan.probes``, run with
  ``docker exec``); ``httpGet`` probes as ``HttpGetProbe`` (``ContainerPlan.http_probes``, a named
  port resolved from ``ports``), which the harness GETs from the host on 127.0.0.1, as the kubelet
  GETs the pod IP. ``tcpSocket``/``grpc`` probes and an ``httpGet.host`` raise.

Scheduling fields (replicas, nodeSelector, tolerations, affinity, topology spread, priority class)
have no meaning for one container and are ignored.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LABEL = "imagineer-run-test"  # every container started here carries it (for cleanup by label)
_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9,
           "T": 10**12, "k": 10**3, "": 1}


class UnsupportedFieldError(Exception):
    """A rendered field this harness cannot turn into a ``docker run`` option."""


@dataclass(frozen=True)
class HttpGetProbe:
    """A rendered ``httpGet`` probe, its port resolved to a number (on 127.0.0.1 here)."""

    path: str
    port: int
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    timeout_seconds: int = 1  # the kubelet's default timeoutSeconds

    @property
    def url(self) -> str:
        return f"{self.scheme.lower()}://127.0.0.1:{self.port}{self.path}"


@dataclass
class ContainerPlan:
    """One container of a rendered Deployment, ready to ``docker run``."""

    deployment: str
    name: str  # docker --name and --hostname (the pod name in Kubernetes)
    image: str
    command: list[str]  # as the container runs them: $(VAR) references expanded
    args: list[str]
    env: dict[str, str]
    probes: dict[str, list[str]]  # "startup"/"liveness"/"readiness" → the exec command
    run_args: list[str]  # the whole `docker run -d ...` argv
    skipped: list[str] = field(default_factory=list)
    http_probes: dict[str, HttpGetProbe] = field(default_factory=dict)  # httpGet probes by kind
    ports: dict[str, int] = field(default_factory=dict)  # container port name → port number


def bytes_of(quantity: str | int) -> int:
    """``512Mi`` → 536870912 (Kubernetes memory/storage quantity to bytes)."""
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    if not m or m.group(2) not in _SUFFIX:
        raise UnsupportedFieldError(f"quantity {quantity!r}")
    return int(float(m.group(1)) * _SUFFIX[m.group(2)])


def cpus_of(quantity: str | int) -> float:
    """``250m`` → 0.25, ``"2"`` → 2.0 (Kubernetes CPU quantity to Docker ``--cpus``)."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (``third_party/forked/golang/expansion``), byte for byte.

    ``$(NAME)`` becomes ``env[NAME]`` when defined and stays ``$(NAME)`` otherwise; ``$$`` is one
    literal ``$`` (so ``$$(NAME)`` is the text ``$(NAME)``); a ``$`` before anything else, an
    unclosed ``$(`` and a trailing ``$`` are kept as written.
    """
    out: list[str] = []
    checkpoint, cursor = 0, 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            if nxt == "$":  # escaped operator
                out.append("$")
                cursor += 1
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:  # incomplete reference: kept, scanning goes on after "$("
                    out.append("$(")
                    cursor += 1
                else:
                    name = text[cursor + 2:close]
                    out.append(env.get(name, f"$({name})"))
                    cursor = close
            else:  # "$x": not a reference, both characters kept
                out.append("$" + nxt)
                cursor += 1
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"the rendering has no {kind} {name}")


def _data(obj: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's or Secret's keys as text (Secret ``data`` is base64)."""
    if obj["kind"] == "Secret":
        out = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return {**out, **(obj.get("stringData") or {})}
    return dict(obj.get("data") or {})


def _env(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("secretRef") or source.get("configMapRef")
        kind = "Secret" if "secretRef" in source else "ConfigMap"
        env.update({source.get("prefix", "") + k: v for k, v in _data(find(objects, kind, ref["name"])).items()})
    for entry in container.get("env") or []:
        if "value" in entry:  # the kubelet expands $(VAR) from the variables defined so far
            env[entry["name"]] = expand(str(entry["value"]), env)
            continue
        ref_from = entry.get("valueFrom") or {}
        for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if key in ref_from:
                ref = ref_from[key]
                env[entry["name"]] = _data(find(objects, kind, ref["name"]))[ref["key"]]
                break
        else:
            raise UnsupportedFieldError(f"env {entry['name']}: {ref_from}")
    return env


_PROBE_TIMING = {"initialDelaySeconds", "periodSeconds", "timeoutSeconds", "successThreshold",
                 "failureThreshold", "terminationGracePeriodSeconds"}


def _ports(container: dict[str, Any]) -> dict[str, int]:
    """Named container ports; on the host network a port can only be itself on the host."""
    ports: dict[str, int] = {}
    for port in container.get("ports") or []:
        number = int(port["containerPort"])
        if port.get("hostIP") or port.get("hostPort") not in (None, number):
            raise UnsupportedFieldError(f"port {port}: hostPort/hostIP other than the containerPort")
        if "name" in port:
            ports[port["name"]] = number
    return ports


def _probe(container: dict[str, Any], kind: str, ports: dict[str, int]) -> list[str] | HttpGetProbe | None:
    """An exec probe's command or an ``HttpGetProbe``; any other handler (or field) raises."""
    probe = container.get(f"{kind}Probe")
    if probe is None:
        return None
    handlers = set(probe) - _PROBE_TIMING
    if handlers == {"exec"}:
        return [str(a) for a in probe["exec"]["command"]]
    if handlers != {"httpGet"}:
        raise UnsupportedFieldError(f"{kind}Probe: only exec or httpGet probes ({sorted(handlers)})")
    get = probe["httpGet"]
    unknown = set(get) - {"path", "port", "scheme", "httpHeaders"}
    if unknown:  # e.g. host: the kubelet would GET another address than the pod's
        raise UnsupportedFieldError(f"{kind}Probe.httpGet.{sorted(unknown)}")
    port = get["port"]
    if isinstance(port, str):  # IntOrString: a string is a port name
        if port not in ports:
            raise UnsupportedFieldError(f"{kind}Probe.httpGet.port {port!r} names no container port")
        port = ports[port]
    headers = tuple((h["name"], h["value"]) for h in get.get("httpHeaders") or [])
    return HttpGetProbe(path=get.get("path") or "/", port=int(port), scheme=get.get("scheme", "HTTP"),
                        headers=headers, timeout_seconds=int(probe.get("timeoutSeconds", 1)))


def _write_keys(obj: dict[str, Any], target: Path, items: list[dict[str, str]] | None) -> None:
    """A ConfigMap/Secret volume: one file per key (or per ``items`` entry), readable by the pod."""
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o755)
    data = _data(obj)
    for item in items or [{"key": k, "path": k} for k in data]:
        path = target / item["path"]
        path.write_text(data[item["key"]])
        path.chmod(0o644)


def plan(deployment: dict[str, Any], objects: list[dict[str, Any]], *, name: str, workdir: Path,
         data_dir: Path | None = None, host_cpus: int | None = None) -> ContainerPlan:
    """The ``docker run`` for the Deployment's first container, named ``name``.

    ConfigMap/Secret volumes are written under ``workdir``; a PVC volume is ``data_dir``.
    """
    pod = deployment["spec"]["template"]["spec"]
    if len(pod["containers"]) != 1 or pod.get("initContainers"):
        raise UnsupportedFieldError("only single-container pods without init containers")
    container = pod["containers"][0]
    host_cpus = host_cpus or os.cpu_count() or 1
    run = ["docker", "run", "-d", "--name", name, "--hostname", name, "--label", LABEL,
           "--network", "host"]
    skipped: list[str] = []

    pod_sec = pod.get("securityContext") or {}
    sec = {**pod_sec, **(container.get("securityContext") or {})}
    uid, gid = sec.get("runAsUser"), sec.get("runAsGroup")
    if uid is not None:
        run += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
    if pod_sec.get("fsGroup") is not None:
        run += ["--group-add", str(pod_sec["fsGroup"])]
    if sec.get("readOnlyRootFilesystem"):
        run.append("--read-only")
    for cap in (sec.get("capabilities") or {}).get("drop") or []:
        run += ["--cap-drop", cap]
    for cap in (sec.get("capabilities") or {}).get("add") or []:
        run += ["--cap-add", cap]
    if sec.get("allowPrivilegeEscalation") is False:
        run += ["--security-opt", "no-new-privileges"]
    if sec.get("privileged"):
        raise UnsupportedFieldError("privileged containers")

    for resource, value in ((container.get("resources") or {}).get("limits") or {}).items():
        if resource == "memory":
            run += ["--memory", str(bytes_of(value))]
        elif resource == "cpu":
            cpus = cpus_of(value)
            if cpus > host_cpus:
                skipped.append(f"limits.cpu {value} capped at this machine's {host_cpus} CPUs")
                cpus = float(host_cpus)
            run += ["--cpus", f"{cpus:g}"]
        else:
            skipped.append(f"limits.{resource}={value} (no such device here; runs without it)")

    if "terminationGracePeriodSeconds" in pod:
        run += ["--stop-timeout", str(pod["terminationGracePeriodSeconds"])]

    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise UnsupportedFieldError(f"subPath mounts ({mount['name']})")
        volume, path, ro = volumes[mount["name"]], mount["mountPath"], bool(mount.get("readOnly"))
        if "emptyDir" in volume:
            opts = "rw,exec,nosuid,nodev,mode=1777"
            size = (volume["emptyDir"] or {}).get("sizeLimit")
            run += ["--tmpfs", f"{path}:{opts}" + (f",size={bytes_of(size)}" if size else "")]
            continue
        if "configMap" in volume or "secret" in volume:
            kind, ref = ("ConfigMap", volume["configMap"]) if "configMap" in volume else ("Secret", volume["secret"])
            source = workdir / mount["name"]
            _write_keys(find(objects, kind, ref.get("name") or ref.get("secretName")), source, ref.get("items"))
        elif "persistentVolumeClaim" in volume:
            if data_dir is None:
                raise UnsupportedFieldError(f"{deployment['metadata']['name']} mounts a PVC but no data_dir was given")
            source = data_dir
        else:
            raise UnsupportedFieldError(f"volume {mount['name']}: {sorted(volume)}")
        run += ["--mount", f"type=bind,source={source},target={path}" + (",readonly" if ro else "")]

    env = _env(container, objects)
    for key, value in env.items():
        run += ["-e", f"{key}={value}"]

    # The kubelet expands $(VAR) in command and args from the container's whole environment.
    command = [expand(str(c), env) for c in container.get("command") or []]
    args = [expand(str(a), env) for a in container.get("args") or []]
    if command:
        run += ["--entrypoint", command[0]]
    run.append(container["image"])
    run += [*command[1:], *args]
    ports = _ports(container)
    probes: dict[str, list[str]] = {}
    http_probes: dict[str, HttpGetProbe] = {}
    for kind in ("startup", "liveness", "readiness"):
        probe = _probe(container, kind, ports)
        if isinstance(probe, HttpGetProbe):
            http_probes[kind] = probe
        elif probe is not None:
            probes[kind] = probe
    return ContainerPlan(deployment=deployment["metadata"]["name"], name=name, image=container["image"],
                         command=command, args=args, env=env, probes=probes, run_args=run, skipped=skipped,
                         http_probes=http_probes, ports=ports)
