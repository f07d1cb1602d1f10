"""ViT sub-branch: drop patch tokens after the position embeddings (MAE-style, no mask tokens)."""

from __future__ import annotations

import torch
from timm.layers.patch_dropout import patch_dropout_forward
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .base import SubBranch


def drop_tokens(x: torch.Tensor, ratio: float, num_prefix_tokens: int) -> torch.Tensor:
    """Keep int(L * (1 - ratio)) random patch tokens per sample (at least one); prefix tokens stay.

    timm's patch-dropout op does exactly this (independent noise per sample, argsort, gather).
    """
    out, _ = patch_dropout_forward(x, ratio, num_prefix_tokens, ordered=False, training=True)
    return out


def dropped_tokens(keep: torch.Tensor | None, batch: int, num_patches: int) -> torch.Tensor:
    """(B, num_patches) bool, True where a patch token was dropped, from timm's kept indices (None: none)."""
    dropped = torch.ones(batch, num_patches, dtype=torch.bool, device=keep.device if keep is not None else None)
    if keep is None:
        return ~dropped
    return dropped.scatter(1, keep, False)


class ViTTokenDrop(SubBranch):
    """timm VisionTransformer: the main forward with tokens dropped right after `_pos_embed`.

    Works for the DeiT-III (`no_embed_class`), MAE (avg pool + fc_norm over the kept tokens) and
    CLIP (norm_pre) flavours because it reuses the model's own modules in its own order.
    """

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        image = x
        x = model.patch_embed(x)
        x = model._pos_embed(x)
        num_patches = x.shape[1] - model.num_prefix_tokens
        x, keep = patch_dropout_forward(x, self.ratio, model.num_prefix_tokens, ordered=False, training=True)
        if self.record_next:
            self.remember("tokens", image, dropped_tokens(keep, x.shape[0], num_patches),
                          unit=model.patch_embed.patch_size[0])
        x = model.patch_drop(x)
        x = model.norm_pre(x)
        x = model.blocks(x)
        x = model.norm(x)
        return model.forward_head(x)
