"""The engine computes the paper's objective: one MaskSub step's gradients, recomputed from first principles.

    loss = 0.5 * L(main(x), y) + 0.5 * softCE(sub(x), softmax(main(x)).detach())      (softmax recipes)
    loss = 0.5 * BCE(main(x), y) + 0.5 * BCE(sub(x), sigmoid(main(x)).detach())     (BCE recipes)
    with k-step accumulation each micro-batch contributes 1/k of that.

For every family the project's own step runs once (`train_step`, built by the project's config and
builders). Hooks record the input the sub-branch actually fed the network: the tokens that entered
the ViT blocks, the Swin tokens after masking, the ResNet's zeroed input, the BERT tokens kept. From
that record alone (nothing is re-drawn with the project's masking functions) the test derives the
mask, checks its size against the ratio, writes the loss out by hand (log-softmax, logsigmoid; no
project or timm loss class) on an untouched copy of the model, and compares every parameter's
gradient with the step's to 1e-5 relative. Drop-path and dropout are 0 so both runs are deterministic.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from masksub_exp.config import to_settings
from masksub_exp.losses import build_loss
from masksub_exp.models import MaskSubModel, build_model
from masksub_exp.step import train_step

from .conftest import compose_cfg

RATIO = 0.5
SMOOTHING = 0.1
B = 8

VIT = ["model=vit_micro", "data.img_size=16"]
FAMILIES: dict[str, list[str]] = {
    "deit3_vit": [*VIT, "model.name=deit3_small_patch16_224"],  # LayerScale, no class slot in pos_embed
    "mae_vit": [*VIT, "+model.kwargs.global_pool=avg", "+model.kwargs.fc_norm=true"],
    "clip_vit": [*VIT, "model.name=vit_base_patch16_clip_quickgelu_224"],  # pre-norm (norm_pre), QuickGELU
    "swin": ["model=swin_micro", "data.img_size=64", "masksub.unit_px=16"],
    "resnet": ["model=resnet_micro", "data.img_size=32", "masksub.unit_px=8"],
    "bert": ["model=bert_micro", "data=synthetic_text", "+model.kwargs.attention_probs_dropout_prob=0.0"],
}
CLIP_DIMS = ["model.kwargs.embed_dim=32", "model.kwargs.depth=2", "model.kwargs.num_heads=2",
             "model.kwargs.patch_size=4"]


def settings(family: str, tmp_path: Path, extra: list[str]):
    overrides = ["experiment=smoke", "masksub=mask", f"masksub.ratio={RATIO}", "model.drop_path_rate=0.0",
                 "model.drop_rate=0.0", f"recipe.aug.label_smoothing={SMOOTHING}", *FAMILIES[family], *extra]
    if family == "clip_vit":
        overrides += CLIP_DIMS
    return to_settings(compose_cfg(overrides, tmp_path / "run"))


def make_batch(s, gen: torch.Generator):
    y = torch.randint(0, s.data.num_classes, (B,), generator=gen)
    if s.data.name == "synthetic_text":
        t = s.data.seq_len
        ids = torch.randint(5, s.data.vocab_size, (B, t), generator=gen)
        lengths = torch.randint(6, t + 1, (B,), generator=gen)
        attention = (torch.arange(t) < lengths.view(-1, 1)).long()
        ids[:, 0] = 2  # [CLS]
        ids[torch.arange(B), lengths - 1] = 3  # [SEP]
        ids = ids * attention
        return {"input_ids": ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(ids)}, y
    x = torch.randn(B, s.data.in_chans, s.data.img_size, s.data.img_size, generator=gen)
    return x, y


# ---- the objective, written out ----

def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()


def objective(main: torch.Tensor, sub: torch.Tensor, y: torch.Tensor, classes: int, sigmoid: bool) -> torch.Tensor:
    if sigmoid:  # timm's BCE target with smoothing: off = s / C, on = 1 - s + s / C
        on = 1 - SMOOTHING + SMOOTHING / classes
        target = torch.full_like(main, SMOOTHING / classes).scatter_(1, y.view(-1, 1), on)
        return 0.5 * bce(main, target) + 0.5 * bce(sub, torch.sigmoid(main.detach()))
    target = (1 - SMOOTHING) * F.one_hot(y, classes).float() + SMOOTHING / classes
    return 0.5 * soft_ce(main, target) + 0.5 * soft_ce(sub, F.softmax(main.detach(), dim=-1))


# ---- what the sub-branch fed the network, recorded by hooks; and the same pass rebuilt from the record ----

class Recorder:
    """Records the input of `module` on each call; `sub_calls` are the sub-branch's (every second call)."""

    def __init__(self, module: nn.Module, with_kwargs: bool = False) -> None:
        self.calls: list = []
        if with_kwargs:
            module.register_forward_pre_hook(lambda m, a, kw: self.calls.append({k: v.clone() for k, v in kw.items()}),
                                             with_kwargs=True)
        else:
            module.register_forward_pre_hook(lambda m, a: self.calls.append(a[0].detach().clone()))

    def sub_calls(self) -> list:
        return self.calls[1::2]


