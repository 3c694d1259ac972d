"""The built images themselves: each holds exactly its lock (light ones carry no torch), runs as the
chart's non-root user and, for the worker images, consumes its own queue by default.

The images' Dockerfiles are a few lines over shared stages (images/runtime/Dockerfile); what tells
the images apart is checked here on the images, not on the Dockerfiles."""

from __future__ import annotations

import json
import re

import pytest
from packaging.utils import canonicalize_name

from tests.chart.helm import REPO
from tests.run.fleet import APP_VERSION, POD_UID, docker

LIGHT = ("default", "scraping", "labeling")
QUEUES = (*LIGHT, "training")
# image repository -> (its lock under images/, whether it carries the worker package); as in
# images/README.md.
IMAGES = {
    **{f"worker-{queue}": ("light", True) for queue in LIGHT},
    "worker-training": ("training", True),
    "celery-exporter": ("exporter", False),
    "flower": ("flower", True),
}
INSTALLED = ("import importlib.metadata as m; "
             "print('\\n'.join(d.metadata['Name'] + '==' + d.version for d in m.distributions()))")


def pins(lock: str) -> set[str]:
    text = (REPO / "images" / f"{lock}.lock").read_text()
    return {f"{canonicalize_name(name)}=={version}"
            for name, version in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, re.MULTILINE)}


def inspect(image: str, field: str) -> object:
    return json.loads(docker("inspect", "-f", f"{{{{json {field}}}}}", image, check=True).stdout)


@pytest.mark.parametrize("repository", IMAGES)
def test_an_image_holds_exactly_its_locks_packages(repository: str) -> None:
    lock, with_worker = IMAGES[repository]
    image = f"imagineer/{repository}:{APP_VERSION}"
    run = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", INSTALLED,
                 timeout=180)
    assert run.returncode == 0, run.stderr
    installed = {f"{canonicalize_name(name)}=={version}"
                 for name, _, version in (line.partition("==") for line in run.stdout.split())}
    expected = pins(lock) | ({f"imagineer-worker=={APP_VERSION}"} if with_worker else set())
    assert installed == expected, (f"{image}: not in images/{lock}.lock: {sorted(installed - expected)}; "
                                   f"missing: {sorted(expected - installed)}")


@pytest.mark.parametrize("repository", IMAGES)
def test_images_run_as_the_charts_non_root_user(repository: str) -> None:
    image = f"imagineer/{repository}:{APP_VERSION}"
    assert inspect(image, ".Config.User") == f"{POD_UID}:{POD_UID}"
    labels = inspect(image, ".Config.Labels")
    assert isinstance(labels, dict)
    assert labels["org.opencontainers.image.version"] == APP_VERSION
    assert labels["org.opencontainers.image.title"] == f"imagineer-{repository}"


@pytest.mark.parametrize("queue", QUEUES)
def test_a_worker_image_consumes_its_own_queue_by_default(queue: str) -> None:
    cmd = inspect(f"imagineer/worker-{queue}:{APP_VERSION}", ".Config.Cmd")
    assert isinstance(cmd, list)
    assert cmd[cmd.index("-Q") + 1] == queue


@pytest.mark.parametrize("queue", LIGHT)
def test_light_images_have_no_torch(queue: str) -> None:
    run = docker("run", "--rm", "--network", "none", f"imagineer/worker-{queue}:{APP_VERSION}",
                 "python", "-c", "import torch")
    assert run.returncode != 0
    assert "No module named 'torch'" in run.stderr


def test_the_training_image_imports_torch_diffusers_and_peft() -> None:
    run = docker("run", "--rm", "--network", "none", f"imagineer/worker-training:{APP_VERSION}",
                 "python", "-c", "import torch, diffusers, peft; print(torch.__version__)", timeout=180)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith("2.13.0")
