"""Fashion-MNIST from its standard idx(.gz) files (Debian package `dataset-fashion-mnist`)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW_TO_GET = (
    "install the Debian package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist; "
    "`make data` does it when run as root) or point data.root= at a folder with the four idx(.gz) files"
)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"Fashion-MNIST file {stem}(.gz) not found in {root}: {HOW_TO_GET}")


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file: magic (0, 0, dtype code, ndim), big-endian dims, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} bytes of data, found {data.size}")
    return data.reshape(dims)


class FashionMNIST(Dataset):
    """All images held in memory as one uint8 tensor (47 MB); `transform` maps a (1, 28, 28) uint8 tensor."""

    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")

    def __init__(self, root: str | None, split: str, transform=None, limit: int | None = None) -> None:
        folder = Path(root or DEFAULT_ROOT)
        if not folder.is_dir():
            raise FileNotFoundError(f"Fashion-MNIST folder {folder} does not exist: {HOW_TO_GET}")
        images_file, labels_file = FILES[split]
        images = read_idx(_find(folder, images_file))
        labels = read_idx(_find(folder, labels_file))
        if len(images) != len(labels):
            raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels ({split})")
        if limit:
            images, labels = images[:limit], labels[:limit]
        self.images = torch.from_numpy(images.copy()).unsqueeze(1)  # N, 1, 28, 28
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])
