"""Per-pixel loss weights of U-Net (Ronneberger et al. 2015, section 3, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

w_c balances the class frequencies; the second term up-weights the thin background gaps that
separate touching objects, so the network learns to keep them apart.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["class_balance_weights", "unet_weight_map", "border_cutoff"]

# The border term is dropped where it is below this fraction of w0 (see `border_cutoff`).
BORDER_TOLERANCE = 1e-3


def class_balance_weights(mask: np.ndarray, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Class weights that give every present class the same total weight.

    w_k = N / (K_present * n_k) for each class k present in `mask`, where n_k is its pixel count,
    N the number of non-ignored pixels and K_present the number of classes present; w_k = 0 for
    classes absent from `mask` (they have no pixels to weight). With these weights each present
    class contributes N / K_present to the weighted pixel count, and the mean weight over the
    non-ignored pixels is exactly 1, so the loss scale does not change.

    Args:
        mask: (H, W) (or any shape) integer class indices in [0, num_classes) or `ignore_index`.

    Returns:
        (num_classes,) float32. All zeros when every pixel is ignored.
    """
    mask = np.asarray(mask)
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"class_balance_weights: mask dtype {mask.dtype}; expected integer class indices")
    valid = mask != ignore_index if ignore_index is not None else np.ones(mask.shape, dtype=bool)
    values = mask[valid]
    bad = np.unique(values[(values < 0) | (values >= num_classes)])
    if bad.size:
        raise ValueError(
            f"class_balance_weights: mask values {bad.tolist()[:20]} outside [0, {num_classes})"
            f" and not ignore_index={ignore_index}"
        )
    counts = np.bincount(values.ravel(), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes, dtype=np.float64)
    if present.any():
        weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def border_cutoff(sigma: float, tolerance: float = BORDER_TOLERANCE) -> int:
    """Distance R (pixels) beyond which a second-nearest object is ignored by `unet_weight_map`.

    The border term is w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) with 0 <= d1 <= d2. If the two nearest
    objects are both within R of a pixel, both distances are found exactly. Otherwise d2 > R, so
    d1 + d2 > R and the true term is below w0 * exp(-R^2 / (2 sigma^2)); the fast map sets it to 0.
    R = ceil(sigma * sqrt(2 ln(1 / tolerance))) therefore bounds the absolute error by
    tolerance * w0 at every pixel (R = 19 for sigma = 5 and tolerance = 1e-3: error < 0.01 for w0 = 10).
    """
    return int(math.ceil(sigma * math.sqrt(2.0 * math.log(1.0 / tolerance))))


def _two_nearest_distances(instances: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance of every pixel to its nearest and second-nearest object, (H, W) each.

    Distances above `radius` are reported as inf. Each object's distance transform is computed
    only in its bounding box grown by `radius` (all of the object lies inside that crop, so the
    distances there are exact, and every pixel outside the crop is farther than `radius`).
    """
    h, w = instances.shape
    d1 = np.full((h, w), np.inf, dtype=np.float64)
    d2 = np.full((h, w), np.inf, dtype=np.float64)
    for label, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        r0, r1 = max(box[0].start - radius, 0), min(box[0].stop + radius, h)
        c0, c1 = max(box[1].start - radius, 0), min(box[1].stop + radius, w)
        crop = instances[r0:r1, c0:c1] != label
        dist = ndimage.distance_transform_edt(crop)
        dist[dist > radius] = np.inf
        a, b = d1[r0:r1, c0:c1], d2[r0:r1, c0:c1]  # views: updated in place
        b[...] = np.where(dist < a, a, np.minimum(b, dist))
        np.minimum(a, dist, out=a)
    return d1, d2


def unet_weight_map(
    instances: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    num_classes: int = 2,
    w0: float = 10.0,
    sigma: float = 5.0,
    balance: bool = True,
    ignore_index: int | None = None,
) -> np.ndarray:
    """U-Net weight map (section 3, eq. 2) from an instance labelling.

    Args:
        instances: (H, W) integer; 0 = background / border, each positive id is one object (cell).
        mask: (H, W) class indices used for the class-balancing term w_c. When None, the two
            classes are "object" (instances > 0) and "background" (instances == 0); for binary
            balancing the weights do not depend on which class is called 0 or 1.
        num_classes: classes in `mask` (must be 2 when `mask` is None).
        w0, sigma: border weight and width in pixels (the paper uses w0 = 10, sigma ~ 5).
        balance: use w_c = class_balance_weights(mask)[mask]; when False, w_c = 1.
        ignore_index: pixels of `mask` with this value get weight 0 (the loss ignores them anyway).

    Returns:
        (H, W) float32 weights. d1 / d2 are Euclidean distances to the nearest pixel of the nearest /
        second-nearest object; the border term is accurate to BORDER_TOLERANCE * w0 (see
        `border_cutoff`) and is 0 where fewer than two objects lie within the cutoff.
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"unet_weight_map: instances shape {instances.shape}; expected (H, W)")
    if instances.dtype == bool or not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(f"unet_weight_map: instances dtype {instances.dtype}; expected integer object ids")
    if instances.size and instances.min() < 0:
        raise ValueError(f"unet_weight_map: instances has negative id {int(instances.min())}; expected ids >= 0")
    if sigma <= 0:
        raise ValueError(f"unet_weight_map: sigma={sigma}; expected > 0")
    if mask is None:
        if num_classes != 2:
            raise ValueError(f"unet_weight_map: num_classes={num_classes} without a mask; expected 2 or pass mask")
        mask = (instances > 0).astype(np.int64)
    else:
        mask = np.asarray(mask)
        if mask.shape != instances.shape:
            raise ValueError(f"unet_weight_map: mask shape {mask.shape} != instances shape {instances.shape}")

    if balance:
        class_w = class_balance_weights(mask, num_classes, ignore_index)
        index = np.where(mask == ignore_index, 0, mask) if ignore_index is not None else mask
        weights = class_w[index].astype(np.float64)
    else:
        weights = np.ones(instances.shape, dtype=np.float64)

    # ndimage.find_objects allocates one slot per id up to the largest, so make sparse ids dense.
    if instances.size and instances.max() > instances.size:
        ids, inverse = np.unique(instances, return_inverse=True)
        instances = (inverse.reshape(instances.shape) + (0 if ids[0] == 0 else 1)).astype(np.int64)
    d1, d2 = _two_nearest_distances(instances.astype(np.int64, copy=False), border_cutoff(sigma))
    # The border term is meant for the background that separates touching objects (section 3:
    # "separation border"), so it is added on background pixels only; with the cutoff, pixels with
    # fewer than two objects nearby get exp(-inf) = 0.
    background = instances == 0
    weights[background] += w0 * np.exp(-((d1[background] + d2[background]) ** 2) / (2.0 * sigma**2))
    if ignore_index is not None:
        weights[mask == ignore_index] = 0.0
    return weights.astype(np.float32)
