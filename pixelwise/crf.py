"""Fully connected CRF refinement (Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with
Gaussian Edge Potentials", NIPS 2011): the third step of FCN-style segmentation (Jegou et al. 2017, intro).

`dense_crf(probs, image)` refines a semantic model's class probabilities with mean-field inference
(section 3) of the CRF whose unaries are -log p and whose pairwise potentials are the mixture of two
Gaussian kernels of eq. (3), appearance and smoothness:

    w1 exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2) + w2 exp(-|p_i - p_j|^2 / 2 theta_gamma^2)

(positions p in pixels, colours I of the original image in 0..255), with the Potts compatibility
mu(l, l') = [l != l'] or a given (K, K) matrix. The message passing of each iteration is a Gaussian
filter in the kernels' feature space (section 4), computed on the permutohedral lattice (Adams, Baek &
Davis, Eurographics 2010): splat, blur, slice.

Two backends: "pydensecrf", the authors' C++ code as packaged in pydensecrf2 (the `crf` extra), the
reference; "torch", the same lattice in PyTorch (vectorised, any device, differentiable in the
probabilities, the kernel weights and the compatibility), which needs no compiler.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from pixelwise.errors import ConfigError

EXTRA = "pip install 'pixelwise[crf]'"
BACKENDS = ("torch", "pydensecrf")
CLIP = 1e-5  # unaries are -log(max(p, CLIP)), as pydensecrf.utils.unary_from_softmax


@dataclass(frozen=True)
class CRFParams:
    """The paper's parameters (eq. 3 names them w(1), theta_alpha, theta_beta, w(2), theta_gamma). Defaults:
    the values of Krähenbühl's examples (bilateral sxy=80, srgb=13, compat=10; Gaussian sxy=3, compat=3)."""

    iterations: int = 5
    w1: float = 10.0
    theta_alpha: float = 80.0
    theta_beta: float = 13.0
    w2: float = 3.0
    theta_gamma: float = 3.0


def crf_settings(block: dict, key: str = "infer.crf") -> tuple[str, CRFParams]:
    """infer.crf ({backend, iterations, w1, theta_alpha, theta_beta, w2, theta_gamma}, each optional) as (backend,
    params); unknown keys and values out of range are refused, naming the key. key="model.crf" reads CRF-as-RNN's
    block, which has no backend (it is the torch one)."""
    import difflib

    if not isinstance(block, dict):
        raise ConfigError(f"{key}={block!r}, expected null (off) or a mapping of "
                          f"{'backend, ' if key == 'infer.crf' else ''}iterations, w1, theta_alpha, theta_beta, w2, "
                          "theta_gamma")
    names = [*(["backend"] if key == "infer.crf" else []), *CRFParams.__dataclass_fields__]
    values = {}
    for name, value in block.items():
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            raise ConfigError(f"{key}.{name}: unknown key{f'; did you mean {key}.{close[0]}?' if close else ''} "
                              f"Valid keys: {', '.join(names)}")
        if name != "backend" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or (name == "iterations" and not float(value).is_integer())):
            raise ConfigError(f"{key}.{name}={value!r}, expected {'an integer' if name == 'iterations' else 'a number'}")
        values[name] = int(value) if name == "iterations" else value
    backend = values.pop("backend", "torch")
    params = CRFParams(**values)
    _check(params, backend, key)
    return backend, params


