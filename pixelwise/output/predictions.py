"""Predict a set of image files into a folder: index PNGs, colour overlays, optional probability maps
(semantic models); per-image JSON with boxes, scores and RLE masks, instance-id PNGs and overlays (Mask R-CNN).

Every output folder also gets classes.json, which says what the pixel values mean. Output names
follow the inputs' paths relative to their common folder (a/same.png and b/same.png give a/same.png
and b/same.png), and nothing is ever written over an input.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from pixelwise.data.io import DataError, as_image, image_size, read_image
from pixelwise.errors import OutputError
from pixelwise.files import atomic_write, ensure_dir, write_json, write_text
from pixelwise.progress import Progress, progress as track
from pixelwise.output.visualize import DEFAULT_PALETTE, overlay, palette_for, save_index_png

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
SEMANTIC_OUTPUTS = ("{}.png", "{}_overlay.png", "{}_probs.npy")
INSTANCE_OUTPUTS = ("{}.json", "{}_instances.png", "{}_overlay.png")


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders are expanded to the images they hold (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise DataError(f"input folder {str(p)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"input {str(p)!r} does not exist")
    return paths


def output_names(paths: Sequence[Path]) -> list[str]:
    """One distinct output name per input: its file name without the suffix; where two inputs share that,
    their paths relative to their common folder (a/same, b/same), keeping the suffix (`same_jpg`) where
    only the suffix differs. The same file given twice is refused."""
    resolved = [p.resolve() for p in paths]
    seen: dict[Path, Path] = {}
    for p, r in zip(paths, resolved):
        if r in seen:
            raise DataError(f"input {str(p)!r} is the same file as input {str(seen[r])!r}; expected each image once")
        seen[r] = p
    names = [r.stem for r in resolved]
    shared = {n for n, k in Counter(names).items() if k > 1}
    if not shared:
        return names
    clashing = [r for r, n in zip(resolved, names) if n in shared]
    common = Path(os.path.commonpath([r.parent for r in clashing]))
    names = [r.relative_to(common).with_suffix("").as_posix() if n in shared else n for r, n in zip(resolved, names)]
    shared = {n for n, k in Counter(names).items() if k > 1}
    return [f"{n}_{r.suffix.lstrip('.').lower()}" if n in shared else n for n, r in zip(names, resolved)]


CLASSES_MARK = "pixelwise predict"  # classes.json's "written_by": the folder holds pixelwise's own predictions


def check_outputs(out: Path, names: Sequence[str], patterns: Sequence[str], protected: Sequence[Path]) -> None:
    """Refuse to write any output over a file the user gave (an input image, the checkpoint, the config, compared
    by identity, not by path), and over any existing file unless `out` holds this command's earlier predictions."""
    ours = _is_prediction_folder(out)
    given = {_identity(p): p for p in protected if _identity(p) is not None}
    written: dict[Path, str] = {}
    targets = [(out / "classes.json", "classes.json")] + [(out / p.format(n), n) for n in names for p in patterns]
    for target, name in targets:
        if target in written:
            raise OutputError(f"--out {str(out)!r}: the outputs of inputs named {written[target]!r} and {name!r} "
                              f"would both be {target.name!r}; rename one of the inputs")
        written[target] = name
        if _identity(target) in given:
            raise OutputError(f"--out {str(out)!r}: writing {str(target)!r} would replace the input "
                              f"{str(given[_identity(target)])!r}; choose an output folder apart from the inputs")
        if (target.exists() or target.is_symlink()) and (not ours or target.is_symlink() or target.is_dir()):
            raise OutputError(f"--out {str(out)!r}: {str(target)!r} exists and is not a prediction of pixelwise "
                              "predict (the folder has no classes.json of pixelwise's); it is left as it is. "
                              "Choose a new or empty output folder")


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode): the same file whatever the path (links, hard links)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_prediction_folder(out: Path) -> bool:
    """True when `out` holds an earlier `pixelwise predict`'s outputs (its classes.json says so)."""
    path = out / "classes.json"
    if path.is_symlink() or not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    # pixelwise 0.1 wrote no "written_by"; its classes.json has exactly these two keys' shapes
    return isinstance(record, dict) and (record.get("written_by") == CLASSES_MARK or
                                         ("pixel_values" in record and isinstance(record.get("classes"), list)))


