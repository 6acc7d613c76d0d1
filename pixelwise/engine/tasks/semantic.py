"""Semantic segmentation (FCN, U-Net, FC-DenseNet): a class per pixel.

Batches are (images (B,C,H,W), {"mask": (B,H,W), optional "weight": (B,H,W)}); the loss is the
configured cross-entropy; evaluation scores the confusion matrix (FCN section 5), plus the ISBI 2012
challenge scores on datasets that declare them. Input normalisation is data.mean / data.std, applied
by the training transforms and by the Predictor with the same Normalize.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from pixelwise.crf import crf_settings
from pixelwise.data.transforms import build_transforms
from pixelwise.data.stats import class_frequencies, label_census, median_frequency_weights
from pixelwise.engine.data import collate
from pixelwise.engine.precision import channels_last
from pixelwise.engine.predictor import Predictor, forward_aligned, geometry
from pixelwise.engine.tasks import Task, register_task
from pixelwise.errors import ConfigError, DataError
from pixelwise.config import loss_terms
from pixelwise.losses.semantic import cross_entropy, dice_loss, lovasz_softmax
from pixelwise.metrics import (ISBI_METRICS, SEMANTIC_METRICS, ConfusionMatrix, challenge_scores, isbi_scores,
                               mean_isbi_scores)
from pixelwise.metrics.boundary import TRIMAP_WIDTHS, trimap_counts, trimap_metrics
from pixelwise.models.crfasrnn import CRFasRNN
from pixelwise.progress import progress as track
from pixelwise.output.predictions import predict_to_folder
from pixelwise.registry import model_arguments


@register_task
class SemanticTask(Task):
    name = "semantic"
    metrics = SEMANTIC_METRICS
    summary_metrics = ("miou", "pixel_acc", "mean_acc", "fwiou", "membrane_iou", "adapted_rand_error", "pixel_error")

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.class_weights: torch.Tensor | None = None
        self.ignore_index: int | None = None

    def check_config(self, meta: dict) -> None:
        """The model's input channels, data.mean / data.std and the dataset's images must agree."""
        cfg = self.cfg
        channels, name = meta["in_channels"], cfg.data.dataset
        if len(cfg.data.mean) not in (1, channels):
            raise ConfigError(f"data.mean has {len(cfg.data.mean)} values but the images of {name!r} have {channels} "
                              f"channel{'s' if channels > 1 else ''}; expected 1 value or {channels}")
        if cfg.infer.crf is not None:
            crf_settings(cfg.infer.crf)  # its keys and values, before anything runs
        if cfg.model.crf is not None:
            crf_settings(cfg.model.crf, key="model.crf")
            if cfg.infer.crf is not None:
                raise ConfigError("model.crf trains a CRF with the network (CRF-as-RNN) and runs it after the network "
                                  "at inference; infer.crf would run a second CRF after it: set infer.crf=null")
        extra, offered = cfg.model.args.get("extra_heads") or {}, meta.get("extra_targets") or {}
        for key, classes in extra.items():
            if key not in offered or classes != len(offered[key]):
                want = ", ".join(f"{k}: {len(v)}" for k, v in offered.items()) or "none"
                raise ConfigError(f"model.args.extra_heads has {key}: {classes}, but {name!r} offers the extra labels "
                                  f"{{{want}}}; each extra head needs labels of its name and number of classes")
        model_channels = cfg.model.args.get("in_channels", model_arguments(cfg.model.name).get("in_channels"))
        if isinstance(model_channels, int) and model_channels != channels:
            raise ConfigError(f"model.args.in_channels={model_channels} but the images of {name!r} have {channels} "
                              f"channel{'s' if channels > 1 else ''}; set model.args.in_channels={channels}")

    def transforms(self, *, train: bool, ignore_index: int | None, crop_size: int | None, context: int):
        """Flips, rot90, elastic deformation, crop and intensity jitter as data.augment enables them (training),
        then data.mean / data.std (pixelwise.data.transforms.build_transforms)."""
        return build_transforms(self.cfg.data, train=train, ignore_index=ignore_index, crop_size=crop_size,
                                context=context)

    def check(self, model: nn.Module, train_ds) -> None:
        """A training crop no larger than the longest side of the training images (read from their headers):
        a larger one would be padding only, at crop_size**2 pixels a sample (5000 on 96x96 images: 23 GB)."""
        from pixelwise.data.io import image_size

        crop, paths = self.cfg.data.augment.crop_size, getattr(train_ds, "image_paths", None)
        if crop is None:
            return
        if paths:
            sizes = ((image_size(p), repr(str(p))) for p in paths)
        elif hasattr(train_ds, "image_size"):  # images that are not files of their own (ISBI 2012's TIFF volumes)
            sizes = ((train_ds.image_size(i), train_ds.image_location(i)) for i in range(len(train_ds)))
        else:
            return
        largest = None
        for size, where in sizes:
            if max(size) >= crop:  # usually the first one
                return
            if largest is None or max(size) > max(largest[0]):
                largest = size, where
        if largest is None:
            return
        (h, w), where = largest
        raise ConfigError(f"data.augment.crop_size={crop} is larger than every training image of "
                          f"{self.cfg.data.dataset!r} (the largest is {h}x{w} pixels, {where}); expected "
                          f"at most {max(h, w)}, or null to train on whole images")

    def init_weights(self, model: nn.Module, state: dict, source: str) -> None:
        """A coarser FCN's weights for staged training (FCN section 4.2: FCN-32s -> 16s -> 8s), else any model's."""
        if hasattr(model, "load_staged"):
            model.load_staged(state, source=source)
        else:
            super().init_weights(model, state, source)

    def prepare(self, train_ds, device: torch.device, progress: bool, val_ds=None) -> None:
        self.ignore_index = train_ds.ignore_index
        counts = check_training_labels(train_ds, self.cfg.model.num_classes, progress)
        if val_ds is not None:  # best.pt is chosen on it: its labels must score what training learns
            check_training_labels(val_ds, self.cfg.model.num_classes, progress, role="validation")
        weights = resolve_class_weights(self.cfg, train_ds, progress, counts)
        self.class_weights = None if weights is None else weights.to(device)

    def collate(self, batch: list):
        return collate(batch)

    def to_device(self, batch, device: torch.device):
        images, targets = batch
        images = channels_last(images.to(device, non_blocking=True), self.cfg.train.channels_last)
        return images, {k: v.to(device, non_blocking=True) for k, v in targets.items()}

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        """{term: weight x loss} for each term of train.loss ({"ce": ...} by default), and {"aux": ...} (the same
        sum on the auxiliary head, weighted by train.aux_loss_weight) for a model with one."""
        images, targets = batch
        if self.cfg.data.augment.crop_size is not None:  # crops carry their context: the output predicts their centre
            logits = model(images)
            targets = center_crop_like(targets, logits["out"] if isinstance(logits, dict) else logits)
        else:
            logits = forward_aligned(model, images)
        t = self.cfg.train

        def terms(x: torch.Tensor, key: str = "mask") -> dict[str, torch.Tensor]:  # float32 whatever the autocast
            # An extra head (key: its target's name) has classes of its own: the class weights are the main head's.
            x, mask, out = x.float(), targets[key], {}
            weights = self.class_weights if key == "mask" else None
            for name, weight in loss_terms(t.loss).items():
                if name in ("ce", "focal"):  # per pixel: the weight map, class weights and loss sampling apply
                    value = cross_entropy(x, mask, weight_map=targets.get("weight"), class_weights=weights,
                                          ignore_index=self.ignore_index, sample_p=t.loss_sampling_p,
                                          reduction=t.loss_reduction, gamma=t.focal_gamma if name == "focal" else 0)
                elif name == "dice":
                    value = dice_loss(x, mask, ignore_index=self.ignore_index, class_weights=weights)
                else:
                    value = lovasz_softmax(x, mask, ignore_index=self.ignore_index)
                out[name if key == "mask" else f"{key}_{name}"] = weight * value
            return out

        if not isinstance(logits, dict):
            return terms(logits)
        out = terms(logits["out"])
        if "aux" in logits:
            out["aux"] = t.aux_loss_weight * sum(terms(logits["aux"]).values())
        for key in logits.keys() - {"out", "aux"}:  # extra heads (FCN section 5: SIFT Flow's geometric labels)
            out.update(terms(logits[key], key))
        return out

    def predictor(self, model: nn.Module, device: torch.device, *, tta: bool | None = None, class_names=None,
                  refine: bool = True) -> Predictor:
        """The predictor cfg.infer describes; `tta` overrides infer.tta (False leaves out infer.scales too) and
        refine=False leaves out infer.crf (validation during training skips all of them). A CRF-as-RNN model's
        network runs in the predictor's passes and its learned CRF in the output step, refine or not: it is part
        of the model."""
        from pixelwise.data import dataset_meta

        i, data = self.cfg.infer, self.cfg.data
        precision, nhwc = self.inference_precision()
        model, refinement = (model.net, model.crf) if isinstance(model, CRFasRNN) else (model, None)
        return Predictor(model, device=device, tile=i.tile, overlap=i.overlap, tta=i.tta if tta is None else tta,
                         batch_size=i.batch_size, precision=precision, channels_last=nhwc,
                         channels=dataset_meta(data)["in_channels"], mean=data.mean, std=data.std,
                         threshold=i.threshold, crf=i.crf if refine else None, refinement=refinement,
                         class_names=class_names, scales=i.scales if tta is not False else None)

    def fold_example(self, model: nn.Module) -> tuple[str, tuple]:
        from pixelwise.data import dataset_meta

        side = geometry(model, 64)[0]
        device = next(model.parameters()).device
        example = torch.rand(1, dataset_meta(self.cfg.data)["in_channels"], side, side, device=device)
        return "net" if isinstance(model, CRFasRNN) else "", (example,)  # a CRF-as-RNN's BatchNorms are its net's

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset, device: torch.device, *, progress: bool = True,
                 tta: bool | None = None, refine: bool = True) -> dict:
        """Metrics of `model` on every sample of `dataset` (whole images, as configured in cfg.infer)."""
        predictor = self.predictor(model, device, tta=tta, refine=refine)
        cm = ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index)
        isbi = set(ISBI_METRICS) <= set(getattr(dataset, "metrics", ()))  # the dataset declares the ISBI scores
        scores, per_image, trimap = [], [], {k: [0, 0] for k in TRIMAP_WIDTHS}
        heads = (model.net if isinstance(model, CRFasRNN) else model)
        heads = list(getattr(heads, "extra_heads", None) or [])
        targets = getattr(dataset, "extra_targets", {})
        extra = {k: ConfusionMatrix(len(targets[k]), ignore_index=dataset.ignore_index) for k in heads if k in targets}
        membrane_probs, true_membranes = [], []
        for i in track(range(len(dataset)), desc="evaluate", unit="img", enabled=progress, leave=False):
            image, target = dataset[i]
            mask = target["mask"].as_subclass(torch.Tensor)
            image = image.as_subclass(torch.Tensor)
            if extra:  # the extra heads from the same passes as the main one
                every = predictor.predict_heads(image)
                probs = every["out"]
                for key, extra_cm in extra.items():
                    extra_cm.update(every[key].argmax(0), target[key].as_subclass(torch.Tensor))
            else:
                probs = predictor.predict_probs(image)
            pred = predictor.postprocess(probs, predictor.denormalize(image))
            one = ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index)
            one.update(pred, mask)
            cm.matrix += one.matrix
            per_image.append(one.compute()["miou"] if one.matrix.sum() else None)
            for k, (correct, total) in trimap_counts(pred, mask, dataset.ignore_index).items():
                trimap[k][0] += correct
                trimap[k][1] += total
            if isbi:
                scores.append(isbi_scores(pred.numpy() == 1, mask.numpy() == 1))
                membrane_probs.append(probs[1].float().cpu().numpy())
                true_membranes.append(mask.numpy() == 1)
        if cm.matrix.sum() == 0:
            raise DataError(f"every target pixel of the {len(dataset)} evaluation images is ignore_index="
                            f"{dataset.ignore_index}; expected some labelled pixels to score")
        metrics = cm.compute()
        if isbi:
            metrics["membrane_iou"] = metrics["per_class_iou"][1]
            metrics.update(mean_isbi_scores(scores))  # of the predicted labels (argmax, or threshold / CRF)
            # The challenge's own scores: the best over its sweep of thresholds of the network's membrane probability
            metrics.update(challenge_scores(membrane_probs, true_membranes))
        for key, extra_cm in extra.items():  # geo_pixel_acc, geo_mean_acc, geo_miou, geo_fwiou, ...
            scored = extra_cm.compute()
            metrics.update({f"{key}_{m}": scored[m] for m in ("pixel_acc", "mean_acc", "miou", "fwiou")})
            metrics[f"{key}_per_class_iou"] = scored["per_class_iou"]
        metrics.update(trimap_metrics(trimap))  # accuracy near the boundaries, where a CRF acts
        metrics["num_images"] = len(dataset)
        metrics["confusion_matrix"] = cm.matrix.tolist()  # rows: ground truth, columns: prediction
        metrics["per_image_miou"] = per_image  # for the report's best and worst images
        names = getattr(dataset, "class_names", None)
        if names is not None:
            metrics["class_names"] = list(names)  # the order of per_class_iou, per_class_acc and dice
        return metrics

    def report_examples(self, model: nn.Module, dataset, device: torch.device, metrics: dict, count: int = 2) -> list:
        """The `count` best and worst validation images by their mean IoU: image | ground truth | prediction."""
        import numpy as np
        from PIL import Image

        from pixelwise.data import dataset_meta
        from pixelwise.output.visualize import overlay, palette_for, to_rgb

        scores = metrics.get("per_image_miou") or []
        ranked = sorted((s, i) for i, s in enumerate(scores[: len(dataset)]) if s is not None)
        picks = [("best", i, s) for s, i in ranked[::-1][:count]]
        picks += [("worst", i, s) for s, i in ranked[:count] if i not in {p[1] for p in picks}]
        palette = palette_for(dataset.num_classes, dataset_meta(self.cfg.data)["palette"])
        predictor, names = self.predictor(model, device, tta=False), getattr(dataset, "names", None)
        examples = []
        for kind, i, score in picks:
            image, target = dataset[i]
            image = image.as_subclass(torch.Tensor)
            pred = predictor.postprocess(predictor.predict_probs(image), predictor.denormalize(image)).numpy()
            truth = target["mask"].as_subclass(torch.Tensor).numpy()
            panel = [to_rgb(image), overlay(image, truth, palette), overlay(image, pred, palette)]
            picture = Image.fromarray(np.concatenate(panel, axis=1))
            label = names[i] if names else f"#{i}"
            examples.append((f"{kind}: {label}, mean IoU {score:.3f} (image | ground truth | prediction)", picture))
        return examples

    # Export (pixelwise.export): the whole network in one graph, the recipe's normalisation inside; a CRF-as-RNN's
    # learned CRF is not in the graph: it runs after it, its parameters in the file's metadata (export_state).
    export_input = "float32 (N, C, H, W) in [0, 1], normalised inside the graph"

    def export_parts(self, model: nn.Module, sample: torch.Tensor) -> dict:
        """{"model": (module, example inputs, output structure, dynamic dimensions)}; `sample` is a normalised
        (C, H, W) image. Batch, height and width stay dynamic; a model's size rule is kept (geometry)."""
        model = model.net if isinstance(model, CRFasRNN) else model
        if getattr(model, "extra_heads", None):
            raise ConfigError("this model has extra heads (model.args.extra_heads); exporting them is not supported "
                              "yet: export a one-headed model, or run it in PyTorch")
        data = self.cfg.data
        graph = Normalized(model, data.mean, data.std) if data.mean is not None else model
        C, H, W = sample.shape
        in_side = geometry(model, min(H, W, 256))[0]
        example = torch.rand(2, C, in_side, in_side)  # batch 2: a batch of 1 would be fixed to 1 in the graph
        return {"model": (graph.eval(), (example,), "tensor", (0, 2, 3))}

    def exported_model(self, model: nn.Module, parts: dict, graph) -> nn.Module:
        """The exported graph in place of the whole model (of a CRF-as-RNN's network: its CRF runs after the graph);
        the graph normalises itself, so the Predictor's normalised windows are denormalised before it."""
        data = self.cfg.data
        normalize = (data.mean, data.std) if data.mean is not None else None
        if isinstance(model, CRFasRNN):
            model.net = graph(next(iter(parts)), denormalize=normalize, geometry=model.net)
            return model
        return graph(next(iter(parts)), denormalize=normalize, geometry=model)

    def export_state(self, model: nn.Module) -> dict:
        """A CRF-as-RNN's learned CRF parameters, {name: nested lists}."""
        if not isinstance(model, CRFasRNN):
            return {}
        return {name: p.detach().cpu().tolist() for name, p in model.named_parameters() if name.startswith("crf.")}

    def export_sample(self, predictor: Predictor, image) -> torch.Tensor:
        return predictor.preprocess(image, str(image))

    def calibration_inputs(self, predictor: Predictor, parts: dict, images: list[torch.Tensor]) -> dict[str, list]:
        """The windows the predictor gives the network, in [0, 1] as the graph takes them (it normalises inside)."""
        data, seen = self.cfg.data, []
        net = predictor.model.net if isinstance(predictor.model, CRFasRNN) else predictor.model
        mean, std = (torch.tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1) if v is not None else None
                     for v in (data.mean, data.std))

        def record(module, args):
            x = args[0].detach().float().cpu()
            seen.append([(x * std + mean if mean is not None else x).numpy()])

        handle = net.register_forward_pre_hook(record)
        try:
            for image in images:
                predictor.predict_probs(image)
        finally:
            handle.remove()
        return {next(iter(parts)): seen}

    def compare_export(self, reference: Predictor, exported: Predictor, sample: torch.Tensor, tolerance: dict) -> dict:
        """The largest probability difference and the share of pixels with the same label."""
        p, q = reference.predict_probs(sample), exported.predict_probs(sample)
        diff = (p - q).abs().max().item()
        agreement = (p.argmax(0) == q.argmax(0)).float().mean().item()
        ok = (tolerance["prob"] is None or diff <= tolerance["prob"]) and agreement >= tolerance["agreement"]
        return {"max_prob_diff": diff, "label_agreement": agreement, "agrees": ok,
                "summary": f"largest probability difference {diff:.2e}, {100 * agreement:.3f}% of the pixels with "
                           "the same label"}

    def write_predictions(self, predictor: Predictor, paths, out, *, meta: dict, protected=()) -> tuple[list, str]:
        save = self.cfg.infer.save_probs
        written = predict_to_folder(predictor, paths, out, palette=meta["palette"], save_probs=save,
                                    class_names=meta["class_names"], note=meta.get("label_note"), protected=protected)
        return written, f"index PNG + _overlay.png{' + _probs.npy' if save else ''}; classes.json says what each pixel value means"

    def census(self, target, num_classes: int, ignore_index: int | None):
        """Pixels of each class, and ignored pixels."""
        import numpy as np

        mask = torch.as_tensor(target["mask"]).reshape(-1)
        valid = mask != ignore_index if ignore_index is not None else torch.ones_like(mask, dtype=torch.bool)
        counts = np.bincount(mask[valid].numpy(), minlength=num_classes)[:num_classes]
        return counts, int((~valid).sum())

    def answer(self, predictor: Predictor, image: torch.Tensor, result: torch.Tensor, *, meta: dict,
               overlay: bool = False) -> dict:
        """{"labels_png": the label map as a base64 index PNG (16-bit past 256 classes)}, as `pixelwise predict`
        writes it."""
        import numpy as np

        from pixelwise.output.visualize import overlay as draw, palette_for, png_base64

        labels, names = result.cpu().numpy(), list(predictor.class_names or [])
        out = {"height": labels.shape[0], "width": labels.shape[1], "classes": names,
               "labels_png": png_base64(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16))}
        if overlay:
            out["overlay_png"] = png_base64(draw(image, labels, palette_for(len(names), meta.get("palette"))))
        return out


