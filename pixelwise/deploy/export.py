"""`pixelwise export`: a checkpoint as an ONNX, OpenVINO or torch.export file, checked on a real image.

What is in the graph:

- semantic models (FCN, U-Net, FC-DenseNet): the whole network, with the input normalisation of the
  training recipe inside (input: float32 (N, C, H, W) in [0, 1]; output: logits (N, K, H', W')).
  Batch, height and width are dynamic. Models with a size rule keep it: the valid-convolution U-Net
  takes sides 16k + 124 (depth 4) and gives 16k - 60 output pixels (`model.input_size_for`,
  `model.output_size`), FC-DenseNet sides divisible by 32. The Predictor's tiling and TTA run around
  the graph, as around the PyTorch model.
- Mask R-CNN: four graphs, the parts with weights: `backbone` (ResNet + FPN, or the C4 trunk:
  normalised, resized, padded batch -> feature maps), `rpn_head` (feature maps -> objectness and box
  deltas per level), `box_head` (pooled RoI features -> class logits and box deltas), `mask_head`
  (pooled RoI features -> mask logits), and `res5` for C4 models. Resizing and normalising the
  image, anchors, proposal decoding and NMS, RoIAlign / RoIPool / RoIWarp, box decoding, per-class
  NMS and mask pasting stay in PyTorch (they have no weights): `--runtime` runs the graphs inside the
  same MaskRCNN code, so detections follow the same rules. The backbone is the file named by --out;
  the others are STEM.PART.SUFFIX beside it.

Every file carries the training config and class names (ONNX metadata_props, OpenVINO rt_info,
a torch.export extra file), so `pixelwise eval` / `predict --checkpoint MODEL.onnx` need nothing else.
Before the files are put in place, the exported model runs on a real image beside the PyTorch one;
if they disagree (semantic: largest probability difference above 1e-3 or fewer than 99.9% of the
pixels with the same label; Mask R-CNN: a different number of detections, boxes more than 0.5 px
apart or fewer than 99.9% of the mask pixels the same) nothing is written; nor is anything when a file cannot
be written (a full disk, a read-only folder: an OutputError naming it). What the exporters print goes to a
temporary log, removed after a successful export and named by the error otherwise. An OpenVINO .xml records
the size and SHA-256 of its .bin, so a missing, truncated or foreign .bin is refused (runtime.read_openvino).
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from pixelwise.config import to_dict
from pixelwise.deploy.runtime import (FORMATS, META_KEY, WEIGHTS_KEY, _cause, default_runtime, load_exported, part_path,
                                      require, weights_id)
from pixelwise.errors import ConfigError, DataError, OutputError, PixelwiseError
from pixelwise.files import trusting_pickles

TOLERANCE = {"prob": 1e-3, "agreement": 0.999, "box_px": 0.5}


class Normalized(nn.Module):
    """model((x - mean) / std): the recipe's input normalisation inside the exported graph."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


# Mask R-CNN parts: (submodule path, how its outputs are grouped, dimensions that vary at run time)
MASK_RCNN_PARTS = {
    "backbone": ("backbone", "list", (0, 2, 3)),
    "rpn_head": ("rpn.head", "lists:2", (0, 2, 3)),
    "res5": ("roi_heads.res5", "tensor", (0,)),
    "box_head": ("roi_heads.box_head", "tuple", (0,)),
    "mask_head": ("roi_heads.mask_head", "tensor", (0,)),
}


