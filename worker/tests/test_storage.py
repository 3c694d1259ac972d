"""The data directory's guards."""

from __future__ import annotations

import pytest

from imagineer_worker.storage import AREAS, DataDir


def test_each_area_is_under_the_root(tmp_path):
    assert [DataDir(tmp_path).area(name) for name in AREAS] == [tmp_path / name for name in AREAS]


def test_an_unknown_area_is_refused_not_asserted(tmp_path):
    with pytest.raises(ValueError, match="unknown data area 'etc'"):
        DataDir(tmp_path).area("etc")
