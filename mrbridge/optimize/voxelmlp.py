"""Per-voxel MLP (MRzero T1 mapping): each voxel's contrast signals → a quantitative value (T1 in s)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VoxelMLP(nn.Module):
    """ReLU MLP applied to every voxel's magnitude signals, normalised by their maximum (removes PD).

    >>> mlp = VoxelMLP(10, [8, 8])
    >>> mlp(torch.rand(2, 10, 4, 4)).shape
    torch.Size([2, 4, 4])
    """

    def __init__(self, contrasts: int, hidden: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = contrasts
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (batch, contrasts, y, x) real ≥ 0 → (batch, y, x) values > 0 (softplus output)."""
        x = images.movedim(1, -1)
        x = x / x.amax(-1, keepdim=True).clamp_min(1e-6)
        return F.softplus(self.body(x))[..., 0]
