"""CNN (and any other timm image model) sub-branch: zero square patches of the normalised input.

Exactly int(L * r) of the L unit x unit patches are zeroed per sample. (The reference code
multiplies by the *remove* mask and so zeroes int(L * (1 - r)); we zero the requested ratio.)
BatchNorm stays in train mode in both branches, as in the reference: the sub pass updates the
running statistics with masked-input batches too, and normalises with its own batch statistics.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import MaskSubConfig
from .base import SubBranch, pixel_mask, random_masks


def patch_masks(x: torch.Tensor, ratio: float, unit: int) -> torch.Tensor:
    """(B, 1, H, W) bool: int(L * ratio) random unit x unit patches per sample (partial edge patches count)."""
    b, _, h, w = x.shape
    grid = (math.ceil(h / unit), math.ceil(w / unit))
    units = grid[0] * grid[1]
    masks = random_masks(b, units, int(units * ratio), x.device)
    return pixel_mask(masks, grid, unit, (h, w))


def zero_patches(x: torch.Tensor, ratio: float, unit: int) -> torch.Tensor:
    """x with int(L * ratio) random unit x unit patches zeroed per sample (partial edge patches count)."""
    return x.masked_fill(patch_masks(x, ratio, unit), 0.0)


class CNNPatchZero(SubBranch):
    def __init__(self, model: nn.Module, cfg: MaskSubConfig) -> None:
        super().__init__(model, cfg)
        self.unit = cfg.unit_px

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        # any timm image model: they all carry a pretrained_cfg and take an image batch
        return hasattr(model, "pretrained_cfg") and hasattr(model, "forward_features")

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        masks = patch_masks(x, self.ratio, self.unit)
        if self.record_next:
            self.remember("pixels", x, masks)
        return model(x.masked_fill(masks, 0.0))
