"""Typed run configuration: dataclasses loaded from and saved to YAML, with `-o a.b=c` overrides.

Every key is checked: a misspelt key or a value of the wrong type is an error that names the
source (file or override), the key, the value and what was expected, and suggests the nearest key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


from pixelwise.errors import ConfigError  # noqa: F401  (raised here, imported from here by callers)
from pixelwise.files import write_text

# train.loss names (pixelwise.losses.semantic): per-pixel terms (cross-entropy, focal), region terms (Dice, Lovasz).
LOSSES = ("ce", "focal", "dice", "lovasz")


@dataclass
class ModelConfig:
    name: str = "unet"
    num_classes: int = 2
    # Further keyword arguments of the model's builder (see `pixelwise models NAME`).
    args: dict = field(default_factory=dict)
    # Weights to start from: a checkpoint or state dict file. For FCN-16s/8s, the trained coarser
    # FCN of the previous stage (FCN section 4.2); its new skip layers keep their initialisation.
    init_from: Optional[str] = None
    # Semantic models: CRF-as-RNN (pixelwise.models.crfasrnn), the fully connected CRF as a layer trained with the
    # network: null = off, else a mapping of iterations, w1, theta_alpha, theta_beta, w2, theta_gamma ({} = defaults).
    crf: Optional[dict] = None


@dataclass
class AugmentConfig:
    crop_size: Optional[int] = None  # square random crop for training; None keeps the whole image
    hflip: bool = True
    vflip: bool = False
    rot90: bool = False  # random multiples of 90 degrees
    elastic: bool = False  # U-Net section 3.1: random displacements on a coarse grid, smooth interpolation
    elastic_grid: int = 3
    elastic_sigma: float = 10.0  # standard deviation of the grid displacements, in pixels
    brightness: float = 0.0  # random intensity scale in [1-b, 1+b]
    contrast: float = 0.0
    scale: Optional[list] = None  # [low, high]: image and masks resized by a random factor (before the crop)
    saturation: float = 0.0  # colour jitter (torchvision's ColorJitter): saturation factor in [1-s, 1+s]
    hue: float = 0.0  # hue shift in [-h, h], h <= 0.5


@dataclass
class DataConfig:
    dataset: str = "isbi2012"  # isbi2012 | camvid | voc | folder; instances (Mask R-CNN): coco | isbi_instances
    root: Optional[str] = None  # data root; else $PIXELWISE_DATA; else ~/.cache/pixelwise/data
    path: Optional[str] = None  # dataset folder under the root (default: the dataset's own name)
    # isbi2012, isbi_instances: slice lists such as "0-24" or "0,3,5-7" (default 0-24 / 25-29); camvid/folder:
    # split names (default train / val); coco: "train2017" (annotations/instances_train2017.json, images in
    # train2017/) or "FILE.json:IMAGE_FOLDER" (default train2017 / val2017)
    train_split: Optional[str] = None
    val_split: Optional[str] = None
    # voc only: an SBD folder with SegmentationClassAug/<id>.png (and train_aug.txt) added to the train split
    sbd_root: Optional[str] = None
    num_classes: Optional[int] = None  # folder dataset only; the others know their classes
    skip_invalid: bool = False  # coco and the annotation-tool formats: drop degenerate objects (with a warning)
    classes: Optional[list] = None  # labelme, yolo, cvat (and _instances): the class list; default: the files'
    # camvid, voc, folder: stored mask value -> class, applied when masks are read; e.g. {255: 1} for binary
    # masks saved as 0/255 (255 is the default ignore_index, so without the map every foreground pixel is void)
    label_map: Optional[dict] = None
    ignore_index: int = 255  # folder dataset only (isbi2012 has no void, camvid's void is 11)
    mean: list = field(default_factory=lambda: [0.5])
    std: list = field(default_factory=lambda: [0.5])
    weight_map: bool = False  # U-Net section 3: class balance + border term from instance labels
    w0: float = 10.0
    sigma: float = 5.0
    class_balance: bool = True  # the weight map's w_c term; false keeps only the border term (w_c = 1)
    num_workers: int = 0
    limit: Optional[int] = None  # use only the first N images of each split (quick checks)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    optimizer: Literal["sgd", "adam", "rmsprop"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 0.0
    schedule: Literal["constant", "step", "poly", "exponential"] = "constant"
    step_size: int = 1000  # step schedule: steps between decays
    gamma: float = 0.1  # step: factor per decay; exponential: factor per epoch
    power: float = 0.9  # poly schedule (decays over max_steps, or over time_limit if that ends first)
    warmup_steps: int = 0
    epochs: int = 10
    max_steps: Optional[int] = None  # overrides epochs when set
    time_limit: Optional[float] = None  # seconds of training after which the run stops and saves
    batch_size: int = 1
    grad_accum: int = 1  # micro-batches per optimizer step (FCN: 20 whole images of different sizes, one at a time)
    grad_clip: Optional[float] = None  # max global gradient norm
    # The fast path: autocast to bf16 (CPU with avx512_bf16, or GPU) or fp16 (GPU, with a GradScaler); losses,
    # metrics, weights and BatchNorm statistics stay fp32. Configs with the old key train.amp are read (_RENAMED).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False  # NHWC memory format for the model and its inputs
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    seed: int = 0
    deterministic: bool = False
    # Per-class loss weights: a list, or "median_frequency" (computed from the training masks).
    class_weights: Union[list, Literal["median_frequency"], None] = None
    loss_sampling_p: Optional[float] = None  # FCN section 3.4: keep each pixel's loss term with probability p
    # Semantic models' loss: a name (ce, focal, dice, lovasz) or a weighted sum {name: weight}, e.g. {ce: 1, dice: 1}
    loss: Union[str, dict] = "ce"
    focal_gamma: float = 2.0  # the focal loss's exponent (Lin et al. 2017: 2)
    loss_reduction: Literal["mean", "sum"] = "mean"  # "sum": unnormalised loss (FCN PAMI, batch 1)
    bias_lr_mult: float = 1.0  # learning rate multiplier for biases (2 in FCN section 4.3)
    aux_loss_weight: float = 0.5  # for models returning {"out", "aux"} in training (fcn_resnet aux_loss)
    val_every: int = 0  # steps between validations; 0 = once per epoch
    ckpt_every: int = 0  # steps between checkpoints; 0 = once per epoch
    log_every: int = 10
    best_metric: str = "miou"  # higher is better
    patience: Optional[int] = None  # early stopping: validations without a new best_metric before stopping
    threads: Optional[int] = None  # torch CPU threads


@dataclass
class InferConfig:
    # Semantic models: output tile size for overlap-tile inference. Mask R-CNN: input window size for sliced
    # inference (detections merged across windows). None = whole image.
    tile: Optional[int] = None
    overlap: int = 0  # overlap between neighbouring tiles, in pixels (Mask R-CNN: more than the largest object)
    # Mask R-CNN's windows: "window" = each resized to the model's input size (SAHI: magnifies small objects),
    # "image" = resized by the factor the whole image gets (the scale of a model trained on whole images).
    tile_scale: Literal["window", "image"] = "window"
    # Semantic models: true = average over the 8 flips and 90-degree rotations; "hflip" = over the image and its
    # mirror image only (street scenes: their rotations and vertical flips are not plausible images).
    tta: Union[bool, Literal["hflip"]] = False
    # Semantic models: multi-scale test-time augmentation, e.g. [0.5, 0.75, 1.0, 1.25, 1.5]: the image resized by
    # each factor, its probabilities brought back to full resolution and averaged. null = the image as it is.
    scales: Optional[list] = None
    batch_size: int = 4  # tiles (Mask R-CNN: images of one size, or windows) per forward pass
    save_probs: bool = False  # predict: also write probability maps (.npy, float16)
    threshold: Optional[float] = None  # binary models: foreground if p(class 1) >= threshold
    score_threshold: float = 0.5  # Mask R-CNN predict: instances drawn and in <name>_instances.png (JSON keeps all)
    precision: Optional[Literal["fp32", "bf16", "fp16"]] = None  # null: as train.precision
    channels_last: Optional[bool] = None  # null: as train.channels_last
    fold_bn: bool = False  # eval and predict: fold eval-mode BatchNorm into the convolution before it (checked)
    # eval and predict: torch.compile the network with its weights frozen (pixelwise.inference._compile); the first
    # image of each size compiles (about 20 s for FCN-ResNet50 on 2 cores), needs a C++ compiler on the CPU.
    compile: bool = False
    # Semantic models: the fully connected CRF after the network (pixelwise.crf): null = off, else a mapping of
    # backend (torch | pydensecrf), iterations, w1, theta_alpha, theta_beta, w2, theta_gamma ({} = the defaults).
    crf: Optional[dict] = None


@dataclass
class Config:
    output_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: got {value!r}, expected {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: got {value!r}, expected one of {', '.join(map(repr, choices))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif tp is dict:
        if isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{where}: got {value!r}, expected {_type_name(tp)}")


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _update(obj, values: dict, source: str, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {values!r}")
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(f"{source}: unknown key {prefix}{key}{hint} Valid keys here: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _update(current, value, source, f"{prefix}{key}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{source}: {prefix}{key}"))


# Keys renamed since a release: old recipes and the configs stored in old checkpoints still load.
_RENAMED = {("train", "amp"): ("precision", {"none": "fp32"})}


def upgrade(values: dict) -> dict:
    """A config mapping with renamed keys given their new names (values translated)."""
    if not isinstance(values, dict):
        return values
    out = dict(values)
    for (section, old), (new, translate) in _RENAMED.items():
        part = out.get(section)
        if isinstance(part, dict) and old in part:
            part = dict(part)
            value = part.pop(old)
            part.setdefault(new, translate.get(value, value) if isinstance(value, str) else value)
            out[section] = part
    return out


def from_dict(values: dict, source: str = "config") -> Config:
    cfg = Config()
    _update(cfg, upgrade(values or {}), source)
    return cfg


def apply_override(cfg: Config, override: str) -> str:
    """Apply one `a.b=c` override; the value is parsed as YAML (so `1e-3`, `[1, 2]`, `null` work).

    Returns the key it set. A mapping given for `model.args` replaces the recipe's (a warning names the
    arguments that are dropped); `model.args.KEY=VALUE` changes one.
    """
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key=value, for example train.lr=0.001")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    key = key.strip()
    parts = key.split(".")
    # model.args is free-form: its keys are checked by the model builder.
    if parts[:2] == ["model", "args"] and len(parts) > 2:
        node = cfg.model.args
        for p in parts[2:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        return key
    if parts == ["model", "args"] and isinstance(value, dict):
        dropped = [k for k in cfg.model.args if k not in value]
        if dropped:
            warnings.warn(f"override {override!r} replaces the whole of model.args, so the recipe's "
                          f"{', '.join(dropped)} fall back to the model's defaults; use model.args.KEY=VALUE to change "
                          "one argument", ConfigWarning, stacklevel=2)
    nested: Any = value
    for p in reversed(parts):
        nested = {p: nested}
    _update(cfg, upgrade(nested), f"override {override!r}")
    return key


class ConfigWarning(UserWarning):
    """A config that works but may not do what was meant."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error instead of silently keeping the last."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                              f"{key_node.start_mark.line + 1}); expected each key once")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Load a YAML recipe (or the defaults when path is None) and apply overrides in order."""
    values: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at position {e.start}); "
                              "expected a YAML recipe") from None
        except OSError as e:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {e.strerror or e}") from None
        try:
            values = yaml.load(text, Loader=_UniqueKeyLoader)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if values is None:
            raise ConfigError(f"{path}: the file is empty; expected a recipe (a mapping of output_dir, model, data, "
                              "train, infer)")
        source = str(path)
    cfg = from_dict(values, source)
    touched = [apply_override(cfg, o) for o in overrides]
    check_ranges(cfg, source, dict(zip(touched, overrides)))
    return cfg


def _number_checks(cfg: Config) -> list[tuple[str, Any, bool, str]]:
    m, d, a, t, i = cfg.model, cfg.data, cfg.data.augment, cfg.train, cfg.infer

    def opt(v, ok) -> bool:
        return v is None or ok(v)

    pos = lambda v: v > 0  # noqa: E731
    unit = lambda v: 0 <= v <= 1  # noqa: E731
    finite_list = lambda v: isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
                                                         and math.isfinite(x) and x >= 0 for x in v)
    return [
        ("output_dir", cfg.output_dir, bool(cfg.output_dir.strip()), "a folder path"),
        ("model.num_classes", m.num_classes, m.num_classes >= 1, "an integer >= 1"),
        ("data.num_classes", d.num_classes, opt(d.num_classes, lambda v: 1 <= v <= 256), "an integer in [1, 256] or null"),
        ("data.ignore_index", d.ignore_index, 0 <= d.ignore_index <= 255, "a mask value in [0, 255]"),
        ("data.mean", d.mean, bool(d.mean) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in d.mean),
         "a non-empty list of numbers (one, or one per channel)"),
        ("data.std", d.std, len(d.std) == len(d.mean) and all(isinstance(v, (int, float)) and v > 0 for v in d.std),
         f"a list of {len(d.mean)} positive numbers (as many as data.mean)"),
        ("data.label_map", d.label_map, opt(d.label_map, lambda v: all(
            isinstance(k, int) and isinstance(c, int) and 0 <= k <= 255 and 0 <= c <= 255 for k, c in v.items())),
         "a mapping of mask values to classes, integers in [0, 255], such as {255: 1}"),
        ("data.w0", d.w0, d.w0 >= 0, "a number >= 0"),
        ("data.sigma", d.sigma, d.sigma > 0, "a positive number of pixels"),
        ("data.num_workers", d.num_workers, d.num_workers >= 0, "an integer >= 0"),
        ("data.limit", d.limit, opt(d.limit, pos), "an integer >= 1 or null"),
        ("data.augment.crop_size", a.crop_size, opt(a.crop_size, pos), "a positive number of pixels or null"),
        ("data.augment.elastic_grid", a.elastic_grid, a.elastic_grid >= 2, "an integer >= 2"),
        ("data.augment.elastic_sigma", a.elastic_sigma, a.elastic_sigma >= 0, "a number of pixels >= 0"),
        ("data.augment.brightness", a.brightness, unit(a.brightness), "a number in [0, 1]"),
        ("data.augment.contrast", a.contrast, unit(a.contrast), "a number in [0, 1]"),
        ("train.lr", t.lr, t.lr > 0 and math.isfinite(t.lr), "a positive number"),
        ("train.momentum", t.momentum, 0 <= t.momentum < 1, "a number in [0, 1)"),
        ("train.weight_decay", t.weight_decay, t.weight_decay >= 0, "a number >= 0"),
        ("train.step_size", t.step_size, t.step_size >= 1, "an integer >= 1"),
        ("train.gamma", t.gamma, 0 < t.gamma <= 1, "a factor in (0, 1]"),
        ("train.power", t.power, t.power >= 0, "a number >= 0"),
        ("train.warmup_steps", t.warmup_steps, t.warmup_steps >= 0, "an integer >= 0"),
        ("train.epochs", t.epochs, t.epochs >= 1, "an integer >= 1"),
        ("train.max_steps", t.max_steps, opt(t.max_steps, pos), "an integer >= 1 or null (then train.epochs counts)"),
        ("train.time_limit", t.time_limit, opt(t.time_limit, pos), "a positive number of seconds or null"),
        ("train.batch_size", t.batch_size, t.batch_size >= 1, "an integer >= 1"),
        ("train.grad_accum", t.grad_accum, t.grad_accum >= 1, "an integer >= 1"),
        ("train.grad_clip", t.grad_clip, opt(t.grad_clip, pos), "a positive gradient norm or null"),
        ("train.class_weights", t.class_weights, t.class_weights in (None, "median_frequency")
         or finite_list(t.class_weights) and any(x > 0 for x in t.class_weights),
         "a list of finite weights >= 0, at least one positive; 'median_frequency'; or null"),
        ("train.loss_sampling_p", t.loss_sampling_p, opt(t.loss_sampling_p, lambda v: 0 < v <= 1),
         "a probability in (0, 1] or null"),
        ("train.loss", t.loss, loss_terms(t.loss) is not None, f"one of {', '.join(LOSSES)}, or a weighted sum "
         "{name: weight >= 0} of them, e.g. {ce: 1.0, dice: 1.0}"),
        ("train.focal_gamma", t.focal_gamma, t.focal_gamma >= 0, "a number >= 0 (0: the cross-entropy)"),
        ("train.bias_lr_mult", t.bias_lr_mult, t.bias_lr_mult > 0, "a positive number"),
        ("train.aux_loss_weight", t.aux_loss_weight, t.aux_loss_weight >= 0, "a number >= 0"),
        ("train.val_every", t.val_every, t.val_every >= 0, "an integer >= 0 (0: once per epoch)"),
        ("train.ckpt_every", t.ckpt_every, t.ckpt_every >= 0, "an integer >= 0 (0: once per epoch)"),
        ("train.log_every", t.log_every, t.log_every >= 1, "an integer >= 1"),
        ("train.patience", t.patience, opt(t.patience, pos), "an integer >= 1 or null"),
        ("train.threads", t.threads, opt(t.threads, pos), "an integer >= 1 or null"),
        ("data.augment.scale", a.scale, a.scale is None or finite_list(a.scale) and len(a.scale) == 2
         and 0 < a.scale[0] <= a.scale[1] <= 8, "[low, high] resize factors with 0 < low <= high <= 8, or null"),
        ("data.augment.saturation", a.saturation, 0 <= a.saturation <= 1, "a number in [0, 1]"),
        ("data.augment.hue", a.hue, 0 <= a.hue <= 0.5, "a number in [0, 0.5]"),
        ("infer.tile", i.tile, opt(i.tile, pos), "a positive number of pixels or null (whole images)"),
        ("infer.overlap", i.overlap, i.overlap >= 0 and (i.tile is None or i.overlap < i.tile),
         f"an integer in [0, infer.tile={i.tile})" if i.tile else "an integer >= 0"),
        ("infer.batch_size", i.batch_size, i.batch_size >= 1, "an integer >= 1"),
        ("infer.scales", i.scales, i.scales is None or finite_list(i.scales) and len(i.scales) > 0
         and all(0 < x <= 8 for x in i.scales), "a non-empty list of resize factors in (0, 8], or null"),
        ("infer.threshold", i.threshold, opt(i.threshold, unit), "a probability in [0, 1] or null"),
        ("infer.score_threshold", i.score_threshold, unit(i.score_threshold), "a score in [0, 1]"),
    ]


def loss_terms(loss) -> dict[str, float] | None:
    """train.loss as {name: weight}, or None when it is not one of LOSSES or a weighted sum of them."""
    terms = {loss: 1.0} if isinstance(loss, str) else loss
    if not isinstance(terms, dict) or not terms:
        return None
    ok = all(k in LOSSES and isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
             for k, w in terms.items())
    return {k: float(w) for k, w in terms.items()} if ok and any(w > 0 for w in terms.values()) else None


def check_ranges(cfg: Config, source: str = "config", overrides: dict[str, str] | None = None) -> None:
    """Values of the right type but outside their range, named with the key, what is expected and where
    the value came from (`overrides`: key -> the override that set it)."""
    for key, value, ok, expected in _number_checks(cfg):
        if not ok:
            origin = (overrides or {}).get(key)
            where = f"override {origin!r}" if origin else source
            raise ConfigError(f"{where}: {key}={value!r}, expected {expected}")


def save_config(cfg: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False), what="config")


# The bundled recipes (`pixelwise recipes`), resolved here beside the config so that no module imports the CLI.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def bundled_recipes() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []


def resolve_config(name: str) -> Path:
    """A path, or the name of a bundled recipe (`unet_isbi2012_cpu`, `unet_isbi2012_cpu.yaml` or
    `configs/unet_isbi2012_cpu.yaml` from any folder)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config {name!r} is a folder; expected a recipe YAML file or a bundled recipe name")
    if path.parent in (Path("."), Path("configs")):
        bundled = CONFIG_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
        if bundled.is_file():
            return bundled
    known = [p.stem for p in bundled_recipes()]
    raise ConfigError(f"config {name!r} is neither a file nor a bundled recipe; bundled: {', '.join(known) or 'none'}")
