"""Rebuild the small real samples bundled in the wheel (pixelwise/samples) from the full datasets.

    python scripts/make_samples.py --data-root ../shared/data

isbi2012-sample: slices 00-07 and 25-28 of ISBI 2012's training volume, each the centre 352 x 352 pixels of
the 512 x 512 slice, image and label, in the dataset's own layout (train/image/NN.png, train/label/NN.png).
coco-sample: three COCO train2017 images under Creative Commons licences that allow copying (CC BY 2.0,
CC BY-NC 2.0, CC BY-NC-SA 2.0; no NoDerivs image), their original JPEG bytes, and their annotations with
the licence, category and info fields of the original JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "pixelwise" / "samples"
ISBI_SLICES = [*range(0, 8), *range(25, 29)]
CROP = 352
COCO_IMAGES = ["000000522418.jpg", "000000193271.jpg", "000000403013.jpg"]


def isbi(src: Path, out: Path) -> None:
    lo = (512 - CROP) // 2
    for kind in ("image", "label"):
        (out / "train" / kind).mkdir(parents=True, exist_ok=True)
        for i in ISBI_SLICES:
            picture = Image.open(src / "train" / kind / f"{i:02d}.png")
            if picture.size != (512, 512):
                raise SystemExit(f"{src}/train/{kind}/{i:02d}.png is {picture.size}, expected 512 x 512")
            picture.crop((lo, lo, lo + CROP, lo + CROP)).save(out / "train" / kind / f"{i:02d}.png", optimize=True)


def coco(src: Path, out: Path) -> None:
    full = json.loads((src / "annotations_instances.json").read_text())
    images = [im for im in full["images"] if im["file_name"] in COCO_IMAGES]
    ids = {im["id"] for im in images}
    used = {im["license"] for im in images}
    (out / "images").mkdir(parents=True, exist_ok=True)
    for im in images:
        shutil.copyfile(src / "images" / im["file_name"], out / "images" / im["file_name"])
    subset = {"info": full["info"], "licenses": [lic for lic in full["licenses"] if lic["id"] in used],
              "images": images, "annotations": [a for a in full["annotations"] if a["image_id"] in ids],
              "categories": full["categories"]}
    (out / "annotations_instances.json").write_text(json.dumps(subset, separators=(",", ":")) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/data", help="folder holding isbi2012/ and tiny-coco/")
    args = p.parse_args()
    root = Path(args.data_root)
    isbi(root / "isbi2012", OUT / "isbi2012-sample")
    coco(root / "tiny-coco", OUT / "coco-sample")
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
