"""Running exported models: ONNX Runtime, OpenVINO, and torch.export programs, behind nn.Modules.

A `RuntimeModule` is called like the PyTorch module it was exported from (float32 tensors in,
tensors out, the same structure), so the Predictor's tiling and TTA and Mask R-CNN's proposal and
post-processing code run unchanged around it. Every exported file carries what pixelwise needs to
use it (the training config, class names, the parts of the model): `read_metadata`.

Trust: .onnx (protobuf) and OpenVINO .xml/.bin are data and are read from anywhere. A torch.export
.pt2 archive may hold pickled objects that torch.export.load unpickles, so it is read only when the
user vouches for it (--trust-checkpoint, pixelwise.files.trusting_pickles) or pixelwise just wrote it.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pixelwise.errors import CheckpointError, ConfigError, InferenceError
from pixelwise.files import is_trusted, trusting_pickles

RUNTIMES = ("torch", "onnxruntime", "openvino")
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "torch-export": ".pt2"}
EXTRA = "pip install 'pixelwise[deploy]'"
META_KEY = "pixelwise"
WEIGHTS_KEY = [META_KEY, "weights"]  # OpenVINO rt_info: "SIZE:SHA256" of the .bin the export wrote beside the .xml


def require(module: str, what: str):
    """Import an optional deployment package, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the Python package {module!r}, which is not installed; install the "
                          f"deployment extra: {EXTRA}") from None


def exported_format(path: str | Path) -> str | None:
    """'onnx', 'openvino' or 'torch-export' for an exported model file (by its suffix), None for a checkpoint."""
    suffix = Path(path).suffix.lower()
    return next((f for f, s in FORMATS.items() if s == suffix), None)


def default_runtime(fmt: str) -> str:
    return {"onnx": "onnxruntime", "openvino": "openvino", "torch-export": "torch"}[fmt]


def check_runtime(path: str | Path, runtime: str) -> None:
    fmt = exported_format(path)
    allowed = {None: ("torch",), "onnx": ("onnxruntime", "openvino"), "openvino": ("openvino",),
               "torch-export": ("torch",)}[fmt]
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r}, expected one of {', '.join(RUNTIMES)}")
    if runtime not in allowed:
        what = "a PyTorch checkpoint" if fmt is None else f"a {fmt} file"
        hint = (f"; export it first: pixelwise export --checkpoint {path} --format "
                f"{'onnx' if runtime == 'onnxruntime' else 'openvino'} --out MODEL"
                f"{'.onnx' if runtime == 'onnxruntime' else '.xml'}") if fmt is None else ""
        raise ConfigError(f"--runtime {runtime} cannot run {str(path)!r}, {what} (runs with: {', '.join(allowed)}){hint}")


def read_metadata(path: str | Path) -> dict:
    """What `pixelwise export` stored in an exported file: config, class_names, task, parts, format."""
    path, fmt = Path(path), exported_format(path)
    if not path.is_file():
        raise CheckpointError(f"exported model {str(path)!r} does not exist")
    try:
        if fmt == "onnx":
            onnx = require("onnx", "reading an ONNX file")
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            text = props.get(META_KEY)
        elif fmt == "openvino":
            model = read_openvino(path)
            text = model.get_rt_info([META_KEY, "metadata"]).astype(str) if model.has_rt_info([META_KEY, "metadata"]) \
                else None
        else:
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith(f"extra/{META_KEY}.json")), None)
                text = z.read(name).decode() if name else None
        meta = json.loads(text) if text else None
    except (ConfigError, CheckpointError):
        raise
    except Exception as e:  # a damaged or foreign file: say which, not where in the parser
        raise CheckpointError(f"{str(path)!r} cannot be read as a {fmt} model: {_cause(e)[:300]}") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{str(path)!r} holds no pixelwise metadata: it was not written by `pixelwise export`; "
                              "export the checkpoint with pixelwise export")
    return meta


def read_openvino(path: str | Path):
    """core.read_model(path) with its weights file checked: a missing, truncated or foreign .bin is refused."""
    ov = require("openvino", "reading an OpenVINO model")
    path = Path(path)
    weights = path.with_suffix(".bin")
    if not path.is_file():
        raise CheckpointError(f"OpenVINO model {str(path)!r} does not exist")
    if not weights.is_file():
        raise CheckpointError(f"OpenVINO model {str(path)!r}: its weights file {str(weights)!r} is missing; an export "
                              "writes the .xml and the .bin together, keep them side by side")
    size = weights.stat().st_size
    refused = (f"OpenVINO weights file {str(weights)!r} ({size} bytes) is truncated or does not belong to "
               f"{str(path)!r}; export the checkpoint again")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as e:
        cause = _cause(e)
        if "bin file" in cause or "weights" in cause.lower():
            raise CheckpointError(f"{refused} (OpenVINO: {cause[:200]})") from None
        raise CheckpointError(f"{str(path)!r} cannot be read as an OpenVINO model: {cause[:300]}") from None
    if model.has_rt_info(WEIGHTS_KEY):
        expected = model.get_rt_info(WEIGHTS_KEY).astype(str)
        if expected != weights_id(weights):
            raise CheckpointError(f"{refused} (the export wrote {expected.split(':')[0]} bytes with another SHA-256)")
    return model


