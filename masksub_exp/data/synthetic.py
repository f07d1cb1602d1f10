"""Synthetic, learnable images for smoke tests: class-dependent patterns plus noise, fixed per index."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class SyntheticImages(Dataset):
    def __init__(self, size: int, num_classes: int, in_chans: int, img_size: int, seed: int = 0,
                 transform=None, prototype_seed: int = 0) -> None:
        # class prototypes are shared by every split (drawn per item, so 1000 classes cost no memory);
        # labels and noise differ by `seed`
        self.shape = (in_chans, img_size, img_size)
        self.prototype_seed = prototype_seed
        self.targets = torch.randint(0, num_classes, (size,), generator=torch.Generator().manual_seed(seed))
        self.noise_seed = seed
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = int(self.targets[index])
        proto_gen = torch.Generator().manual_seed(self.prototype_seed * 100_003 + label)
        prototype = torch.randn(self.shape, generator=proto_gen)
        g = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + index)
        image = prototype + 0.5 * torch.randn(self.shape, generator=g)
        if self.transform is not None:
            image = self.transform(image)
        return image, label
