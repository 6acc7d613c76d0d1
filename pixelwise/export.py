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
  (pooled RoI features -> mask logits), and `res5` for C4 models. A RoI part fed by RoIAlign has the
  pooling in its graph (inputs: the RoIs (K, 5) and the feature maps; ONNX RoiAlign / OpenVINO ROIAlign,
  engine.tasks.instance.PooledPart). Resizing and normalising the image, anchors, proposal decoding and
  NMS, RoIPool / RoIWarp, box decoding, per-class NMS and mask pasting stay in PyTorch (no weights, and
  shapes that depend on the data): `--runtime` runs the graphs inside the same MaskRCNN code, so
  detections follow the same rules. The backbone is the file named by --out;
  the others are STEM.PART.SUFFIX beside it.

Every file carries the training config and class names (ONNX metadata_props, OpenVINO rt_info,
a torch.export extra file), so `pixelwise eval` / `predict --checkpoint MODEL.onnx` need nothing else.
Before the files are put in place, the exported model runs on a real image beside the PyTorch one;
if they disagree (semantic: largest probability difference above 1e-3 or fewer than 99.9% of the
pixels with the same label; Mask R-CNN: a different number of detections, boxes more than 0.5 px
apart or fewer than 99.9% of the mask pixels the same) nothing is written; nor is anything when a file cannot
be written (a full disk, a read-only folder: an OutputError naming it). What the exporters print goes to a
temporary log, removed after a successful export and named by the error otherwise. An OpenVINO .xml records
the size and SHA-256 of its .bin, so a missing, truncated or foreign .bin is refused (pixelwise.deploy.runtimes.read_openvino).
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
from pixelwise.data import split_spec
from pixelwise.deploy.runtimes import FORMATS, META_KEY, WEIGHTS_KEY, cause, part_path, require, weights_id
from pixelwise.engine.run import build_datasets
from pixelwise.errors import ConfigError, DataError, OutputError, PixelwiseError
from pixelwise.files import trusting_pickles
from pixelwise.inference import build_inference, load_exported

TOLERANCE = {"prob": 1e-3, "agreement": 0.999, "box_px": 0.5}
# An int8 model is an approximation: semantic, at least 98% of the pixels with fp32's label (its probabilities are
# reported, not checked); Mask R-CNN, at least 90% of fp32's detections matched (same label, box IoU >= 0.5), no more
# than 10% extra, and a mean mask IoU of the pairs of at least 0.9.
TOLERANCE_INT8 = {"prob": None, "agreement": 0.98, "matched": 0.9, "mask_iou": 0.9}
INT8_FORMATS = ("onnx", "openvino")


