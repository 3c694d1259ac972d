"""``concurrency = min(vCPU, configured)`` with vCPU read from faked cgroup v1/v2 trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagineer_worker.concurrency import available_vcpus, cpu_quota, effective_concurrency


def _proc_cgroup(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def test_cgroup_v2_quota_is_rounded_up(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    proc = _proc_cgroup(tmp_path, "0::/\n")
    assert cpu_quota(tmp_path, proc) == 1.5
    assert available_vcpus(tmp_path, proc) == min(2, len(__import__("os").sched_getaffinity(0)))


def test_cgroup_v2_nested_group_of_this_process(tmp_path):
    group = tmp_path / "kubepods" / "pod1"
    group.mkdir(parents=True)
    (group / "cpu.max").write_text("50000 100000\n")
    proc = _proc_cgroup(tmp_path, "0::/kubepods/pod1\n")
    assert cpu_quota(tmp_path, proc) == 0.5
    assert available_vcpus(tmp_path, proc) == 1


def test_cgroup_v2_without_limit(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path, _proc_cgroup(tmp_path, "0::/\n")) is None


def test_cgroup_v1_quota(tmp_path):
    cpu = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("100000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = _proc_cgroup(tmp_path, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cpu_quota(tmp_path, proc) == 1.0
    assert available_vcpus(tmp_path, proc) == 1


def test_cgroup_v1_unlimited_quota_is_minus_one(tmp_path):
    cpu = tmp_path / "cpu,cpuacct"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path, _proc_cgroup(tmp_path, "4:cpu,cpuacct:/\n")) is None


def test_no_cgroup_files_falls_back_to_affinity(tmp_path):
    import os

    assert available_vcpus(tmp_path, _proc_cgroup(tmp_path, "")) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("configured", "vcpus", "expected"), [
    (4, 2, 2),    # labeling's 4 on a 2-CPU pod
    (2, 8, 2),    # the configured value is a ceiling, never raised
    (1, 8, 1),    # training stays at 1 on a big node
    (None, 3, 3),  # unset: one per vCPU
    (0, 3, 3),
])
def test_effective_concurrency(configured, vcpus, expected):
    assert effective_concurrency(configured, vcpus) == expected
