"""Labeling through a real labeling worker (prefork, concurrency 4): chord, captions, idempotence,
and the image gate shared with scraping (allowed formats, pixel limit) on crafted files."""

from __future__ import annotations

import hashlib
import io
import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagineer_worker import images
from imagineer_worker.testing.fixture_site import make_large_png, make_png
from imagineer_worker.testing.services import CeleryProcess

TIMEOUT = 60


@pytest.fixture(scope="module")
def labeling_worker(module_workers: Any) -> CeleryProcess:
    return module_workers("labeling", concurrency=4)


def _image(index: int, width: int, height: int, fmt: str = "PNG") -> bytes:
    img = Image.new("RGB", (width, height), (10 * index % 256, 255 - 20 * index % 256, 7 * index % 256))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _write_dataset(data_dir: Path, dataset_id: str, blobs: list[tuple[bytes, str | None]],
                   ext: str = "png") -> list[dict[str, Any]]:
    """A scrape as the scraping task writes it: images named by sha256 plus manifest.json."""
    root = data_dir / "scrapes" / dataset_id
    (root / "images").mkdir(parents=True)
    items = []
    for blob, alt in blobs:
        sha = hashlib.sha256(blob).hexdigest()
        file = f"images/{sha}.{ext}"
        (root / file).write_bytes(blob)
        items.append({"file": file, "path": f"scrapes/{dataset_id}/{file}", "sha256": sha,
                      "url": f"http://127.0.0.1/{sha}", "content_type": "image/png", "bytes": len(blob),
                      "width": None, "height": None, "alt": alt})
    manifest = {"dataset_id": dataset_id, "created_at": "2026-01-01T00:00:00+00:00",
                "source": {"url": "http://127.0.0.1/gallery.html"}, "items": items, "skipped": []}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return items


def _label(celery_app: Any, **kwargs: Any) -> Any:
    return celery_app.send_task("imagineer.labeling.label_dataset", kwargs=kwargs)


def _mtimes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.iterdir())}


def test_label_dataset_end_to_end_and_idempotent(labeling_worker: CeleryProcess, celery_app: Any,
                                                 data_dir: Path) -> None:
    dataset_id = f"ds-{uuid.uuid4().hex[:8]}"
    sizes = [(16 + 8 * i, 20 + 4 * i) for i in range(10)]
    alts: list[str | None] = ["alt zero", "alt one", "alt two", "alt three", "alt four", "   ",
                              None, None, None, None]
    blobs = [(_image(i, w, h), alts[i]) for i, (w, h) in enumerate(sizes)]
    items = _write_dataset(data_dir, dataset_id, blobs)
    sha = [item["sha256"] for item in items]
    annotations = {
        sha[0]: "annotated by sha",                 # beats the alt text
        items[6]["file"]: "annotated by file",      # images/<sha>.png
        Path(items[7]["file"]).name: "annotated by name",
        "no-such-image.png": "ignored",
    }

    result = _label(celery_app, dataset_id=dataset_id, annotations=annotations, batch_size=3)
    summary = result.get(timeout=TIMEOUT)

    assert summary["batches"] == math.ceil(10 / 3)
    assert summary["manifest"] == f"labels/{dataset_id}/manifest.json"
    assert (summary["labeled"], summary["unlabeled"]) == (7, 3)
    assert (summary["written"], summary["unchanged"], summary["errors"]) == (10, 0, [])

    labels = data_dir / "labels" / dataset_id
    assert len(list((labels / "items").glob("*.json"))) == 10
    manifest = json.loads((labels / "manifest.json").read_text())
    assert manifest["dataset_id"] == dataset_id
    assert manifest["unlabeled"] == 3
    by_sha = {entry["sha256"]: entry for entry in manifest["items"]}
    expected = {
        0: ("annotated by sha", "annotation"), 1: ("alt one", "alt"), 2: ("alt two", "alt"),
        3: ("alt three", "alt"), 4: ("alt four", "alt"), 6: ("annotated by file", "annotation"),
        7: ("annotated by name", "annotation"),
    }
    assert set(by_sha) == {sha[i] for i in expected}
    for i, (caption, source) in expected.items():
        entry = by_sha[sha[i]]
        assert (entry["caption"], entry["caption_source"]) == (caption, source)
        assert (entry["width"], entry["height"], entry["format"]) == (*sizes[i], "PNG")
        assert entry["image"] == items[i]["path"]
        assert (data_dir / entry["image"]).is_file()
    # The blank alt text and images without any caption source are unlabeled, not captioned "".
    record5 = json.loads((labels / "items" / f"{sha[5]}.json").read_text())
    assert (record5["caption"], record5["caption_source"], record5["mode"]) == (None, None, "RGB")

    # Same input again: nothing is rewritten, not even the manifest.
    items_before, manifest_before = _mtimes(labels / "items"), (labels / "manifest.json").stat().st_mtime_ns
    again = _label(celery_app, dataset_id=dataset_id, annotations=annotations, batch_size=3)
    again = again.get(timeout=TIMEOUT)
    assert (again["written"], again["unchanged"], again["manifest_written"]) == (0, 10, False)
    assert _mtimes(labels / "items") == items_before
    assert (labels / "manifest.json").stat().st_mtime_ns == manifest_before

    # A default caption fills exactly the three uncaptioned images; only their records change.
    third = _label(celery_app, dataset_id=dataset_id, annotations=annotations, batch_size=4,
                   default_caption="an image").get(timeout=TIMEOUT)
    assert third["batches"] == 3
    assert (third["written"], third["unchanged"], third["labeled"], third["unlabeled"]) == (3, 7, 10, 0)
    manifest = json.loads((labels / "manifest.json").read_text())
    defaults = {e["sha256"] for e in manifest["items"] if e["caption_source"] == "default"}
    assert defaults == {sha[5], sha[8], sha[9]}