def write_classes(out: Path, class_names: Sequence[str], palette, note: str | None = None) -> None:
    """classes.json: what each pixel value of the index PNGs means (and a note on the dataset's own encoding)."""
    colours = palette_for(len(class_names), palette)
    record = {"written_by": CLASSES_MARK, "pixel_values": "class indices", "classes": [
        {"index": i, "name": name, "colour": list(colours[i])} for i, name in enumerate(class_names)]}
    if note:
        record["note"] = note
    write_json(out / "classes.json", record, what="class list")


def _save(what: str, path: Path, save) -> None:
    """`save(f)` writes into an open binary file; through a temporary file and a rename, like every output."""
    atomic_write(path, save, what=what)


def predict_to_folder(
    predictor, paths: Sequence[Path], out_dir: str | Path, *, palette=None, save_probs: bool = False,
    progress: bool = True, class_names: Sequence[str] | None = None, note: str | None = None,
    protected: Sequence[Path] = (), images: Sequence[tuple[str, np.ndarray]] = (),
) -> list[Path]:
    """Writes <name>.png (class indices, paletted), <name>_overlay.png and, if asked, <name>_probs.npy.

    `predictor` is an engine Predictor: it normalises each image (its channels, mean and std), predicts and
    thresholds it (`labels`). `images` ((name, uint8 array) pairs, e.g. the pages of a TIFF volume) are
    predicted after the files `paths`."""
    out = ensure_dir(out_dir, what="output folder --out")
    names = output_names(paths) + [name for name, _ in images]
    check_outputs(out, names, SEMANTIC_OUTPUTS, [*paths, *protected])
    num_classes = len(class_names) if class_names else predictor.model.num_classes
    colours = palette_for(num_classes, palette)
    write_classes(out, class_names or [f"class{k}" for k in range(num_classes)], colours, note)
    # Binary masks: draw only the positive class, in a colour that shows on grey images.
    binary = num_classes == 2
    overlay_colours = palette_for(num_classes) if binary else colours
    written = []
    sources = [*paths, *(array for _, array in images)]
    for source, name in track(list(zip(sources, names)), desc="predict", unit="img", enabled=progress, leave=True):
        if isinstance(source, np.ndarray):
            what = name
            image = as_image(source, channels=predictor.channels, name=name, grey_to_rgb=False)
        else:
            what = str(source)
            predictor.check_fits(predictor.channels, *image_size(source), what)  # from the header, before reading
            image = read_image(source, channels=predictor.channels)
        normalised = predictor.normalize(image) if predictor.normalize is not None else image
        probs = predictor.predict_probs(normalised, name=what)
        labels = predictor.postprocess(probs, image).numpy().astype(np.uint8)
        _save("prediction", out / f"{name}.png", lambda f: save_index_png(labels, colours, f))
        picture = Image.fromarray(overlay(image, labels, overlay_colours, skip_class=0 if binary else None))
        _save("overlay", out / f"{name}_overlay.png", lambda f: picture.save(f, format="PNG"))
        if save_probs:
            _save("probabilities", out / f"{name}_probs.npy", lambda f: np.save(f, probs.numpy().astype(np.float16)))
        written.append(out / f"{name}.png")
    return written


def instance_map(masks: torch.Tensor, scores: torch.Tensor, score_threshold: float) -> np.ndarray:
    """(H, W) uint16: 0 background, i + 1 where detection i (scores in decreasing order) is the
    highest-scoring detection at or above score_threshold covering the pixel."""
    keep = torch.nonzero(scores >= score_threshold).flatten()
    ids = np.zeros(masks.shape[-2:], dtype=np.uint16)
    for i in keep.flip(0).tolist():  # lowest score first, so higher scores paint over it
        ids[masks[i].numpy()] = i + 1
    return ids


