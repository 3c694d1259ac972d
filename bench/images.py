"""Figure 5: each worker image's size and its delta over the base image (``docker image inspect``).

Goals: a light image (default, scraping, labeling) at most 60 MB over the base, training at most
5.8 GB in all. Sizes in MB = 10^6 bytes, as ``docker images`` prints them.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from bench import common

BASE_IMAGE = "imagineer/base-python:bookworm"
LIGHT_GOAL_MB = 60
TRAINING_GOAL_MB = 5800


def size(image: str) -> int:
    out = subprocess.run(["docker", "image", "inspect", image], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    return int(json.loads(out)[0]["Size"])


def run() -> dict[str, Any]:
    base = size(BASE_IMAGE)
    out: dict[str, Any] = {"base": {"image": BASE_IMAGE, "mb": base / 1e6}, "images": {}}
    for name, group in common.chart_groups().items():
        total = size(group.image)
        out["images"][name] = {"image": group.image, "mb": total / 1e6, "delta_mb": (total - base) / 1e6,
                               "goal": (f"<= {TRAINING_GOAL_MB} MB" if name == "training"
                                        else f"<= {LIGHT_GOAL_MB} MB over base")}
    return out
