"""The sub-branch interface: how a model family runs its masked (or otherwise perturbed) pass."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import MaskSubConfig


def call_network(net: nn.Module, x: Any) -> torch.Tensor:
    """Logits of `net` for an image tensor or a tokenised text batch (a mapping of tensors)."""
    if isinstance(x, Mapping):
        inputs = {k: v for k, v in x.items() if k != "special_tokens_mask"}
        return net(**inputs).logits
    return net(x)


@dataclass
class MaskRecord:
    """The mask one sub-branch pass actually used, and what that pass was fed (for the mask preview).

    kind: "tokens" (ViT: mask (B, gh * gw) over patch tokens, True = dropped), "blocks" (Swin: mask
    (B, H', W') over patch tokens, True = replaced by the mask token), "pixels" (CNN: mask (B, 1, H, W),
    True = zeroed), "text" (BERT: mask (B, T), True = dropped token). `unit`: pixels per mask cell.
    """

    kind: str
    fed: Any  # the image batch, or the tokenised text batch, given to the sub-branch
    mask: torch.Tensor
    unit: int = 1


class SubBranch(ABC):
    """Runs the sub-branch forward of one model family.

    The ratio is read from the config once, here (config -> adapter -> masking op), so nothing
    downstream reads the config again. Implementations must leave the model as they found it.

    Set `record_next = True` and the next masked pass keeps its mask and input in `recorded` (device
    tensors, references only: no copy, no host sync); only then, so the hot path keeps nothing alive.
    """

    def __init__(self, model: nn.Module, cfg: MaskSubConfig) -> None:
        self.ratio = cfg.ratio
        self.record_next = False
        self.recorded: MaskRecord | None = None

    def remember(self, kind: str, fed: Any, mask: torch.Tensor, unit: int = 1) -> None:
        """Called by a masking adapter with the mask it is about to use (kept only when asked)."""
        if self.record_next:
            self.recorded = MaskRecord(kind, fed, mask.detach(), unit)
            self.record_next = False

    def take_record(self) -> MaskRecord | None:
        """The recorded pass, if one was asked for and has run; cleared on reading."""
        record, self.recorded = self.recorded, None
        return record

    @classmethod
    @abstractmethod
    def supports(cls, model: nn.Module) -> bool:
        """Whether this adapter knows how to run `model`'s sub-branch."""

    @abstractmethod
    def forward(self, model: nn.Module, x: Any) -> torch.Tensor:
        """The sub-branch's logits for input `x` (training only)."""

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters the adapter owns (e.g. a mask token); trained without weight decay."""
        return []


def random_masks(batch: int, units: int, num_masked: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """(batch, units) bool masks, exactly `num_masked` True per row (a tensor: one count per row),
    drawn independently per sample MAE-style (uniform noise, argsort)."""
    noise = torch.rand(batch, units, device=device)
    rank = noise.argsort(dim=1).argsort(dim=1)  # each unit's rank in its row's random order
    if isinstance(num_masked, torch.Tensor):
        return rank < num_masked.view(-1, 1)
    return rank < num_masked


def pixel_mask(masks: torch.Tensor, grid: tuple[int, int], unit: int, size: tuple[int, int]) -> torch.Tensor:
    """Expand (B, gh * gw) unit masks to (B, 1, H, W) masks of `unit`-sized squares."""
    b = masks.shape[0]
    m = masks.view(b, 1, *grid)
    m = m.repeat_interleave(unit, dim=2).repeat_interleave(unit, dim=3)
    return m[:, :, : size[0], : size[1]]
