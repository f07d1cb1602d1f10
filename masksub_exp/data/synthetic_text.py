"""Synthetic token sequences for smoke tests: class-dependent token frequencies, variable lengths.

Ids: 0 [PAD], 1 [CLS], 2 [SEP]; content tokens from 3 up. Each item is (features, label) where
features hold input_ids, attention_mask, token_type_ids and special_tokens_mask, padded to seq_len.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

PAD, CLS, SEP = 0, 1, 2


class SyntheticText(Dataset):
    def __init__(self, size: int, num_classes: int, vocab_size: int, seq_len: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, num_classes, (size,), generator=g)
        self.lengths = torch.randint(seq_len // 2, seq_len - 1, (size,), generator=g)  # content tokens
        # each class prefers its own slice of the vocabulary
        content = vocab_size - 3
        self.tokens = torch.randint(0, content, (size, seq_len), generator=g)
        width = max(1, content // num_classes)
        preferred = 3 + self.labels.view(-1, 1) * content // num_classes + self.tokens % width
        use_preferred = torch.rand(size, seq_len, generator=g) < 0.5
        self.tokens = torch.where(use_preferred, preferred, 3 + self.tokens)
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], int]:
        n = int(self.lengths[index])
        ids = torch.full((self.seq_len,), PAD, dtype=torch.long)
        ids[0], ids[1:n + 1], ids[n + 1] = CLS, self.tokens[index, :n], SEP
        attention = (torch.arange(self.seq_len) < n + 2).long()
        special = ((ids == CLS) | (ids == SEP)).long()
        features = {"input_ids": ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(ids),
                    "special_tokens_mask": special}
        return features, int(self.labels[index])
