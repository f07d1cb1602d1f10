"""ImageNet-layout folders: `<root>/train/<class>/*.jpg` and `<root>/val/<class>/*.jpg`."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import ImageFolder


def image_folder(root: str, split: str, transform) -> ImageFolder:
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"ImageFolder split {folder} does not exist: data.root must hold train/ and val/")
    return ImageFolder(str(folder), transform=transform)
