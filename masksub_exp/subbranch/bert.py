"""BERT-style encoders (transformers): the sub-branch drops a ratio r of the content tokens.

Per sample, int(n * r) of its n content tokens (not special, not padding) are dropped; the kept
tokens are packed to the left and keep their original position ids, [CLS]/[SEP] always stay, and
the attention mask covers exactly the kept tokens. Special tokens come from the batch's
`special_tokens_mask` (what the tokenizer returns with return_special_tokens_mask=True); without
it, the first token and the last attended token of each row count as special.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .base import SubBranch


def _is_hf_encoder(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "max_position_embeddings") and hasattr(model, "base_model")


def special_tokens(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if "special_tokens_mask" in batch:
        return batch["special_tokens_mask"].bool()
    attention = batch["attention_mask"].bool()
    special = torch.zeros_like(attention)
    special[:, 0] = True
    last = attention.long().cumsum(1).argmax(1)  # index of the last attended token per row
    special[torch.arange(len(last)), last] = True
    return special


def text_drop_mask(batch: Mapping[str, torch.Tensor], ratio: float) -> torch.Tensor:
    """(B, T) bool: int(n * ratio) random content tokens per row, True = dropped."""
    ids, attention = batch["input_ids"], batch["attention_mask"].bool()
    b, t = ids.shape
    content = attention & ~special_tokens(batch)
    n_drop = (content.sum(1) * ratio).long()  # int() per row: floor of a non-negative number
    # draw among content tokens only: non-content tokens get ranks past every content token
    noise_order = torch.where(content, torch.rand(b, t, device=ids.device), torch.full((b, t), 2.0, device=ids.device))
    rank = noise_order.argsort(1).argsort(1)
    return content & (rank < n_drop.view(-1, 1))


def drop_text_tokens(batch: Mapping[str, torch.Tensor], ratio: float, pad_token_id: int = 0,
                     drop: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A new batch without int(n * ratio) random content tokens per row (or without `drop`), with `position_ids`."""
    ids, attention = batch["input_ids"], batch["attention_mask"].bool()
    b, t = ids.shape
    if drop is None:
        drop = text_drop_mask(batch, ratio)
    keep = attention & ~drop
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.arange(t, device=ids.device).expand(b, t)
    # stable left-packing: kept tokens first, in their original order
    order = torch.where(keep, 0, 1).mul(t).add(torch.arange(t, device=ids.device)).argsort(1)
    width = int(keep.sum(1).max())
    order = order[:, :width]
    kept = keep.gather(1, order)
    out = {
        "input_ids": ids.gather(1, order).masked_fill(~kept, pad_token_id),
        "attention_mask": kept.to(batch["attention_mask"].dtype),
        "position_ids": positions.gather(1, order).masked_fill(~kept, 0),
    }
    if "token_type_ids" in batch:
        out["token_type_ids"] = batch["token_type_ids"].gather(1, order).masked_fill(~kept, 0)
    return out


class BertTokenDrop(SubBranch):
    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_hf_encoder(model)

    def forward(self, model: nn.Module, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        pad = getattr(model.config, "pad_token_id", 0) or 0
        drop = text_drop_mask(x, self.ratio)
        if self.record_next:
            self.remember("text", x, drop)
        return model(**drop_text_tokens(x, self.ratio, pad, drop=drop)).logits
