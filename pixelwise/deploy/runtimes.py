"""What runs a model file: the formats `pixelwise export` writes and the runtimes that run them, two small registries.

A `Format` is a file suffix, the runtime that runs it by default and where its metadata is kept. A
`Runtime` is a class: the formats it runs, the precisions it offers on the CPU, and `load(path,
precision, threads)` that returns what runs the graph (feeds -> outputs). Adding a runtime is one class
registered with `@register_runtime`; `pixelwise eval / predict --runtime` and `pixelwise.inference`
take their choices from here. Nothing heavy is imported until a file is loaded, so the command line
lists the choices without importing torch.

"checkpoint" is the format of a pixelwise checkpoint (.pt): the torch runtime runs it as the PyTorch
model itself (pixelwise.inference), not through `load`.

Trust: .onnx (protobuf) and OpenVINO .xml/.bin are data and are read from anywhere. A torch.export
.pt2 archive may hold pickled objects that torch.export.load unpickles, so it is read only when the
user vouches for it (--trust-checkpoint, pixelwise.files.trusting_pickles) or pixelwise just wrote it.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pixelwise.errors import CheckpointError, ConfigError
from pixelwise.files import is_trusted

EXTRA = "pip install 'pixelwise[deploy]'"
META_KEY = "pixelwise"
WEIGHTS_KEY = [META_KEY, "weights"]  # OpenVINO rt_info: "SIZE:SHA256" of the .bin the export wrote beside the .xml
CHECKPOINT = "checkpoint"


def require(module: str, what: str):
    """Import an optional deployment package, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the Python package {module!r}, which is not installed; install the "
                          f"deployment extra: {EXTRA}") from None


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    runtime: str  # the runtime that runs it by default
    metadata: Callable[[Path], str | None]  # the JSON text `pixelwise export` stored in the file, None if none
    packages: tuple[str, ...] = ()  # what writing it needs


def _onnx_metadata(path: Path) -> str | None:
    onnx = require("onnx", "reading an ONNX file")
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}.get(META_KEY)


def _openvino_metadata(path: Path) -> str | None:
    model = read_openvino(path)
    return model.get_rt_info([META_KEY, "metadata"]).astype(str) if model.has_rt_info([META_KEY, "metadata"]) else None


def _torch_export_metadata(path: Path) -> str | None:
    with zipfile.ZipFile(path) as z:
        name = next((n for n in z.namelist() if n.endswith(f"extra/{META_KEY}.json")), None)
        return z.read(name).decode() if name else None


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", ".onnx", "onnxruntime", _onnx_metadata, ("onnx", "onnxscript")),
    Format("openvino", ".xml", "openvino", _openvino_metadata, ("onnx", "onnxscript", "openvino")),
    Format("torch-export", ".pt2", "torch", _torch_export_metadata),
)}


class Runtime:
    """What runs one exported graph; subclasses set the class attributes and `_load`."""

    name = ""
    title = ""  # in messages
    formats: tuple[str, ...] = ()  # the formats it runs
    precisions: tuple[str, ...] = ("fp32",)  # on the CPU
    packages: tuple[str, ...] = ()  # what it needs beyond pixelwise's own dependencies (the `deploy` extra)

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int = 1, static: bool = False) -> None:
        if precision not in self.precisions:
            others = [r.name for r in RUNTIMES.values() if precision in r.precisions and set(r.formats) & set(self.formats)]
            hint = f", or --runtime {' / '.join(others)} for {precision}" if others else ""
            raise ConfigError(f"infer.precision={precision}: {self.title} runs an exported graph in "
                              f"{' or '.join(self.precisions)} on the CPU; use infer.precision="
                              f"{self.precisions[0]}{hint}")
        self.path, self.static = str(path), static  # static: the caller feeds a few shapes, each may be compiled
        self._load(precision, threads)

    def _load(self, precision: str, threads: int) -> None:
        raise NotImplementedError

    def run(self, feeds: list, inputs: tuple) -> list:
        """Outputs of the graph: `feeds` are the inputs as float32 numpy arrays, `inputs` the same as tensors, in
        the structure the module was called with."""
        raise NotImplementedError


RUNTIMES: dict[str, type[Runtime]] = {}


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    RUNTIMES[cls.name] = cls
    return cls


@register_runtime
class TorchRuntime(Runtime):
    """PyTorch itself: a checkpoint as the model, a torch.export program (.pt2) as exported."""

    name, title, formats = "torch", "a torch.export program", (CHECKPOINT, "torch-export")

    def _load(self, precision: str, threads: int) -> None:
        import torch

        if not is_trusted(self.path):
            raise CheckpointError(f"{self.path!r} is a torch.export archive, which torch.export.load may unpickle "
                                  "(arbitrary code); pass --trust-checkpoint if you made it or trust it, or use "
                                  "the .onnx / OpenVINO export")
        self._program = torch.export.load(self.path).module()

    def run(self, feeds: list, inputs: tuple) -> list:
        return flatten(self._program(*contiguous(inputs)))  # a program takes its inputs in their structure


