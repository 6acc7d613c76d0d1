"""Loading pretrained weights: torchvision's weight enums when online, or a local file."""
from __future__ import annotations

from pathlib import Path

import torch

from pixelwise.errors import WeightsError
from pixelwise.files import torch_load

__all__ = ["WeightsError", "fit_state_dict", "load_state_dict"]


def load_state_dict(source: str | Path, *, what: str, enum=None, names: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A state dict from a named torchvision weight (`names`, via `enum`) or from a file path.

    Files may hold a bare state dict, a {"state_dict": ...} or {"model": ...} wrapper (pixelwise
    checkpoints are the latter). The error for a failed download says how to pass a local file.
    """
    if enum is not None and str(source) in names:
        try:
            return enum.get_state_dict(progress=True, check_hash=True)
        except Exception as e:  # no network, proxy, truncated download ...
            raise WeightsError(
                f"{what}: could not download {enum} from {enum.url} ({type(e).__name__}: {e}). Download that file "
                f"on a machine with internet access and pass its local path instead of {str(source)!r}."
            ) from None
    path = Path(source).expanduser()
    if not path.is_file():
        choices = f" or one of {', '.join(map(repr, names))}" if names else ""
        raise WeightsError(f"{what}: weights file {str(path)!r} does not exist; expected a local .pth file{choices}")
    state = torch_load(path, what=f"{what}: weights file", error=WeightsError)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{what}: {str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    return state


def fit_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], *, what: str) -> None:
    """load_state_dict(strict=True), with an error that names the keys and shapes that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", wrong)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        raise WeightsError(f"{what}: the weights do not fit the model; " + "; ".join(parts))
    model.load_state_dict(state)