def vit_recorder(model: MaskSubModel) -> Recorder:
    return Recorder(model.net.norm_pre)  # the tokens right before the blocks (after the drop)


def vit_sub(net: nn.Module, x: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    full = net._pos_embed(net.patch_embed(x))
    prefix, tokens = net.num_prefix_tokens, full.shape[1] - net.num_prefix_tokens
    # which full-sequence token each recorded token is (exact matches only)
    dist = torch.cdist(seen, full.detach())
    assert dist.min(-1).values.max() < 1e-5, "a token entering the blocks is none of the embedded tokens"
    index = dist.argmin(-1)
    assert (index[:, :prefix] == torch.arange(prefix)).all(), "prefix tokens must be kept, in front"
    assert seen.shape[1] - prefix == int(tokens * (1 - RATIO)), "kept tokens != int(L * (1 - r))"
    assert all(len(set(row.tolist())) == row.numel() for row in index), "a token kept twice"
    kept = full.gather(1, index.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    return net.forward_head(net.norm(net.blocks(net.norm_pre(kept))))


def swin_recorder(model: MaskSubModel) -> Recorder:
    return Recorder(model.net.layers)  # the stage-1 tokens, after the mask token went in


def swin_sub(model: MaskSubModel, x: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    net, token = model.net, model.sub_params[0]
    tokens = net.patch_embed(x)
    masked = (seen - tokens.detach()).abs().amax(-1) > 0  # (B, H, W): where the tokens were replaced
    assert torch.allclose(seen[masked], token.detach().view(-1).expand(int(masked.sum()), -1)), \
        "replaced tokens must be the mask token"
    units, unit = 16, 4  # 64 px / patch 4 = 16x16 tokens; unit_px 16 = 4x4 tokens
    per_unit = masked.view(-1, units // unit, unit, units // unit, unit).float().mean((2, 4))
    assert ((per_unit == 0) | (per_unit == 1)).all(), "a masking unit was only partly masked"
    assert (per_unit.sum((1, 2)) == int(per_unit[0].numel() * RATIO)).all(), "masked units != int(L * r)"
    tokens = torch.where(masked.unsqueeze(-1), token.view(1, 1, 1, -1), tokens)
    return net.forward_head(net.norm(net.layers(tokens)))


def cnn_recorder(model: MaskSubModel) -> Recorder:
    return Recorder(model.net)


def cnn_sub(net: nn.Module, x: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    zeroed = (seen == 0) & (x != 0)
    assert torch.equal(seen[~zeroed], x[~zeroed]), "the sub input differs from x outside the zeroed patches"
    per_unit = zeroed.float().view(-1, 3, 4, 8, 4, 8).mean((1, 3, 5))  # 32 px, unit 8: a 4x4 grid
    assert ((per_unit == 0) | (per_unit == 1)).all() and (per_unit.sum((1, 2)) == 8).all(), "8 of 16 patches zeroed"
    return net(x * (1 - zeroed.float()))


def bert_recorder(model: MaskSubModel) -> Recorder:
    return Recorder(model.net, with_kwargs=True)


def bert_sub(net: nn.Module, x: dict, seen: dict) -> torch.Tensor:
    rows = []
    for b in range(len(x["input_ids"])):
        kept = seen["position_ids"][b][seen["attention_mask"][b].bool()]  # the original positions kept
        length = int(x["attention_mask"][b].sum())
        content = length - 2
        assert kept[0] == 0 and kept[-1] == length - 1, "[CLS] and [SEP] must stay"
        assert len(kept) - 2 == content - int(content * RATIO), "dropped content tokens != int(n * r)"
        assert (kept.diff() > 0).all(), "kept tokens must keep their order"
        rows.append(kept)
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions, attention = torch.zeros_like(ids), torch.zeros_like(ids)
    for b, kept in enumerate(rows):
        ids[b, : len(kept)] = x["input_ids"][b, kept]
        positions[b, : len(kept)] = kept
        attention[b, : len(kept)] = 1
    return net(input_ids=ids, attention_mask=attention, position_ids=positions,
               token_type_ids=torch.zeros_like(ids)).logits


def main_logits(model: MaskSubModel, x) -> torch.Tensor:
    return model.net(**x).logits if isinstance(x, dict) else model.net(x)


SUB: dict[str, tuple[Callable, Callable]] = {
    "deit3_vit": (vit_recorder, lambda m, x, r: vit_sub(m.net, x, r)),
    "mae_vit": (vit_recorder, lambda m, x, r: vit_sub(m.net, x, r)),
    "clip_vit": (vit_recorder, lambda m, x, r: vit_sub(m.net, x, r)),
    "swin": (swin_recorder, swin_sub),
    "resnet": (cnn_recorder, lambda m, x, r: cnn_sub(m.net, x, r)),
    "bert": (bert_recorder, lambda m, x, r: bert_sub(m.net, x, r)),
}


def split(x, k: int) -> list:
    if isinstance(x, dict):
        return [{key: v.chunk(k)[i] for key, v in x.items()} for i in range(k)]
    return list(x.chunk(k))


def check_step(family: str, tmp_path: Path, extra: list[str] | None = None, accum: int = 1) -> None:
    torch.manual_seed(0)
    s = settings(family, tmp_path, extra or [])
    model = build_model(s.model, s.data, s.masksub).train()
    reference = copy.deepcopy(model)  # untouched: the same weights, no hooks
    x, y = make_batch(s, torch.Generator().manual_seed(1))
    loss = build_loss(s.recipe, mixing=False)
    recorder_for, sub_forward = SUB[family]
    recorder = recorder_for(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, (x, y), optimizer, loss, masksub=True, accum_steps=accum)
    assert len(recorder.sub_calls()) == accum, "one sub-branch pass per micro-batch"

    total = torch.zeros(())
    for xb, yb, seen in zip(split(x, accum), y.chunk(accum), recorder.sub_calls(), strict=True):
        main = main_logits(reference, xb)
        sub = sub_forward(reference, xb, seen)
        total = total + objective(main, sub, yb, s.data.num_classes, loss.sigmoid) / accum
    total.backward()

    ours = dict(model.named_parameters())
    checked = 0
    for name, p in reference.named_parameters():
        got, want = ours[name].grad, p.grad
        assert (got is None) == (want is None), f"{name}: gradient in only one of the two computations"
        if want is None:
            continue
        scale = want.abs().max().clamp_min(1e-12)
        err = (got - want).abs().max() / scale
        assert err <= 1e-5, f"{family}: {name} gradient differs by {err:.2e} (relative to its largest entry)"
        checked += 1
    assert checked == sum(1 for p in reference.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_step_matches_the_objective(family: str, tmp_path: Path) -> None:
    check_step(family, tmp_path)


@pytest.mark.parametrize("family", ["deit3_vit", "swin", "bert"])
def test_accumulation_over_two_micro_batches(family: str, tmp_path: Path) -> None:
    check_step(family, tmp_path, accum=2)


@pytest.mark.parametrize("family", ["deit3_vit", "resnet"])
def test_bce_recipe_uses_sigmoid_targets(family: str, tmp_path: Path) -> None:
    check_step(family, tmp_path, ["recipe.loss.name=bce"])


def test_the_check_can_fail(tmp_path: Path) -> None:
    """A sub-branch trained on hard labels instead of the main branch's softmax fails the comparison."""
    def wrong(main, sub, y, classes, sigmoid):
        return 0.5 * soft_ce(main, F.one_hot(y, classes).float()) + 0.5 * soft_ce(sub, F.one_hot(y, classes).float())

    original = globals()["objective"]
    globals()["objective"] = wrong
    try:
        with pytest.raises(AssertionError, match="gradient differs"):
            check_step("deit3_vit", tmp_path)
    finally:
        globals()["objective"] = original
