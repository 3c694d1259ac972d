"""Labeling: turn a scraped dataset into the training manifest (images + captions).

``label_dataset`` reads ``scrapes/<id>/manifest.json`` and replaces itself with a chord::

    group(label_batch per batch of batch_size images) | finalize_labels

so the labeling queue's processes share the work while the caller's ``AsyncResult`` (same task
id, kept by ``replace``) still yields the final summary.

Each ``label_batch`` checks every image (:func:`imagineer_worker.images.inspect_image`: the
allowed formats, the pixel limit from the header, then Pillow ``verify``; and the sha256
recomputed from the file: a scrape may be corrupted on disk) and writes one record per image to
``labels/<id>/items/<sha256>.json``. Records hold no timestamps, so re-labeling unchanged input
finds an identical record and leaves the file alone ("unchanged"): re-runs are cheap and do not
touch mtimes, which the purge's age rule reads. ``finalize_labels`` merges the records into
``labels/<id>/manifest.json``, the training task's input.

Caption precedence, per image: annotation (by sha256, by manifest ``file``, or by its base name)
> scraped ``alt`` text > ``default_caption`` > none. Images without a caption stay out of the
training manifest and are counted as ``unlabeled``.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from celery import group, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import Field, field_validator

from imagineer_worker import images
from imagineer_worker.storage import (
    DataDir,
    UnsafePathError,
    atomic_write_json,
    inside,
    read_json,
    safe_id,
)
from imagineer_worker.tasks import names
from imagineer_worker.tasks.base import ImagineerTask, InvalidPayload, Payload, validate

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def _check_id(value: str) -> str:
    try:
        return safe_id(value, "dataset_id")
    except UnsafePathError as exc:
        raise ValueError(str(exc)) from None


def _clean(text: str | None) -> str | None:
    """Blank captions count as no caption (an empty alt attribute is common on scraped pages)."""
    if text is None:
        return None
    text = text.strip()
    return text or None


class LabelDatasetPayload(Payload):
    dataset_id: str
    annotations: dict[str, str] | None = None
    batch_size: int = Field(8, ge=1, le=256)
    default_caption: str | None = None

    _id = field_validator("dataset_id")(_check_id)


class BatchItem(Payload):
    """The part of a scrape manifest item a batch needs (keeps the messages small)."""

    file: str
    path: str  # relative to data_dir
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    alt: str | None = None


class LabelBatchPayload(Payload):
    dataset_id: str
    items: list[BatchItem]
    annotations: dict[str, str] = Field(default_factory=dict)
    default_caption: str | None = None

    _id = field_validator("dataset_id")(_check_id)


class FinalizePayload(Payload):
    dataset_id: str

    _id = field_validator("dataset_id")(_check_id)


def _read_scrape_manifest(data: DataDir, dataset_id: str) -> dict[str, Any]:
    path = data.scrape_dir(dataset_id) / MANIFEST
    if not path.is_file():
        raise InvalidPayload(
            f"unknown dataset {dataset_id!r}: no scrape manifest at scrapes/{dataset_id}/{MANIFEST} "
            "(wrong id, or the scrape has not finished)"
        )
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as exc:
        raise InvalidPayload(f"dataset {dataset_id!r}: unreadable scrape manifest: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("items"), list):
        raise InvalidPayload(f"dataset {dataset_id!r}: scrape manifest has no 'items' list")
    return manifest


def _batch_items(dataset_id: str, raw_items: list[Any]) -> list[BatchItem]:
    """Project the manifest's items onto ``BatchItem``; one entry per sha256 (first wins)."""
    items: list[BatchItem] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_items):
        if not isinstance(raw, dict):
            raise InvalidPayload(f"dataset {dataset_id!r}: manifest item {index} is not an object")
        file = raw.get("file")
        path = raw.get("path") or (f"scrapes/{dataset_id}/{file}" if file else None)
        try:
            item = BatchItem.model_validate({"file": file, "path": path, "sha256": raw.get("sha256"),
                                             "alt": raw.get("alt")})
        except ValueError as exc:
            raise InvalidPayload(f"dataset {dataset_id!r}: manifest item {index} is invalid: {exc}") from None
        if item.sha256 not in seen:
            seen.add(item.sha256)
            items.append(item)
    return items


