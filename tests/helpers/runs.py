"""A tiny trained run on a folder dataset of disks, for the command-line tests."""
from __future__ import annotations

from pathlib import Path

from helpers.synthetic import Disks, write_split
from pixelwise.cli import main

RECIPE = """\
output_dir: {out}
model: {{name: unet_padded, num_classes: 2, args: {{base_width: 4, depth: 2, in_channels: 1}}}}
data: {{dataset: folder, root: {root}, path: disks, num_classes: 2, mean: [0.5], std: [0.25]}}
train: {{batch_size: 2, max_steps: 4, val_every: 2, lr: 0.01, optimizer: adam, threads: 2}}
"""


def trained_run(tmp: Path, *train_args: str) -> Path:
    """A folder dataset of disks in tmp/data, its recipe tmp/recipe.yaml and a tiny trained run in tmp/run."""
    write_split(tmp / "data" / "disks" / "train", Disks(6, seed=0))
    write_split(tmp / "data" / "disks" / "val", Disks(2, seed=1))
    recipe = tmp / "recipe.yaml"
    recipe.write_text(RECIPE.format(out=tmp / "run", root=tmp / "data"))
    assert main(["train", str(recipe), *train_args]) == 0
    return tmp
