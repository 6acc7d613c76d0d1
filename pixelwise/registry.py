"""Model registry: a dict and a decorator. Imports nothing else of ours."""
from __future__ import annotations

import difflib
import inspect
from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name. Builders take keyword-only arguments."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model. Unknown names and unknown keyword arguments raise ValueError."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}{_suggest(name, _MODELS)} Known: {', '.join(list_models())}")
    builder = _MODELS[name]
    params = inspect.signature(builder).parameters
    for key in kwargs:
        if key not in params:
            valid = [p for p in params]
            raise ValueError(
                f"model {name!r} has no argument {key!r}{_suggest(key, valid)} Valid: {', '.join(valid)}"
            )
    return builder(**kwargs)


def model_arguments(name: str) -> dict[str, object]:
    """Builder arguments of a registered model and their defaults (for `pixelwise models`)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}{_suggest(name, _MODELS)}")
    return {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in inspect.signature(_MODELS[name]).parameters.items()
    }


def model_summary(name: str) -> str:
    doc = inspect.getdoc(_MODELS[name]) or ""
    return doc.splitlines()[0] if doc else ""