def export(checkpoint, fmt: str, out, *, image=None, overrides: list[str] = (), progress: bool = True,
           int8: bool = False, calibration: int = 16) -> dict:
    """Export `checkpoint` as `fmt` ("onnx", "openvino", "torch-export") to `out`; returns what was checked.

    `image`: the image to compare the exported model with PyTorch on (default: the first image of the
    recipe's validation split). int8: post-training static quantization, calibrated on `calibration`
    training images (OpenVINO: nncf; ONNX: ONNX Runtime's quantize_static), checked against PyTorch fp32
    with TOLERANCE_INT8.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}, expected one of {', '.join(FORMATS)}")
    if int8 and fmt not in INT8_FORMATS:
        raise ConfigError(f"--int8 quantizes an ONNX or OpenVINO model, not --format {fmt}; use --format "
                          f"{' or '.join(INT8_FORMATS)}")
    if int8 and calibration < 1:
        raise ConfigError(f"--calibration {calibration}: give the number of training images to calibrate on, >= 1")
    out, suffix, runtime = Path(out), FORMATS[fmt].suffix, FORMATS[fmt].runtime
    if out.suffix.lower() != suffix:
        raise OutputError(f"--out {str(out)!r}: a {fmt} file is named *{suffix}; use --out {out.with_suffix(suffix)}")
    for package in FORMATS[fmt].packages:
        require(package, f"--format {fmt}")
    if int8:
        require("nncf" if fmt == "openvino" else "onnxruntime", f"--int8 --format {fmt}")
    _say = print if progress else (lambda *a, **k: None)
    inference = build_inference(checkpoint, device="cpu", overrides=[*overrides, "infer.precision=fp32",
                                                                     "infer.channels_last=false", "infer.fold_bn=false",
                                                                     "infer.compile=false"])
    cfg, task = inference.cfg, inference.task
    sample = _sample_image(inference, image)
    parts = task.export_parts(inference.model, sample["tensor"])
    targets = {name: part_path(out, name, next(iter(parts))) for name in parts}
    if fmt == "openvino":
        targets.update({f"{n}.bin": p.with_suffix(".bin") for n, p in list(targets.items())})
    _check_targets(targets.values(), out, checkpoint)
    meta = {"format": fmt, "task": task.name, "config": to_dict(cfg),
            "class_names": list(inference.predictor.class_names or []),
            "main": next(iter(parts)), "parts": {n: {"structure": s, **getattr(m, "export_meta", {})} for n, (m, _, s, _) in parts.items()},
            "input": task.export_input, "state": task.export_state(inference.model),
            "checkpoint": Path(checkpoint).name, "pixelwise": __import__("pixelwise").__version__}
    calib = {}
    if int8:
        _say(f"calibrating int8 on {calibration} training images ...", flush=True)
        calib = task.calibration_inputs(inference.predictor, parts, _calibration_images(inference, calibration))
        meta["int8"] = {"calibration_images": calibration,
                        "method": "nncf.quantize" if fmt == "openvino" else "onnxruntime quantize_static (QDQ)"}
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".pixelwise-export-", dir=out.parent))
    except OSError as e:
        raise OutputError(f"cannot write {str(out)!r}: folder {str(out.parent)!r}: {e.strerror or e}") from None
    try:
        staged = {n: tmp / p.name for n, p in targets.items()}
        for i, (name, (module, args, structure, dims)) in enumerate(parts.items()):
            _say(f"export {name} ({i + 1}/{len(parts)}) as {fmt} ...", flush=True)
            _export_part(module, args, dims, fmt, staged[name], meta if i == 0 else None, target=targets[name],
                         calibration=calib.get(name))
        main = staged[next(iter(parts))]
        _say(f"comparing the exported model with PyTorch on {sample['name']} ({runtime}) ...", flush=True)
        with trusting_pickles(*staged.values()):  # the .pt2 files pixelwise just wrote
            exported = load_exported(main, runtime, overrides=[*overrides, "infer.precision=fp32",
                                                               "infer.channels_last=false"])
            report = task.compare_export(inference.predictor, exported.predictor, sample["tensor"],
                                         TOLERANCE_INT8 if int8 else TOLERANCE)
        report.update(format=fmt, runtime=runtime, image=sample["name"],
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


def _check_targets(targets, out: Path, checkpoint) -> None:
    """Refuse to write over anything: an existing file, the checkpoint itself, a missing folder."""
    for p in targets:
        if p.exists():
            raise OutputError(f"{str(p)!r} exists; pixelwise export never overwrites a file: choose another --out "
                              "or remove it")
        if p.resolve() == Path(checkpoint).resolve():
            raise OutputError(f"--out {str(out)!r} is the checkpoint itself")
    if not out.parent.is_dir():
        what = "is a file, not a folder" if out.parent.exists() else "does not exist"
        raise OutputError(f"folder of --out {str(out.parent)!r} {what}")


class ExportMismatch(PixelwiseError):
    pass


def _sample_image(inference, image) -> dict:
    """{"name", "tensor"}: the image to compare on, as the task's predictor takes it (semantic: normalised
    (C, H, W); instance: (3, H, W) in [0, 1])."""
    if image is not None:
        return {"name": str(image), "tensor": inference.task.export_sample(inference.predictor, image)}
    try:
        ds = build_datasets(inference.cfg, inference.model, splits=("val",))["val"]
        first = ds[0][0].as_subclass(torch.Tensor)
    except (PixelwiseError, OSError) as e:
        raise DataError(f"the exported model is checked on a real image and the first validation image cannot be read "
                        f"({' '.join(str(e).split())[:200]}); give one with --image FILE") from None
    return {"name": f"the first image of {inference.cfg.data.dataset} {split_spec(inference.cfg.data, 'val')}",
            "tensor": first}


def _calibration_images(inference, n: int) -> list[torch.Tensor]:
    """`n` training images spread over the split, without augmentation, as the predictor takes them."""
    from pixelwise.data import build_dataset

    cfg = inference.cfg
    try:
        ds = build_dataset(cfg.data, "train")
        ds.transforms = inference.task.transforms(train=False, ignore_index=getattr(ds, "ignore_index", None),
                                                  crop_size=None, context=0)
    except (PixelwiseError, OSError) as e:
        raise DataError(f"--int8 calibrates on training images and the training split of {cfg.data.dataset!r} cannot "
                        f"be read ({' '.join(str(e).split())[:200]}); set -o data.root=DIR") from None
    if len(ds) < n:
        raise DataError(f"--calibration {n}: the training split of {cfg.data.dataset!r} has {len(ds)} images")
    return [ds[i * len(ds) // n][0].as_subclass(torch.Tensor) for i in range(n)]


def _dynamic_shapes(args, dims, module: nn.Module | None = None):
    """torch.export's dynamic_shapes: every dimension in `dims` of every input. A module whose forward takes
    *inputs (engine.tasks.instance.PooledPart: rois, *features) says how its inputs group (`varargs_from`)."""
    D = torch.export.Dim.DYNAMIC

    def spec(a):
        if isinstance(a, (list, tuple)):
            return [spec(v) for v in a]
        return {d: D for d in dims if d < a.dim()}

    shapes = tuple(spec(a) for a in args)
    start = getattr(module, "varargs_from", None)
    return shapes if start is None else (*shapes[:start], shapes[start:])


def _export_part(module: nn.Module, args: tuple, dims, fmt: str, path: Path, meta: dict | None, *,
                 target: Path | None = None, calibration: list | None = None) -> None:
    """Write one part to `path` (in the staging folder); errors name `target` (default `path`), the file asked for.
    What the exporters print (graph dumps, progress) goes to a log file, named by the error if they fail.
    calibration: the part's inputs on the calibration images (lists of float32 arrays): quantize it to int8."""
    target = Path(target or path)
    try:
        fd, log = tempfile.mkstemp(prefix=f"pixelwise-export-{target.stem}-", suffix=".log")
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot create the exporter's log in {tempfile.gettempdir()!r}: {e.strerror or e}") from None
    keep = False
    try:
        with _output_to(log):
            _write_part(module, args, dims, fmt, path, target, meta, calibration)
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


