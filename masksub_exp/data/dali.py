"""`data.backend=dali`: NVIDIA DALI decodes and augments the training JPEGs, behind `build_loaders`' contract.

On a CUDA run the JPEGs are decoded on the GPU (nvJPEG, DALI's "mixed" decoder) and every augmentation runs
there; on the CPU the same pipeline runs on DALI's CPU operators (how the tests run it). The batches are
normalised float (B, 3, H, W) tensors with int64 labels, like the torch loader's; mixup/cutmix stay in the
engine. The evaluation loader stays the torch one (no augmentation, once per epoch).

Which files, in which order, on which process: the run's own `ResumableSampler` (the same shuffle, shards,
repeated augmentation and skip-to-position as the torch backend), read through DALI's external source, so
`data.num_workers` becomes DALI's CPU thread count. Resume: a resumed run trains on exactly the samples an
uninterrupted run would, in the same order from the same position; the augmentation draws come from DALI's
RNG, seeded from (seed, epoch, rank, position at which the epoch's iteration started), so a run is
reproducible for a given resume point but a resumed epoch's crops and flips differ from the uninterrupted
run's (DALI's RNG state cannot be saved). The torch backend resumes bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..config import AugConfig, DataConfig
from .imagefolder import BadImageError
from .sampler import ResumableSampler, sample_seed

MISSING = "data.backend=dali needs NVIDIA DALI: pip install '.[dali]' (nvidia-dali-cuda130)"


def files_and_labels(dataset: Dataset) -> tuple[list[str], list[int]]:
    """The (path, label) of every sample of an ImageFolder, or of Subsets of one (holdout, limits)."""
    if isinstance(dataset, Subset):
        files, labels = files_and_labels(dataset.dataset)
        return [files[i] for i in dataset.indices], [labels[i] for i in dataset.indices]
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise TypeError(f"data.backend=dali reads ImageFolder files; got {type(dataset).__name__}")
    return [path for path, _ in samples], [int(label) for _, label in samples]


def rand_augment_args(spec: str) -> tuple[int, int]:
    """timm's 'rand-m9-n2-mstd0.5-inc1' -> (n, m); DALI takes m in bins 0..10 like timm's magnitude scale."""
    n, m = 2, 10
    for part in spec.split("-")[1:]:
        if part.startswith("m") and not part.startswith("mstd"):
            m = int(part[1:])
        elif part.startswith("n"):
            n = int(part[1:])
    return n, m


def train_pipeline(source: Any, *, data: DataConfig, aug: AugConfig, batch_size: int, num_threads: int,
                   device_id: int | None, seed: int) -> Any:
    """The recipe's training augmentation as a DALI pipeline (GPU when device_id is set, else CPU)."""
    try:
        with warnings.catch_warnings():  # DALI's RandAugment still names a few operators by deprecated aliases
            warnings.simplefilter("ignore", DeprecationWarning)
            from nvidia.dali import fn, pipeline_def, types
            from nvidia.dali import math as dmath
            from nvidia.dali.auto_aug import rand_augment
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    gpu = device_id is not None
    size = data.img_size
    interp = {"bilinear": types.INTERP_LINEAR, "nearest": types.INTERP_NN}.get(aug.interpolation, types.INTERP_CUBIC)

    def uniform(lo: float, hi: float) -> Any:
        return fn.random.uniform(range=[lo, hi])

    @pipeline_def(enable_conditionals=True)
    def pipe() -> tuple[Any, Any]:
        jpegs, labels = fn.external_source(source=source, num_outputs=2, batch=True, batch_info=True,
                                           dtype=[types.UINT8, types.INT64])
        images = fn.decoders.image_random_crop(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                               random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
                                               num_attempts=10)
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=interp, antialias=True)
        jitter = aug.color_jitter or 0.0
        if aug.auto_augment == "3a":  # DeiT-III 3-Augment: one of solarize / grayscale / blur, uniformly
            choice = fn.random.uniform(values=[0, 1, 2], dtype=types.INT32)
            if choice == 0:
                bright = images >= 128  # PIL's solarize(128): invert pixels >= 128
                images = fn.cast(images + bright * (255 - 2 * fn.cast(images, dtype=types.INT16)),
                                 dtype=types.UINT8)
            elif choice == 1:
                images = fn.hsv(images, saturation=0.0)
            else:
                images = fn.gaussian_blur(images, sigma=uniform(0.1, 2.0))
        elif aug.auto_augment and aug.auto_augment.startswith("rand"):
            n, m = rand_augment_args(aug.auto_augment)
            images = rand_augment.rand_augment(images, n=n, m=m, num_magnitude_bins=11, shape=[size, size],
                                               fill_value=128, seed=seed)
            jitter = 0.0  # timm turns colour jitter off under RandAugment
        elif aug.auto_augment:
            raise ValueError(f"recipe.aug.auto_augment={aug.auto_augment!r} has no DALI version: use '3a' or "
                             "'rand-...', or data.backend=torch")
        if jitter:
            images = fn.color_twist(images, brightness=uniform(1 - jitter, 1 + jitter),
                                    contrast=uniform(1 - jitter, 1 + jitter),
                                    saturation=uniform(1 - jitter, 1 + jitter))
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          mean=[255 * v for v in data.mean], std=[255 * v for v in data.std],
                                          mirror=fn.random.coin_flip(probability=aug.hflip))
        if aug.reprob > 0:  # timm's RandomErasing, mode 'const': one box, area 2-33 %, log-uniform aspect 0.3-3.3
            area, log_ratio = uniform(0.02, 1 / 3), uniform(np.log(0.3), np.log(1 / 0.3))
            ratio = dmath.exp(log_ratio)
            h = dmath.min(dmath.sqrt(area * ratio), 1.0)
            w = dmath.min(dmath.sqrt(area / ratio), 1.0)
            on = fn.cast(fn.random.coin_flip(probability=aug.reprob), dtype=types.FLOAT)
            anchor = fn.stack(uniform(0.0, 1.0) * (1.0 - h), uniform(0.0, 1.0) * (1.0 - w))
            images = fn.erase(images, anchor=anchor, shape=fn.stack(h * on, w * on), axis_names="HW",
                              normalized_anchor=True, normalized_shape=True, fill_value=0.0)
        return images, labels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pipe(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                    prefetch_queue_depth=2)


