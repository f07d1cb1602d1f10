"""Transforms: a light tensor pipeline for small images, timm's `create_transform` for ImageFolder."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation, interp_mode_to_str, str_to_pil_interp
from torchvision.transforms import functional as TF

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
    """timm's train/eval pipelines (RandAugment, 3-Augment, colour jitter, random erasing, eval crop).

    With data.jpeg_draft the training crop takes undecoded files (see `DraftRandomResizedCrop`)."""
    tf = create_transform(
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
    for op in _augment_ops(tf):  # timm's posterize at full magnitude asks Pillow >= 13 for 0 bits, which it refuses
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize_any_bits
    if train and data.jpeg_draft:
        first = tf.transforms[0]
        if not isinstance(first, RandomResizedCropAndInterpolation):
            raise TypeError(f"data.jpeg_draft needs timm's random-resized crop first, got {type(first).__name__}")
        tf.transforms[0] = DraftRandomResizedCrop(first)
    return tf


def _augment_ops(tf) -> list:
    ops = []
    for t in getattr(tf, "transforms", []):
        ops += list(getattr(t, "ops", []))  # RandAugment
        ops += [op for sub in getattr(t, "policy", []) for op in sub]  # AutoAugment (3-Augment)
    return ops


def posterize_any_bits(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with 0 bits giving what Pillow < 13 gave (a black image) instead of a ValueError that
    the ImageFolder would report as an unreadable file."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def draft_factor(crop_h: int, crop_w: int, out_h: int, out_w: int) -> int:
    """The largest JPEG reduction (1, 2, 4 or 8) at which the crop region still has >= the output's pixels."""
    k = 1
    while k < 8 and crop_h // (2 * k) >= out_h and crop_w // (2 * k) >= out_w:
        k *= 2
    return k


class DraftRandomResizedCrop:
    """timm's RandomResizedCropAndInterpolation on an undecoded file: the crop region is drawn exactly as
    timm draws it (same RNG calls, from the header's size); a JPEG is then decoded at the largest reduction
    (PIL's draft: the decoder's DCT scaling, 1/2, 1/4, 1/8) that keeps at least the output resolution inside
    the region, and the region, scaled to match, is resized to the output. When no reduction qualifies the
    pixels are exactly the full decode's."""

    def __init__(self, base: RandomResizedCropAndInterpolation) -> None:
        self.base = base

    def __call__(self, img: Image.Image) -> Image.Image:
        i, j, h, w = self.base.get_params(img, self.base.scale, self.base.ratio)
        interp = self.base.interpolation
        interp = random.choice(interp) if isinstance(interp, (tuple, list)) else interp
        out_h, out_w = self.base.size
        k = draft_factor(h, w, out_h, out_w)
        if k > 1 and img.format == "JPEG":
            full_w, full_h = img.size
            img.draft("RGB", (-(-full_w // k), -(-full_h // k)))
            sx, sy = img.size[0] / full_w, img.size[1] / full_h
            box = (j * sx, i * sy, (j + w) * sx, (i + h) * sy)
            return img.convert("RGB").resize((out_w, out_h), str_to_pil_interp(interp_mode_to_str(interp)), box=box)
        return TF.resized_crop(img.convert("RGB"), i, j, h, w, list(self.base.size), interp)

    def __repr__(self) -> str:
        return f"DraftRandomResizedCrop({self.base!r})"
