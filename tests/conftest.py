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


# An eighth-width FCN-8s on 4 CamVid images: a run folder in a few seconds.
TINY_FCN = ["model.args.width=0.125", "model.args.fc_channels=32", "data.augment.crop_size=64", "data.limit=4",
            "train.batch_size=2", "train.max_steps=3", "train.val_every=2", "train.device=cpu", "train.log_every=1"]


def tiny_fcn_run(folder, *extra):
    from pixelwise.cli import resolve_config
    from pixelwise.config import load_config
    from pixelwise.engine import train

    require_dataset("camvid")
    cfg = load_config(resolve_config("fcn8s_camvid_cpu"), [f"data.root={_data_root()}", f"output_dir={folder}",
                                                         *TINY_FCN, *extra])
    train(cfg, progress=False)
    return folder