def dense_crf(probs, image, *, backend: str = "torch", iterations: int = 5, w1: float = 10.0,
              theta_alpha: float = 80.0, theta_beta: float = 13.0, w2: float = 3.0, theta_gamma: float = 3.0,
              compat=None) -> torch.Tensor:
    """Refined probabilities, the shape of `probs`.

    probs: (K, H, W) class probabilities (or a batch (B, K, H, W)), a tensor or array. image: the original,
    un-normalised image (H, W) or (H, W, C) uint8 (a batch: (B, H, W[, C])), or a float (C, H, W) tensor in
    [0, 1] as the Predictor reads it. compat: None for Potts, or a (K, K) matrix mu(l, l') (the energy of
    labels l and l' at two pixels; Potts is 1 - identity).
    """
    params = CRFParams(iterations, w1, theta_alpha, theta_beta, w2, theta_gamma)
    _check(params, backend)
    probs_t = torch.as_tensor(probs)
    if probs_t.dim() == 4:
        if len(image) != len(probs_t):
            raise ValueError(f"dense_crf: {len(probs_t)} probability maps but {len(image)} images")
        return torch.stack([dense_crf(p, im, backend=backend, compat=compat, **vars(params))
                            for p, im in zip(probs_t, image)])
    if probs_t.dim() != 3:
        raise ValueError(f"dense_crf: probs of shape {tuple(probs_t.shape)}, expected (K, H, W) or (B, K, H, W)")
    colours = colours_of(image, probs_t.shape[-2:])
    k = probs_t.shape[0]
    mu = _compatibility(compat, k, probs_t)
    if backend == "pydensecrf":
        return _pydensecrf(probs_t, colours, params, mu)
    return mean_field(probs_t, colours, params, mu)


def _check(params: CRFParams, backend: str, key: str = "infer.crf") -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"{key}.backend={backend!r}, expected one of {', '.join(BACKENDS)}")
    if not isinstance(params.iterations, int) or params.iterations < 0:
        raise ConfigError(f"{key}.iterations={params.iterations!r}, expected an integer >= 0")
    for name in ("theta_alpha", "theta_beta", "theta_gamma"):
        if not getattr(params, name) > 0:
            raise ConfigError(f"{key}.{name}={getattr(params, name)!r}, expected a positive standard deviation")


def colours_of(image, size) -> torch.Tensor:
    """The image as (C, H, W) float32 colours in 0..255, checked against the probabilities' size."""
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        if image.dim() != 3:
            raise ValueError(f"dense_crf: a float image must be (C, H, W) in [0, 1], got shape {tuple(image.shape)}")
        colours = (image.detach().float() * 255).round()
    else:
        array = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise ValueError(f"dense_crf: image of dtype {array.dtype} and shape {array.shape}; expected the original "
                             "uint8 image (H, W) or (H, W, C), or a float (C, H, W) tensor in [0, 1]")
        colours = torch.from_numpy(array.astype(np.float32))
        colours = colours[None] if colours.dim() == 2 else colours.permute(2, 0, 1)
    if tuple(colours.shape[-2:]) != tuple(size):
        raise ValueError(f"dense_crf: image of {tuple(colours.shape[-2:])} pixels for probabilities of {tuple(size)}")
    return colours


def _compatibility(compat, k: int, like: torch.Tensor) -> torch.Tensor:
    if compat is None:
        return 1 - torch.eye(k, dtype=like.dtype, device=like.device)  # Potts (section 2)
    mu = torch.as_tensor(compat, dtype=like.dtype, device=like.device)
    if tuple(mu.shape) != (k, k):
        raise ValueError(f"dense_crf: compat of shape {tuple(mu.shape)}, expected ({k}, {k}) for {k} classes")
    return mu


