import os
from pathlib import Path

import pytest
import torch


def _data_root() -> Path | None:
    root = os.environ.get("PIXELWISE_DATA")
    if root:
        return Path(root)
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return shared if shared.is_dir() else None


def require_dataset(name: str) -> Path:
    """Folder of a real dataset under the data root; skips locally, fails under CI=true when missing."""
    root = _data_root()
    path = root / name if root else None
    if path is None or not path.is_dir():
        msg = f"dataset {name!r} not found (PIXELWISE_DATA={os.environ.get('PIXELWISE_DATA')!r})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def data_root() -> Path:
    require_dataset("isbi2012")
    return _data_root()


@pytest.fixture
def isbi_dir() -> Path:
    return require_dataset("isbi2012")


@pytest.fixture
def camvid_dir() -> Path:
    return require_dataset("camvid")


@pytest.fixture
def voc_dir() -> Path:
    return require_dataset("voc-example")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