def test_broken_images_are_item_errors(labeling_worker: CeleryProcess, celery_app: Any,
                                       data_dir: Path) -> None:
    dataset_id = f"broken-{uuid.uuid4().hex[:8]}"
    good = [(make_png((1, 2, 3), 32), "good one"), (_image(3, 40, 30, "JPEG"), "a jpeg")]
    truncated = (make_png((9, 9, 9), 48)[:60], "truncated")
    tampered = (make_png((4, 5, 6), 24), "tampered")
    items = _write_dataset(data_dir, dataset_id, [*good, truncated, tampered])
    # The file changed on disk after the scrape recorded its hash.
    (data_dir / items[3]["path"]).write_bytes(make_png((6, 5, 4), 24))

    summary = _label(celery_app, dataset_id=dataset_id, batch_size=2).get(timeout=TIMEOUT)

    assert summary["batches"] == 2
    assert (summary["labeled"], summary["unlabeled"], summary["written"]) == (2, 0, 2)
    errors = {e["sha256"]: e["error"] for e in summary["errors"]}
    assert set(errors) == {items[2]["sha256"], items[3]["sha256"]}
    assert "sha256 mismatch" in errors[items[3]["sha256"]]
    manifest = json.loads((data_dir / summary["manifest"]).read_text())
    assert {e["caption"]: e["format"] for e in manifest["items"]} == {"good one": "PNG", "a jpeg": "JPEG"}
    assert len(manifest["errors"]) == 2
    assert not (data_dir / "labels" / dataset_id / "items" / f"{items[2]['sha256']}.json").exists()


def test_bad_requests_fail_without_retry(labeling_worker: CeleryProcess, celery_app: Any) -> None:
    unknown = _label(celery_app, dataset_id="never-scraped")
    traversal = _label(celery_app, dataset_id="../etc")
    too_big = _label(celery_app, dataset_id="never-scraped", batch_size=1000)

    for result, needle in ((unknown, "never-scraped"), (traversal, "dataset_id"), (too_big, "batch_size")):
        result.get(timeout=TIMEOUT, propagate=False)
        assert result.state == "FAILURE"
        assert type(result.result).__name__ == "InvalidPayload"
        assert needle in str(result.result)
        assert not result.retries
    assert "no scrape manifest" in str(unknown.result)
    assert labeling_worker.log().count(f"[{unknown.id}] received") == 1


