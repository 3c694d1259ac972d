"""LoRA training on the tiny model: real steps, real files, resume and reuse behaviour."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from billiard.pool import soft_timeout_sighandler
from celery.exceptions import SoftTimeLimitExceeded
from safetensors.torch import load_file

from imagineer_worker.storage import DataDir, read_json
from imagineer_worker.training.checkpoint import checkpoint_steps
from imagineer_worker.training.errors import BaseModelError, JobBusy, JobConflict, TrainingInterrupted
from imagineer_worker.training.job import JobFiles, TrainConfig, job_lock
from imagineer_worker.training.lora import train_lora
from imagineer_worker.training.softlimit import soft_limit_deferred

RESOLUTION = 32  # fast; the UNet and VAE take any multiple of 8 here


def _config(tiny_model: Path, manifest: str, job_id: str, **kw: object) -> TrainConfig:
    base = {"steps": 4, "rank": 4, "resolution": RESOLUTION, "checkpoint_every": 2, "learning_rate": 1e-3}
    base.update(kw)
    return TrainConfig(job_id=job_id, base_model=str(tiny_model), manifest=manifest, **base)  # type: ignore[arg-type]


def _generate(tiny_model: Path, lora_dir: Path | None) -> np.ndarray:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
    out = pipe("a square picture", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np")
    return np.asarray(out.images[0])


def test_trains_and_writes_loadable_weights(tiny_model: Path, data: DataDir, manifest: str) -> None:
    seen: list[tuple[int, int, float]] = []
    result = train_lora(_config(tiny_model, manifest, "basic"), data=data,
                        progress=lambda s, t, loss: seen.append((s, t, loss)))

    job_dir = data.root / "training" / "basic"
    assert result.weights == job_dir / "pytorch_lora_weights.safetensors"
    assert (result.steps, result.resumed_from, result.device, result.reused) == (4, None, "cpu", False)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4]
    assert all(t == 4 for _, t, _ in seen)

    meta = read_json(result.metadata)
    assert meta["status"] == "completed"
    assert len(meta["losses"]) == 4
    assert all(np.isfinite(meta["losses"]))
    assert meta["losses"] == [loss for _, _, loss in seen]
    assert meta["final_loss"] == result.final_loss == meta["losses"][-1]
    assert meta["dataset_sha256"] == meta["fingerprint"]["dataset_sha256"]
    assert meta["hyperparameters"]["rank"] == 4
    assert meta["hyperparameters"]["optimizer"] == {"name": "AdamW", "betas": [0.9, 0.999],
                                                    "weight_decay": 0.01, "eps": 1e-08}
    assert meta["trainable_parameters"] == 2048  # rank 4 on q/k/v/out of the tiny UNet's 8 attentions
    assert (meta["device"], meta["dtype"], meta["prediction_type"]) == ("cpu", "float32", "epsilon")
    assert meta["started_at"] <= meta["finished_at"]
    assert meta["resumed_from"] is None
    # Periodic checkpoints at 2 only: the last step writes the final weights instead.
    assert checkpoint_steps(job_dir / "checkpoints") == [2]

    weights = load_file(str(result.weights))
    assert all(k.startswith("unet.") for k in weights)
    assert any(".lora.up." in k or "lora_B" in k for k in weights)
    assert sum(v.numel() for v in weights.values()) == 2048
    # A fresh pipeline loads the LoRA and the LoRA changes what it generates.
    with_lora = _generate(tiny_model, job_dir)
    assert with_lora.shape == (64, 64, 3)
    assert np.abs(with_lora - _generate(tiny_model, None)).max() > 0


def test_soft_time_limit_saves_a_checkpoint_and_a_new_delivery_resumes(
    tiny_model: Path, data: DataDir, manifest: str
) -> None:
    reference = read_json(train_lora(_config(tiny_model, manifest, "reference"), data=data).metadata)

    def soft_limit_at_step_3(step: int, total: int, loss: float) -> None:
        if step == 3:
            raise SoftTimeLimitExceeded()

    config = _config(tiny_model, manifest, "soft")
    with pytest.raises(TrainingInterrupted) as caught:
        train_lora(config, data=data, progress=soft_limit_at_step_3)
    assert str(caught.value) == ("soft time limit reached at step 3/4; checkpoint saved at step 3; "
                                 "deliver job soft again to resume")
    files = JobFiles(data.root / "training" / "soft")
    assert checkpoint_steps(files.checkpoints) == [2, 3]
    assert not files.weights.exists()
    interrupted = read_json(files.metadata)
    assert interrupted["status"] == "interrupted"
    assert interrupted["completed_steps"] == 3
    assert len(interrupted["losses"]) == 3

    seen: list[int] = []
    result = train_lora(config, data=data, progress=lambda s, t, loss: seen.append(s))
    assert result.resumed_from == 3
    assert seen == [4]
    meta = read_json(result.metadata)
    assert meta["status"] == "completed"
    assert meta["resumed_from"] == 3
    # Every random state was restored: the losses are those of the uninterrupted run.
    assert meta["losses"] == pytest.approx(reference["losses"], rel=1e-4)
    assert load_file(str(result.weights)).keys() == load_file(
        str(data.root / "training" / "reference" / "pytorch_lora_weights.safetensors")).keys()


def test_crash_resumes_from_the_last_periodic_checkpoint(tiny_model: Path, data: DataDir, manifest: str) -> None:
    def crash_at_step_3(step: int, total: int, loss: float) -> None:
        if step == 3:
            raise RuntimeError("node lost")

    config = _config(tiny_model, manifest, "crash")
    with pytest.raises(RuntimeError, match="node lost"):
        train_lora(config, data=data, progress=crash_at_step_3)
    files = JobFiles(data.root / "training" / "crash")
    assert read_json(files.metadata)["status"] == "failed"
    assert checkpoint_steps(files.checkpoints) == [2]  # nothing saved at 3: only the soft limit does

    seen: list[int] = []
    result = train_lora(config, data=data, progress=lambda s, t, loss: seen.append(s))
    assert (result.resumed_from, seen) == (2, [3, 4])
    reference = read_json(train_lora(_config(tiny_model, manifest, "crash-ref"), data=data).metadata)
    assert read_json(result.metadata)["losses"] == pytest.approx(reference["losses"], rel=1e-4)


def test_finished_job_delivered_again_is_not_retrained(tiny_model: Path, data: DataDir, manifest: str) -> None:
    config = _config(tiny_model, manifest, "twice", steps=2)
    first = train_lora(config, data=data)
    mtime = first.weights.stat().st_mtime_ns
    calls: list[int] = []
    again = train_lora(config, data=data, progress=lambda s, t, loss: calls.append(s))
    assert calls == []
    assert again.reused is True
    assert (again.weights, again.steps, again.final_loss) == (first.weights, first.steps, first.final_loss)
    assert first.weights.stat().st_mtime_ns == mtime

    # The same id with other inputs is refused, never mixed into the finished job.
    with pytest.raises(JobConflict, match=r"job twice already has finished weights .*learning_rate"):
        train_lora(dataclasses.replace(config, learning_rate=5e-4), data=data)


def test_v_prediction_models_train(tiny_model: Path, data: DataDir, manifest: str, tmp_path: Path) -> None:
    model = tmp_path / "tiny-v"
    shutil.copytree(tiny_model, model)
    scheduler = model / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps({**json.loads(scheduler.read_text()), "prediction_type": "v_prediction"}))
    result = train_lora(_config(model, manifest, "vpred", steps=2), data=data)
    meta = read_json(result.metadata)
    assert meta["prediction_type"] == "v_prediction"
    assert len(meta["losses"]) == 2


def test_unknown_base_model_and_busy_job(tiny_model: Path, data: DataDir, manifest: str, tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match=r"base_model .*nowhere.* cannot be loaded"):
        train_lora(_config(tmp_path / "nowhere", manifest, "nomodel"), data=data)
    files = JobFiles(data.training_dir("busy"))
    with job_lock(files, "busy"), pytest.raises(JobBusy, match="job busy is being trained by another process"):
        train_lora(_config(tiny_model, manifest, "busy"), data=data)


def _update_with_soft_limit_arriving(events: list[str]) -> None:
    with soft_limit_deferred():
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)  # without the deferral the handler would raise here
        events.append("update finished")


def test_soft_limit_waits_for_the_parameter_update() -> None:
    previous = signal.signal(signal.SIGUSR1, soft_timeout_sighandler)  # what billiard installs
    try:
        events: list[str] = []
        with pytest.raises(SoftTimeLimitExceeded):
            _update_with_soft_limit_arriving(events)
        assert events == ["update finished"]
        assert signal.getsignal(signal.SIGUSR1) is soft_timeout_sighandler
        with soft_limit_deferred():
            events.append("no signal, nothing raised")
        assert events[-1] == "no signal, nothing raised"
    finally:
        signal.signal(signal.SIGUSR1, previous)
