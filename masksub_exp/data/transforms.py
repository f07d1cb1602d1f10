"""Transforms: a light tensor pipeline for small images, timm's `create_transform` for ImageFolder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import create_transform

from ..config import AugConfig, DataConfig


class SmallImageTransform:
    """uint8 or float (C, H, W) tensor -> normalised float tensor; random shift and flip when training."""

    def __init__(self, mean: list[float], std: list[float], train: bool, pad: int = 0, hflip: float = 0.0,
                 scale_uint8: bool = True) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.train, self.pad, self.hflip, self.scale_uint8 = train, pad, hflip, scale_uint8

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float()
        if self.scale_uint8 and image.dtype == torch.uint8:
            x = x / 255.0
        if self.train:
            if self.pad:
                h, w = x.shape[-2:]
                x = F.pad(x, (self.pad,) * 4)
                top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
                x = x[:, top:top + h, left:left + w]
            if self.hflip and torch.rand(()) < self.hflip:
                x = x.flip(-1)
        return (x - self.mean) / self.std


def small_image_transform(data: DataConfig, aug: AugConfig, train: bool, scale_uint8: bool = True):
    return SmallImageTransform(data.mean, data.std, train, aug.random_crop_pad, aug.hflip, scale_uint8)


def imagefolder_transform(data: DataConfig, aug: AugConfig, train: bool):
    """timm's train/eval pipelines (RandAugment, 3-Augment, colour jitter, random erasing, eval crop)."""
    return create_transform(
        input_size=(data.in_chans, data.img_size, data.img_size),
        is_training=train,
        hflip=aug.hflip,
        auto_augment=aug.auto_augment if train else None,
        color_jitter=aug.color_jitter if (train and aug.color_jitter) else 0.0,
        re_prob=aug.reprob if train else 0.0,
        interpolation=aug.interpolation,
        crop_pct=aug.crop_pct,
        mean=tuple(data.mean),
        std=tuple(data.std),
    )