def features(colours: torch.Tensor, params: CRFParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2 + C) appearance and (N, 2) smoothness features of eq. (3): positions over theta, colours over theta_beta."""
    c, h, w = colours.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=colours.device),
                            torch.arange(w, dtype=torch.float32, device=colours.device), indexing="ij")
    position = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)
    appearance = torch.cat([position / params.theta_alpha, colours.reshape(c, -1).t() / params.theta_beta], dim=1)
    return appearance, position / params.theta_gamma


def mean_field(probs: torch.Tensor, colours: torch.Tensor, params: CRFParams, compat: torch.Tensor,
               weights: torch.Tensor | None = None, lattices: tuple | None = None) -> torch.Tensor:
    """Mean-field inference (section 3, Algorithm 1) with the PyTorch lattice: Q = softmax(-unary - sum_m w_m mu Q~_m),
    Q~_m the kernel-filtered Q (section 4), each kernel normalised symmetrically as pydensecrf does.
    `weights` (2,) = (w1, w2) may be a tensor with gradients; differentiable in probs, weights and compat.
    `lattices` (appearance, smoothness), from `build_lattices(colours, params)`, are reused when only weights change."""
    k, h, w = probs.shape
    unary = -torch.log(probs.clamp(min=CLIP)).reshape(k, -1).t()  # (N, K)
    weights = torch.tensor([params.w1, params.w2], dtype=unary.dtype, device=unary.device) if weights is None \
        else weights
    lattices = lattices or build_lattices(colours.to(unary.device), params)
    logits = iterate(unary, lattices, weights[:, None, None] * compat, params.iterations)
    return torch.softmax(logits, dim=1).t().reshape(k, h, w)


def iterate(unary: torch.Tensor, lattices, matrices: torch.Tensor, iterations: int) -> torch.Tensor:
    """The mean-field iterations on (N, K) unaries: each pass filters Q = softmax(logits) with every kernel m and
    maps the filtered Q~_m through its (K, K) matrix (w_m mu for the paper's CRF; CRF-as-RNN learns them), giving
    logits = -unary - sum_m Q~_m matrices[m]^T. Returns the last logits, whose softmax is Q."""
    logits = -unary
    for _ in range(iterations):
        q = torch.softmax(logits, dim=1)
        logits = -unary - sum(lattice.filter(q) @ matrix.t() for lattice, matrix in zip(lattices, matrices))
    return logits


def build_lattices(colours: torch.Tensor, params: CRFParams) -> tuple["Lattice", "Lattice"]:
    """The appearance and smoothness kernels' lattices of an image: they depend on the thetas, not on the weights."""
    appearance, smoothness = features(colours, params)
    return Lattice(appearance), Lattice(smoothness)


class Lattice:
    """The permutohedral lattice of a set of d-dimensional features (Adams et al. 2010, section 3; the construction
    of Krähenbühl's permutohedral.cpp), built once; `filter(values)` is the Gaussian filter of (N, C) values with
    unit standard deviation in feature space, normalised symmetrically (pydensecrf's NORMALIZE_SYMMETRIC).
    Splatting, each axis's blur and slicing are sparse matrices, so a filter is d + 3 sparse products."""

    def __init__(self, feats: torch.Tensor) -> None:
        n, d = feats.shape
        elevated = _elevate(feats.float(), d)  # (N, d+1) on the hyperplane sum = 0, in float32 as the C++ code
        rem0, rank = _nearest_remainder_zero(elevated, d)
        self.barycentric = _barycentric(elevated, rem0, rank, d)  # (N, d+1)
        codes, weights = _encode(_simplex_keys(rem0, rank, d).reshape(-1, d))  # the simplices' vertices, as int64
        # One sort gives the lattice points (the distinct codes), each entry's point, and the entries by point
        # (the splat matrix's rows), where torch.unique and an argsort would sort twice.
        ordered, self.order = torch.sort(codes, stable=True)
        first = torch.ones_like(ordered, dtype=torch.bool)
        first[1:] = ordered[1:] != ordered[:-1]
        self.codes = ordered[first]
        self.row_starts = torch.cat([first.nonzero().flatten(), first.new_tensor([len(first)], dtype=torch.int64)])
        point = torch.cumsum(first, 0) - 1
        self.offsets = torch.empty_like(point).scatter_(0, self.order, point).reshape(n, d + 1)  # simplex vertices
        self.n, self.m, self.d = n, len(self.codes), d
        # Neighbours along axis j: the key -1 in every coordinate and +d in coordinate j (j = d: -1 everywhere).
        self.neighbours = []
        for j in range(d + 1):
            step = torch.ones(d, dtype=torch.int64, device=feats.device)
            if j < d:
                step[j] = -d
            delta = int((step * weights).sum())
            self.neighbours.append((self._lookup(self.codes - delta), self._lookup(self.codes + delta)))
        self.alpha = 1.0 / (1.0 + 2.0 ** -d)
        self._matrices: dict[torch.dtype, tuple] = {}
        self.norm = 1.0 / torch.sqrt(self._compute(torch.ones(n, 1, device=feats.device)) + 1e-20)  # (N, 1)

    def _lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Indices of the lattice points with these codes, -1 where there is none."""
        where = torch.searchsorted(self.codes, codes).clamp(max=self.m - 1)
        return torch.where(self.codes[where] == codes, where, torch.full_like(where, -1))

    def _operators(self, dtype: torch.dtype) -> tuple:
        """(splat (M, N), slice (N, M), [blur (M, M) per axis]) as sparse CSR matrices of `dtype`."""
        if dtype not in self._matrices:
            k, device = self.d + 1, self.codes.device
            weights = self.barycentric.reshape(-1).to(dtype)
            slice_ = _csr(torch.arange(0, self.n * k + 1, k, device=device), self.offsets.reshape(-1), weights,
                          (self.n, self.m))  # row i: point i's d+1 vertices
            splat = _csr(self.row_starts, torch.div(self.order, k, rounding_mode="floor"), weights[self.order],
                         (self.m, self.n))  # the same entries by vertex
            blurs = [_blur_matrix(n1, n2, dtype) for n1, n2 in self.neighbours]
            self._matrices[dtype] = splat, slice_, blurs
        return self._matrices[dtype]

    def _compute(self, values: torch.Tensor) -> torch.Tensor:
        """Splat, blur along each of the d+1 lattice axes with the kernel [1/2, 1, 1/2], slice (section 3.1)."""
        splat, slice_, blurs = self._operators(values.dtype)
        lattice = _SparseProduct.apply(splat, slice_, values)
        for blur in blurs:  # symmetric: its own transpose
            lattice = _SparseProduct.apply(blur, blur, lattice)
        return self.alpha * _SparseProduct.apply(slice_, splat, lattice)

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        norm = self.norm.to(values.dtype)
        return self._compute(values * norm) * norm


class _SparseProduct(torch.autograd.Function):
    """matrix @ x with the gradient transpose @ grad (the transpose given, precomputed)."""

    @staticmethod
    def forward(ctx, matrix, transpose, x):
        ctx.transpose = transpose
        return matrix @ x

    @staticmethod
    def backward(ctx, grad):
        return None, None, ctx.transpose @ grad


def _csr(row_starts: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul with a dense matrix is all we use
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(row_starts, cols, values, size)


def _row_starts(counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def _blur_matrix(n1: torch.Tensor, n2: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """I + (P1 + P2) / 2: each lattice point plus half of each existing neighbour along one axis. Codes are sorted
    and a neighbour's code is the point's minus / plus a constant, so n1 < i < n2 (or the reverse) in every row."""
    m = len(n1)
    own = torch.arange(m, device=n1.device)
    below, above = (n1, n2) if bool((n1 < own).logical_or(n1 < 0).all()) else (n2, n1)
    cols = torch.stack([below, own, above], dim=1)
    values = torch.tensor([0.5, 1.0, 0.5], dtype=dtype, device=n1.device).expand(m, 3)
    present = cols >= 0
    return _csr(_row_starts(present.sum(dim=1)), cols[present], values[present], (m, m))


def _elevate(feats: torch.Tensor, d: int) -> torch.Tensor:
    """Features embedded in the hyperplane of R^(d+1) whose coordinates sum to 0, scaled so that the lattice's
    blur has unit standard deviation in feature space."""
    inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
    scale = inv_std / torch.sqrt(torch.arange(1, d + 1, dtype=feats.dtype, device=feats.device)
                                 * torch.arange(2, d + 2, dtype=feats.dtype, device=feats.device))
    cf = feats * scale  # (N, d)
    suffix = torch.flip(torch.cumsum(torch.flip(cf, [1]), 1), [1])  # suffix[:, j] = sum_{k >= j} cf[:, k]
    after = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], dim=1)  # sum_{k > j}
    j = torch.arange(1, d + 1, dtype=feats.dtype, device=feats.device)
    rest = after - j * cf  # elevated[:, j + 1]
    return torch.cat([suffix[:, :1], rest], dim=1)


def _nearest_remainder_zero(elevated: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest lattice point of remainder 0 and the rank of each coordinate's differential."""
    v = elevated / (d + 1)
    up, down = torch.ceil(v) * (d + 1), torch.floor(v) * (d + 1)
    rem0 = torch.where(up - elevated < elevated - down, up, down)
    total = torch.round(rem0.sum(dim=1) / (d + 1)).long()
    # rank_i = #{j > i: diff_j > diff_i} + #{j < i: diff_j >= diff_i} (permutohedral.cpp's pairwise loop): the
    # position of i when sorted by decreasing diff, ties in index order (a stable sort)
    order = torch.argsort(-(elevated - rem0), dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d + 1, device=order.device).expand_as(order))
    rank = rank + total[:, None]
    low, high = rank < 0, rank > d
    rank = torch.where(low, rank + d + 1, torch.where(high, rank - d - 1, rank))
    rem0 = torch.where(low, rem0 + d + 1, torch.where(high, rem0 - d - 1, rem0))
    return rem0.long(), rank