def test_decompression_bombs_are_item_errors_and_the_worker_keeps_consuming(
        labeling_worker: CeleryProcess, celery_app: Any, data_dir: Path) -> None:
    # Crafted in the test, streamed through zlib (never allocated as pixels): a real 30,000 x
    # 30,000 bomb (~110 KB, 900 M pixels), one row over the worker's limit, and exactly at it.
    width = 4096
    at_limit, over_limit = (width, images.MAX_IMAGE_PIXELS // width), (width, images.MAX_IMAGE_PIXELS // width + 1)
    dataset_id = f"bombs-{uuid.uuid4().hex[:8]}"
    items = _write_dataset(data_dir, dataset_id, [
        (make_large_png(30_000, 30_000), "a bomb"),
        (make_large_png(*over_limit), "one row too many"),
        (make_large_png(*at_limit), "exactly at the limit"),
        (make_png((1, 2, 3), 32), "a small image"),
    ])

    result = _label(celery_app, dataset_id=dataset_id, batch_size=2)
    summary = result.get(timeout=TIMEOUT)

    assert result.state == "SUCCESS"
    assert (summary["labeled"], summary["unlabeled"], summary["written"]) == (2, 0, 2)
    errors = {e["sha256"]: e["error"] for e in summary["errors"]}
    assert set(errors) == {items[0]["sha256"], items[1]["sha256"]}
    limit = f"over the limit of {images.MAX_IMAGE_PIXELS:,} pixels per image"
    assert errors[items[0]["sha256"]].startswith(f"ImageTooLarge: image is 30000x30000 pixels (900,000,000), {limit}")
    assert errors[items[1]["sha256"]].startswith(
        f"ImageTooLarge: image is {over_limit[0]}x{over_limit[1]} pixels")
    manifest = json.loads((data_dir / summary["manifest"]).read_text())
    sizes = {e["caption"]: (e["width"], e["height"]) for e in manifest["items"]}
    assert sizes == {"exactly at the limit": at_limit, "a small image": (32, 32)}
    for bomb in items[:2]:
        assert not (data_dir / "labels" / dataset_id / "items" / f"{bomb['sha256']}.json").exists()

    # Logged as a warning naming the size; the same worker then labels the next dataset.
    log = labeling_worker.log()
    assert any('"level": "WARNING"' in line and "30000x30000" in line and items[0]["file"] in line
               for line in log.splitlines())
    next_id = f"after-bombs-{uuid.uuid4().hex[:8]}"
    _write_dataset(data_dir, next_id, [(make_png((7, 8, 9), 16), "next")])
    after = _label(celery_app, dataset_id=next_id).get(timeout=TIMEOUT)
    assert (after["labeled"], after["errors"]) == (1, [])
    assert labeling_worker.proc is not None and labeling_worker.proc.poll() is None
    assert "WorkerLostError" not in labeling_worker.log()


def test_formats_off_the_scraping_allow_list_are_item_errors(labeling_worker: CeleryProcess, celery_app: Any,
                                                             data_dir: Path) -> None:
    # Labeling now accepts exactly what scraping accepts: a valid PPM or ICO never gets near Pillow's
    # other plugins, while every allowed format is labeled as before.
    dataset_id = f"formats-{uuid.uuid4().hex[:8]}"
    items = _write_dataset(data_dir, dataset_id, [
        (_image(1, 12, 10, "PPM"), "a ppm"), (_image(2, 16, 16, "ICO"), "an icon"),
        *((_image(3 + i, 12, 10, fmt), fmt) for i, fmt in enumerate(("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"))),
    ])
    summary = _label(celery_app, dataset_id=dataset_id, batch_size=4).get(timeout=TIMEOUT)
    errors = {e["sha256"]: e["error"] for e in summary["errors"]}
    assert set(errors) == {items[0]["sha256"], items[1]["sha256"]}
    assert all(e.startswith("InvalidImage: not a valid image: cannot identify image file") for e in errors.values())
    manifest = json.loads((data_dir / summary["manifest"]).read_text())
    assert {e["caption"]: e["format"] for e in manifest["items"]} == {
        fmt: fmt for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")}
