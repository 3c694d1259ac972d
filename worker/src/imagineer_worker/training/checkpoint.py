"""Resumable training state: ``checkpoints/step-<N>/`` directories, written atomically.

A checkpoint holds everything needed to continue *exactly* where training stopped: the LoRA
weights, the optimizer state (AdamW moments), the loss history and every random state. Each one
is written into a hidden temporary directory, flushed to disk and renamed into place, so a crash
or the hard time limit in the middle of a save never leaves a half checkpoint that looks
complete. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

KEEP = 2
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"
_STATE, _LORA, _OPTIMIZER, _RNG = "state.json", "lora.safetensors", "optimizer.pt", "rng.pt"


@dataclass
class Checkpoint:
    path: Path
    step: int
    losses: list[float]
    fingerprint: dict[str, Any]
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_steps(root: Path) -> list[int]:
    """Steps of the complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    steps = [int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(steps)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step}"


def remove_partial(root: Path) -> None:
    """Drop temporary directories left by a save that was killed (hard limit, OOM, node loss)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def prune(root: Path, keep: int = KEEP) -> None:
    for step in checkpoint_steps(root)[:-keep]:
        shutil.rmtree(step_dir(root, step), ignore_errors=True)


def save_checkpoint(
    root: Path,
    *,
    step: int,
    losses: list[float],
    fingerprint: dict[str, Any],
    lora: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    rng: dict[str, Any],
    keep: int = KEEP,
) -> Path:
    """Write ``root/step-<step>`` atomically and prune older ones. An existing checkpoint of the
    same step is the same state (saved periodically, then again on interruption): kept as is."""
    final = step_dir(root, step)
    if final.is_dir():
        prune(root, keep)
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{_TMP_PREFIX}step-{step}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in lora.items()}, str(tmp / _LORA))
        torch.save(optimizer, tmp / _OPTIMIZER)
        torch.save(rng, tmp / _RNG)
        state = {"step": step, "losses": losses, "fingerprint": fingerprint}
        (tmp / _STATE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        for name in (_LORA, _OPTIMIZER, _RNG, _STATE):
            _fsync(tmp / name)
        os.rename(tmp, final)
        _fsync(root)
    except BaseException:
        # Also on SoftTimeLimitExceeded: never leave the temporary directory behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(root, keep)
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    state = json.loads((path / _STATE).read_text(encoding="utf-8"))
    return Checkpoint(
        path=path,
        step=int(state["step"]),
        losses=[float(x) for x in state["losses"]],
        fingerprint=dict(state["fingerprint"]),
        lora=load_file(str(path / _LORA), device="cpu"),
        # weights_only: a checkpoint directory on a shared volume must not be able to run code.
        optimizer=torch.load(path / _OPTIMIZER, map_location="cpu", weights_only=True),
        rng=torch.load(path / _RNG, map_location="cpu", weights_only=True),
    )


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The newest checkpoint that loads; an unreadable one (disk trouble) falls back to the older."""
    for step in reversed(checkpoint_steps(root)):
        path = step_dir(root, step)
        try:
            ckpt = load_checkpoint(path)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError, pickle.UnpicklingError) as exc:
            log.warning("skipping unreadable checkpoint %s: %s", path, exc,
                        extra={"operation": "training", "checkpoint": str(path)})
            continue
        if ckpt.step != step or len(ckpt.losses) != step:
            log.warning("skipping inconsistent checkpoint %s", path,
                        extra={"operation": "training", "checkpoint": str(path)})
            continue
        return ckpt
    return None
