"""Registry: which adapter runs a model's sub-branch for a given `masksub.mode`."""

from __future__ import annotations

from torch import nn

from ..config import ConfigError, MaskSubConfig
from .base import SubBranch
from .bert import BertTokenDrop, drop_text_tokens
from .cnn import CNNPatchZero, zero_patches
from .stochastic import DropSub, PathSub
from .swin import SwinMaskToken
from .vit import ViTTokenDrop, drop_tokens

# mode -> adapters tried in order; the first whose `supports(model)` is true wins, so the
# catch-all CNN adapter (any timm image model) comes after the token-aware ones
REGISTRY: dict[str, list[type[SubBranch]]] = {
    "mask": [ViTTokenDrop, SwinMaskToken, BertTokenDrop, CNNPatchZero],
    "droppath": [PathSub],
    "dropout": [DropSub],
}


def supported() -> str:
    return "; ".join(f"{mode}: {', '.join(a.__name__ for a in adapters)}" for mode, adapters in REGISTRY.items())


def build_subbranch(model: nn.Module, cfg: MaskSubConfig) -> SubBranch | None:
    """The adapter for `model` under `cfg`, None when MaskSub is off; a clear error otherwise."""
    if not cfg.enabled:
        return None
    for adapter in REGISTRY.get(cfg.mode, []):
        if adapter.supports(model):
            return adapter(model, cfg)
    raise ConfigError(
        f"masksub.mode={cfg.mode!r} is not supported for model {type(model).__name__}; "
        f"supported (mode: adapters): {supported()}. ViT, Swin and BERT-style encoders mask tokens, other timm "
        "image models zero pixel patches; droppath needs drop-path slots, dropout needs nn.Dropout modules. "
        "Use masksub=off for the plain recipe."
    )


__all__ = [
    "REGISTRY", "BertTokenDrop", "CNNPatchZero", "DropSub", "PathSub", "SubBranch", "SwinMaskToken", "ViTTokenDrop",
    "build_subbranch", "drop_text_tokens", "drop_tokens", "supported", "zero_patches",
]
