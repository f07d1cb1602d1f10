"""A picture of what the sub-branch sees, drawn once, from the mask the first step actually used.

The adapter records its mask and input on request (`SubBranch.record_next`); this module turns that
record into `mask_preview.png` in the run folder: a few training inputs next to what the sub-branch was
fed (ViT: dropped patch tokens greyed out; Swin: the blocks replaced by the mask token, tinted; CNN: the
zeroed input itself). For text, `mask_preview.txt` and the PNG list each sample's kept and dropped tokens.
matplotlib (Agg) is imported only here, only when a preview is drawn.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .subbranch.base import MaskRecord

PNG, TEXT = "mask_preview.png", "mask_preview.txt"
GREY = 0.5  # a dropped ViT token: nothing reaches the network there
MASK_TOKEN_RGB = (0.25, 0.45, 0.95)  # a Swin block holding the learned mask token
SAMPLES = 4


def pixel_masks(record: MaskRecord) -> torch.Tensor:
    """(B, H, W) bool on the CPU: the pixels whose content the sub-branch did not see."""
    image = record.fed
    h, w = image.shape[-2:]
    mask = record.mask.detach().cpu()
    if record.kind == "tokens":  # (B, gh * gw) patch tokens
        gh = h // record.unit
        mask = mask.view(mask.shape[0], gh, -1)
    elif record.kind == "pixels":  # (B, 1, H, W)
        return mask[:, 0]
    elif record.kind != "blocks":  # Swin's (B, H', W') token grid is the remaining image case
        raise ValueError(f"no image preview for a {record.kind!r} mask")
    full = mask.repeat_interleave(record.unit, dim=1).repeat_interleave(record.unit, dim=2)
    return full[:, :h, :w]


def image_panels(record: MaskRecord, mean: list[float], std: list[float],
                 n: int = SAMPLES) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input, what the sub-branch saw) per sample: (H, W, 3) floats in [0, 1], un-normalised."""
    x = record.fed[:n].detach().float().cpu()
    masks = pixel_masks(record)[:n]
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)

    def to_rgb(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) normalised -> (B, H, W, 3) in [0, 1]
        t = (t * s + m).clamp(0, 1)
        return (t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t[:, :3]).permute(0, 2, 3, 1)

    shown = to_rgb(x)
    seen = shown.clone()
    px = masks.unsqueeze(-1)
    if record.kind == "tokens":
        seen = torch.where(px, torch.full_like(seen, GREY), seen)
    elif record.kind == "blocks":
        seen = torch.where(px, torch.tensor(MASK_TOKEN_RGB).view(1, 1, 1, 3), seen)
    else:  # CNN: exactly the tensor the network got (zeros in normalised space), shown like the input
        seen = to_rgb(x.masked_fill(masks.unsqueeze(1), 0.0))
    return [(shown[i].numpy(), seen[i].numpy()) for i in range(len(x))]


def text_rows(record: MaskRecord, tokenizer: Any = None, n: int = SAMPLES) -> list[tuple[list[str], list[str]]]:
    """(kept tokens, dropped tokens) per sample, in sentence order (padding left out)."""
    ids = record.fed["input_ids"][:n].detach().cpu()
    attended = record.fed["attention_mask"][:n].detach().cpu().bool()
    drop = record.mask[:n].detach().cpu()
    rows = []
    for row_ids, row_att, row_drop in zip(ids, attended, drop, strict=True):
        tokens = (tokenizer.convert_ids_to_tokens(row_ids.tolist()) if tokenizer is not None
                  else [str(i) for i in row_ids.tolist()])
        kept = [tok for tok, a, d in zip(tokens, row_att.tolist(), row_drop.tolist(), strict=True) if a and not d]
        dropped = [tok for tok, d in zip(tokens, row_drop.tolist(), strict=True) if d]
        rows.append((kept, dropped))
    return rows


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a compute node
    import matplotlib.pyplot as plt

    return plt


def draw_images(panels: list[tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(panels), figsize=(2.2 * len(panels), 4.8), squeeze=False)
    for i, (shown, seen) in enumerate(panels):
        for row, (picture, label) in enumerate(((shown, "input"), (seen, "sub-branch"))):
            axes[row][i].imshow(picture, interpolation="nearest")
            axes[row][i].set_xticks([])
            axes[row][i].set_yticks([])
            if i == 0:
                axes[row][i].set_ylabel(label)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_text(rows: list[tuple[list[str], list[str]]], title: str, path: Path) -> None:
    plt = _pyplot()
    fig = plt.figure(figsize=(10, 0.9 * len(rows) + 0.8))
    fig.suptitle(title, fontsize=9)
    for i, (kept, dropped) in enumerate(rows):
        y = 1 - (i + 1) / (len(rows) + 1)
        fig.text(0.02, y + 0.08 / len(rows), "kept: " + " ".join(kept)[:150], fontsize=8, family="monospace")
        fig.text(0.02, y, "dropped: " + " ".join(dropped)[:150], fontsize=8, family="monospace", color="#c0392b")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_preview(record: MaskRecord, run_dir: Path, *, mean: list[float], std: list[float], step: int,
                  ratio: float, tokenizer: Any = None) -> Path:
    """Draw the record into run_dir/mask_preview.png (and .txt for text); returns the PNG's path."""
    path = run_dir / PNG
    if record.kind == "text":
        rows = text_rows(record, tokenizer)
        lines = [f"sample {i}\n  kept:    {' '.join(k)}\n  dropped: {' '.join(d)}" for i, (k, d) in enumerate(rows)]
        (run_dir / TEXT).write_text(f"MaskSub r={ratio}, step {step}: tokens the sub-branch kept and dropped\n"
                                    + "\n".join(lines) + "\n")
        draw_text(rows, f"MaskSub r={ratio}, step {step}: kept and dropped tokens", path)
        return path
    what = {"tokens": "dropped tokens grey", "blocks": "mask-token blocks blue", "pixels": "zeroed patches"}
    draw_images(image_panels(record, mean, std), f"MaskSub r={ratio}, step {step}: {what[record.kind]}", path)
    return path


def publish(record: MaskRecord, p: Any, step: int) -> None:
    """Write the preview of `record` for the run of parts `p` and hand the picture to the sinks (W&B)."""
    settings = p.settings
    tokenizer = None
    if record.kind == "text" and settings.model.checkpoint is not None:
        from .hf import tokenizer_from

        tokenizer = tokenizer_from(settings.model.checkpoint)
    path = write_preview(record, p.run_dir, mean=settings.data.mean, std=settings.data.std, step=step,
                         ratio=settings.masksub.ratio, tokenizer=tokenizer)
    p.sinks.image("masksub/preview", path, step)
    print(f"mask preview: {path}", file=sys.stderr, flush=True)
