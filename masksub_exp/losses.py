"""The recipe's loss for the main branch, and the matching soft loss for the sub-branch.

The sub-branch learns from the detached main output only: softmax targets for softmax recipes,
sigmoid targets for BCE recipes. Label smoothing and BCE target binarisation are label
transforms: they apply to the main branch's labels and never to the sub-branch's targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from .config import RecipeConfig


class RecipeLoss:
    def __init__(self, main: nn.Module, sub: nn.Module, sigmoid: bool) -> None:
        self.main_loss = main
        self.sub_loss = sub
        self.sigmoid = sigmoid

    def main(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.main_loss(logits.float(), target)

    def sub_target(self, main_logits: torch.Tensor) -> torch.Tensor:
        logits = main_logits.detach().float()
        return torch.sigmoid(logits) if self.sigmoid else F.softmax(logits, dim=-1)

    def sub(self, sub_logits: torch.Tensor, main_logits: torch.Tensor) -> torch.Tensor:
        return self.sub_loss(sub_logits.float(), self.sub_target(main_logits))


def build_loss(recipe: RecipeConfig, mixing: bool) -> RecipeLoss:
    """timm's losses, chosen as timm's train.py does; `mixing` means targets arrive as soft vectors."""
    smoothing = recipe.aug.label_smoothing
    if recipe.loss.name == "bce":
        main: nn.Module = BinaryCrossEntropy(
            smoothing=0.0 if mixing else smoothing, target_threshold=recipe.loss.bce_target_thresh
        )
        sub: nn.Module = BinaryCrossEntropy(smoothing=0.0, target_threshold=None)
        return RecipeLoss(main, sub, sigmoid=True)
    if mixing:
        main = SoftTargetCrossEntropy()  # Mixup already folded the smoothing into the targets
    elif smoothing > 0:
        main = LabelSmoothingCrossEntropy(smoothing=smoothing)
    else:
        main = nn.CrossEntropyLoss()
    return RecipeLoss(main, SoftTargetCrossEntropy(), sigmoid=False)
