"""ImageNet-layout folders: `<root>/train/<class>/*.jpg` and `<root>/val/<class>/*.jpg`.

A file that cannot be decoded either stops the run with its path (`data.on_bad_image=error`), or is
skipped (`skip`): logged to `<run>/bad_images.txt` (one line per occurrence, from any worker) and
replaced by the next readable sample, so batches keep their size.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision.datasets import ImageFolder

from ..config import ConfigError


class BadImageError(RuntimeError):
    """An image file that cannot be read, with on_bad_image=error."""


def open_lazily(path: str) -> Image.Image:
    """The file opened but not decoded, so a transform can pick the decode scale (PIL's draft) first."""
    return Image.open(path)


class CheckedImageFolder(ImageFolder):
    def __init__(self, root: str, transform: Any, on_bad_image: str, bad_log: Path | None,
                 lazy_decode: bool = False) -> None:
        if lazy_decode:  # the transform decodes (DraftRandomResizedCrop); a bad file still raises inside __getitem__
            super().__init__(root, transform=transform, loader=open_lazily)
        else:
            super().__init__(root, transform=transform)
        self.on_bad_image = on_bad_image
        self.bad_log = bad_log

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            try:
                return super().__getitem__(i)
            except (OSError, ValueError, SyntaxError) as exc:  # what PIL raises on corrupt or truncated files
                path = self.samples[i][0]
                if self.on_bad_image == "error":
                    raise BadImageError(f"cannot read image {path}: {exc}. Fix or remove the file, or set "
                                        "data.on_bad_image=skip to skip unreadable files") from exc
                self._log_skip(path, exc)
        raise BadImageError(f"no readable image in {self.root}")

    def _log_skip(self, path: str, exc: Exception) -> None:
        print(f"skipping unreadable image {path}: {exc}", file=sys.stderr, flush=True)
        if self.bad_log is not None:
            # O_APPEND writes of one short line are atomic, so workers can share the file
            fd = os.open(self.bad_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{path}\t{type(exc).__name__}: {exc}\n".encode())
            finally:
                os.close(fd)


def image_folder(root: str, split: str, transform: Any, *, num_classes: int, on_bad_image: str = "error",
                 bad_log: Path | None = None, lazy_decode: bool = False) -> ImageFolder:
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"ImageFolder split {folder} does not exist: data.root must hold train/ and val/")
    dataset = CheckedImageFolder(str(folder), transform, on_bad_image, bad_log, lazy_decode)
    if len(dataset.classes) > num_classes:
        raise ConfigError(f"data.num_classes={num_classes} but {folder} has {len(dataset.classes)} class folders: "
                          "labels would fall beyond the classifier head; set data.num_classes to at least that")
    return dataset


def count_bad_images(bad_log: Path) -> int:
    return len(bad_log.read_text().splitlines()) if bad_log.exists() else 0