def export(checkpoint, fmt: str, out, *, image=None, overrides: list[str] = (), progress: bool = True) -> dict:
    """Export `checkpoint` as `fmt` ("onnx", "openvino", "torch-export") to `out`; returns what was checked.

    `image`: the image to compare the exported model with PyTorch on (default: the first image of the
    recipe's validation split).
    """
    from pixelwise.engine.run import build_inference

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}, expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.suffix.lower() != FORMATS[fmt]:
        raise OutputError(f"--out {str(out)!r}: a {fmt} file is named *{FORMATS[fmt]}; use --out "
                          f"{out.with_suffix(FORMATS[fmt])}")
    if fmt != "torch-export":
        require("onnx", f"--format {fmt}")
        require("onnxscript", f"--format {fmt}")
        if fmt == "openvino":
            require("openvino", "--format openvino")
    _say = print if progress else (lambda *a, **k: None)
    inference = build_inference(checkpoint, device="cpu", overrides=[*overrides, "infer.precision=fp32",
                                                                     "infer.channels_last=false", "infer.fold_bn=false"])
    cfg, model = inference.cfg, inference.model
    instance = inference.task.name == "instance"
    sample = _sample_image(inference, image)
    parts = _instance_parts(model, sample) if instance else _semantic_parts(model, cfg, sample)
    targets = {name: part_path(out, name, next(iter(parts))) for name in parts}
    if fmt == "openvino":
        targets.update({f"{n}.bin": p.with_suffix(".bin") for n, p in list(targets.items())})
    for p in targets.values():
        if p.exists():
            raise OutputError(f"{str(p)!r} exists; pixelwise export never overwrites a file: choose another --out "
                              "or remove it")
        if p.resolve() == Path(checkpoint).resolve():
            raise OutputError(f"--out {str(out)!r} is the checkpoint itself")
    if not out.parent.is_dir():
        what = "is a file, not a folder" if out.parent.exists() else "does not exist"
        raise OutputError(f"folder of --out {str(out.parent)!r} {what}")
    meta = {"format": fmt, "task": inference.task.name, "config": to_dict(cfg),
            "class_names": list(inference.predictor.class_names or []),
            "main": next(iter(parts)), "parts": {n: {"structure": s} for n, (_, _, s, _) in parts.items()},
            "input": ("normalised, resized and padded (B, 3, H, W) batch (see pixelwise.deploy.export)" if instance
                      else "float32 (N, C, H, W) in [0, 1], normalised inside the graph"),
            "checkpoint": Path(checkpoint).name, "pixelwise": __import__("pixelwise").__version__}
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".pixelwise-export-", dir=out.parent))
    except OSError as e:
        raise OutputError(f"cannot write {str(out)!r}: folder {str(out.parent)!r}: {e.strerror or e}") from None
    try:
        staged = {n: tmp / p.name for n, p in targets.items()}
        for i, (name, (module, args, structure, dims)) in enumerate(parts.items()):
            _say(f"export {name} ({i + 1}/{len(parts)}) as {fmt} ...", flush=True)
            _export_part(module, args, dims, fmt, staged[name], meta if i == 0 else None, target=targets[name])
        main = staged[next(iter(parts))]
        _say("comparing the exported model with PyTorch on "
             f"{sample['name']} ({default_runtime(fmt)}) ...", flush=True)
        with trusting_pickles(*staged.values()):  # the .pt2 files pixelwise just wrote
            exported = load_exported(main, default_runtime(fmt), overrides=list(overrides) + ["infer.precision=fp32",
                                                                                           "infer.channels_last=false"])
            report = _compare(inference, exported, sample)
        report.update(format=fmt, runtime=default_runtime(fmt), image=sample["name"],
                      parts=list(parts), files=[str(p) for p in targets.values()])
        if not report["agrees"]:
            raise ExportMismatch(f"the exported model disagrees with PyTorch on {sample['name']}: {report['summary']}; "
                                 "nothing was written")
        placed = []
        try:
            for name, p in targets.items():
                os.replace(staged[name], p)
                placed.append(p)
        except OSError as e:  # all the files or none
            for p in placed:
                p.unlink(missing_ok=True)
            raise OutputError(f"cannot write {str(targets[name])!r}: {e.strerror or e}; nothing was written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


class ExportMismatch(PixelwiseError):
    pass


def _sample_image(inference, image) -> dict:
    """{"name", "tensor"}: the image to compare on, as the task's predictor takes it (semantic: normalised
    (C, H, W); instance: (3, H, W) in [0, 1])."""
    from pixelwise.data.io import as_image
    from pixelwise.engine.run import build_datasets

    instance = inference.task.name == "instance"
    if image is not None:
        if instance:
            return {"name": str(image), "tensor": as_image(image, channels=3, name=str(image))}
        return {"name": str(image), "tensor": inference.predictor.preprocess(image, str(image))}
    try:
        ds = build_datasets(inference.cfg, inference.model, splits=("val",))["val"]
        first = ds[0][0].as_subclass(torch.Tensor)
    except (PixelwiseError, OSError) as e:
        raise DataError(f"the exported model is checked on a real image and the first validation image cannot be read "
                        f"({' '.join(str(e).split())[:200]}); give one with --image FILE") from None
    from pixelwise.data import split_spec

    return {"name": f"the first image of {inference.cfg.data.dataset} {split_spec(inference.cfg.data, 'val')}",
            "tensor": first}


def _semantic_parts(model: nn.Module, cfg, sample) -> dict:
    from pixelwise.engine.predictor import geometry

    data = cfg.data
    graph = Normalized(model, data.mean, data.std) if data.mean is not None else model
    C, H, W = sample["tensor"].shape
    side = min(H, W, 256)
    in_side = geometry(model, side)[0]
    example = torch.rand(2, C, in_side, in_side)  # batch 2: a batch of 1 would be fixed to 1 in the graph
    return {"model": (graph.eval(), (example,), "tensor", (0, 2, 3))}


def _instance_parts(model: nn.Module, sample) -> dict:
    """Each part's module and the inputs it gets on the sample image (captured by hooks)."""
    seen: dict[str, tuple] = {}
    handles = []
    for name, (path, _, _) in MASK_RCNN_PARTS.items():
        module = _submodule(model, path)
        if module is not None:
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: seen.setdefault(name, tuple(_clone(a) for a in args))))
    try:
        with torch.no_grad():
            model.eval()([sample["tensor"]], detect=True)
    finally:
        for h in handles:
            h.remove()
    parts = {}
    for name, (path, structure, dims) in MASK_RCNN_PARTS.items():
        module = _submodule(model, path)
        if module is None:
            continue
        if name not in seen:
            raise ConfigError(f"Mask R-CNN part {path} was not run on the sample image; cannot export it")
        parts[name] = (module.eval(), tuple(_at_least_two(a, dims) for a in seen[name]), structure, dims)
    rest = [n for n, p in model.named_parameters() if not any(n.startswith(v[0] + ".") for v in MASK_RCNN_PARTS.values())]
    if rest:  # every weight must be in a graph, or the exported model would run with random ones
        raise ConfigError(f"Mask R-CNN parameters outside the exported parts: {rest[:5]}")
    return parts


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Module) and any(True for _ in module.parameters()) else None


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
            a = torch.randn(*a.shape[:d], 2, *a.shape[d + 1:]) if a.shape[d] == 0 else torch.cat([a, a], dim=d)
    return a


