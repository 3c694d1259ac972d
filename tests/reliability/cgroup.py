"""A real kernel memory limit for one worker: a memory cgroup of its own, as a container gets.

``docker run --memory=512m`` and a Kubernetes ``resources.limits.memory`` both come down to the
worker's processes living in a memory cgroup with a limit (``memory.limit_in_bytes`` on cgroup v1,
``memory.max`` on v2). When the cgroup's usage reaches the limit the kernel's OOM killer SIGKILLs
the largest process in it — the allocating prefork child, not Python raising ``MemoryError``.
This module creates such a cgroup (root only) and starts the unchanged ``celery worker`` command
inside it: a shell writes its own pid to ``cgroup.procs`` and ``exec``\\s celery, so the worker's
main process and every child it forks are charged to the cgroup.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from imagineer_worker.testing.services import CeleryProcess

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(RuntimeError):  # noqa: N818 - reads as the condition
    pass


def _own_v1_parent() -> Path:
    """Nest under this process's own memory cgroup (its limits still apply above ours)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return V1_ROOT / path.lstrip("/")
    return V1_ROOT


@dataclass
class MemoryCgroup:
    name: str
    limit_bytes: int
    path: Path | None = None
    version: int = 0

    def create(self) -> MemoryCgroup:
        if os.geteuid() != 0:
            raise CgroupUnavailable("creating a memory cgroup needs root")
        if (V1_ROOT / "memory.limit_in_bytes").exists():
            self.version, self.path = 1, _own_v1_parent() / self.name
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit_bytes))
            swap = self.path / "memory.memsw.limit_in_bytes"
            if swap.exists():  # no swap to escape to: the limit is the limit
                with contextlib.suppress(OSError):
                    swap.write_text(str(self.limit_bytes))
        elif (V2_ROOT / "cgroup.controllers").exists():
            if "memory" not in (V2_ROOT / "cgroup.subtree_control").read_text().split():
                try:
                    (V2_ROOT / "cgroup.subtree_control").write_text("+memory")
                except OSError as exc:
                    raise CgroupUnavailable(f"cannot enable the memory controller: {exc}") from None
            self.version, self.path = 2, V2_ROOT / self.name
            self.path.mkdir(exist_ok=True)
            (self.path / "memory.max").write_text(str(self.limit_bytes))
            (self.path / "memory.swap.max").write_text("0")
        else:
            raise CgroupUnavailable("no memory cgroup controller is mounted")
        return self

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup."""
        assert self.path is not None
        if self.version == 1:
            for line in (self.path / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
            return int((self.path / "memory.failcnt").read_text())  # older kernels: limit hits
        for line in (self.path / "memory.events").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def pids(self) -> list[int]:
        assert self.path is not None
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        if self.path is None or not self.path.exists():
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.2)  # processes still exiting


@dataclass
class CgroupCeleryProcess(CeleryProcess):
    """``CeleryProcess`` whose command runs inside ``cgroup`` (set before start)."""

    cgroup: MemoryCgroup | None = None

    def command(self) -> list[str]:
        assert self.cgroup is not None and self.cgroup.path is not None
        procs = self.cgroup.path / "cgroup.procs"
        return ["/bin/sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *super().command()]
