"""Every model family's sub-branch: exact masked counts, no leaked state, gradients, variants."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from masksub_exp.config import ConfigError, MaskSubConfig, OptimizerConfig, RecipeConfig
from masksub_exp.losses import build_loss
from masksub_exp.models import MaskSubModel
from masksub_exp.optim import build_optimizer
from masksub_exp.step import accumulate_gradients
from masksub_exp.subbranch import (
    BertTokenDrop,
    CNNPatchZero,
    DropSub,
    PathSub,
    SwinMaskToken,
    ViTTokenDrop,
    build_subbranch,
    drop_text_tokens,
    zero_patches,
)

RATIOS = [0.25, 0.5, 0.75]


def make(family: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    if family == "vit":
        return timm.create_model("deit3_small_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                                 num_heads=2, num_classes=5, **kw)
    if family == "swin":
        return timm.create_model("swin_tiny_patch4_window7_224", img_size=64, embed_dim=16, depths=(1, 1),
                                 num_heads=(1, 2), window_size=4, num_classes=5, **kw)
    if family == "cnn":
        return timm.create_model("resnet10t", num_classes=5, **kw)
    if family == "bert":
        from transformers import BertConfig, BertForSequenceClassification

        return BertForSequenceClassification(BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=24, num_labels=5, **kw))
    raise ValueError(family)


def text_batch(b: int = 6, t: int = 20) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(8, t - 2, (b,), generator=g)
    lengths[0] = t - 2  # one full row
    ids = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n + 1] = 1, 2
        ids[i, 1:n + 1] = torch.randint(3, 50, (n,), generator=g)
    attention = (torch.arange(t) < (lengths + 2).view(-1, 1)).long()
    special = ((ids == 1) | (ids == 2)).long()
    return {"input_ids": ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(ids),
            "special_tokens_mask": special}


def inputs(family: str, b: int = 4):
    if family == "bert":
        return text_batch(b)
    size = 32 if family == "vit" else 64
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1))


def adapter_for(family: str, model: nn.Module, ratio: float, mode: str = "mask"):
    return build_subbranch(model, MaskSubConfig(mode=mode, ratio=ratio))


EXPECTED_ADAPTER = {"vit": ViTTokenDrop, "swin": SwinMaskToken, "cnn": CNNPatchZero, "bert": BertTokenDrop}
FAMILIES = list(EXPECTED_ADAPTER)


@pytest.mark.parametrize("family", FAMILIES)
def test_registry_picks_the_family_adapter(family: str) -> None:
    assert type(adapter_for(family, make(family), 0.5)) is EXPECTED_ADAPTER[family]


# ---- exact counts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", RATIOS)
def test_cnn_zeroes_exactly_the_requested_patches(ratio: float) -> None:
    x = torch.rand(3, 3, 64, 96) + 1.0  # no zeros to begin with; 2 x 3 = 6 units of 32 px
    out = zero_patches(x, ratio, 32)
    zero_px = (out == 0).all(1).flatten(1).sum(1)
    assert zero_px.tolist() == [int(6 * ratio) * 32 * 32] * 3
    kept = out != 0
    assert torch.equal(out[kept], x[kept])


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("unit_px", [16, 32])
def test_swin_masks_exactly_the_requested_blocks(ratio: float, unit_px: int) -> None:
    model = make("swin").train()
    sub = build_subbranch(model, MaskSubConfig(mode="mask", ratio=ratio, unit_px=unit_px))
    seen = {}
    model.layers.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach()))
    x = inputs("swin")
    sub.forward(model, x)
    tokens = seen["x"]  # (B, 16, 16, C) after masking
    masked = (tokens == sub.mask_token.detach()).all(-1)
    units = (64 // unit_px) ** 2
    unit_tokens = unit_px // 4
    assert masked.flatten(1).sum(1).tolist() == [int(units * ratio) * unit_tokens ** 2] * 4
    # whole blocks: every unit is either fully masked or untouched
    blocks = masked.view(4, 16 // unit_tokens, unit_tokens, 16 // unit_tokens, unit_tokens).float().mean((2, 4))
    assert ((blocks == 0) | (blocks == 1)).all()
    unmasked = ~masked
    torch.testing.assert_close(tokens[unmasked], model.patch_embed(x)[unmasked])


@pytest.mark.parametrize("ratio", RATIOS)
def test_bert_drops_exactly_the_requested_content_tokens(ratio: float) -> None:
    batch = text_batch()
    out = drop_text_tokens(batch, ratio)
    content = (batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()).sum(1)
    kept = out["attention_mask"].sum(1)
    expected = content - (content * ratio).long() + 2  # + [CLS] and [SEP]
    assert kept.tolist() == expected.tolist()
    assert out["input_ids"].shape[1] == int(expected.max())


def test_bert_kept_tokens_keep_their_positions_and_padding_never_counts() -> None:
    batch = text_batch()
    out = drop_text_tokens(batch, 0.5)
    for i in range(len(batch["input_ids"])):
        live = out["attention_mask"][i].bool()
        positions = out["position_ids"][i][live]
        ids = out["input_ids"][i][live]
        assert torch.equal(batch["input_ids"][i][positions], ids)  # same token at its original position
        assert bool((positions.diff() > 0).all())  # original order
        assert int(ids[0]) == 1 and int(ids[-1]) == 2  # [CLS] first, [SEP] last
        assert bool(batch["attention_mask"][i][positions].all())  # never a padding position
        assert int(out["input_ids"][i][~live].sum()) == 0  # the tail is padding, masked out


def test_bert_without_special_tokens_mask_keeps_first_and_last() -> None:
    batch = text_batch()
    batch.pop("special_tokens_mask")
    out = drop_text_tokens(batch, 0.75)
    for i in range(len(out["input_ids"])):
        ids = out["input_ids"][i][out["attention_mask"][i].bool()]
        assert int(ids[0]) == 1 and int(ids[-1]) == 2


# ---- ratio 0 equals the main pass, masks are random, no leaked state -------------------------------

def _main(model: nn.Module, x) -> torch.Tensor:
    return MaskSubModel(model, None)(x)


@pytest.mark.parametrize("family,mode", [(f, "mask") for f in FAMILIES] + [("vit", "droppath"), ("swin", "droppath"),
                                          ("cnn", "droppath"), ("vit", "dropout"), ("bert", "dropout")])
def test_ratio_zero_equals_the_main_pass(family: str, mode: str) -> None:
    model = make(family).eval()
    x = inputs(family)
    sub = adapter_for(family, model, 0.0, mode)
    with torch.no_grad():
        torch.testing.assert_close(sub.forward(model, x), _main(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_differ_across_samples_and_steps(family: str) -> None:
    model = make(family).eval()
    sub = adapter_for(family, model, 0.5)
    x = inputs(family, b=2)
    if family == "bert":
        x = {k: v[:1].expand(2, -1).contiguous() for k, v in x.items()}  # two identical rows
    else:
        x = x[:1].expand(2, *x.shape[1:]).contiguous()
    with torch.no_grad():
        a, b = sub.forward(model, x), sub.forward(model, x)
    assert not torch.allclose(a[0], a[1]), "identical samples got identical masks"
    assert not torch.allclose(a, b), "two steps drew the same masks"


@pytest.mark.parametrize("family,mode", [(f, "mask") for f in FAMILIES] + [("vit", "droppath"), ("vit", "dropout"),
                                                                            ("cnn", "droppath")])
def test_main_pass_untouched_after_the_sub_pass(family: str, mode: str) -> None:
    model = make(family, drop_path_rate=0.0) if family != "bert" else make(family)
    model.eval()
    x = inputs(family)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = _main(model, x)
        adapter_for(family, model, 0.5, mode).forward(model, x)
        after = _main(model, x)
    assert torch.equal(before, after)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_state.items())


@pytest.mark.parametrize("mode,family", [("droppath", "vit"), ("droppath", "cnn"), ("dropout", "vit"),
                                         ("dropout", "bert")])
def test_variants_restore_the_model_when_the_pass_raises(mode: str, family: str) -> None:
    model = make(family)
    modules_before = [(n, type(m), getattr(m, "p", None)) for n, m in model.named_modules()]
    sub = adapter_for(family, model, 0.5, mode)
    bad = {"input_ids": torch.zeros(2, 99, dtype=torch.long)} if family == "bert" else torch.randn(2, 7, 5, 5)
    with pytest.raises(Exception):  # noqa: B017  (whatever the model raises on a malformed input)
        sub.forward(model, bad)
    assert [(n, type(m), getattr(m, "p", None)) for n, m in model.named_modules()] == modules_before


def test_droppath_replaces_rates_only_during_the_sub_pass() -> None:
    model = make("vit", drop_path_rate=0.1).train()
    rates = []
    model.blocks[-1].register_forward_pre_hook(lambda m, a: rates.append(getattr(m.drop_path1, "drop_prob", 0.0)))
    sub = PathSub(model, MaskSubConfig(mode="droppath", ratio=0.6))
    x = inputs("vit")
    model(x)
    sub.forward(model, x)
    model(x)
    assert rates == pytest.approx([0.1, 0.6, 0.1])


def test_dropout_sets_p_only_during_the_sub_pass() -> None:
    model = make("bert").train()
    seen = []
    model.bert.encoder.layer[0].output.dropout.register_forward_pre_hook(lambda m, a: seen.append(m.p))
    sub = DropSub(model, MaskSubConfig(mode="dropout", ratio=0.3))
    x = text_batch()
    _main(model, x)
    sub.forward(model, x)
    _main(model, x)
    assert seen == [0.1, 0.3, 0.1]


@pytest.mark.parametrize("family,mode", [("vit", "dropout"), ("bert", "dropout"), ("vit", "droppath")])
def test_variants_in_train_mode_honour_the_ratio_and_leave_the_main_pass_untouched(family: str, mode: str) -> None:
    # train mode, where dropout and drop-path act (in eval mode a DropSub that ignored its ratio or never put p
    # back would pass); the model's own rates are 0, so its main pass is deterministic even in train mode
    no_drop = (dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0) if family == "bert"
               else dict(drop_rate=0.0, proj_drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0))
    model = make(family, **no_drop).train()
    x = inputs(family)
    with torch.no_grad():
        main = _main(model, x)
        torch.testing.assert_close(adapter_for(family, model, 0.0, mode).forward(model, x), main, rtol=1e-5,
                                   atol=1e-5)  # ratio 0 is the main pass
        assert not torch.allclose(adapter_for(family, model, 0.5, mode).forward(model, x), main)  # r acts
        torch.testing.assert_close(_main(model, x), main, rtol=1e-5, atol=1e-5)  # and is undone afterwards
    assert model.training


def test_unsupported_mode_lists_what_is_supported() -> None:
    with pytest.raises(ConfigError, match="dropout.*not supported.*mask: ViTTokenDrop"):
        build_subbranch(nn.Sequential(nn.Conv2d(3, 3, 1)), MaskSubConfig(mode="dropout"))


# ---- gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_every_trainable_parameter(family: str) -> None:
    # timm zero-initialises each ResNet block's last BN scale, which blocks the branch's gradient at init
    net = (make(family, zero_init_last=False) if family == "cnn" else make(family)).train()
    model = MaskSubModel(net, adapter_for(family, net, 0.5))
    x = inputs(family)
    y = torch.arange(4) % 5
    accumulate_gradients(model, x, y, build_loss(RecipeConfig(), mixing=False), masksub=True)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    if family == "bert":
        # rows of the embedding tables whose ids/positions never occur get no gradient, but every tensor does
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_swin_mask_token_gets_gradient_only_from_the_sub_pass_and_no_weight_decay() -> None:
    net = make("swin").train()
    sub = adapter_for("swin", net, 0.5)
    model = MaskSubModel(net, sub)
    x, y = inputs("swin"), torch.arange(4) % 5
    loss = build_loss(RecipeConfig(), mixing=False)
    loss.main(model(x), y).backward()
    assert sub.mask_token.grad is None  # the main pass never touches it
    loss.sub(model(x, sub=True), model(x).detach()).backward()
    assert sub.mask_token.grad is not None and sub.mask_token.grad.abs().sum() > 0
    optimizer = build_optimizer(model, OptimizerConfig(weight_decay=0.05), lr=1e-3)
    group = next(g for g in optimizer.param_groups if any(p is sub.mask_token for p in g["params"]))
    assert group["weight_decay"] == 0.0
    assert len(optimizer.param_groups) >= 2 and any(g["weight_decay"] == 0.05 for g in optimizer.param_groups)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters())


def test_swin_unit_must_align_with_patches() -> None:
    with pytest.raises(ConfigError, match="multiple of the Swin patch size"):
        build_subbranch(make("swin"), MaskSubConfig(mode="mask", ratio=0.5, unit_px=30))


def test_cnn_batchnorm_runs_in_train_mode_in_both_branches() -> None:
    net = make("cnn").train()
    model = MaskSubModel(net, adapter_for("cnn", net, 0.5))
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.num_batches_tracked.item()
    x, y = inputs("cnn"), torch.arange(4) % 5
    accumulate_gradients(model, x, y, build_loss(RecipeConfig(), mixing=False), masksub=True)
    assert bn.num_batches_tracked.item() == before + 2
    assert math.isfinite(bn.running_mean.sum().item())
