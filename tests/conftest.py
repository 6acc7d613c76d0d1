import collections
import os
import re
from pathlib import Path

import pytest
import torch

# Where the full dataset is absent, these tests run on the small real samples bundled with pixelwise
# (pixelwise/samples), laid out under a data root of their own as the full datasets are.
SAMPLES = Path(__file__).resolve().parents[1] / "pixelwise" / "samples"
SAMPLE_FOR = {"isbi2012": "isbi2012-sample", "tiny-coco": "coco-sample"}
MISSING: collections.Counter = collections.Counter()  # dataset -> tests skipped for want of it
ON_SAMPLE: collections.Counter = collections.Counter()  # dataset -> tests that ran on its sample instead


def _data_root() -> Path | None:
    root = os.environ.get("PIXELWISE_DATA")
    if root:
        return Path(root)
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return shared if shared.is_dir() else None


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


_SAMPLE_ROOT: list[Path] = []


def sample_root(tmp_factory=None) -> Path:
    """A data root whose isbi2012/ and tiny-coco/ are the bundled samples (links into the package)."""
    if not _SAMPLE_ROOT:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="pixelwise-samples-"))
        for name, sample in SAMPLE_FOR.items():
            (root / name).symlink_to(SAMPLES / sample, target_is_directory=True)
        _SAMPLE_ROOT.append(root)
    return _SAMPLE_ROOT[0]


def require_dataset(name: str, *, full: bool = False) -> Path:
    """Folder of a real dataset under the data root. Where it is missing: its bundled sample stands in when the
    test needs only some real images (isbi2012, tiny-coco; not when `full`: the test needs the full dataset's
    properties); otherwise the test skips locally and fails under CI=true."""
    root = _data_root()
    path = root / name if root else None
    if path is not None and path.is_dir():
        return path
    msg = f"dataset {name!r} not found (PIXELWISE_DATA={os.environ.get('PIXELWISE_DATA')!r})"
    if _ci():
        pytest.fail(msg)
    if not full and name in SAMPLE_FOR:
        ON_SAMPLE[name] += 1
        return sample_root() / name
    pytest.skip(msg)


def pytest_runtest_logreport(report) -> None:
    """Count each test skipped for want of a dataset (a module fixture's skip skips each of its tests)."""
    if report.skipped and report.when in ("setup", "call"):
        found = re.search(r"dataset '([^']+)' not found", str(report.longrepr))
        if found:
            MISSING[found[1]] += 1


def pytest_terminal_summary(terminalreporter) -> None:
    """One line naming the datasets that were missing, what skipped for want of them, and how to point the tests
    at them."""
    if ON_SAMPLE:
        terminalreporter.write_line("pixelwise: the full dataset was not found, so " + ", ".join(
            f"the bundled {SAMPLE_FOR[d]} stood in for {d} {n} times" for d, n in sorted(ON_SAMPLE.items()))
            + " (a module's fixture counts once)")
    if MISSING:
        listed = ", ".join(f"{d} ({n})" for d, n in sorted(MISSING.items()))
        terminalreporter.write_line(
            f"pixelwise: {sum(MISSING.values())} tests skipped because these datasets were not found: {listed}; "
            f"set PIXELWISE_DATA to a folder holding them (data root now: {_data_root() or 'none'}; their layouts: "
            "pixelwise/data/paths.py, or ../shared/data/README.md beside a checkout) to run them", yellow=True)


@pytest.fixture
def data_root() -> Path:
    return require_dataset("isbi2012").parent


@pytest.fixture
def isbi_dir() -> Path:
    return require_dataset("isbi2012")


@pytest.fixture
def isbi_full_dir() -> Path:
    """The full ISBI 2012 (30 slices of 512 x 512): for tests of its own counts and sizes."""
    return require_dataset("isbi2012", full=True)


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
