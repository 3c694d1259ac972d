"""Shared by the training unit tests and the training task's end-to-end tests: the tiny model
(built once per session) and small datasets written with Pillow into a data directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

_TINY: dict[str, Path] = {}


def tiny_model_dir(root: Path) -> Path:
    """Build the tiny pipeline once per test session (under ``root`` the first time)."""
    if "path" not in _TINY:
        from imagineer_worker.training.tiny import build_tiny_pipeline

        _TINY["path"] = build_tiny_pipeline(root / "tiny-sd", seed=0)
    return _TINY["path"]


def write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    """A deterministic RGB image with structure (gradients + a square) rather than pure noise."""
    width, height = size
    image = Image.new("RGB", size)
    pixels = image.load()
    assert pixels is not None
    for y in range(height):
        for x in range(width):
            inside = width // 4 <= x < 3 * width // 4 and height // 4 <= y < 3 * height // 4
            pixels[x, y] = ((x * 255 // width + seed * 40) % 256, (y * 255 // height) % 256,
                            255 if inside else (seed * 70) % 256)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_dataset(data_dir: Path, dataset_id: str, count: int = 4, size: tuple[int, int] = (48, 40),
                  captions: list[str] | None = None) -> str:
    """Images and a manifest under ``labels/<dataset_id>/``; returns the manifest's relative path."""
    base = Path("labels") / dataset_id
    items: list[dict[str, Any]] = []
    for i in range(count):
        relative = base / "images" / f"{i}.png"
        write_image(data_dir / relative, size, seed=i)
        caption = captions[i] if captions else f"a square picture number {i}"
        items.append({"image": str(relative), "caption": caption, "label_source": "test"})
    manifest = base / "manifest.json"
    (data_dir / manifest).write_text(json.dumps({"dataset_id": dataset_id, "items": items}), encoding="utf-8")
    return str(manifest)