class Normalized(nn.Module):
    """model((x - mean) / std): the recipe's input normalisation inside an exported graph."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def center_crop_like(targets: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Crop (B,H,W) targets to the centre region that (B,K,h,w) logits predict."""
    h, w = logits.shape[-2:]
    out = {}
    for k, t in targets.items():
        top, left = (t.shape[-2] - h) // 2, (t.shape[-1] - w) // 2
        out[k] = t[..., top : top + h, left : left + w]
    return out


def check_training_labels(train_ds, num_classes: int, progress: bool, role: str = "training"):
    """Read the masks of a split once (when the dataset lists them) and refuse labels that cannot train, or
    (role="validation") that would score no foreground.

    Returns the (N, K) class counts (for median-frequency weights), or None for datasets without mask files.
    """
    paths = getattr(train_ds, "mask_paths", None)
    if not paths:
        return None
    counts, ignored = label_census(train_ds, num_classes, train_ds.ignore_index, progress=progress)
    if num_classes >= 2 and counts[:, 1:].sum() == 0:
        ig = train_ds.ignore_index
        only = f"class 0 and ignore_index={ig}" if ignored.sum() else "class 0"
        fix = (f" If {ig} marks the foreground (binary masks stored as 0/{ig}), map it to class 1 with "
               f"-o data.label_map={{{ig}: 1}} (or rewrite the masks with 1 for foreground)") if ignored.sum() else ""
        effect = "learnt, so training" if role == "training" else "scored, so validation (and best.pt chosen on it)"
        raise DataError(f"the {len(paths)} {role} masks (for example {str(paths[0])!r}) hold only {only}: no pixel "
                        f"of the other {num_classes - 1} classes would be {effect} would be wrong.{fix}")
    return counts


def resolve_class_weights(cfg, train_ds, progress: bool = False, counts=None) -> torch.Tensor | None:
    """train.class_weights as a (K,) tensor; "median_frequency" counts the training masks (FCN section 4.3)."""
    spec, k = cfg.train.class_weights, cfg.model.num_classes
    if spec is None:
        return None
    if spec == "median_frequency":
        if counts is None:
            counts = class_frequencies(train_ds, k, train_ds.ignore_index, progress=progress)
        return torch.as_tensor(median_frequency_weights(counts), dtype=torch.float32)
    if len(spec) != k:
        raise ConfigError(f"train.class_weights has {len(spec)} values, expected one per class ({k})")
    return torch.tensor(spec, dtype=torch.float32)

