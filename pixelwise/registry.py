"""Model registry: a dict and a decorator.

The builders register themselves when `pixelwise.models` is imported; the lookups below import it
on first use, so that `import pixelwise` and the command line's help need neither torch nor
torchvision.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import TYPE_CHECKING, Callable

from pixelwise.errors import ConfigError

if TYPE_CHECKING:
    import torch.nn as nn

_MODELS: dict[str, Callable[..., "nn.Module"]] = {}
_MODEL_TASKS: dict[str, str] = {}  # model name -> its task's name (pixelwise.engine.tasks)


def register_model(fn: Callable[..., "nn.Module"] | None = None, *, task: str = "semantic"):
    """Register a builder under its function name, for a task ("semantic" or "instance"). Builders take
    keyword-only arguments. Use as `@register_model` or `@register_model(task="instance")`."""
    def register(fn: Callable[..., "nn.Module"]) -> Callable[..., "nn.Module"]:
        if fn.__name__ in _MODELS:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _MODELS[fn.__name__], _MODEL_TASKS[fn.__name__] = fn, task
        return fn
    return register(fn) if fn is not None else register


def _models() -> dict[str, Callable[..., "nn.Module"]]:
    importlib.import_module("pixelwise.models")  # registers the builders (once)
    return _MODELS


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_models())


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _builder(name: str) -> Callable[..., "nn.Module"]:
    models = _models()
    if name not in models:
        raise ConfigError(f"unknown model {name!r}{_suggest(name, models)} Known: {', '.join(sorted(models))}")
    return models[name]


def create_model(name: str, **kwargs) -> "nn.Module":
    """Build a registered model. Unknown names and unknown keyword arguments raise ConfigError (a ValueError)."""
    builder = _builder(name)
    params = inspect.signature(builder).parameters
    for key in kwargs:
        if key not in params:
            valid = [p for p in params]
            raise ConfigError(
                f"model {name!r} has no argument {key!r}{_suggest(key, valid)} Valid: {', '.join(valid)}"
            )
    return builder(**kwargs)


def model_task(name: str) -> str:
    """The task a registered model performs: "semantic" (per-pixel classes) or "instance" (Mask R-CNN)."""
    _builder(name)
    return _MODEL_TASKS[name]


def model_arguments(name: str) -> dict[str, object]:
    """Builder arguments of a registered model and their defaults (for `pixelwise models`)."""
    return {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in inspect.signature(_builder(name)).parameters.items()
    }


def model_summary(name: str) -> str:
    doc = inspect.getdoc(_builder(name)) or ""
    return doc.splitlines()[0] if doc else ""