def _write_part(module: nn.Module, args: tuple, dims, fmt: str, path: Path, target: Path, meta: dict | None,
                calibration: list | None = None) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if calibration is None:
            WRITERS[fmt](module, args, _dynamic_shapes(args, dims, module), path, target, meta)
        else:
            WRITERS[fmt](module, args, _dynamic_shapes(args, dims, module), path, target, meta,
                         calibration=calibration)


def _write_torch_export(module, args, shapes, path: Path, target: Path, meta: dict | None) -> None:
    program = torch.export.export(module, args, dynamic_shapes=shapes)
    extra = {f"{META_KEY}.json": json.dumps(meta)} if meta else None
    with _writing(target):
        torch.export.save(program, str(path), extra_files=extra)


def _write_onnx(module, args, shapes, path: Path, target: Path, meta: dict | None, calibration=None) -> None:
    """The graph through torch.onnx's dynamo exporter; the metadata in the model's metadata_props. With
    calibration: quantized to int8 by ONNX Runtime (static, QDQ, per-channel int8 weights, uint8 activations)."""
    program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=shapes, verbose=False, optimize=True,
                                custom_translation_table=onnx_translations())
    with _writing(target):
        program.save(str(path), external_data=False)
    if calibration is not None:
        _quantize_onnx(path, calibration, target)
    if meta is not None:
        import onnx

        proto = onnx.load(str(path))
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(meta)
        with _writing(target):
            onnx.save(proto, str(path))


