"""The built images themselves: light ones carry no torch, all run as the chart's non-root user."""

from __future__ import annotations

import pytest

from tests.run.fleet import APP_VERSION, POD_UID, docker

LIGHT = ("default", "scraping", "labeling")


@pytest.mark.parametrize("queue", [*LIGHT, "training"])
def test_images_run_as_the_charts_non_root_user(queue: str) -> None:
    image = f"imagineer/worker-{queue}:{APP_VERSION}"
    user = docker("inspect", "-f", "{{.Config.User}}", image, check=True).stdout.strip()
    assert user == f"{POD_UID}:{POD_UID}"
    labels = docker("inspect", "-f", "{{json .Config.Labels}}", image, check=True).stdout
    assert f'"org.opencontainers.image.version":"{APP_VERSION}"' in labels


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
