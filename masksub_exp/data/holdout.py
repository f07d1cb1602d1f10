"""A held-out part of the training split, for model selection that never looks at the test set.

`data.holdout=N` (a number of samples) or a fraction in (0, 1) takes that many samples of the
training split out of training and evaluates on them instead of the test set. Which samples is fixed
by `data.holdout_seed` alone (not the run seed), so every trial of a search, and every seed of a
run, scores on the same images. The draw is over the whole training split, before
`data.train_limit`, which then keeps the first N of the remaining samples in the same shuffled order.

The held-out samples are served with the eval transform (no augmentation). The run folder records
them (`holdout.json`: count, SHA-256 of the sorted indices, the indices themselves).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from ..config import ConfigError


def holdout_count(holdout: float | None, total: int) -> int:
    """How many of `total` training samples `data.holdout` takes (0: no held-out split)."""
    if not holdout:
        return 0
    count = round(holdout * total) if holdout < 1 else int(holdout)
    if not 0 < count < total:
        raise ConfigError(f"data.holdout={holdout:g} takes {count} of the {total} training samples: "
                          "expected at least 1 and fewer than all of them")
    return count


@dataclass(frozen=True)
class HoldoutSplit:
    """Indices into the full training split: `train` (after data.train_limit) and `holdout`, both sorted."""

    train: list[int]
    holdout: list[int]
    seed: int
    total: int

    @property
    def digest(self) -> str:
        """SHA-256 of the sorted held-out indices: equal digests mean the same held-out samples."""
        return hashlib.sha256(",".join(map(str, self.holdout)).encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        """What summary.json says about the split (the list itself goes to holdout.json)."""
        return {"eval_split": "holdout", "holdout_size": len(self.holdout), "holdout_seed": self.seed,
                "holdout_sha256": self.digest, "train_size": len(self.train)}

    def save(self, run_dir: Path) -> Path:
        path = run_dir / "holdout.json"
        record = {**self.summary(), "train_split_size": self.total, "indices": self.holdout}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(path)
        return path


def split_indices(total: int, holdout: float | None, seed: int, train_limit: int | None = None) -> HoldoutSplit:
    """Shuffle range(total) with `seed`: the first `holdout` indices are held out, the next
    `train_limit` (all when null) train. Depends only on (total, holdout, seed, train_limit)."""
    count = holdout_count(holdout, total)
    order = np.random.default_rng(seed).permutation(total)
    rest = order[count:] if not train_limit else order[count:count + train_limit]
    return HoldoutSplit(train=sorted(int(i) for i in rest), holdout=sorted(int(i) for i in order[:count]),
                        seed=seed, total=total)


def eval_view(train_set: Dataset, eval_set: Dataset) -> Dataset:
    """The training split served like the eval split: a shallow copy with the eval set's transform.

    Datasets without a `transform` attribute (the text sets) have no augmentation to swap."""
    if not hasattr(train_set, "transform"):
        return train_set
    view = copy.copy(train_set)
    view.transform = getattr(eval_set, "transform", None)
    return view


def hold_out(train_set: Dataset, eval_set: Dataset, holdout: float | None, seed: int,
             train_limit: int | None = None) -> tuple[Dataset, Dataset, HoldoutSplit]:
    """(training subset, held-out subset with eval transforms, the split) from the full training split."""
    split = split_indices(len(train_set), holdout, seed, train_limit)  # type: ignore[arg-type]
    return Subset(train_set, split.train), Subset(eval_view(train_set, eval_set), split.holdout), split


__all__ = ["HoldoutSplit", "eval_view", "hold_out", "holdout_count", "split_indices"]