def _annotation_keys(item: BatchItem) -> tuple[str, ...]:
    return (item.sha256, item.file, PurePosixPath(item.file).name)


def _caption(
    item: BatchItem, annotations: dict[str, str], default: str | None
) -> tuple[str | None, str | None]:
    for key in _annotation_keys(item):
        text = _clean(annotations.get(key))
        if text is not None:
            return text, "annotation"
    if (text := _clean(item.alt)) is not None:
        return text, "alt"
    if (text := _clean(default)) is not None:
        return text, "default"
    return None, None


@shared_task(name=names.LABEL_DATASET, base=ImagineerTask, bind=True)
def label_dataset(self: ImagineerTask, **payload: Any) -> Any:
    """Validate, split the dataset into batches and replace this task with the labeling chord."""
    p = validate(LabelDatasetPayload, payload)
    data = self.data
    manifest = _read_scrape_manifest(data, p.dataset_id)
    items = _batch_items(p.dataset_id, manifest["items"])
    annotations = p.annotations or {}

    batches = [items[i:i + p.batch_size] for i in range(0, len(items), p.batch_size)]
    known = {key for item in items for key in _annotation_keys(item)}
    unmatched = sorted(set(annotations) - known)
    log.info(
        "labeling dataset %s: %d images in %d batches", p.dataset_id, len(items), len(batches),
        extra={"operation": "label", "dataset_id": p.dataset_id, "images": len(items),
               "batches": len(batches), "batch_size": p.batch_size},
    )
    if unmatched:
        log.warning(
            "dataset %s: %d annotation keys match no image (e.g. %r)", p.dataset_id, len(unmatched),
            unmatched[0], extra={"operation": "label", "dataset_id": p.dataset_id,
                                 "unmatched_annotations": unmatched[:20]},
        )

    finalize = finalize_labels.s(dataset_id=p.dataset_id)
    if not batches:  # a chord needs a header; an empty dataset still gets an (empty) manifest
        raise self.replace(finalize.clone(args=([],)))
    header = group(
        label_batch.s(
            dataset_id=p.dataset_id,
            items=[item.model_dump() for item in batch],
            # Only the annotations this batch can use travel with it.
            annotations={
                k: annotations[k] for item in batch for k in _annotation_keys(item) if k in annotations
            },
            default_caption=p.default_caption,
        )
        for batch in batches
    )
    raise self.replace(header | finalize)


def _inspect(data: DataDir, dataset_id: str, item: BatchItem) -> dict[str, Any]:
    """Read and check one image; raises ``ValueError``/``OSError``-like errors for a bad item.

    A file that is not an allowed image, or declares more pixels than
    ``images.MAX_IMAGE_PIXELS`` (a decompression bomb), raises ``images.InvalidImage`` /
    ``images.ImageTooLarge`` before any pixel is decoded: the scrape may predate the limit, or the
    file may have been placed in the data directory by other means.
    """
    path = inside(data.scrape_dir(dataset_id), data.root / item.path)
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != item.sha256:
        raise ValueError(f"sha256 mismatch: file has {digest}, manifest says {item.sha256}")
    # The same gate as scraping: allowed formats only, the header's size checked against the
    # pixel limit before verify() (structure and checksums, without decoding every pixel).
    info = images.inspect_image(blob)
    return {
        "image": path.relative_to(data.root.resolve()).as_posix(),
        "width": info.width,
        "height": info.height,
        "format": info.format,
        "mode": info.mode,
    }