def weights_id(path: Path) -> str:
    """A file's size and SHA-256 as "SIZE:HEX"."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{path.stat().st_size}:{digest.hexdigest()}"


def _cause(e: BaseException) -> str:
    """The message of an exception in one line, without OpenVINO's source locations ("Exception from x.cpp:84:",
    "Check '...' failed at ...")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return " ".join(kept or lines) or type(e).__name__


def part_path(path: str | Path, part: str, main: str) -> Path:
    """File of one exported part: the main part is `path` itself, the others `STEM.PART.SUFFIX` beside it."""
    path = Path(path)
    return path if part == main else path.with_name(f"{path.stem}.{part}{path.suffix}")


def load_exported(path, runtime: str | None = None, *, cfg=None, overrides: list[str] = (), tta: bool | None = None):
    """An `Inference` (pixelwise.engine.run) whose model runs the exported file `path` with `runtime`.

    The model is rebuilt from the config the file holds, without weights, and its exported parts are
    replaced by RuntimeModules: the Predictor's tiling and TTA, and Mask R-CNN's code around the graphs,
    run as with the PyTorch model. Exported models run on the CPU.
    """
    from pixelwise.config import apply_override, check_ranges, from_dict
    from pixelwise.engine.run import Inference, build_run, check_against_checkpoint, check_overrides

    source, fmt = str(path), exported_format(path)
    runtime = runtime or default_runtime(fmt)
    check_runtime(path, runtime)
    meta = read_metadata(path)
    if cfg is None:
        cfg = from_dict(meta["config"], f"config stored in {source}")
        for o in overrides:
            apply_override(cfg, o)
        check_ranges(cfg, f"config stored in {source}")
        check_overrides(cfg, from_dict(meta["config"], f"config stored in {source}"), source)
    else:
        check_against_checkpoint(cfg, meta["config"], source)
    # An exported graph is fp32: the training's precision does not carry over, bf16 (OpenVINO) is asked for.
    cfg.infer.precision = cfg.infer.precision or "fp32"
    cfg.infer.channels_last = bool(cfg.infer.channels_last)
    device = torch.device("cpu")
    run = build_run(cfg, pretrained=False, splits=())
    model, task = run.model.eval(), run.task
    precision, _ = task.inference_precision()
    main, parts = meta["main"], meta["parts"]
    if task.name == "instance":
        from pixelwise.deploy.export import MASK_RCNN_PARTS

        files = {name: part_path(path, name, main) for name in parts}
        # Vouching for the main .pt2 file (--trust-checkpoint) vouches for the parts written beside it.
        with trusting_pickles(*files.values()) if is_trusted(path) else contextlib.nullcontext():
            for name, info in parts.items():
                parent, _, leaf = MASK_RCNN_PARTS[name][0].rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, leaf,
                        RuntimeModule(files[name], runtime, precision=precision, structure=info["structure"]))
    else:
        normalize = (cfg.data.mean, cfg.data.std) if cfg.data.mean is not None else None
        model = RuntimeModule(path, runtime, precision=precision, denormalize=normalize, geometry=run.model)
    left = [n for n, _ in model.named_parameters()]
    if left:
        raise CheckpointError(f"{source!r}: the export holds no weights for {left[:3]}; export the checkpoint again "
                              "with this pixelwise version")
    names = meta.get("class_names") or run.meta["class_names"]
    predictor = task.predictor(model, device, tta=tta, class_names=names)
    return Inference(cfg, task, model, run.meta, device, {"config": meta["config"], "export": meta}, predictor)


