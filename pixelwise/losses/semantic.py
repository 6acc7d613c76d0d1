"""Per-pixel semantic segmentation losses."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy"]


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    weight_map: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
    ignore_index: int = 255,
    sample_p: float | None = None,
    generator: torch.Generator | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Pixel-wise weighted softmax cross-entropy (Ronneberger et al. 2015, eq. 1).

    logits: (B, K, H, W); targets: (B, H, W) integer labels in [0, K) or ignore_index;
    weight_map: (B, H, W) per-pixel weights w(x); class_weights: (K,).

    Returns sum_x w(x) * class_weights[t(x)] * -log p_t(x)(x) divided by the NUMBER of
    non-ignored pixels (not by the sum of weights, unlike `F.cross_entropy(weight=...)`), so a
    weight map scales each pixel's term exactly and the loss scale does not depend on the weights'
    total. All pixels ignored -> 0, still attached to the graph. Computed in float32, also under
    autocast. A pixel whose label equals ignore_index is ignored even if ignore_index < K.

    sample_p: loss sampling (Long et al. 2015, section 3.4, "patchwise training is loss sampling"):
        each non-ignored pixel's term is kept with probability sample_p, independently per pixel, the
        draw coming from `generator` (or torch's global RNG on the logits' device). "mean" then divides
        by the number of KEPT pixels, so the loss scale does not depend on sample_p. None or 1 keeps
        every pixel and draws nothing. FCN found whole-image training (p = 1) as effective and faster.
    reduction: "mean" as above; "sum" returns the unnormalised sum of the (kept) pixel terms, FCN's
        setting with batch 1 and momentum 0.99 (Shelhamer, Long & Darrell, PAMI 2017).
    """
    _check_arguments(logits, targets, weight_map, class_weights, sample_p, reduction)
    k = logits.shape[1]
    targets = targets.long()
    valid = targets != ignore_index
    # One reduction (and one device sync) on the happy path; details only when it fails.
    bad = valid & ((targets < 0) | (targets >= k))
    if bool(bad.any()):
        values = torch.unique(targets[bad]).tolist()
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        raise ValueError(
            f"cross_entropy: target values {shown} are outside [0, {k}) and are not ignore_index={ignore_index}"
        )
    if sample_p is not None and sample_p < 1:
        device = generator.device if generator is not None else logits.device
        keep = torch.rand(targets.shape, generator=generator, device=device).to(logits.device) < sample_p
        valid = valid & keep

    safe_targets = targets.masked_fill(~valid, 0)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        losses = F.cross_entropy(logits.float(), safe_targets, reduction="none")
        if class_weights is not None:
            losses = losses * class_weights.to(device=logits.device, dtype=torch.float32)[safe_targets]
        if weight_map is not None:
            # where, not multiply: a NaN/inf weight at an ignored pixel must not leak into the
            # loss or, through the product's backward, into the gradient.
            weight_map = weight_map.to(device=logits.device, dtype=torch.float32)
            losses = losses * torch.where(valid, weight_map, weight_map.new_zeros(()))
        losses = torch.where(valid, losses, losses.new_zeros(()))
        if reduction == "sum":
            return losses.sum()
        return losses.sum() / valid.sum().clamp(min=1)


def _check_arguments(logits, targets, weight_map, class_weights, sample_p, reduction) -> None:
    """Shapes, dtypes and ranges of cross_entropy's arguments, each refusal naming what was expected."""
    if logits.dim() != 4:
        raise ValueError(f"cross_entropy: logits of shape {tuple(logits.shape)}, expected (B, K, H, W)")
    b, k, h, w = logits.shape
    if tuple(targets.shape) != (b, h, w):
        raise ValueError(
            f"cross_entropy: targets of shape {tuple(targets.shape)} do not match logits of shape "
            f"{tuple(logits.shape)}; expected targets of shape {(b, h, w)}"
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"cross_entropy: targets of dtype {targets.dtype}, expected an integer dtype (int64)")
    if weight_map is not None and tuple(weight_map.shape) != (b, h, w):
        raise ValueError(
            f"cross_entropy: weight_map of shape {tuple(weight_map.shape)}, expected {(b, h, w)} like targets"
        )
    if class_weights is not None and tuple(class_weights.shape) != (k,):
        raise ValueError(
            f"cross_entropy: class_weights of shape {tuple(class_weights.shape)}, expected ({k},) for {k} classes"
        )
    if sample_p is not None and not 0 < sample_p <= 1:
        raise ValueError(
            f"cross_entropy: sample_p={sample_p}; expected the probability of keeping a pixel's term, in (0, 1]"
            " (None or 1 keeps every pixel)"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"cross_entropy: reduction={reduction!r}; expected 'mean' or 'sum'")
