"""ViT token dropping: counts, prefix tokens, and that kept tokens are rows of the main pass."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from masksub_exp.config import MaskSubConfig
from masksub_exp.subbranch import ViTTokenDrop, build_subbranch, drop_tokens

from .test_step import tiny_vit


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_kept_count_and_prefix(ratio: float, prefix: int) -> None:
    L, C = 16, 8
    x = torch.randn(4, prefix + L, C)
    out = drop_tokens(x, ratio, prefix)
    assert out.shape == (4, prefix + int(L * (1 - ratio)), C)
    torch.testing.assert_close(out[:, :prefix], x[:, :prefix], rtol=0, atol=0)


def test_each_kept_token_is_a_distinct_row_of_the_input() -> None:
    x = torch.randn(6, 1 + 16, 8)
    out = drop_tokens(x, 0.5, 1)
    for b in range(6):
        kept = out[b, 1:]
        # each kept token equals exactly one patch token of the same sample, without repeats
        match = (kept[:, None, :] == x[b, None, 1:, :]).all(-1)
        assert (match.sum(1) == 1).all()
        assert match.any(0).sum() == kept.shape[0]


def test_masks_differ_across_samples_and_calls() -> None:
    x = torch.arange(16.0).view(1, 16, 1).expand(8, 16, 1).contiguous()
    a = drop_tokens(x, 0.5, 0)[..., 0]
    b = drop_tokens(x, 0.5, 0)[..., 0]
    sets_a = {tuple(sorted(row.tolist())) for row in a}
    assert len(sets_a) > 1, "every sample got the same mask"
    assert not torch.equal(a.sort(-1).values, b.sort(-1).values), "two calls drew the same masks"


def _tokens_entering_blocks(model: VisionTransformer, x: torch.Tensor, sub: ViTTokenDrop | None):
    seen = {}
    handle = model.blocks.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    model(x) if sub is None else sub.forward(model, x)
    handle.remove()
    return seen["x"]


@pytest.mark.parametrize("flavour", [
    {},  # classic: cls token, pos embed over cls + patches
    {"no_embed_class": True, "init_values": 1e-5},  # DeiT-III: LayerScale, no cls slot in the pos table
    {"global_pool": "avg", "fc_norm": True, "class_token": False},  # MAE fine-tune style
    {"pre_norm": True},  # CLIP image tower
])
def test_sub_pass_feeds_blocks_a_subset_of_main_tokens(flavour: dict) -> None:
    model = tiny_vit(**flavour).eval()
    x = torch.randn(3, 3, 8, 8)
    main = _tokens_entering_blocks(model, x, None)
    sub = _tokens_entering_blocks(model, x, ViTTokenDrop(model, MaskSubConfig(ratio=0.5)))
    prefix = model.num_prefix_tokens
    assert sub.shape[1] == prefix + 16 // 2
    torch.testing.assert_close(sub[:, :prefix], main[:, :prefix])
    for b in range(3):
        match = torch.isclose(sub[b, prefix:, None, :], main[b, None, prefix:, :]).all(-1)
        assert (match.sum(1) == 1).all()
    out = ViTTokenDrop(model, MaskSubConfig(ratio=0.5)).forward(model, x)
    assert out.shape == (3, 5) and torch.isfinite(out).all()


def test_registry_errors_clearly_for_unsupported_models() -> None:
    from masksub_exp.config import ConfigError

    with pytest.raises(ConfigError, match="not supported.*supported"):
        build_subbranch(torch.nn.Linear(3, 3), MaskSubConfig(mode="mask", ratio=0.5))
    assert build_subbranch(torch.nn.Linear(3, 3), MaskSubConfig(mode="off")) is None
