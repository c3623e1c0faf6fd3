"""Optional image-domain networks of the Recon: a residual CNN and a small U-Net on (real, imag) channels.

Both map a complex image (…, z, y, x) to a complex image of the same shape, slice by slice in z, and add
their output to the input (residual), so zero-initialised last layers leave the image unchanged. A last layer
drawn with a small standard deviation instead (``last_std``) lets the layers below it learn from the first step:
behind a zero one their gradient is zero, and training can sit on the identity for hundreds of steps.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def _init_last(conv: nn.Conv2d, std: float) -> None:
    """Zero bias; weights zero (the network starts as the identity) or N(0, std²)."""
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    if std > 0:
        nn.init.normal_(conv.weight, std=std)
    else:
        nn.init.zeros_(conv.weight)


def _to_channels(image: torch.Tensor) -> torch.Tensor:
    """(…, y, x) complex → (n, 2, y, x) real."""
    ny, nx = image.shape[-2:]
    flat = image.reshape(-1, ny, nx)
    if not flat.is_complex():
        flat = torch.complex(flat, torch.zeros_like(flat))
    return torch.stack((flat.real, flat.imag), 1)


def _from_channels(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n, 2, y, x) real → complex with the shape of ``like``."""
    return torch.complex(x[:, 0], x[:, 1]).reshape(like.shape)


class SimpleCNN(nn.Module):
    """Residual CNN: ``depth`` 3×3 convolutions with ``features`` channels and ReLU."""

    def __init__(self, features: int = 32, depth: int = 5, last_std: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(2, features, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU()]
        last = nn.Conv2d(features, 2, 3, padding=1)
        _init_last(last, last_std)
        self.body = nn.Sequential(*layers, last)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (…, z, y, x) complex → (…, z, y, x) complex."""
        x = _to_channels(image)
        return _from_channels(x + self.body(x), image if image.is_complex() else image.to(torch.complex64))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    """Residual U-Net with ``levels`` down/up-sampling steps, ``features`` channels at the top level."""

    def __init__(self, features: int = 16, levels: int = 2, last_std: float = 0.0) -> None:
        super().__init__()
        self.levels = levels
        widths = [features * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList([_block(2, widths[0])] + [_block(widths[i], widths[i + 1]) for i in range(levels)])
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(levels))]
        )
        self.merge = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(levels))])
        self.out = nn.Conv2d(widths[0], 2, 1)
        _init_last(self.out, last_std)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (…, z, y, x) complex → (…, z, y, x) complex."""
        x = _to_channels(image)
        ny, nx = x.shape[-2:]
        m = 2**self.levels
        h = F.pad(x, (0, (-nx) % m, 0, (-ny) % m))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            h = merge(torch.cat((up(h), skip), 1))
        residual = self.out(h)[..., :ny, :nx]
        return _from_channels(x + residual, image if image.is_complex() else image.to(torch.complex64))


class ScaleNormalised(nn.Module):
    """``net`` applied to the image divided by its largest magnitude (detached), that scale restored after:
    s·net(x/s), so the output scales with the data as the unrolled recon's does (scanner units are arbitrary; a
    network trained on one simulation's intensities fails at another receiver gain).

    net: maps (…, z, y, x) complex → the same shape
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (…, z, y, x) → (…, z, y, x) complex; each (z, y, x) volume scaled on its own."""
        scale = image.detach().abs().amax((-3, -2, -1), keepdim=True).clamp_min(torch.finfo(image.real.dtype).tiny)
        return scale * self.net(image / scale)


def build_network(kind: Literal["none", "cnn", "unet"], *, features: int, depth: int,
                  last_std: float = 0.0) -> nn.Module | None:
    """The network of a ReconConfig (``depth``: conv layers of the CNN, levels of the U-Net; ``last_std``: its
    last layer's starting weights, 0 for the identity)."""
    if kind == "cnn":
        return SimpleCNN(features, depth, last_std)
    if kind == "unet":
        return UNet(features, depth, last_std)
    return None
