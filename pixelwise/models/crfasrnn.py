"""CRF-as-RNN (Zheng et al., "Conditional Random Fields as Recurrent Neural Networks", ICCV 2015): the mean-field
iterations of the fully connected CRF (pixelwise.crf, the torch backend) as a layer on top of a semantic network,
trained end to end with it (`model.crf`).

Section 4 of the paper writes one mean-field iteration as CNN layers: message passing (Gaussian filtering, here
on the permutohedral lattice), weighting the filter outputs, the compatibility transform, adding the unaries,
normalising (softmax); section 5 unrolls T iterations into an RNN. Learned here, as there (sections 4.3, 4.4):
the two kernels' weights, independent for each class label ((2, K), initialised to w1 and w2), and the
compatibility transform ((K, K), not necessarily symmetric, initialised to Potts as in section 6); the kernels'
bandwidths theta_alpha, theta_beta, theta_gamma stay fixed (section 4.2). At initialisation the layer is exactly
the post-processing CRF of the same parameters (tested). The paper trains with T = 5 iterations and tests with
T = 10 (section 6); here model.crf.iterations is T for both.

At inference the network runs alone (tiled, test-time augmented, exported to ONNX / OpenVINO: the graph is the
network) and the learned CRF runs after it on the whole image, in the one output step of semantic models
(Predictor.postprocess).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from pixelwise.crf import CLIP, CRFParams, build_lattices, colours_of, iterate


class CRFLayer(nn.Module):
    """T mean-field iterations with learned kernel weights and compatibility: logits (B, K, H, W) and the image's
    colours (B, C, H, W) in 0..255 -> the last iteration's logits (their softmax is Q)."""

    def __init__(self, num_classes: int, params: CRFParams) -> None:
        super().__init__()
        self.params = params
        self.kernel_weights = nn.Parameter(torch.tensor([[params.w1] * num_classes, [params.w2] * num_classes]))
        self.compat = nn.Parameter(1 - torch.eye(num_classes))  # Potts, mu(l, l') = [l != l']

    def matrices(self) -> torch.Tensor:
        """(2, K, K): kernel m's filtered Q enters the energy through compat @ diag(kernel_weights[m])."""
        return self.compat[None] * self.kernel_weights[:, None, :]

    def forward(self, logits: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        b, k, h, w = logits.shape
        with torch.autocast(logits.device.type, enabled=False):  # the lattice's sparse products run in float32
            # The unaries of the post-processing CRF, -log max(p, CLIP), so that training and inference agree.
            unary = -torch.log_softmax(logits.float(), dim=1).clamp(min=math.log(CLIP))
            matrices = self.matrices()
            out = [iterate(u.reshape(k, -1).t(), build_lattices(c.float(), self.params), matrices,
                           self.params.iterations).t().reshape(k, h, w) for u, c in zip(unary, colours)]
        return torch.stack(out)

    @torch.no_grad()
    def refine(self, probs: torch.Tensor, image) -> torch.Tensor:
        """The output step: probabilities (K, H, W) of the network and the image as read ((C, H, W) in [0, 1], or
        uint8 (H, W[, C])) -> refined probabilities, on the layer's device."""
        device = self.compat.device
        colours = colours_of(image, probs.shape[-2:]).to(device)
        logits = torch.log(probs.to(device).float().clamp(min=CLIP))[None]
        return torch.softmax(self(logits, colours[None])[0], dim=0).to(probs.device)


class CRFasRNN(nn.Module):
    """A semantic network followed by its CRFLayer. The network takes images normalised with `mean` / `std`
    (data.mean / data.std); the CRF sees the colours they came from. Size rules and staged initialisation are
    the network's."""

    pixelwise_task = "semantic"

    def __init__(self, net: nn.Module, num_classes: int, params: CRFParams, mean=None, std=None) -> None:
        super().__init__()
        self.net = net
        self.crf = CRFLayer(num_classes, params)
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0]).reshape(1, -1, 1, 1), False)
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0]).reshape(1, -1, 1, 1), False)

    def colours(self, x: torch.Tensor, size) -> torch.Tensor:
        """The input images' colours in 0..255 at the centre `size` the output covers (a valid-convolution
        network's output is centred on its input)."""
        top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
        x = x[..., top : top + size[0], left : left + size[1]].detach().float()
        return ((x * self.std + self.mean) * 255).round().clamp(0, 255)

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        logits = out["out"] if isinstance(out, dict) else out  # a net with an auxiliary head: the CRF on "out"
        refined = self.crf(logits, self.colours(x, logits.shape[-2:]))
        return {**out, "out": refined} if isinstance(out, dict) else refined

    def output_size(self, size: int) -> int:
        fn = getattr(self.net, "output_size", None)
        return fn(size) if fn else size

    def input_size_for(self, size: int) -> int:
        fn = getattr(self.net, "input_size_for", None)
        return fn(size) if fn else size

    def load_staged(self, state: dict, source: str = "weights") -> None:
        """model.init_from: a CRF-as-RNN's whole state, or the network's alone (fine-tuning a trained network end to
        end with a new CRF, which keeps its initialisation: the post-processing CRF of model.crf's parameters)."""
        from pixelwise.models.weights import fit_state_dict

        if any(k.startswith(("net.", "crf.")) for k in state):
            fit_state_dict(self, state, what=source)
        elif hasattr(self.net, "load_staged"):
            self.net.load_staged(state, source=source)
        else:
            fit_state_dict(self.net, state, what=source)


__all__ = ["CRFLayer", "CRFasRNN"]