def onnx_translations() -> dict:
    """pixelwise's own ops as ONNX: roi_align_boxes as one RoiAlign of its inputs (opset 16's coordinate modes:
    aligned=True is half_pixel, False torchvision's legacy output_half_pixel; sampling_ratio <= 0 adaptive = 0)."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    import pixelwise.ops.poolers  # noqa: F401  (registers pixelwise::roi_align_boxes)

    def roi_align_boxes(input, boxes, index, height: int, width: int, spatial_scale: float, sampling_ratio: int,
                        aligned: bool):
        return op.RoiAlign(input, boxes, op.Cast(index, to=TensorProto.INT64), mode="avg",
                           coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
                           output_height=height, output_width=width, sampling_ratio=max(sampling_ratio, 0),
                           spatial_scale=spatial_scale)

    return {torch.ops.pixelwise.roi_align_boxes.default: roi_align_boxes}


def _quantize_onnx(path: Path, calibration: list, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calibration)

        def get_next(self):
            feeds = next(self.feeds, None)
            return None if feeds is None else dict(zip(names, feeds))

    float_path = path.with_name(path.stem + ".fp32.onnx")
    os.replace(path, float_path)
    with _writing(target):
        # The layers with weights only: quantizing every op also put Q/DQ pairs around the ops between them, and
        # failed on Mask R-CNN's graphs ("Quantization parameter shared mode is not supported for weight yet").
        quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=["Conv", "ConvTranspose", "Gemm", "MatMul"])
    float_props = onnx.load(str(float_path), load_external_data=False).metadata_props
    if float_props:  # the pixelwise metadata, which quantize_static does not carry over
        proto = onnx.load(str(path))
        del proto.metadata_props[:]
        proto.metadata_props.extend(float_props)
        with _writing(target):
            onnx.save(proto, str(path))
    float_path.unlink()


def quantize_openvino(model, calibration: list, agreement: float | None = None):
    """An OpenVINO model quantized to int8 by nncf.quantize, calibrated on `calibration` (lists of input arrays).

    agreement: for a graph with one (N, K, H, W) output (a semantic model), the share of pixels that must keep
    fp32's label on the calibration images. When plain quantization falls short, nncf's accuracy control
    (quantize_with_accuracy_control) puts back in fp32 the layers whose quantization costs most, one after the
    other, until it holds (FC-DenseNet56 lost its 98% to a few of its concatenations). OpenVINO compiles models on
    this thread meanwhile: its alternate signal stack is put back afterwards (runtimes._signal_stack_kept)."""
    from pixelwise.deploy.runtimes import _signal_stack_kept

    with _signal_stack_kept():
        return _quantize_openvino(model, calibration, agreement)


def _quantize_openvino(model, calibration: list, agreement: float | None):
    import nncf
    import numpy as np
    import openvino as ov

    data = nncf.Dataset(calibration, lambda feeds: dict(enumerate(feeds)))
    quantized = nncf.quantize(model, data, subset_size=len(calibration))
    output = model.outputs[0].get_partial_shape()
    if (agreement is None or not 0 < agreement < 1 or len(model.outputs) != 1 or output.rank.is_dynamic
            or output.rank.get_length() != 4):
        return quantized
    core = ov.Core()

    def labels(compiled, feeds):
        return np.asarray(compiled(dict(enumerate(feeds)))[0]).argmax(1)

    fp32 = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    reference = {id(feeds): labels(fp32, feeds) for feeds in calibration}  # nncf may validate on a subset

    def share(compiled, items) -> float:
        """The share of the pixels of these calibration inputs that keep fp32's label."""
        return float(np.mean([(labels(compiled, feeds) == reference[id(feeds)]).mean() for feeds in items]))

    if share(core.compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), calibration) >= agreement:
        return quantized
    return nncf.quantize_with_accuracy_control(
        model, data, nncf.Dataset(calibration), validation_fn=share, max_drop=1.0 - agreement,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calibration))


def _write_openvino(module, args, shapes, path: Path, target: Path, meta: dict | None, calibration=None) -> None:
    """Through ONNX, converted by OpenVINO; the metadata and the .bin's size and SHA-256 in the .xml's rt_info.
    With calibration: quantized to int8 by nncf.quantize (post-training, static)."""
    import openvino as ov

    onnx_path = path.with_suffix(".onnx")
    _write_onnx(module, args, shapes, onnx_path, target, meta)
    model = ov.convert_model(str(onnx_path))
    if calibration is not None:
        model = quantize_openvino(model, calibration, TOLERANCE_INT8["agreement"])
    if meta is not None:
        model.set_rt_info(json.dumps(meta), [META_KEY, "metadata"])
    with _writing(target):
        ov.save_model(model, str(path), compress_to_fp16=False)
        # Saved again with the .bin's digest in the .xml (the same bytes): a foreign .bin is then refused.
        model.set_rt_info(weights_id(path.with_suffix(".bin")), WEIGHTS_KEY)
        ov.save_model(model, str(path), compress_to_fp16=False)
    onnx_path.unlink()


# How each format of pixelwise.deploy.runtimes.FORMATS is written: module, example inputs, dynamic shapes, the
# file to write (in the staging folder), the file asked for (named by errors), the metadata (main part only).
WRITERS = {"torch-export": _write_torch_export, "onnx": _write_onnx, "openvino": _write_openvino}


@contextlib.contextmanager
def _writing(target: Path):
    """Any failure to write (a full disk: OSError from most writers, RuntimeError from torch's zip writer) as an
    OutputError naming the file asked for."""
    try:
        yield
    except Exception as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else cause(e)[:200]
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


__all__ = ["ExportMismatch", "TOLERANCE", "export"]
