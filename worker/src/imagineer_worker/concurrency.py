"""Effective concurrency: ``min(vCPU, configured)`` where vCPU is the container's CPU quota.

``os.cpu_count()`` returns the node's cores, so a pod limited to 2 CPUs on a 64-core node would
otherwise fork 64 children and thrash. The quota comes from cgroup v2 (``cpu.max``) or cgroup v1
(``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up; without a quota, the CPUs this process
may run on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup_dirs(root: Path, proc_self_cgroup: Path) -> list[Path]:
    """Candidate directories for this process's cgroup, most specific first."""
    dirs: list[Path] = []
    text = _read(proc_self_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if controllers == "":  # cgroup v2 unified hierarchy
            dirs.append(root / rel)
        elif "cpu" in controllers.split(","):
            for name in (controllers, "cpu,cpuacct", "cpu"):
                dirs.append(root / name / rel)
    dirs += [root, root / "cpu,cpuacct", root / "cpu"]  # inside a container the cgroup is the root
    return dirs


def cpu_quota(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs granted by the cgroup quota, or None when unlimited/unknown."""
    for d in _own_cgroup_dirs(root, proc_self_cgroup):
        v2 = _read(d / "cpu.max")
        if v2 is not None:
            quota, _, period = v2.partition(" ")
            if quota != "max" and period:
                return int(quota) / int(period)
            return None
        quota_us, period_us = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        if quota_us is not None and period_us is not None:
            if int(quota_us) > 0 and int(period_us) > 0:
                return int(quota_us) / int(period_us)
            return None
    return None


def available_vcpus(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota(root, proc_self_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def effective_concurrency(configured: int | None, vcpus: int) -> int:
    """The guide's rule of thumb; an unset configured value means "one per vCPU"."""
    if not configured or configured < 1:
        return vcpus
    return min(vcpus, configured)
