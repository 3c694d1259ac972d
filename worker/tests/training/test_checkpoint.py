"""Checkpoints are complete or absent, the newest two are kept, and a bad one is skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from imagineer_worker.training import checkpoint as ck


def _save(root: Path, step: int, **overrides: Any) -> Path:
    args: dict[str, Any] = {
        "step": step,
        "losses": [float(i) for i in range(step)],
        "fingerprint": {"seed": 0},
        "lora": {"a.lora_A.weight": torch.full((2, 3), float(step))},
        "optimizer": {"state": {0: {"exp_avg": torch.ones(2) * step}}, "param_groups": []},
        "rng": {"generator": torch.Generator().manual_seed(step).get_state()},
    }
    args.update(overrides)
    return ck.save_checkpoint(root, **args)


def test_keeps_the_last_two_and_loads_the_newest(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        _save(tmp_path, step)
    assert ck.checkpoint_steps(tmp_path) == [4, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-4", "step-6"]  # no temporaries left
    latest = ck.latest_checkpoint(tmp_path)
    assert latest is not None
    assert latest.step == 6
    assert latest.losses == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert torch.equal(latest.lora["a.lora_A.weight"], torch.full((2, 3), 6.0))
    assert torch.equal(latest.optimizer["state"][0]["exp_avg"], torch.ones(2) * 6)
    assert torch.equal(latest.rng["generator"], torch.Generator().manual_seed(6).get_state())


def test_failed_save_leaves_nothing(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    with pytest.raises(Exception, match=r"pickle|Can't"):
        _save(tmp_path, 4, optimizer={"not picklable": lambda: None})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2"]


def test_unreadable_newest_falls_back_and_partials_are_removed(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    newest = _save(tmp_path, 4)
    (newest / "lora.safetensors").write_bytes(b"truncated")
    (tmp_path / ".tmp-step-6-deadbeef").mkdir()
    latest = ck.latest_checkpoint(tmp_path)
    assert latest is not None
    assert latest.step == 2
    ck.remove_partial(tmp_path)
    assert not (tmp_path / ".tmp-step-6-deadbeef").exists()


def test_same_step_again_keeps_the_first(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    _save(tmp_path, 2, losses=[9.0, 9.0])
    latest = ck.latest_checkpoint(tmp_path)
    assert latest is not None
    assert latest.losses == [0.0, 1.0]
