"""The paper's DropSub and PathSub: the sub-branch is the model with dropout / drop-path at rate p.

`droppath` replaces every block's drop-path module (timm's DropPath, or the Identity timm puts
there when the rate is 0) with DropPath(p) for the sub pass; `dropout` sets p on every nn.Dropout.
Both restore the model afterwards, also when the pass raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from timm.layers import DropPath
from torch import nn

from .base import SubBranch, call_network


def _drop_path_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every drop-path position in timm blocks (drop_path, drop_path1, ...)."""
    slots = []
    for module in model.modules():
        for name, child in module.named_children():
            if name.startswith("drop_path") and isinstance(child, DropPath | nn.Identity):
                slots.append((module, name))
        if vars(module).get("drop_path", 0) is None:
            slots.append((module, "drop_path"))  # timm ResNet blocks hold a plain None when the rate is 0
    return slots


@contextlib.contextmanager
def drop_path_rate(model: nn.Module, p: float) -> Iterator[None]:
    slots = _drop_path_slots(model)
    saved = [getattr(parent, name) for parent, name in slots]
    try:
        for parent, name in slots:
            setattr(parent, name, DropPath(p))
        yield
    finally:
        for (parent, name), module in zip(slots, saved, strict=True):
            if module is None:  # put the plain attribute back exactly as it was
                del parent._modules[name]
                object.__setattr__(parent, name, None)
            else:
                setattr(parent, name, module)


@contextlib.contextmanager
def dropout_rate(model: nn.Module, p: float) -> Iterator[None]:
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    saved = [m.p for m in dropouts]
    try:
        for m in dropouts:
            m.p = p
        yield
    finally:
        for m, old in zip(dropouts, saved, strict=True):
            m.p = old


class PathSub(SubBranch):
    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return bool(_drop_path_slots(model))

    def forward(self, model: nn.Module, x) -> torch.Tensor:
        with drop_path_rate(model, self.ratio):
            return call_network(model, x)


class DropSub(SubBranch):
    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return any(isinstance(m, nn.Dropout) for m in model.modules())

    def forward(self, model: nn.Module, x) -> torch.Tensor:
        with dropout_rate(model, self.ratio):
            return call_network(model, x)
