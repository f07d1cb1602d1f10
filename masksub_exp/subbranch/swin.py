"""Swin sub-branch: a learnable mask token replaces masked tokens right after patch embedding.

The masking unit is a unit_px x unit_px block (32 px: a whole 8x8 group of stage-1 tokens at
patch 4), so shifted windows see whole masked regions; the ratio is honoured (the reference
hard-codes 0.5). The token (trunc-normal, std 0.02) is owned here and trained without weight decay.

DDP without `find_unused_parameters`: the main pass never touches the token, but in our step the
main backward always runs under `no_sync()`, and the one synchronised backward of a step is the
sub-branch's, which uses every parameter (the token through `torch.where`, even when no unit is
masked). So the reducer always sees every gradient ready.
"""

from __future__ import annotations

import math

import torch
from timm.layers import trunc_normal_
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from ..config import ConfigError, MaskSubConfig
from .base import SubBranch, pixel_mask, random_masks


class SwinMaskToken(SubBranch):
    def __init__(self, model: nn.Module, cfg: MaskSubConfig) -> None:
        super().__init__(model, cfg)
        patch = model.patch_embed.patch_size[0]
        if cfg.unit_px % patch:
            raise ConfigError(f"masksub.unit_px={cfg.unit_px} must be a multiple of the Swin patch size {patch}")
        self.unit_tokens = cfg.unit_px // patch
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, model.patch_embed.proj.out_channels))
        trunc_normal_(self.mask_token, std=0.02)

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return isinstance(model, SwinTransformer)

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.mask_token]

    def token_masks(self, b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(B, H, W, 1) bool: exactly int(L * r) of the L unit blocks masked per sample."""
        grid = (math.ceil(h / self.unit_tokens), math.ceil(w / self.unit_tokens))
        units = grid[0] * grid[1]
        masks = random_masks(b, units, int(units * self.ratio), device)
        return pixel_mask(masks, grid, self.unit_tokens, (h, w)).permute(0, 2, 3, 1)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        image = x
        x = model.patch_embed(x)  # (B, H, W, C), patch norm applied; timm's Swin has no abs pos embed
        b, h, w, _ = x.shape
        masks = self.token_masks(b, h, w, x.device)
        if self.record_next:
            self.remember("blocks", image, masks[..., 0], unit=model.patch_embed.patch_size[0])
        x = torch.where(masks, self.mask_token.to(x.dtype), x)
        x = model.layers(x)
        x = model.norm(x)
        return model.forward_head(x)