@register_runtime
class OnnxRuntime(Runtime):
    name, title, formats, packages = "onnxruntime", "ONNX Runtime", ("onnx",), ("onnxruntime",)

    def _load(self, precision: str, threads: int) -> None:
        ort = require("onnxruntime", "--runtime onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]

    def run(self, feeds: list, inputs: tuple) -> list:
        return self._session.run(None, dict(zip(self._inputs, feeds)))


@register_runtime
class OpenVinoRuntime(Runtime):
    name, title, formats, packages = "openvino", "OpenVINO", ("openvino", "onnx"), ("openvino",)
    precisions = ("fp32", "bf16")

    def _load(self, precision: str, threads: int) -> None:
        ov = require("openvino", "--runtime openvino")
        core = ov.Core()
        # OpenVINO's CPU default on bf16-capable CPUs is bf16: fp32 has to be asked for.
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "INFERENCE_NUM_THREADS": threads}
        self._graph = read_openvino(self.path) if exported_format(self.path) == "openvino" else core.read_model(self.path)
        self._core, self._config, self._by_shape = core, config, {}
        if not self.static:
            self._by_shape[None] = self._compile(self._graph)

    def _compile(self, graph):
        with _signal_stack_kept():
            compiled = self._core.compile_model(graph, "CPU", self._config)
        return compiled, compiled.create_infer_request()

    def run(self, feeds: list, inputs: tuple) -> list:
        key = tuple(f.shape for f in feeds) if self.static else None
        if key not in self._by_shape:  # a static graph for this shape: planned once, not at every call
            graph = self._graph.clone()
            graph.reshape({i: list(shape) for i, shape in enumerate(key)})
            self._by_shape[key] = self._compile(graph)
        compiled, request = self._by_shape[key]
        result = request.infer(dict(enumerate(feeds)))
        return [result[o] for o in compiled.outputs]


def contiguous(x):
    """Tensors as float32 contiguous CPU tensors, in the same structure (tuples and lists)."""
    if isinstance(x, (list, tuple)):
        return type(x)(contiguous(v) for v in x)
    return x.detach().float().cpu().contiguous()


def flatten(x) -> list:
    """The tensors (or arrays) of nested lists, tuples and dicts, in order."""
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in flatten(v)]
    return [x]


def exported_format(path: str | Path) -> str | None:
    """The format of an exported model file (by its suffix), None for a checkpoint."""
    suffix = Path(path).suffix.lower()
    return next((f.name for f in FORMATS.values() if f.suffix == suffix), None)


def default_runtime(path: str | Path) -> str:
    fmt = exported_format(path)
    return FORMATS[fmt].runtime if fmt else TorchRuntime.name


def check_runtime(path: str | Path, runtime: str) -> None:
    """Refuse a runtime that does not exist or cannot run `path`, saying which can."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r}, expected one of {', '.join(RUNTIMES)}")
    fmt = exported_format(path) or CHECKPOINT
    allowed = [r.name for r in RUNTIMES.values() if fmt in r.formats]
    if runtime in allowed:
        return
    what = "a PyTorch checkpoint" if fmt == CHECKPOINT else f"a {fmt} file"
    hint = ""
    if fmt == CHECKPOINT:
        target = next(f for f in FORMATS.values() if f.runtime == runtime)
        hint = f"; export it first: pixelwise export --checkpoint {path} --format {target.name} --out MODEL{target.suffix}"
    raise ConfigError(f"--runtime {runtime} cannot run {str(path)!r}, {what} (runs with: {', '.join(allowed)}){hint}")


def read_metadata(path: str | Path) -> dict:
    """What `pixelwise export` stored in an exported file: config, class_names, task, parts, format."""
    path, fmt = Path(path), exported_format(path)
    if not path.is_file():
        raise CheckpointError(f"exported model {str(path)!r} does not exist")
    try:
        text = FORMATS[fmt].metadata(path)
        meta = json.loads(text) if text else None
    except (ConfigError, CheckpointError):
        raise
    except Exception as e:  # a damaged or foreign file: say which, not where in the parser
        raise CheckpointError(f"{str(path)!r} cannot be read as a {fmt} model: {cause(e)[:300]}") from None
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
        why = cause(e)
        if "bin file" in why or "weights" in why.lower():
            raise CheckpointError(f"{refused} (OpenVINO: {why[:200]})") from None
        raise CheckpointError(f"{str(path)!r} cannot be read as an OpenVINO model: {why[:300]}") from None
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


def cause(e: BaseException) -> str:
    """The message of an exception in one line, without OpenVINO's source locations ("Exception from x.cpp:84:",
    "Check '...' failed at ...")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return " ".join(kept or lines) or type(e).__name__


def part_path(path: str | Path, part: str, main: str) -> Path:
    """File of one exported part: the main part is `path` itself, the others `STEM.PART.SUFFIX` beside it."""
    path = Path(path)
    return path if part == main else path.with_name(f"{path.stem}.{part}{path.suffix}")


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def _signal_stack_kept():
    """Restore the thread's alternate signal stack afterwards. OpenVINO's CPU plugin (2026.4) installs one on the
    thread that compiles a model and frees it later, so the next signal handled on that thread (the Trainer's
    SIGTERM checkpoint-and-stop, Ctrl-C) would crash the process with a segmentation fault."""
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


__all__ = ["CHECKPOINT", "EXTRA", "FORMATS", "Format", "META_KEY", "RUNTIMES", "Runtime", "check_runtime", "cause", "contiguous",
           "default_runtime", "exported_format", "flatten", "part_path", "read_metadata", "read_openvino", "register_runtime",
           "require", "weights_id"]