class RuntimeModule(nn.Module):
    """One exported graph, called like the module it came from.

    structure: how the flat list of graph outputs is regrouped ("tensor", "tuple", "list", or
    "lists:N" for N lists of equal length). denormalize: (mean, std) to undo before the graph, for a
    semantic model whose graph normalises its input itself while the Predictor hands normalised windows.
    """

    def __init__(self, path: str | Path, runtime: str, *, precision: str = "fp32", structure: str = "tensor",
                 denormalize=None, geometry: nn.Module | None = None, threads: int | None = None) -> None:
        super().__init__()
        # The size rule of the exported model (the valid-convolution U-Net's), which the Predictor asks for.
        for fn in ("input_size_for", "output_size"):
            if geometry is not None and hasattr(geometry, fn):
                setattr(self, fn, _size_rule(geometry, fn))
        self.path, self.runtime, self.structure = str(path), runtime, structure
        threads = threads or torch.get_num_threads()
        if denormalize is not None:
            mean, std = (torch.tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1) for v in denormalize)
            self.register_buffer("mean", mean, persistent=False)
            self.register_buffer("std", std, persistent=False)
        self.denormalize = denormalize is not None
        if runtime == "onnxruntime":
            if precision != "fp32":
                raise ConfigError(f"infer.precision={precision}: ONNX Runtime runs the exported graph in fp32 on the "
                                  "CPU; use infer.precision=fp32, or --runtime openvino for bf16")
            ort = require("onnxruntime", "--runtime onnxruntime")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self._session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
            self._inputs = [i.name for i in self._session.get_inputs()]
            self._run = lambda feeds, inputs: self._session.run(None, dict(zip(self._inputs, feeds)))
        elif runtime == "openvino":
            if precision == "fp16":
                raise ConfigError("infer.precision=fp16 with OpenVINO on the CPU: use fp32 or bf16")
            ov = require("openvino", "--runtime openvino")
            core = ov.Core()
            # OpenVINO's CPU default on bf16-capable CPUs is bf16: fp32 has to be asked for.
            config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                      "INFERENCE_NUM_THREADS": threads}
            graph = read_openvino(self.path) if exported_format(self.path) == "openvino" else core.read_model(self.path)
            with _signal_stack_kept():
                self._compiled = core.compile_model(graph, "CPU", config)
            self._request = self._compiled.create_infer_request()
            outputs = self._compiled.outputs
            self._run = lambda feeds, inputs: [self._request.infer(dict(enumerate(feeds)))[o] for o in outputs]
        elif runtime == "torch":
            if precision != "fp32":
                raise ConfigError(f"infer.precision={precision}: a torch.export program runs as exported (fp32)")
            if not is_trusted(self.path):
                raise CheckpointError(f"{self.path!r} is a torch.export archive, which torch.export.load may unpickle "
                                      "(arbitrary code); pass --trust-checkpoint if you made it or trust it, or use "
                                      "the .onnx / OpenVINO export")
            # Kept out of the module tree: its weights are the export's, not parameters of this module.
            object.__setattr__(self, "_program", torch.export.load(self.path).module())
            # A program takes its inputs in the structure it was exported with (lists stay lists).
            self._run = lambda feeds, inputs: _flatten(self._program(*_contiguous(inputs)))
        else:
            raise ConfigError(f"unknown runtime {runtime!r}, expected one of {', '.join(RUNTIMES)}")

    def forward(self, *inputs):
        if self.denormalize:
            inputs = (inputs[0].float() * self.std + self.mean, *inputs[1:])
        feeds = [np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in _flatten(inputs)]
        try:
            raw = self._run(feeds, inputs)
        except Exception as e:  # the runtime's own refusal (an input size its graph cannot take, ...)
            shapes = ", ".join(str(tuple(f.shape)) for f in feeds)
            raise InferenceError(f"{self.runtime} could not run {self.path!r} on inputs of shape {shapes}: "
                                 f"{' '.join(str(e).split())[-300:]}") from e
        outs = [torch.as_tensor(np.asarray(o)) if not isinstance(o, torch.Tensor) else o for o in raw]
        return _regroup(outs, self.structure)


def _size_rule(model: nn.Module, fn: str):
    """model.fn as a function that keeps no reference to the model's weights (they are not needed)."""
    import copy

    skeleton = copy.copy(model)  # shallow: the same attributes (depth, padding, ...) without...
    skeleton._parameters, skeleton._buffers, skeleton._modules = {}, {}, {}  # ...the tensors and children
    return getattr(skeleton, fn)


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def _signal_stack_kept():
    """Restore the thread's alternate signal stack afterwards. OpenVINO's CPU plugin (2026.4) installs one on the
    thread that compiles a model and frees it later, so the next signal handled on that thread (the Trainer's
    SIGTERM checkpoint-and-stop, Ctrl-C) crashed the process with a segmentation fault (found by the test suite)."""
    try:
        libc = ctypes.CDLL(None)
        saved = _SignalStack()
        ok = libc.sigaltstack(None, ctypes.byref(saved)) == 0
    except (OSError, AttributeError, TypeError):  # no POSIX libc (Windows): nothing to keep
        ok = False
    try:
        yield
    finally:
        if ok:
            libc.sigaltstack(ctypes.byref(saved), None)


def _contiguous(x):
    """Inputs as float32 NCHW-contiguous CPU tensors, in the same structure."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().contiguous()
    return type(x)(_contiguous(v) for v in x)


def _flatten(x) -> list:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    return [t for v in x for t in _flatten(v)]


def _regroup(outs: list[torch.Tensor], structure: str):
    if structure == "tensor":
        return outs[0]
    if structure == "tuple":
        return tuple(outs)
    if structure == "list":
        return list(outs)
    if structure.startswith("lists:"):
        n = int(structure.split(":")[1])
        size = len(outs) // n
        return tuple(list(outs[i * size:(i + 1) * size]) for i in range(n))
    raise ValueError(f"unknown output structure {structure!r}")


__all__ = ["EXTRA", "FORMATS", "RUNTIMES", "RuntimeModule", "check_runtime", "default_runtime", "exported_format", "load_exported",
           "part_path", "read_metadata", "read_openvino", "require", "weights_id"]