def draw_instances(image: torch.Tensor, ids: np.ndarray, boxes: torch.Tensor, captions: Sequence[str]) -> Image.Image:
    """The instances of `ids` coloured over the image, each with its box and caption ("cell 0.93")."""
    colours = [(0, 0, 0)] + [DEFAULT_PALETTE[1 + i % (len(DEFAULT_PALETTE) - 1)] for i in range(int(ids.max()))]
    picture = Image.fromarray(overlay(image, ids, colours, skip_class=0))
    draw = ImageDraw.Draw(picture)
    for i in np.unique(ids[ids > 0]).tolist():
        x1, y1, x2, y2 = boxes[i - 1].tolist()
        draw.rectangle((x1, y1, x2, y2), outline=colours[i])
        text = captions[i - 1]
        left, top, right, bottom = draw.textbbox((x1 + 1, y1 + 1), text)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colours[i])
        draw.text((x1 + 1, y1 + 1), text, fill=(0, 0, 0))
    return picture


def predict_instances_to_folder(
    predictor, paths: Sequence[Path], out_dir: str | Path, *, progress: bool = True, protected: Sequence[Path] = (),
) -> list[Path]:
    """Mask R-CNN on each image; writes <name>.json (every detection: label, class name, score, box x1 y1 x2 y2
    in pixels, COCO RLE mask), <name>_instances.png (16-bit instance ids of the detections scoring at least
    score_threshold, 1 = best) and <name>_overlay.png (those instances coloured, with boxes, class names and
    scores). `predictor` is an InstancePredictor (its class names, score threshold, batch size and tiles apply)."""
    out = ensure_dir(out_dir, what="output folder --out")
    names = output_names(paths)
    check_outputs(out, names, INSTANCE_OUTPUTS, [*paths, *protected])
    labels, score_threshold = list(predictor.class_names or []) or None, predictor.score_threshold
    write_text(out / "classes.json", json.dumps({
        "written_by": CLASSES_MARK, "pixel_values": "<name>_instances.png: 0 = background, i = the i-th detection of <name>.json (by score)",
        "classes": [{"label": k, "name": n} for k, n in enumerate(labels or [])]}, indent=2), what="class list")
    written = []
    batch = max(1, getattr(predictor, "batch_size", 1))
    bar = Progress(len(paths), desc="predict", unit="img", enabled=progress, leave=True)
    try:
        for start in range(0, len(paths), batch):  # a batch of images at a time (InstancePredictor.many groups sizes)
            window = list(zip(paths[start:start + batch], names[start:start + batch]))
            images = [as_image(path, channels=3, name=str(path)) for path, _ in window]
            for (path, name), image, d in zip(window, images, predictor.many(images, [str(p) for p, _ in window])):
                _write_instances(out, path, name, image, d, score_threshold)
                written.append(out / f"{name}.json")
                bar.update()
    finally:
        bar.close()
    return written


def _write_instances(out: Path, path: Path, name: str, image: torch.Tensor, d: dict, score_threshold: float) -> None:
    from pixelwise.metrics.coco import masks_to_rle

    class_of = d["class_names"]
    instances = [{"label": int(k), "class_name": n, "score": float(s), "box": [float(v) for v in b],
                  "segmentation": rle}
                 for k, n, s, b, rle in zip(d["labels"], class_of, d["scores"], d["boxes"].tolist(),
                                            masks_to_rle(d["masks"]))]
    record = {"file": str(path), "height": image.shape[-2], "width": image.shape[-1], "instances": instances}
    write_text(out / f"{name}.json", json.dumps(record), what="detections")
    ids = instance_map(d["masks"], d["scores"], score_threshold)
    _save("instance map", out / f"{name}_instances.png", lambda f: Image.fromarray(ids).save(f, format="PNG"))
    captions = [f"{n} {float(s):.2f}" for n, s in zip(class_of, d["scores"])]
    picture = draw_instances(image, ids, d["boxes"], captions)
    _save("overlay", out / f"{name}_overlay.png", lambda f: picture.save(f, format="PNG"))
