"""``imagineer.training.train_lora``: payload rules, and training through a real training worker.

One worker serves the module, with a 3 s soft and 20 s hard time limit. The limits are set the
way operators set them, ``IMAGINEER_TASK_SOFT_TIME_LIMIT``/``IMAGINEER_TASK_TIME_LIMIT``: tasks
carry the configured limits, so celery's ``--soft-time-limit`` flag would be ignored (the worker
warns about it). A fixture first sends a short warm-up job with generous per-message limits (a message's own
``soft_time_limit``/``time_limit`` override the worker's), so the prefork child has imported torch
and diffusers; after that, a job without its own limits meets the 3 s soft limit while training,
and a job with limits behaves like a delivery to a normal worker. The warm-up also measures the
seconds per step on this machine so the interrupted job is long enough, whatever the CPU load.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult
from celery.states import READY_STATES

from imagineer_worker.storage import read_json
from imagineer_worker.tasks.base import InvalidPayload, validate
from imagineer_worker.tasks.training import TASK_NAME, TrainLoraPayload
from imagineer_worker.testing.services import CeleryProcess, wait_for
from imagineer_worker.training.errors import TrainingInterrupted
from tests.training.helpers import tiny_model_dir, write_dataset

RESOLUTION = 32
NORMAL_LIMITS = {"soft_time_limit": 120, "time_limit": 180}  # a delivery to a normal worker


# --- payload rules (no worker) --------------------------------------------------------------------


def test_payload_defaults_are_the_diffusers_example() -> None:
    payload = validate(TrainLoraPayload, {"job_id": "j", "base_model": "runwayml/sd", "manifest": "m.json"})
    assert payload.model_dump() == {
        "job_id": "j", "base_model": "runwayml/sd", "manifest": "m.json", "steps": 100, "rank": 4,
        "learning_rate": 1e-4, "resolution": 512, "batch_size": 1, "checkpoint_every": 500, "seed": 0,
    }


@pytest.mark.parametrize(("change", "expected"), [
    ({"job_id": "../x"}, "job_id: Value error, invalid job_id '../x'"),
    ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
    ({"steps": 100_001}, "steps: Input should be less than or equal to 100000"),
    ({"steps": "10"}, "steps: Input should be a valid integer"),
    ({"steps": True}, "steps: Input should be a valid integer"),
    ({"rank": 257}, "rank: Input should be less than or equal to 256"),
    ({"learning_rate": 0}, "learning_rate: Input should be greater than 0"),
    ({"resolution": 500}, "resolution: Input should be a multiple of 8"),
    ({"resolution": 2048}, "resolution: Input should be less than or equal to 1024"),
    ({"base_model": "two words"}, "base_model: Value error, must be a model directory or hub id"),
    ({"epochs": 3}, "epochs: Extra inputs are not permitted"),
])
def test_payload_rules(change: dict[str, Any], expected: str) -> None:
    payload = {"job_id": "j", "base_model": "m", "manifest": "m.json", **change}
    with pytest.raises(InvalidPayload) as info:
        validate(TrainLoraPayload, payload)
    assert expected in str(info.value)


def test_importing_the_app_and_its_tasks_does_not_import_torch() -> None:
    code = ("import sys, imagineer_worker.celery_app as m; m.celery.loader.import_default_modules(); "
            "assert 'imagineer.training.train_lora' in m.celery.tasks; "
            "heavy = sorted({'torch', 'diffusers', 'transformers', 'peft'} & set(sys.modules)); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- through a real training worker ---------------------------------------------------------------


@dataclass
class TrainingWorker:
    proc: CeleryProcess
    app: Any
    data_dir: Path
    tiny_model: Path
    manifest: str
    seconds_per_step: float = 0.0
    warmup: dict[str, Any] | None = None  # the payload of the finished warm-up job

    def payload(self, job_id: str, **kw: Any) -> dict[str, Any]:
        return {"job_id": job_id, "base_model": str(self.tiny_model), "manifest": self.manifest,
                "resolution": RESOLUTION, **kw}

    def send(self, payload: dict[str, Any], **options: Any) -> AsyncResult:
        # Celery 5.7 copies the *client's* task limits into the message when the task is registered
        # in this process (1500/1800 s here), which would override the worker's; None means "the
        # worker's own limits" unless a test passes per-message limits.
        limits = {"soft_time_limit": None, "time_limit": None}
        return self.app.send_task(TASK_NAME, kwargs=payload, **{**limits, **options})


def _wait(result: AsyncResult, timeout: float) -> list[tuple[str, Any]]:
    """Poll until the task is done; return every (state, meta) seen, in order, without repeats."""
    seen: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = result.backend.get_task_meta(result.id)  # one read: state and info of the same moment
        state, info = meta["status"], meta["result"]
        if not seen or seen[-1][0] != state or (state == "PROGRESS" and seen[-1][1] != info):
            seen.append((state, info))
        if state in READY_STATES:  # not result.ready(): a second read could see a later state
            return seen
        time.sleep(0.05)
    raise TimeoutError(f"task {result.id} still {result.state} after {timeout:.0f}s: {seen[-3:]}")


@pytest.fixture(scope="module")
def training_worker(module_workers: Any, celery_app: Any, data_dir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> TrainingWorker:
    tiny = tiny_model_dir(tmp_path_factory.mktemp("models"))
    manifest = write_dataset(data_dir, f"squares-{uuid.uuid4().hex[:6]}")
    # --max-tasks-per-child: the child must stay warm between jobs, whatever the config says.
    proc = module_workers("training", concurrency=1,
                          env={"IMAGINEER_TASK_SOFT_TIME_LIMIT": "3", "IMAGINEER_TASK_TIME_LIMIT": "20"},
                          extra_args=["--max-tasks-per-child=100"])
    worker = TrainingWorker(proc, celery_app, data_dir, tiny, manifest)
    worker.warmup = worker.payload(f"warmup-{uuid.uuid4().hex[:6]}", steps=5, checkpoint_every=100)
    warm = worker.send(worker.warmup, **NORMAL_LIMITS)
    states = _wait(warm, 150)
    assert states[-1][0] == "SUCCESS", (states[-1], proc.log()[-3000:])
    worker.seconds_per_step = read_json(data_dir / warm.result["metadata"])["seconds_per_step"]
    return worker


def _steps_lasting(worker: TrainingWorker, seconds: float, low: int, high: int) -> int:
    return max(low, min(high, math.ceil(seconds / worker.seconds_per_step)))


@pytest.mark.slow
def test_train_through_a_worker_reports_progress_and_writes_loadable_weights(
    training_worker: TrainingWorker,
) -> None:
    w = training_worker
    job_id = f"e2e-{uuid.uuid4().hex[:8]}"
    steps = _steps_lasting(w, 2.5, 10, 400)  # long enough to see several PROGRESS updates
    result = w.send(w.payload(job_id, steps=steps, checkpoint_every=max(1, steps // 2)), **NORMAL_LIMITS)
    states = _wait(result, 120)

    assert states[-1][0] == "SUCCESS", (states[-1], w.proc.log()[-3000:])
    progress = [meta for state, meta in states if state == "PROGRESS"]
    assert progress, states
    assert all(p["job_id"] == job_id and p["total"] == steps and 1 <= p["step"] <= steps for p in progress)
    assert [p["step"] for p in progress] == sorted(p["step"] for p in progress)
    out = result.result
    assert out == {
        "job_id": job_id, "weights": f"training/{job_id}/pytorch_lora_weights.safetensors",
        "metadata": f"training/{job_id}/metadata.json", "steps": steps, "final_loss": out["final_loss"],
        "resumed_from": None, "device": "cpu", "dtype": "float32", "reused": False,
    }
    meta = read_json(w.data_dir / out["metadata"])
    assert len(meta["losses"]) == steps
    assert meta["losses"][-1] == out["final_loss"]

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(w.tiny_model)
    pipe.load_lora_weights(str(w.data_dir / "training" / job_id))
    image = pipe("a square", num_inference_steps=2, output_type="pil").images[0]
    assert image.size == (64, 64)

    # The same job delivered again answers from disk.
    again = w.send(w.payload(job_id, steps=steps, checkpoint_every=max(1, steps // 2)), **NORMAL_LIMITS)
    assert again.get(timeout=60)["reused"] is True


@pytest.mark.slow
def test_soft_time_limit_interrupts_with_a_checkpoint_and_redelivery_resumes(
    training_worker: TrainingWorker,
) -> None:
    w = training_worker
    job_id = f"soft-{uuid.uuid4().hex[:8]}"
    # Far more steps than 3 s allow, even if the warm-up ran under load: the soft limit always hits.
    steps = _steps_lasting(w, 60.0, 2000, 20000)
    payload = w.payload(job_id, steps=steps, checkpoint_every=max(1, steps // 10))
    interrupted = w.send(payload)  # the worker's own limits: soft 3 s, hard 20 s
    states = _wait(interrupted, 60)

    assert states[-1][0] == "FAILURE", (states[-1], w.proc.log()[-3000:])
    error = interrupted.result
    assert isinstance(error, TrainingInterrupted), repr(error)
    message = str(error)
    assert message.startswith("soft time limit reached at step ")
    assert message.endswith(f"deliver job {job_id} again to resume")
    job_dir = w.data_dir / "training" / job_id
    meta = read_json(job_dir / "metadata.json")
    assert meta["status"] == "interrupted"
    done = meta["completed_steps"]
    assert 0 < done < steps
    assert f"at step {done}/{steps}; checkpoint saved at step {done};" in message
    assert (job_dir / "checkpoints" / f"step-{done}" / "state.json").is_file()
    assert not (job_dir / "pytorch_lora_weights.safetensors").exists()

    # Delivered again (same limits): it resumes from that checkpoint, makes progress, and is
    # interrupted again with a later checkpoint. Resuming all the way to the end is checked without
    # a worker in tests/training (same losses as an uninterrupted run), free of this machine's speed.
    resumed = w.send(payload)
    states = _wait(resumed, 60)
    assert states[-1][0] == "FAILURE", (states[-1], w.proc.log()[-3000:])
    assert isinstance(resumed.result, TrainingInterrupted)
    progress_steps = [m["step"] for s, m in states if s == "PROGRESS"]
    assert progress_steps and all(step > done for step in progress_steps)
    again = read_json(job_dir / "metadata.json")
    assert again["resumed_from"] == done
    assert done < again["completed_steps"] < steps
    assert again["losses"][:done] == meta["losses"]
    assert (job_dir / "checkpoints" / f"step-{again['completed_steps']}" / "state.json").is_file()


@pytest.mark.slow
def test_bad_payload_and_missing_manifest_fail_once_without_retry(training_worker: TrainingWorker) -> None:
    w = training_worker
    assert w.warmup is not None
    bad = w.send(w.payload("bad-payload", resolution=60))
    missing = w.send(w.payload("no-manifest", manifest="labels/nothing/manifest.json"))
    conflict = w.send({**w.warmup, "learning_rate": 5e-4})
    for result, expected in ((bad, "resolution: Input should be a multiple of 8"),
                             (missing, "manifest labels/nothing/manifest.json not found"),
                             (conflict, f"job {w.warmup['job_id']} already has finished weights for other "
                                        "inputs (learning_rate: 0.0001 != 0.0005); use a new job_id")):
        states = _wait(result, 30)
        assert states[-1][0] == "FAILURE"
        assert isinstance(result.result, InvalidPayload)
        assert expected in str(result.result)
    # A retry is a new message, published before the final state is stored: once the failed
    # deliveries are acknowledged (gone from kombu's unacked hash), no message of these tasks may
    # be left in the broker (the queue, or a worker's unacked hash with a countdown).
    ids = [r.id.encode() for r in (bad, missing, conflict)]
    with w.app.connection_for_read() as conn:
        client = conn.default_channel.client

        def in_broker() -> list[bytes]:
            held = b" ".join([*client.lrange("training", 0, -1), *client.hvals("unacked")])
            return [i for i in ids if i in held]

        wait_for(lambda: not in_broker(), 30, "the failed tasks acknowledged, and no retry in the broker")
    log = w.proc.log()
    for result in (bad, missing, conflict):
        assert result.state == "FAILURE"
        assert log.count(f"{TASK_NAME}[{result.id}] received") == 1, "the task must not be retried"
    assert not (w.data_dir / "training" / "bad-payload").exists()