def _barycentric(elevated, rem0, rank, d: int) -> torch.Tensor:
    v = (elevated - rem0) / (d + 1)
    b = torch.zeros(len(elevated), d + 2, dtype=elevated.dtype, device=elevated.device)
    b = b.scatter_add(1, d - rank, v).scatter_add(1, d - rank + 1, -v)
    b[:, 0] += 1.0 + b[:, d + 1]
    return b[:, : d + 1]


def _simplex_keys(rem0: torch.Tensor, rank: torch.Tensor, d: int) -> torch.Tensor:
    """The first d coordinates of the d+1 vertices of each point's simplex: rem0 + canonical[remainder, rank]."""
    r = torch.arange(d + 1, device=rem0.device)
    canonical = torch.where(r[None, :] <= d - r[:, None], r[:, None], r[:, None] - (d + 1))  # [remainder, rank]
    return rem0[:, None, :d] + canonical[:, rank[:, :d]].permute(1, 0, 2)


def _encode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each integer key row as one int64 in a mixed radix over the keys' range, with room for a neighbour's +-d so
    that a neighbour's code is the code plus a constant; returns (codes, the radix weights)."""
    d = keys.shape[1]
    low = keys.min(dim=0).values - d - 1
    base = keys.max(dim=0).values + d + 2 - low
    if float(torch.log2(base.double()).sum()) > 62:
        raise ValueError("dense_crf: the lattice is too large to index (features of a very wide range); "
                         "use larger theta values")
    weights = torch.ones(d, dtype=torch.int64, device=keys.device)
    for j in reversed(range(d - 1)):
        weights[j] = weights[j + 1] * base[j + 1]
    return ((keys - low) * weights).sum(dim=1), weights