def _dynamic_shapes(args, dims):
    D = torch.export.Dim.DYNAMIC

    def spec(a):
        if isinstance(a, (list, tuple)):
            return [spec(v) for v in a]
        return {d: D for d in dims if d < a.dim()}

    return tuple(spec(a) for a in args)


def _export_part(module: nn.Module, args: tuple, dims, fmt: str, path: Path, meta: dict | None, *,
                 target: Path | None = None) -> None:
    """Write one part to `path` (in the staging folder); errors name `target` (default `path`), the file asked for.
    What the exporters print (graph dumps, progress) goes to a log file, named by the error if they fail."""
    target = Path(target or path)
    try:
        fd, log = tempfile.mkstemp(prefix=f"pixelwise-export-{target.stem}-", suffix=".log")
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot create the exporter's log in {tempfile.gettempdir()!r}: {e.strerror or e}") from None
    keep = False
    try:
        with _output_to(log):
            _write_part(module, args, dims, fmt, path, target, meta)
    except PixelwiseError:
        raise
    except Exception as e:
        keep = True
        with open(log, "a") as f:
            traceback.print_exception(e, file=f)
        raise ConfigError(f"could not export {type(module).__name__} as {fmt} to {str(target)!r}: {_root_cause(e)} "
                          f"(the exporter's full output is in {log})") from e
    finally:
        if not keep:
            Path(log).unlink(missing_ok=True)


