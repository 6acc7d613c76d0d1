"""`pixelwise data check`: read every sample of a split as training reads it, and say what is there and what is
wrong (issue 29).

check_split reads each sample through the dataset with the task's evaluation transforms (the same file
reading and label checks as training, without the random augmentation), catches what a sample raises (the
error names its file) and goes on, and counts: samples, image sizes, channels, the classes (pixels for
semantic datasets, objects for instance datasets) and the samples without any label.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from pixelwise.errors import PixelwiseError


@dataclass
class CheckReport:
    dataset: str
    split: str
    task: str
    unit: str = "pixels"  # what the class histogram counts: the task's census_unit
    samples: int = 0
    sizes: Counter = field(default_factory=Counter)  # (height, width) -> samples
    channels: Counter = field(default_factory=Counter)
    class_names: list = field(default_factory=list)
    counts: np.ndarray | None = None  # per class: pixels (semantic) or objects (instance)
    ignored: int | None = None  # ignored pixels (None: the task ignores none)
    unlabelled: list = field(default_factory=list)  # samples with no labelled pixel / no object
    problems: list = field(default_factory=list)  # one line each, naming the file

    def lines(self) -> list[str]:
        out = [f"{self.dataset}, split {self.split}: {self.samples} samples ({self.task})"]
        sizes = ", ".join(f"{h} x {w} ({n})" for (h, w), n in self.sizes.most_common(5))
        more = f" and {len(self.sizes) - 5} other sizes" if len(self.sizes) > 5 else ""
        out.append(f"  image sizes: {sizes or 'none read'}{more}")
        out.append(f"  channels: {', '.join(f'{c} ({n})' for c, n in sorted(self.channels.items())) or 'none read'}")
        if self.counts is not None:
            total = max(int(self.counts.sum()) + (self.ignored or 0), 1)
            named = [(name, n) for name, n in zip(self.class_names, self.counts) if not name.startswith("__")]
            shares = [f"{name} {int(n)} ({100 * n / total:.1f}%)" for name, n in named if n > 0]
            out.append(f"  classes ({self.unit}): " + (", ".join(shares) or "none"))
            absent = [name for name, n in named if n == 0]
            if absent:
                more = f" and {len(absent) - 20} more" if len(absent) > 20 else ""
                out.append(f"  {len(absent)} classes never seen in this split: {', '.join(absent[:20])}{more}")
            if self.ignored is not None:
                out.append(f"  ignored pixels: {self.ignored} ({100 * self.ignored / total:.1f}%)")
        if self.unlabelled:
            shown = "; ".join(self.unlabelled[:10]) + (f"; and {len(self.unlabelled) - 10} more"
                                                        if len(self.unlabelled) > 10 else "")
            out.append(f"  {len(self.unlabelled)} samples without any label ({self.unit}): {shown}")
        out.append(f"  problems: {len(self.problems) or 'none'}")
        out += [f"    {p}" for p in self.problems]
        return out


def sample_name(dataset, i: int) -> str:
    """Sample i named for a reader: its image file where the dataset lists them, else its index."""
    for attr in ("image_paths", "names"):
        items = getattr(dataset, attr, None)
        if items is not None and i < len(items):
            return str(items[i])
    locate = getattr(dataset, "image_location", None)
    return locate(i) if locate is not None else f"sample {i}"


def check_split(cfg, split: str, progress: bool = True) -> CheckReport:
    """Read every sample of `split` of cfg.data (see the module docstring)."""
    from pixelwise.data import build_dataset, dataset_entry, dataset_meta, split_spec
    from pixelwise.engine.tasks import task_class
    from pixelwise.progress import progress as track

    entry = dataset_entry(cfg.data.dataset)
    meta = dataset_meta(cfg.data)
    ds = build_dataset(cfg.data, split)
    task = task_class(entry.task)(cfg)
    ds.transforms = task.transforms(train=False, ignore_index=getattr(ds, "ignore_index", None), crop_size=None,
                                    context=0)
    names = list(getattr(ds, "class_names", None) or meta.get("class_names") or [])
    report = CheckReport(cfg.data.dataset, split_spec(cfg.data, split), entry.task, unit=task.census_unit,
                         class_names=names, counts=np.zeros(len(names), dtype=np.int64))
    for i in track(range(len(ds)), desc="check", unit="sample", enabled=progress):
        report.samples += 1
        try:
            image, target = ds[i]
        except PixelwiseError as e:
            report.problems.append(" ".join(str(e).split()))
            continue
        except (OSError, ValueError, RuntimeError) as e:  # a file the readers did not foresee
            report.problems.append(f"{sample_name(ds, i)}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
            continue
        report.sizes[tuple(image.shape[-2:])] += 1
        report.channels[image.shape[0]] += 1
        counts, ignored = task.census(target, len(names), getattr(ds, "ignore_index", None))
        report.counts += counts
        if ignored is not None:
            report.ignored = (report.ignored or 0) + ignored
        if not counts.any():
            report.unlabelled.append(sample_name(ds, i))
    return report
