"""Per-pixel semantic segmentation losses."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy", "dice_loss", "lovasz_softmax"]


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
    gamma: float = 0.0,
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
    gamma: the focal loss (Lin et al., ICCV 2017, eq. 5, with the softmax's p_t): each pixel's term is
        scaled by (1 - p_t) ** gamma, the weight of easy pixels falls; class_weights play alpha_t's part.
        0 is the cross-entropy.
    """
    _check_arguments(logits, targets, weight_map, class_weights, sample_p, reduction, gamma=gamma)
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
        if gamma:
            losses = losses * (1 - torch.exp(-losses)).pow(gamma)  # -log p_t -> (1 - p_t)^gamma * -log p_t
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


def _valid_one_hot(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None, what: str,
                   class_weights: torch.Tensor | None = None):
    """Softmax probabilities (B, K, P) in float32 and one-hot targets (B, K, P), both zero at ignored pixels."""
    _check_arguments(logits, targets, None, class_weights, None, "mean", what)
    b, k = logits.shape[:2]
    targets = targets.long().reshape(b, -1)
    valid = targets != ignore_index if ignore_index is not None else torch.ones_like(targets, dtype=torch.bool)
    bad = valid & ((targets < 0) | (targets >= k))
    if bool(bad.any()):
        raise ValueError(f"{what}: target values {torch.unique(targets[bad]).tolist()[:10]} are outside [0, {k}) and "
                         f"are not ignore_index={ignore_index}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probs = F.softmax(logits.float(), dim=1).reshape(b, k, -1) * valid.unsqueeze(1)
    one_hot = F.one_hot(targets.masked_fill(~valid, 0), k).permute(0, 2, 1).float() * valid.unsqueeze(1)
    return probs, one_hot


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int | None = 255,
              class_weights: torch.Tensor | None = None, smooth: float = 0.0, eps: float = 1e-7) -> torch.Tensor:
    """Soft Dice loss (Milletari et al., V-Net, 3DV 2016), multi-class: per class c over the whole batch,
    1 - (2 sum p_c g_c + smooth) / max(sum p_c + sum g_c + smooth, eps), with p the softmax and g the one-hot
    labels; a class absent from the batch's labels contributes 0; the mean over classes (a weighted mean with
    class_weights). Ignored pixels count nowhere. As segmentation_models_pytorch's DiceLoss("multiclass")."""
    probs, one_hot = _valid_one_hot(logits, targets, ignore_index, "dice_loss", class_weights)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        intersection = (probs * one_hot).sum((0, 2))
        cardinality = (probs + one_hot).sum((0, 2))
        loss = (1 - (2 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)) * (one_hot.sum((0, 2)) > 0)
        if class_weights is None:
            return loss.mean()
        w = class_weights.to(device=loss.device, dtype=torch.float32)
        return (loss * w).sum() / w.sum()


def lovasz_softmax(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int | None = 255) -> torch.Tensor:
    """Lovasz-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018, Algorithm 1 and eq. 12): for each class
    present in the batch's labels, the Lovasz extension of the Jaccard loss applied to the errors |g_c - p_c|
    of the batch's valid pixels, sorted; the mean over those classes. Ignored pixels count nowhere. As
    segmentation_models_pytorch's LovaszLoss("multiclass", per_image=False)."""
    probs, one_hot = _valid_one_hot(logits, targets, ignore_index, "lovasz_softmax")
    k = probs.shape[1]
    valid = targets.reshape(-1) != ignore_index if ignore_index is not None else None
    probs = probs.permute(1, 0, 2).reshape(k, -1)
    one_hot = one_hot.permute(1, 0, 2).reshape(k, -1)
    if valid is not None:
        probs, one_hot = probs[:, valid], one_hot[:, valid]
    present = one_hot.any(1)
    if not bool(present.any()):  # every pixel ignored: 0, still attached to the graph
        return logits.float().sum() * 0
    with torch.autocast(device_type=logits.device.type, enabled=False):
        # The present classes' rows sorted in one call (its rows in parallel); equal errors in any order give
        # the same sum, since their gradient terms add up to the Jaccard change across them.
        fg = one_hot[present]
        errors, order = torch.sort((fg - probs[present]).abs(), dim=1, descending=True)
        fg = fg.gather(1, order)
        total = fg.sum(1, keepdim=True)
        jaccard = 1 - (total - fg.cumsum(1)) / (total + (1 - fg).cumsum(1))
        gradient = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)  # Algorithm 1 (lovasz_grad)
        return (errors * gradient).sum(1).mean()


def _check_arguments(logits, targets, weight_map, class_weights, sample_p, reduction, what="cross_entropy",
                     gamma: float = 0.0) -> None:
    """Shapes, dtypes and ranges of a loss's arguments, each refusal naming what was expected."""
    if logits.dim() != 4:
        raise ValueError(f"{what}: logits of shape {tuple(logits.shape)}, expected (B, K, H, W)")
    b, k, h, w = logits.shape
    if tuple(targets.shape) != (b, h, w):
        raise ValueError(
            f"{what}: targets of shape {tuple(targets.shape)} do not match logits of shape "
            f"{tuple(logits.shape)}; expected targets of shape {(b, h, w)}"
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"{what}: targets of dtype {targets.dtype}, expected an integer dtype (int64)")
    if weight_map is not None and tuple(weight_map.shape) != (b, h, w):
        raise ValueError(
            f"{what}: weight_map of shape {tuple(weight_map.shape)}, expected {(b, h, w)} like targets"
        )
    if class_weights is not None and tuple(class_weights.shape) != (k,):
        raise ValueError(
            f"{what}: class_weights of shape {tuple(class_weights.shape)}, expected ({k},) for {k} classes"
        )
    if sample_p is not None and not 0 < sample_p <= 1:
        raise ValueError(
            f"{what}: sample_p={sample_p}; expected the probability of keeping a pixel's term, in (0, 1]"
            " (None or 1 keeps every pixel)"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{what}: reduction={reduction!r}; expected 'mean' or 'sum'")
    if gamma < 0:
        raise ValueError(f"{what}: gamma={gamma}; expected the focal exponent, a number >= 0 (0 = cross-entropy)")