def _write_part(module: nn.Module, args: tuple, dims, fmt: str, path: Path, target: Path, meta: dict | None) -> None:
    shapes = _dynamic_shapes(args, dims)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torch-export":
            program = torch.export.export(module, args, dynamic_shapes=shapes)
            extra = {f"{META_KEY}.json": json.dumps(meta)} if meta else None
            with _writing(target):
                torch.export.save(program, str(path), extra_files=extra)
            return
        onnx_path = path if fmt == "onnx" else path.with_suffix(".onnx")
        program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=shapes, verbose=False, optimize=True)
        with _writing(target):
            program.save(str(onnx_path), external_data=False)
    if meta is not None:
        import onnx

        proto = onnx.load(str(onnx_path))
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(meta)
        with _writing(target):
            onnx.save(proto, str(onnx_path))
    if fmt == "openvino":
        import openvino as ov

        model = ov.convert_model(str(onnx_path))
        if meta is not None:
            model.set_rt_info(json.dumps(meta), [META_KEY, "metadata"])
        with _writing(target):
            ov.save_model(model, str(path), compress_to_fp16=False)
            # Saved again with the .bin's digest in the .xml (the same bytes): a foreign .bin is then refused.
            model.set_rt_info(weights_id(path.with_suffix(".bin")), WEIGHTS_KEY)
            ov.save_model(model, str(path), compress_to_fp16=False)
        onnx_path.unlink()


@contextlib.contextmanager
def _writing(target: Path):
    """Any failure to write (a full disk: OSError from most writers, RuntimeError from torch's zip writer) as an
    OutputError naming the file asked for."""
    try:
        yield
    except Exception as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _cause(e)[:200]
        free = shutil.disk_usage(target.parent).free / 2**20
        raise OutputError(f"cannot write {str(target)!r}: {reason} ({free:.0f} MiB free in {str(target.parent)!r}); "
                          "nothing was written") from e


def _root_cause(e: BaseException) -> str:
    """The innermost cause's type and first line (torch.onnx wraps the error in pages of advice)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = next((line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


@contextlib.contextmanager
def _output_to(log: str):
    """Everything written to stdout and stderr meanwhile, by Python code or by C/C++ libraries, goes to `log`."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, "a", buffering=1) as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
    finally:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).fflush(None)  # C stdio's buffer, before stdout is the terminal again
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def _compare(reference, exported, sample) -> dict:
    """How the exported model's outputs on the sample differ from PyTorch's."""
    x = sample["tensor"]
    if reference.task.name != "instance":
        p, q = reference.predictor.predict_probs(x), exported.predictor.predict_probs(x)
        diff = (p - q).abs().max().item()
        agreement = (p.argmax(0) == q.argmax(0)).float().mean().item()
        ok = diff <= TOLERANCE["prob"] and agreement >= TOLERANCE["agreement"]
        return {"max_prob_diff": diff, "label_agreement": agreement, "agrees": ok,
                "summary": f"largest probability difference {diff:.2e}, {100 * agreement:.3f}% of the pixels with "
                           "the same label"}
    from pixelwise.engine.tasks.instance import detect

    a = detect(reference.model, [x], torch.device("cpu"))[0]
    b = detect(exported.model, [x], torch.device("cpu"))[0]
    report = {"detections": len(a["boxes"]), "exported_detections": len(b["boxes"])}
    if len(a["boxes"]) != len(b["boxes"]):
        report.update(agrees=False, summary=f"{len(a['boxes'])} detections in PyTorch, {len(b['boxes'])} exported")
        return report
    box = (a["boxes"] - b["boxes"]).abs().max().item() if len(a["boxes"]) else 0.0
    score = (a["scores"] - b["scores"]).abs().max().item() if len(a["scores"]) else 0.0
    union = (a["masks"] | b["masks"]).sum().item()
    agreement = 1.0 - (a["masks"] ^ b["masks"]).sum().item() / union if union else 1.0
    labels_same = bool(torch.equal(a["labels"], b["labels"]))
    ok = box <= TOLERANCE["box_px"] and agreement >= TOLERANCE["agreement"] and labels_same
    report.update(max_box_diff=box, max_score_diff=score, mask_agreement=agreement, agrees=ok,
                  summary=f"{len(a['boxes'])} detections each, boxes within {box:.2e} px, scores within {score:.2e}, "
                          f"{100 * agreement:.3f}% of the mask pixels the same"
                          + ("" if labels_same else ", labels differ"))
    return report


__all__ = ["ExportMismatch", "MASK_RCNN_PARTS", "Normalized", "TOLERANCE", "export"]
