"""`pixelwise crf-search`: the CRF's parameters chosen as DeepLab chose them (Chen et al., ICLR 2015: w2 = 3 and
theta_gamma = 3 fixed, w1, theta_alpha and theta_beta searched coarse to fine on a held-out part of the validation
set).

The model predicts the first --images validation images once; each candidate refines those probabilities with
the torch backend and is scored by mean IoU over them (one confusion matrix). The coarse grid (COARSE) is ours,
spanning DeepLab's first-round ranges (w1 5-10, theta_alpha 50-100, theta_beta 3-10) and a little beyond; the
fine stage tries 0.75x, 1x and 1.25x the best coarse point in each parameter. Lattices depend only on the
thetas, so candidates that differ in w1 reuse them.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch

from pixelwise.crf import CRFParams, build_lattices, colours_of, mean_field
from pixelwise.engine.run import build_datasets
from pixelwise.errors import ConfigError, OutputError
from pixelwise.files import write_json
from pixelwise.inference import build_inference
from pixelwise.metrics import ConfusionMatrix
from pixelwise.progress import Progress
from pixelwise.progress import progress as track

# Our coarse grid: small to large smoothing around DeepLab's kind of values and the defaults of Krähenbühl's
# examples (w1 = 10, theta_alpha = 80, theta_beta = 13).
COARSE = {"w1": (3.0, 5.0, 10.0), "theta_alpha": (30.0, 60.0, 100.0), "theta_beta": (3.0, 6.0, 13.0)}
FIXED = {"w2": 3.0, "theta_gamma": 3.0}


def crf_search(checkpoint, *, images: int = 20, iterations: int = 5, grid: dict | None = None, overrides=(),
               progress: bool = True) -> dict:
    """{"best": the infer.crf block (None if no candidate beats the model alone), "miou_without_crf", "miou_best",
    "images", "tried": [{params..., "miou"}]} for `checkpoint` on its first `images` validation images."""
    inference = build_inference(checkpoint, overrides=[*overrides, "infer.crf=null"])
    if not hasattr(inference.predictor, "predict_probs"):  # Mask R-CNN's predictor returns instances
        raise ConfigError(f"{checkpoint}: the CRF refines a semantic model's probabilities; this model has none")
    if inference.cfg.model.crf is not None:
        raise ConfigError(f"{checkpoint}: a CRF-as-RNN model (model.crf) runs its own learned CRF, which infer.crf "
                          "cannot be added to; search with the checkpoint of a model without model.crf")
    samples, ignore = _predictions(inference, images, progress)
    k = inference.cfg.model.num_classes
    baseline = _miou([(p, m) for p, _, m in samples], k, ignore)
    grid = grid or COARSE
    tried = _score_grid(samples, k, ignore, iterations, grid, progress, "coarse")
    best = max(tried, key=lambda t: t["miou"])
    fine = {name: sorted({best[name] * f for f in (0.75, 1.0, 1.25)}) for name in grid}
    tried += _score_grid(samples, k, ignore, iterations, fine, progress, "fine", skip=tried)
    best = max(tried, key=lambda t: t["miou"])
    block = {"backend": "torch", "iterations": iterations, **{n: best[n] for n in grid}, **FIXED}
    return {"checkpoint": str(checkpoint), "images": len(samples), "miou_without_crf": baseline,
            "miou_best": best["miou"], "best": block if best["miou"] > baseline else None, "tried": tried}


def _predictions(inference, images: int, progress: bool) -> tuple[list, int | None]:
    """([(probs, image as read, mask)] of the first `images` validation images, the dataset's ignore_index)."""
    ds = build_datasets(inference.cfg, inference.model, splits=("val",))["val"]
    predictor, samples = inference.predictor, []
    for i in track(range(min(images, len(ds))), desc="predict", unit="img", enabled=progress, leave=False):
        image, target = ds[i]
        image = image.as_subclass(torch.Tensor)
        samples.append((predictor.predict_probs(image), predictor.denormalize(image),
                        target["mask"].as_subclass(torch.Tensor)))
    if not samples:
        raise ConfigError("crf-search needs validation images; the recipe's validation split is empty")
    return samples, ds.ignore_index


def _score_grid(samples, k: int, ignore, iterations: int, grid: dict, progress: bool, stage: str,
                skip=()) -> list[dict]:
    """Mean IoU of every combination of `grid` (w1 x theta_alpha x theta_beta) not in `skip`."""
    names = list(grid)
    done = {tuple(t[n] for n in names) for t in skip}
    combos = [dict(zip(names, c)) for c in itertools.product(*grid.values()) if c not in done]
    matrices = [ConfusionMatrix(k, ignore_index=ignore) for _ in combos]
    thetas = sorted({(c["theta_alpha"], c["theta_beta"]) for c in combos})
    bar = Progress(len(samples) * len(thetas), desc=f"crf-search {stage} ({len(combos)} settings)", unit="img",
                   enabled=progress)
    potts = 1 - torch.eye(k)
    for probs, image, mask in samples:
        colours = colours_of(image, probs.shape[-2:])
        for alpha, beta in thetas:
            params = CRFParams(iterations, theta_alpha=alpha, theta_beta=beta, **FIXED)
            lattices = build_lattices(colours, params)
            for c, cm in zip(combos, matrices):
                if (c["theta_alpha"], c["theta_beta"]) == (alpha, beta):
                    weights = torch.tensor([c["w1"], FIXED["w2"]])
                    cm.update(mean_field(probs, colours, params, potts, weights=weights, lattices=lattices).argmax(0),
                              mask)
            bar.update()
    bar.close()
    return [{**c, "miou": float(cm.compute()["miou"])} for c, cm in zip(combos, matrices)]


def _miou(pairs, k: int, ignore_index) -> float:
    cm = ConfusionMatrix(k, ignore_index=ignore_index)
    for probs, mask in pairs:
        cm.update(probs.argmax(0), mask)
    return float(cm.compute()["miou"])


def write_search(result: dict, out: Path) -> None:
    """The result as JSON; `out` may be new or an earlier result of crf-search, nothing else."""
    import json

    if out.exists():
        try:
            earlier = json.loads(out.read_text())
        except (OSError, ValueError):
            earlier = None
        if not (isinstance(earlier, dict) and "tried" in earlier and "miou_without_crf" in earlier):
            raise OutputError(f"--out {str(out)!r} exists and is not a result of crf-search; choose a new file")
    write_json(out, result, what="crf-search result")


__all__ = ["COARSE", "FIXED", "crf_search", "write_search"]
