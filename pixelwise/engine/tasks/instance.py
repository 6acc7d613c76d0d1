"""Instance segmentation (Mask R-CNN): batches as lists, the model's loss dict, COCO box and mask AP.

Such a model takes a list of (3, H, W) images in [0, 1] and a list of target dicts, and returns
{"losses": {name: scalar}, "detections": [per-image dict]} (see pixelwise.models.mask_rcnn). It
normalises its input itself (ImageNet mean and std, inside the model), so images go in as read.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from pixelwise.data.isbi_instances import to_coco
from pixelwise.data.transforms import instance_transforms
from pixelwise.engine.precision import as_float, autocast
from pixelwise.engine.tasks import Task, register_task
from pixelwise.errors import ConfigError, TrainingError
from pixelwise.metrics import COCO_METRICS
from pixelwise.metrics.coco import coco_evaluate, masks_to_rle
from pixelwise.progress import progress as track
from pixelwise.output.predictions import predict_instances_to_folder

TILE_SCALES = ("window", "image")  # infer.tile_scale: see detect

__all__ = ["EXPORT_PARTS", "InstancePredictor", "InstanceTask", "collate_instances", "evaluate_instances", "detect",
           "instances_to_device", "max_detections"]


@register_task
class InstanceTask(Task):
    name = "instance"
    metrics = COCO_METRICS
    summary_metrics = ("segm_AP", "segm_AP50", "bbox_AP", "bbox_AP50")

    def check_config(self, meta: dict) -> None:
        """No semantic-only data settings: Mask R-CNN normalises its input inside the model."""
        from pixelwise.config import DataConfig

        data, defaults = self.cfg.data, DataConfig()
        if data.weight_map:
            raise ConfigError(f"data.weight_map=true is for semantic models; {data.dataset!r} is an instance dataset")
        for key in ("infer", "model"):
            if getattr(self.cfg, key).crf is not None:
                raise ConfigError(f"{key}.crf refines semantic models' probabilities; Mask R-CNN's masks have none "
                                  "to refine: remove it")
        if self.cfg.infer.scales is not None:
            raise ConfigError("infer.scales (multi-scale test-time augmentation) is for semantic models; Mask R-CNN "
                              "takes each image at its own size (model.args.min_size / max_size): remove it")
        if self.cfg.train.loss != "ce":
            raise ConfigError(f"train.loss={self.cfg.train.loss!r} chooses a semantic model's loss; Mask R-CNN has its "
                              "own (RPN, box and mask terms, He et al. section 3): remove it")
        if data.mean != defaults.mean or data.std != defaults.std:
            raise ConfigError(f"data.mean / data.std are not used with the instance dataset {data.dataset!r}: Mask "
                              "R-CNN normalises its input inside the model, with ImageNet's mean and std; remove them")

    def transforms(self, *, train: bool, ignore_index: int | None, crop_size: int | None, context: int):
        """Horizontal and vertical flips that move boxes and masks with the image, when `train`
        (pixelwise.data.transforms.instance_transforms)."""
        return instance_transforms(self.cfg.data, train=train)

    def check(self, model: nn.Module, train_ds) -> None:
        """One class per object category, and none of the semantic loss options."""
        k, cfg = model.num_classes, self.cfg
        if k != train_ds.num_classes:
            raise TrainingError(f"model.num_classes={k} but dataset {cfg.data.dataset!r} has {train_ds.num_classes} "
                                f"object classes (background excluded); set model.num_classes={train_ds.num_classes}")
        t = cfg.train
        for key, value, default in (("class_weights", t.class_weights, None), ("loss_sampling_p", t.loss_sampling_p, None),
                                    ("loss_reduction", t.loss_reduction, "mean")):
            if value != default:
                raise TrainingError(f"train.{key}={value!r} applies to semantic models; Mask R-CNN's losses are the paper's")

    def collate(self, batch: list):
        return collate_instances(batch)

    def to_device(self, batch, device: torch.device):
        return instances_to_device(*batch, device, non_blocking=True)

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        """The RPN and RoI head losses (section 3: L = Lcls + Lbox + Lmask, plus the RPN's two terms)."""
        images, targets = batch
        return model(images, targets, detect=False)["losses"]

    def evaluate(self, model: nn.Module, dataset, device: torch.device, *, progress: bool = True,
                 tta: bool | None = None, refine: bool = True) -> dict:
        precision, nhwc = self.inference_precision()
        i = self.cfg.infer
        return evaluate_instances(model, dataset, device, batch_size=i.batch_size, progress=progress,
                                  precision=precision, channels_last=nhwc, tile=i.tile, overlap=i.overlap,
                                  tile_scale=i.tile_scale)

    def report_examples(self, model: nn.Module, dataset, device: torch.device, metrics: dict, count: int = 2) -> list:
        """The first 2 * `count` validation images: ground truth | detections scoring >= infer.score_threshold."""
        import numpy as np
        from PIL import Image

        from pixelwise.output.predictions import draw_instances, instance_map

        names, examples = list(dataset.class_names), []
        for i in range(min(2 * count, len(dataset))):
            image, target = dataset[i]
            image = image.as_subclass(torch.Tensor)
            d = detect(model, [image], device, self.inference_precision()[0])[0]
            keep = d["scores"] >= self.cfg.infer.score_threshold
            truth = target["masks"].as_subclass(torch.Tensor).bool()
            gt_ids = instance_map(truth, torch.ones(len(truth)), 0.0)
            gt = draw_instances(image, gt_ids, target["boxes"].as_subclass(torch.Tensor),
                                [names[k] for k in target["labels"].tolist()])
            pred_ids = instance_map(d["masks"], d["scores"], self.cfg.infer.score_threshold)
            pred = draw_instances(image, pred_ids, d["boxes"], [f"{names[k] if k < len(names) else k} {s:.2f}"
                                                               for k, s in zip(d["labels"].tolist(), d["scores"].tolist())])
            picture = Image.fromarray(np.concatenate([np.asarray(gt), np.asarray(pred)], axis=1))
            label = dataset.names[i] if getattr(dataset, "names", None) else f"#{i}"
            examples.append((f"{label}: {len(truth)} objects in the ground truth | {int(keep.sum())} detections with "
                             f"score >= {self.cfg.infer.score_threshold:g}", picture))
        return examples

    def predictor(self, model: nn.Module, device: torch.device, *, tta: bool | None = None,
                  class_names=None, refine: bool = True) -> "InstancePredictor":
        precision, nhwc = self.inference_precision()
        i = self.cfg.infer
        return InstancePredictor(model, device, class_names=class_names, score_threshold=i.score_threshold,
                                 precision=precision, channels_last=nhwc, batch_size=i.batch_size, tile=i.tile,
                                 overlap=i.overlap, tile_scale=i.tile_scale)

    def fold_example(self, model: nn.Module) -> tuple[str, tuple]:
        """The trunk's (frozen) BatchNorms; the example is a normalised batch as the backbone sees it."""
        device = next(model.parameters()).device
        return "backbone", (torch.randn(1, 3, 128, 128, device=device),)

    # Export (pixelwise.export): the parts with weights, each a graph; the code around them stays PyTorch.
    export_input = "normalised, resized and padded (B, 3, H, W) batch (see pixelwise.export)"

    def export_parts(self, model: nn.Module, sample: torch.Tensor) -> dict:
        """{part: (module, example inputs, output structure, dynamic dimensions)} of EXPORT_PARTS present in the
        model, each with the inputs it gets on `sample` ((3, H, W) in [0, 1]), captured by hooks."""
        seen: dict[str, tuple] = {}
        handles = _hook_part_inputs(model, lambda name, args: seen.setdefault(name, tuple(_clone(a) for a in args)))
        try:
            with torch.no_grad():
                model.eval()([sample], detect=True)
        finally:
            for h in handles:
                h.remove()
        parts = {}
        pooled = _pooled_parts(model)
        for name, module in _export_modules(model).items():
            path, structure, dims = EXPORT_PARTS[name]
            if name not in seen:
                raise ConfigError(f"Mask R-CNN part {path} was not run on the sample image; cannot export it")
            if name in pooled:  # its RoIAlign goes in the graph: inputs (RoIs, *feature maps)
                module, dims = PooledPart(model.get_submodule(f"roi_heads.{pooled[name]}"), module), (0, 2, 3)
            parts[name] = (module.eval(), tuple(_at_least_two(a, dims) for a in seen[name]), structure, dims)
        rest = [n for n, p in model.named_parameters() if not any(n.startswith(v[0] + ".") for v in EXPORT_PARTS.values())]
        if rest:  # every weight must be in a graph, or the exported model would run with random ones
            raise ConfigError(f"Mask R-CNN parameters outside the exported parts: {rest[:5]}")
        return parts

    def exported_model(self, model: nn.Module, parts: dict, graph) -> nn.Module:
        """The model with each exported part replaced by its graph. The RoI parts (res5, box_head, mask_head) get
        their RoIs in padded batches of a few sizes (RuntimeModule buckets): OpenVINO compiles each size once. A
        part with its RoIAlign in the graph (metadata input "boxes+index+features", or "rois+features", the first
        such exports; older exports take pooled features) gets the RoIs and the feature maps: the pooler before it
        hands them over (HandOver)."""
        pooled = _pooled_parts(model)
        for name, info in parts.items():
            parent, _, leaf = EXPORT_PARTS[name][0].rpartition(".")
            legacy = info.get("input") == PooledPart.LEGACY_INPUT
            new = not legacy and info.get("input") == PooledPart.export_meta["input"]
            setattr(model.get_submodule(parent) if parent else model, leaf,
                    graph(name, structure=info["structure"],
                          buckets=PooledPart.padded_inputs if new else int(EXPORT_PARTS[name][2] == (0,))))
            if new or legacy:
                if name not in pooled:
                    raise ConfigError(f"exported part {name} pools its RoIs in the graph, but this model's config "
                                      "pools them otherwise; export the checkpoint again")
                pooler = getattr(model.roi_heads, pooled[name])
                setattr(model.roi_heads, pooled[name], HandOver(pooler if new else None))
        return model

    def export_sample(self, predictor: "InstancePredictor", image) -> torch.Tensor:
        from pixelwise.data.io import as_image

        return as_image(image, channels=3, name=str(image))

    def calibration_inputs(self, predictor: "InstancePredictor", parts: dict, images: list[torch.Tensor]) -> dict:
        """Each part's inputs (captured by hooks, as export_parts does) while the model detects on each image."""
        seen: dict[str, list] = {name: [] for name in parts}
        handles = _hook_part_inputs(predictor.model, lambda name, args: name in seen and seen[name].append(
            [a.detach().float().cpu().numpy() for a in _flat(args)]))
        try:
            for image in images:
                detect(predictor.model, [image], torch.device("cpu"))
        finally:
            for h in handles:
                h.remove()
        return seen

    def compare_export(self, reference: "InstancePredictor", exported: "InstancePredictor", sample: torch.Tensor,
                       tolerance: dict) -> dict:
        """The same detections: their number and labels, boxes within tolerance["box_px"], masks agreeing. With
        tolerance["matched"] (int8): detections matched by label and box IoU (pixelwise.metrics.agreement), enough
        of them and with masks overlapping enough."""
        cpu = torch.device("cpu")
        a, b = detect(reference.model, [sample], cpu)[0], detect(exported.model, [sample], cpu)[0]
        report = {"detections": len(a["boxes"]), "exported_detections": len(b["boxes"])}
        if "matched" in tolerance:
            from pixelwise.metrics.agreement import match_detections

            m = match_detections([b], [a])
            share = m["matched"] / len(a["boxes"]) if len(a["boxes"]) else 1.0
            extra = m["unmatched_det"] / len(a["boxes"]) if len(a["boxes"]) else float(m["unmatched_det"] > 0)
            mask_iou = 1.0 if m["mask_iou_mean"] is None else m["mask_iou_mean"]
            ok = (share >= tolerance["matched"] and extra <= 1 - tolerance["matched"] + 1e-9
                  and mask_iou >= tolerance["mask_iou"])
            report.update(m, agrees=ok, summary=f"{len(a['boxes'])} detections in PyTorch fp32, {len(b['boxes'])} "
                          f"exported, {m['matched']} matched (label and box IoU >= 0.5), mean mask IoU of the pairs "
                          f"{mask_iou:.3f}")
            return report
        if len(a["boxes"]) != len(b["boxes"]):
            report.update(agrees=False, summary=f"{len(a['boxes'])} detections in PyTorch, {len(b['boxes'])} exported")
            return report
        box = (a["boxes"] - b["boxes"]).abs().max().item() if len(a["boxes"]) else 0.0
        score = (a["scores"] - b["scores"]).abs().max().item() if len(a["scores"]) else 0.0
        union = (a["masks"] | b["masks"]).sum().item()
        agreement = 1.0 - (a["masks"] ^ b["masks"]).sum().item() / union if union else 1.0
        labels_same = bool(torch.equal(a["labels"], b["labels"]))
        ok = box <= tolerance["box_px"] and agreement >= tolerance["agreement"] and labels_same
        report.update(max_box_diff=box, max_score_diff=score, mask_agreement=agreement, agrees=ok,
                      summary=f"{len(a['boxes'])} detections each, boxes within {box:.2e} px, scores within "
                              f"{score:.2e}, {100 * agreement:.3f}% of the mask pixels the same"
                              + ("" if labels_same else ", labels differ"))
        return report

    def write_predictions(self, predictor: "InstancePredictor", paths, out, *, meta: dict, protected=()):
        written = predict_instances_to_folder(predictor, paths, out, protected=protected)
        return written, (".json with boxes, scores and RLE masks + _instances.png + _overlay.png; classes.json names "
                         "the classes")

    census_unit = "objects"

    def census(self, target, num_classes: int, ignore_index: int | None):
        """Objects of each label (0 is the background, which no object has); nothing is ignored."""
        import numpy as np

        labels = torch.as_tensor(target["labels"]).reshape(-1).numpy()
        return np.bincount(labels[labels < num_classes], minlength=num_classes)[:num_classes], None

    def answer(self, predictor: "InstancePredictor", image: torch.Tensor, result: dict, *, meta: dict,
               overlay: bool = False) -> dict:
        """{"instances": COCO-style detections [{"label", "class_name", "score", "box" x1 y1 x2 y2, "segmentation"
        (RLE)}]}, every detection the model keeps, as `pixelwise predict` writes them."""
        import numpy as np

        from pixelwise.output.predictions import draw_instances, instance_map
        from pixelwise.output.visualize import png_base64

        h, w = image.shape[-2:]
        out = {"height": h, "width": w, "classes": list(predictor.class_names or []),
               "instances": [{"label": int(k), "class_name": n, "score": float(s), "box": [float(v) for v in b],
                              "segmentation": rle} for k, n, s, b, rle in
                             zip(result["labels"].tolist(), result["class_names"], result["scores"].tolist(),
                                 result["boxes"].tolist(), masks_to_rle(result["masks"]))]}
        if overlay:
            ids = instance_map(result["masks"], result["scores"], predictor.score_threshold)
            captions = [f"{n} {float(s):.2f}" for n, s in zip(result["class_names"], result["scores"])]
            out["overlay_png"] = png_base64(np.asarray(draw_instances(image, ids, result["boxes"], captions)))
        return out


# The exported parts of a Mask R-CNN, the ones with weights: (submodule path, how its outputs are grouped,
# dimensions that vary at run time). C4 models have res5, FPN models do not.
EXPORT_PARTS = {
    "backbone": ("backbone", "list", (0, 2, 3)),
    "rpn_head": ("rpn.head", "lists:2", (0, 2, 3)),
    "res5": ("roi_heads.res5", "tensor", (0,)),
    "box_head": ("roi_heads.box_head", "tuple", (0,)),
    "mask_head": ("roi_heads.mask_head", "tensor", (0,)),
}


class PooledPart(nn.Module):
    """An exported RoI part with its RoIAlign: (boxes (K, 4) and batch indices (K,) of the RoIs placed on the
    levels' atlas, *feature maps) -> the part's outputs. The pooler's `on_atlas` is one roi_align over the atlas
    (ONNX RoiAlign / OpenVINO ROIAlign of the graph's inputs); its `atlas_rois` places the RoIs, in PyTorch before
    the graph (graph_inputs, HandOver)."""

    # In the export's metadata, so the loader hands the graph these. The first such exports (2026-12-06, before
    # the fix) have "rois+features": the RoIs (K, 5) as they are, placed inside the graph, where OpenVINO's bf16
    # rounds them; they still load.
    export_meta = {"input": "boxes+index+features"}
    LEGACY_INPUT = "rois+features"
    varargs_from = 2  # forward(boxes, index, *features): torch.export groups the inputs from the third on
    padded_inputs = 2  # boxes and index: padded together to the RoI buckets (RuntimeModule)

    def __init__(self, pooler: nn.Module, part: nn.Module) -> None:
        super().__init__()
        self.pooler, self.part = pooler, part  # the pooler has no weights

    def forward(self, boxes: torch.Tensor, index: torch.Tensor, *features: torch.Tensor):
        return self.part(self.pooler.on_atlas(list(features), boxes, index))

    @staticmethod
    def graph_inputs(pooler: nn.Module, features, rois: torch.Tensor) -> tuple:
        """What the graph takes where the pooler would have run: (boxes, batch indices of the RoIs placed on the
        atlas, *features)."""
        placed = pooler.atlas_rois(features, rois)
        return (placed[:, 1:].contiguous(), placed[:, 0].contiguous(), *features)


class HandOver(nn.Module):
    """In place of a pooler whose RoIAlign runs in the exported graph after it: hands on PooledPart.graph_inputs;
    with pooler=None (the first in-graph exports, "rois+features") (rois as they are, *features)."""

    def __init__(self, pooler: nn.Module | None = None) -> None:
        super().__init__()
        self.pooler = pooler

    def forward(self, features, rois):
        return (rois, *features) if self.pooler is None else PooledPart.graph_inputs(self.pooler, features, rois)


def _pooled_parts(model: nn.Module) -> dict[str, str]:
    """{part: pooler attribute of roi_heads} of the exported parts whose input is a RoIAlign pooling, which then
    goes in their graph: C4's res5 (mask_pooler), FPN's box_head (box_pooler) and mask_head (mask_pooler). RoIPool
    and RoIWarp (the Table 2c ablations) stay in PyTorch."""
    heads = getattr(model, "roi_heads", None)
    if heads is None or not hasattr(heads, "box_pooler"):
        return {}
    feeds = {"res5": "mask_pooler"} if heads.res5 is not None else {"box_head": "box_pooler", "mask_head": "mask_pooler"}
    return {part: pooler for part, pooler in feeds.items()
            if getattr(getattr(heads, pooler), "method", None) == "roi_align"}


def _hook_part_inputs(model: nn.Module, record) -> list:
    """Forward pre-hooks calling record(part, inputs) with each exported part's graph inputs: the part's own inputs,
    or for a part with its pooling in the graph, PooledPart.graph_inputs (what its graph takes)."""
    pooled = _pooled_parts(model)
    handles = []
    for name, module in _export_modules(model).items():
        if name in pooled:
            def hook(m, args, name=name):  # returns None: the module's own inputs go on unchanged
                record(name, PooledPart.graph_inputs(m, *args))

            handles.append(model.get_submodule(f"roi_heads.{pooled[name]}").register_forward_pre_hook(hook))
        else:
            def hook(m, args, name=name):
                record(name, args)

            handles.append(module.register_forward_pre_hook(hook))
    return handles


def _export_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The EXPORT_PARTS the model has (with weights), by name."""
    found = {}
    for name, (path, _, _) in EXPORT_PARTS.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
            found[name] = module
    return found


def _flat(args) -> list[torch.Tensor]:
    out = []
    for a in args:
        out += _flat(a) if isinstance(a, (list, tuple)) else [a]
    return out


def _clone(a):
    if isinstance(a, torch.Tensor):
        return a.detach().clone()
    return type(a)(_clone(v) for v in a) if isinstance(a, (list, tuple)) else a


def _at_least_two(a, dims):
    """The example with every dynamic dimension of size >= 2 (export fixes dimensions of size 0 and 1)."""
    if isinstance(a, (list, tuple)):
        return type(a)(_at_least_two(v, dims) for v in a)
    for d in dims:
        if d < a.dim() and a.shape[d] < 2:
            a = a.new_zeros((*a.shape[:d], 2, *a.shape[d + 1:])) if a.shape[d] == 0 else torch.cat([a, a], dim=d)
    return a


class InstancePredictor:
    """Detections of a Mask R-CNN for images as users have them (a path, a PIL image, a uint8 array (H, W)
    or (H, W, C), or a float tensor (3, H, W) in [0, 1]); grey images are repeated to RGB.

    Calling it returns {"boxes" (N, 4) x1 y1 x2 y2, "labels" (N,), "scores" (N,), "masks" (N, H, W) bool,
    "class_names": [N names]} on the CPU, every detection the model keeps (score_threshold is what
    `pixelwise predict` uses for its instance maps and overlays); `many` does the same for a list of
    images, `batch_size` of one size at a time. precision and channels_last are the fast path for the
    network (pixelwise.engine.precision); boxes, scores and masks leave it in float32. tile / overlap /
    tile_scale: sliced inference (`detect`).
    """

    def __init__(self, model: nn.Module, device: torch.device, *, class_names=None, score_threshold: float = 0.5,
                 precision: str = "fp32", channels_last: bool = False, batch_size: int = 1, tile: int | None = None,
                 overlap: int = 0, tile_scale: str = "window"):
        self.model, self.device, self.class_names, self.score_threshold = model, device, class_names, score_threshold
        self.precision, self.batch_size, self.tile, self.overlap = precision, batch_size, tile, overlap
        self.tile_scale = tile_scale
        autocast(device, precision, "infer.precision")  # checked now
        if tile is not None and not 0 <= overlap < tile:
            raise ConfigError(f"infer.overlap must be in [0, tile={tile}), got {overlap}")
        if tile_scale not in TILE_SCALES:
            raise ConfigError(f"infer.tile_scale must be one of {', '.join(TILE_SCALES)}, got {tile_scale!r}")
        if channels_last and isinstance(model, nn.Module):
            model.to(memory_format=torch.channels_last)

    def __call__(self, image, name: str = "the image") -> dict:
        return self.many([image], [name])[0]

    def read(self, image, name: str = "the image") -> torch.Tensor:
        """An image as users have it -> (3, H, W) float in [0, 1], grey repeated to RGB (pixelwise.data.io.as_image)."""
        from pixelwise.data.io import as_image

        return as_image(image, channels=3, name=name)

    def many(self, images: list, names: list[str] | None = None) -> list[dict]:
        """Detections of each image; consecutive images of one size go through the model together, up to
        batch_size (images of other sizes would be padded to a common size, which changes the features near
        their borders: a batch gives the same detections as one image at a time)."""
        names = names or [f"image {i}" for i in range(len(images))]
        tensors = [self.read(im, n) for im, n in zip(images, names)]
        out, start = [], 0
        while start < len(tensors):
            end = start + 1
            while (end < len(tensors) and end - start < self.batch_size
                   and tensors[end].shape == tensors[start].shape):
                end += 1
            out += detect(self.model, tensors[start:end], self.device, self.precision, tile=self.tile,
                          overlap=self.overlap, tile_scale=self.tile_scale, batch_size=self.batch_size)
            start = end
        labels = self.class_names or []
        for d in out:
            d["class_names"] = [labels[k] if k < len(labels) else f"class{k}" for k in d["labels"].tolist()]
        return out


def collate_instances(batch: list) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """[(image, target)] -> ([images], [targets]) as plain tensors; images keep their own sizes."""
    images = [b[0].as_subclass(torch.Tensor) for b in batch]
    targets = [{k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in b[1].items()}
               for b in batch]
    return images, targets


def instances_to_device(images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device,
                        non_blocking: bool = False):
    images = [img.to(device, non_blocking=non_blocking) for img in images]
    targets = [{k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def max_detections(model: nn.Module) -> int:
    """Detections per image the model keeps (at least COCO's 100), so that AP counts all of them."""
    heads = getattr(model, "roi_heads", None)
    return max(100, int(getattr(heads, "detections_per_img", 100)))


@torch.no_grad()
def detect(model: nn.Module, images: list[torch.Tensor], device: torch.device, precision: str = "fp32", *,
           tile: int | None = None, overlap: int = 0, tile_scale: str = "window", batch_size: int = 1,
           scale: float | None = None) -> list[dict[str, torch.Tensor]]:
    """The model's detections for a list of images, on the CPU, the model left in the mode it was in.

    tile: sliced inference (SAHI, Akyon et al. 2022) for large images with small objects: each image is cut
    into tile x tile windows that overlap their neighbours by `overlap` pixels (the last ones flush with the
    far edges), each window goes through the model (batch_size at a time), and the windows' detections are
    merged by greedy non-maximum merging on masks (pixelwise.ops.merge). An object is kept whole if the overlap
    exceeds its size. tile_scale "window" resizes each window to the model's input size as SAHI does (it
    magnifies small objects); "image" resizes it by the factor the whole image would get, the scale a model
    trained on whole images saw. scale: resize every image by this factor instead of to the model's size.
    """
    if tile is not None:
        return [_detect_sliced(model, image, device, precision, tile, overlap, tile_scale, batch_size)
                for image in images]
    was_training = model.training
    model.eval()
    try:
        with autocast(device, precision, "infer.precision"):
            kwargs = {"scale": scale} if scale is not None else {}
            out = as_float(model([img.to(device) for img in images], detect=True, **kwargs)["detections"])
    finally:
        model.train(was_training)
    return [{k: v.cpu() for k, v in d.items()} for d in out]


def _detect_sliced(model: nn.Module, image: torch.Tensor, device: torch.device, precision: str, tile: int,
                   overlap: int, tile_scale: str, batch_size: int) -> dict[str, torch.Tensor]:
    from pixelwise.engine.predictor import tile_positions
    from pixelwise.ops.merge import merge_detections, shift_detections

    height, width = image.shape[-2:]
    th, tw = min(tile, height), min(tile, width)
    origins = [(y, x) for y in tile_positions(height, th, tile - overlap) for x in tile_positions(width, tw, tile - overlap)]
    scale = model.image_scale((height, width)) if tile_scale == "image" else None
    found = []
    for start in range(0, len(origins), batch_size):
        batch = origins[start:start + batch_size]
        windows = [image[..., y:y + th, x:x + tw] for y, x in batch]
        for (y, x), d in zip(batch, detect(model, windows, device, precision, scale=scale)):
            found.append(shift_detections(d, y, x, height, width))
    merged = {k: torch.cat([d[k] for d in found]) for k in found[0]}
    return merge_detections(merged, threshold=0.5)


@torch.no_grad()
def evaluate_instances(model: nn.Module, dataset, device: torch.device, *, batch_size: int = 1,
                       progress: bool = True, precision: str = "fp32", channels_last: bool = False,
                       tile: int | None = None, overlap: int = 0, tile_scale: str = "window") -> dict:
    """COCO box and mask AP (bbox_AP, segm_AP, ...; see metrics.coco_evaluate) of `model` on `dataset`.

    The ground truth is the dataset as read (with its transforms), converted by data.to_coco, so
    crowd regions are scored as COCO does.
    """
    gt = to_coco(dataset)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    detections = []
    indices = range(0, len(dataset), batch_size)
    for start in track(indices, desc="evaluate", unit="batch", enabled=progress, leave=False):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        for (_, target), d in zip(samples, detect(model, [s[0].as_subclass(torch.Tensor) for s in samples], device,
                                                  precision, tile=tile, overlap=overlap, tile_scale=tile_scale,
                                                  batch_size=batch_size)):
            detections.append({"image_id": int(target["image_id"]), "boxes": d["boxes"], "scores": d["scores"],
                               "labels": d["labels"], "masks": masks_to_rle(d["masks"])})
    metrics = coco_evaluate(gt, detections, dataset.category_ids, max_dets=max_detections(model))
    metrics["num_images"] = len(dataset)
    metrics["num_detections"] = sum(len(d["scores"]) for d in detections)
    return metrics
