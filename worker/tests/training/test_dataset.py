"""Manifest validation and the dataset hash (no torch involved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagineer_worker.storage import DataDir
from imagineer_worker.training.dataset import load_manifest
from imagineer_worker.training.errors import DatasetError
from tests.training.helpers import write_dataset


def _manifest(data: DataDir, name: str, items: object) -> str:
    path = data.root / "labels" / name / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataset_id": name, "items": items}))
    return str(path.relative_to(data.root))


def test_items_paths_and_hash(data: DataDir, manifest: str) -> None:
    dataset = load_manifest(data, manifest)
    assert dataset.dataset_id == "squares"
    assert len(dataset.items) == 4
    assert dataset.items[0].path == (data.root / "labels/squares/images/0.png").resolve()
    assert dataset.items[0].caption == "a square picture number 0"
    assert len(dataset.sha256) == 64
    # Same images and captions elsewhere: same hash. One caption changed: another hash.
    again = load_manifest(data, write_dataset(data.root, "copy"))
    assert again.sha256 == dataset.sha256
    captions = [f"a square picture number {i}" for i in range(4)]
    captions[2] = "a different caption"
    changed = load_manifest(data, write_dataset(data.root, "changed", captions=captions))
    assert changed.sha256 != dataset.sha256


def test_image_bytes_are_part_of_the_hash(data: DataDir, manifest: str) -> None:
    before = load_manifest(data, manifest).sha256
    path = data.root / "labels/squares/images/1.png"
    from PIL import Image

    Image.new("RGB", (48, 40), (1, 2, 3)).save(path)
    assert load_manifest(data, manifest).sha256 != before


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "has no items"),
        ([{"image": "labels/x/missing.png", "caption": "c"}], "item 0: image labels/x/missing.png not found"),
        ([{"image": "labels/squares/images/0.png"}], "item 0: 'caption' must be a string"),
        (["just a string"], "item 0 must be an object"),
        ([{"image": "../../etc/passwd", "caption": "c"}], "outside the data directory"),
    ],
)
def test_bad_manifests_name_the_problem(data: DataDir, manifest: str, items: object, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_manifest(data, _manifest(data, "bad", items))


def test_missing_malformed_and_corrupt(data: DataDir, manifest: str) -> None:
    with pytest.raises(DatasetError, match=r"manifest labels/nope\.json not found"):
        load_manifest(data, "labels/nope.json")
    (data.root / "labels" / "broken.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not readable JSON"):
        load_manifest(data, "labels/broken.json")
    corrupt = data.root / "labels" / "squares" / "images" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DatasetError, match=r"item 1: .*corrupt\.png is not a readable image"):
        load_manifest(data, _manifest(data, "corrupt", [
            {"image": "labels/squares/images/0.png", "caption": "fine"},
            {"image": str(Path("labels/squares/images/corrupt.png")), "caption": "broken"},
        ]))