def _pydensecrf(probs: torch.Tensor, colours: torch.Tensor, params: CRFParams, compat: torch.Tensor) -> torch.Tensor:
    """The reference: Krähenbühl's C++ code (pydensecrf2), with the same features, unaries and compatibility."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise ConfigError("infer.crf.backend=pydensecrf needs the package pydensecrf2, which is not installed; "
                          f"install the CRF extra: {EXTRA} (it builds with a C++ compiler), or use backend=torch") \
            from None
    k, h, w = probs.shape
    crf = dcrf.DenseCRF(h * w, k)
    unary = -np.log(np.clip(probs.detach().cpu().numpy().reshape(k, -1), CLIP, None)).astype(np.float32)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    appearance, smoothness = features(colours.cpu(), params)
    for feats, weight in ((appearance, params.w1), (smoothness, params.w2)):
        # pydensecrf adds -compat @ Q~ to the negative energy (MatrixCompatibility): the matrix is w * mu
        matrix = np.ascontiguousarray((weight * compat).cpu().numpy().astype(np.float32))
        crf.addPairwiseEnergy(np.ascontiguousarray(feats.t().numpy().astype(np.float32)), compat=matrix,
                              kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC)
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(k, h, w)
    return torch.from_numpy(q).to(probs.device)


__all__ = ["BACKENDS", "CLIP", "CRFParams", "EXTRA", "Lattice", "build_lattices", "colours_of", "crf_settings",
           "dense_crf", "features", "iterate", "mean_field"]
