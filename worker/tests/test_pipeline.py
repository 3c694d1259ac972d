"""The whole job through one worker per queue, as deployed: scrape -> label -> train -> maintenance."""

from __future__ import annotations

import json

import pytest

from imagineer_worker.training.tiny import build_tiny_pipeline

QUEUES = {"default": 2, "training": 1, "scraping": 2, "labeling": 4}


@pytest.fixture(scope="module")
def fleet(module_workers):
    return {q: module_workers(q, name=f"fleet-{q}", concurrency=n) for q, n in QUEUES.items()}


def _run(app, task, timeout=300, **kwargs):
    result = app.send_task(task, kwargs=kwargs)
    value = result.get(timeout=timeout)
    return result, value


def _task_log_lines(proc, task_id):
    lines = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("task_id") == task_id]


def test_each_step_runs_on_its_queue_and_feeds_the_next(fleet, celery_app, fixture_site, data_dir, tmp_path):
    model = build_tiny_pipeline(tmp_path / "tiny-sd")

    scrape, scraped = _run(celery_app, "imagineer.scraping.scrape_dataset", dataset_id="pipeline",
                           page_url=f"{fixture_site.base_url}/gallery.html")
    label, labeled = _run(celery_app, "imagineer.labeling.label_dataset", dataset_id="pipeline",
                          batch_size=2)
    train, trained = _run(celery_app, "imagineer.training.train_lora", job_id="pipeline-lora",
                          base_model=str(model), manifest=labeled["manifest"], steps=4, resolution=64,
                          checkpoint_every=2)
    disk, sample = _run(celery_app, "imagineer.maintenance.record_disk_usage")

    assert scraped["images"] == 4
    assert labeled["labeled"] == 4
    assert trained["steps"] == 4
    assert trained["weights"] == "training/pipeline-lora/pytorch_lora_weights.safetensors"
    assert (data_dir / trained["weights"]).stat().st_size > 0
    assert sample["areas"]["training"]["bytes"] > 0 and sample["areas"]["scrapes"]["files"] >= 4

    for result, queue in ((scrape, "scraping"), (train, "training"), (disk, "default")):
        assert result.worker.startswith(f"fleet-{queue}@"), (result.worker, queue)
        lines = _task_log_lines(fleet[queue], result.id)
        assert lines, f"no JSON log line carries task_id {result.id}"
        assert {e["queue"] for e in lines} == {queue}
        assert {e["task_name"] for e in lines} == {result.name}
    for other in ("default", "training", "scraping"):
        assert not _task_log_lines(fleet[other], label.id)
