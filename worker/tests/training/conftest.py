from __future__ import annotations

from pathlib import Path

import pytest

from imagineer_worker.storage import DataDir
from tests.training.helpers import tiny_model_dir, write_dataset


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    """A private data directory per test: jobs of different tests never share a directory."""
    root = tmp_path / "data"
    root.mkdir()
    return DataDir(root)


@pytest.fixture
def manifest(data: DataDir) -> str:
    return write_dataset(data.root, "squares")