@shared_task(name=names.LABEL_BATCH, base=ImagineerTask, bind=True)
def label_batch(self: ImagineerTask, **payload: Any) -> dict[str, Any]:
    """Check and label one batch; a bad image is an item error, never a failed batch."""
    p = validate(LabelBatchPayload, payload)
    data = self.data
    items_dir = data.labels_dir(p.dataset_id) / "items"
    result: dict[str, Any] = {"items": len(p.items), "written": 0, "unchanged": 0,
                              "errors": [], "labeled": []}
    for item in p.items:
        try:
            facts = _inspect(data, p.dataset_id, item)
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:  # Pillow raises many types for broken files
            error = f"{type(exc).__name__}: {exc}"
            result["errors"].append({"file": item.file, "sha256": item.sha256, "error": error})
            log.warning("dataset %s: cannot label %s: %s", p.dataset_id, item.file, error,
                        extra={"operation": "label", "dataset_id": p.dataset_id, "file": item.file,
                               "status": "error"})
            continue
        caption, source = _caption(item, p.annotations, p.default_caption)
        record = {"dataset_id": p.dataset_id, "file": item.file, "sha256": item.sha256, **facts,
                  "caption": caption, "caption_source": source}
        target = items_dir / f"{item.sha256}.json"
        try:
            existing = read_json(target) if target.is_file() else None
        except (OSError, ValueError):
            existing = None  # a damaged record is simply rewritten
        if existing == record:
            result["unchanged"] += 1
        else:
            atomic_write_json(target, record)
            result["written"] += 1
        result["labeled"].append(item.sha256)
    log.info(
        "dataset %s: batch of %d: %d written, %d unchanged, %d errors", p.dataset_id, len(p.items),
        result["written"], result["unchanged"], len(result["errors"]),
        extra={"operation": "label", "dataset_id": p.dataset_id, "written": result["written"],
               "unchanged": result["unchanged"], "errors": len(result["errors"])},
    )
    return result


@shared_task(name=names.FINALIZE_LABELS, base=ImagineerTask, bind=True)
def finalize_labels(
    self: ImagineerTask, batch_results: list[dict[str, Any]], **payload: Any
) -> dict[str, Any]:
    """Merge this run's item records into the training manifest (rewritten only when it changed).

    Only the records the batches just confirmed are used, not every file in ``items/``: a record
    left by an earlier run for an image that is now gone or broken must not reach training.
    """
    p = validate(FinalizePayload, payload)
    data = self.data
    labels = data.labels_dir(p.dataset_id)
    entries: list[dict[str, Any]] = []
    unlabeled = written = unchanged = 0
    errors: list[dict[str, Any]] = []
    for batch in batch_results:
        written += batch["written"]
        unchanged += batch["unchanged"]
        errors.extend(batch["errors"])
        for sha in batch["labeled"]:
            record = read_json(labels / "items" / f"{sha}.json")
            if record["caption"] is None:
                unlabeled += 1
                continue
            entries.append({k: record[k] for k in ("image", "caption", "caption_source", "sha256",
                                                   "width", "height", "format")})

    body = {"dataset_id": p.dataset_id, "items": entries, "unlabeled": unlabeled, "errors": errors}
    path = labels / MANIFEST
    try:
        previous = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        previous = None
    manifest_changed = not (isinstance(previous, dict)
                            and {k: v for k, v in previous.items() if k != "created_at"} == body)
    if manifest_changed:
        atomic_write_json(path, {**body, "created_at": datetime.now(UTC).isoformat()})

    summary = {
        "dataset_id": p.dataset_id,
        "manifest": f"labels/{p.dataset_id}/{MANIFEST}",
        "batches": len(batch_results),
        "labeled": len(entries),
        "unlabeled": unlabeled,
        "written": written,
        "unchanged": unchanged,
        "errors": errors,
        "manifest_written": manifest_changed,
    }
    log.info(
        "dataset %s labeled: %d captioned, %d without caption, %d errors", p.dataset_id, len(entries),
        unlabeled, len(errors),
        extra={"operation": "label", "dataset_id": p.dataset_id, "labeled": len(entries),
               "unlabeled": unlabeled, "errors": len(errors), "written": written,
               "unchanged": unchanged, "manifest": summary["manifest"]},
    )
    return summary


__all__ = ["finalize_labels", "label_batch", "label_dataset"]