class DaliTrainLoader:
    """Iterates one epoch of (images, labels) from the sampler's current position, like the torch DataLoader
    with drop_last=True; `len()` is the number of batches in a whole epoch."""

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, data: DataConfig, aug: AugConfig, *,
                 batch_size: int, seed: int, rank: int = 0, device: torch.device | None = None) -> None:
        self.files, self.labels = files_and_labels(dataset)
        self.sampler, self.data, self.aug = sampler, data, aug
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        cuda = device is not None and device.type == "cuda"
        self.device_id = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
        # define the pipeline once now, so a missing DALI or an augmentation it lacks fails before training
        train_pipeline(_no_source, data=data, aug=aug, batch_size=1, num_threads=1, device_id=None, seed=0)

    def __len__(self) -> int:
        return len(self.sampler.base) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = [index for index, _ in self.sampler]  # from the sampler's skip point; its per-sample seeds unused
        batches = len(order) // self.batch_size
        if batches == 0:
            return
        b = self.batch_size

        def source(info: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
            if info.iteration >= batches:
                raise StopIteration
            chunk = order[info.iteration * b:(info.iteration + 1) * b]
            return ([np.fromfile(self.files[i], dtype=np.uint8) for i in chunk],
                    [np.array([self.labels[i]], dtype=np.int64) for i in chunk])

        pipe_seed = sample_seed(self.seed, self.sampler.epoch, self.rank, self.sampler.skip) % 2**31
        pipe = train_pipeline(source, data=self.data, aug=self.aug, batch_size=b,
                              num_threads=max(1, self.data.num_workers), device_id=self.device_id, seed=pipe_seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pipe.build()
        try:
            for step in range(batches):
                try:
                    images, labels = pipe.run()
                except RuntimeError as exc:
                    chunk = order[step * b:(step + 1) * b]
                    raise BadImageError(f"DALI could not decode a file of the batch starting with "
                                        f"{self.files[chunk[0]]}: {str(exc).splitlines()[0]}") from exc
                yield _to_torch(images, self.device_id), _to_torch(labels, None).reshape(-1)
        finally:
            del pipe


def _no_source(info: Any) -> Any:
    raise StopIteration


def _to_torch(tensors: Any, device_id: int | None) -> torch.Tensor:
    """A copy of a DALI batch as a torch tensor (DALI reuses its buffers on the next run)."""
    from nvidia.dali.backend import TensorGPU
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    dense = tensors.as_tensor()
    device = torch.device("cuda", device_id) if isinstance(dense, TensorGPU) else torch.device("cpu")
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device) if device.type == "cuda" else None)
    return out
