"""The training manifest: validated up front so a bad dataset fails before any model loads.

A manifest is JSON::

    {"dataset_id": "cats", "items": [{"image": "labels/cats/img/1.png", "caption": "a cat"}, ...]}

``image`` is relative to the data directory (the same PVC the scraping and labeling queues fill)
and must stay inside it. Other keys of an item are kept by the labeling pipeline and ignored here.
The dataset hash covers every image's bytes and caption, in order: the same hash means the same
training input, which is what makes a finished job safe to reuse on a second delivery.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from imagineer_worker.storage import DataDir, UnsafePathError
from imagineer_worker.training.errors import DatasetError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Item:
    path: Path
    caption: str
    sha256: str


@dataclass(frozen=True)
class Dataset:
    dataset_id: str
    manifest: Path
    items: tuple[Item, ...]
    sha256: str

    def summary(self) -> dict[str, Any]:
        return {"dataset_id": self.dataset_id, "manifest": str(self.manifest), "items": len(self.items),
                "sha256": self.sha256}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_image(path: Path, where: str) -> None:
    """Decode the header and structure (not the pixels) so a corrupt file fails now, not at step 900."""
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{where}: {path} is not a readable image ({exc})") from None


def load_manifest(data: DataDir, manifest: str | Path) -> Dataset:
    """Read, validate and hash a manifest given relative to the data directory.

    Raises ``DatasetError`` (missing, malformed or empty manifest; missing or unreadable image)
    or ``UnsafePathError`` (a path leaving the data directory).
    """
    path = data.resolve(manifest)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"manifest {manifest} not found in the data directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"manifest {manifest} is not readable JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("items"), list):
        raise DatasetError(f"manifest {manifest} must be an object with an 'items' list")
    if not raw["items"]:
        raise DatasetError(f"manifest {manifest} has no items: nothing to train on")
    dataset_id = raw.get("dataset_id", path.parent.name)
    if not isinstance(dataset_id, str):
        raise DatasetError(f"manifest {manifest}: dataset_id must be a string")

    digest = hashlib.sha256()
    items: list[Item] = []
    for index, entry in enumerate(raw["items"]):
        where = f"manifest {manifest} item {index}"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where} must be an object with 'image' and 'caption'")
        image, caption = entry.get("image"), entry.get("caption")
        if not isinstance(image, str) or not image:
            raise DatasetError(f"{where}: 'image' must be a path relative to the data directory")
        if not isinstance(caption, str):
            raise DatasetError(f"{where}: 'caption' must be a string")
        try:
            image_path = data.resolve(image)
        except UnsafePathError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        if not image_path.is_file():
            raise DatasetError(f"{where}: image {image} not found in the data directory")
        _check_image(image_path, where)
        image_hash = _file_sha256(image_path)
        # Length-prefixed caption: no caption can forge the boundary to the next item.
        digest.update(f"{image_hash}:{len(caption.encode())}:".encode() + caption.encode())
        items.append(Item(path=image_path, caption=caption, sha256=image_hash))
    return Dataset(dataset_id=dataset_id, manifest=Path(manifest), items=tuple(items),
                   sha256=digest.hexdigest())
