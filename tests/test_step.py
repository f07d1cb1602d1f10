"""The MaskSub step against the method's definition, computed independently."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from masksub_exp.config import AugConfig, LossConfig, MaskSubConfig, RecipeConfig
from masksub_exp.losses import build_loss
from masksub_exp.models import MaskSubModel
from masksub_exp.step import accumulate_gradients, train_step
from masksub_exp.subbranch import ViTTokenDrop


def tiny_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    args = dict(img_size=8, patch_size=2, embed_dim=16, depth=2, num_heads=2, num_classes=5, in_chans=3)
    args.update(kw)
    return VisionTransformer(**args)


def wrapped(ratio: float, **kw) -> MaskSubModel:
    net = tiny_vit(**kw)
    return MaskSubModel(net, ViTTokenDrop(net, MaskSubConfig(ratio=ratio)))


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_ratio_zero_sub_output_equals_main_output() -> None:
    model = wrapped(0.0).train()  # train mode, but no dropout / drop-path in the model
    x, _ = batch()
    torch.testing.assert_close(model(x, sub=True), model(x), rtol=0, atol=0)


def test_ratio_half_sub_output_differs() -> None:
    model = wrapped(0.5).train()
    x, _ = batch()
    assert not torch.allclose(model(x, sub=True), model(x))


@pytest.mark.parametrize("loss_name", ["ce", "bce"])
def test_gradient_is_half_main_plus_half_sub(loss_name: str) -> None:
    recipe = RecipeConfig(loss=LossConfig(name=loss_name), aug=AugConfig(label_smoothing=0.1))
    loss = build_loss(recipe, mixing=False)
    model = wrapped(0.5).train()
    reference = copy.deepcopy(model)
    x, y = batch()

    torch.manual_seed(123)
    accumulate_gradients(model, x, y, loss, masksub=True)
    got = grads(model)

    # independently: L = 0.5 L(main, y) + 0.5 L(sub, stopgrad(p_main)), one backward of the sum
    torch.manual_seed(123)
    out_main = reference(x)
    out_sub = reference(x, sub=True)  # draws the same mask: same RNG position as in the step
    target = torch.sigmoid(out_main.detach()) if loss_name == "bce" else torch.softmax(out_main.detach(), -1)
    if loss_name == "bce":
        l_main = torch.nn.functional.binary_cross_entropy_with_logits(
            out_main, torch.nn.functional.one_hot(y, 5).float() * 0.9 + 0.1 / 5)
        l_sub = torch.nn.functional.binary_cross_entropy_with_logits(out_sub, target)
    else:
        l_main = torch.nn.functional.cross_entropy(out_main, y, label_smoothing=0.1)
        l_sub = torch.sum(-target * torch.log_softmax(out_sub, -1), dim=-1).mean()
    (0.5 * l_main + 0.5 * l_sub).backward()
    expected = grads(reference)
    assert got.keys() == expected.keys() and len(got) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_sub_branch_never_sees_labels_and_target_is_detached() -> None:
    loss = build_loss(RecipeConfig(), mixing=False)
    main = torch.randn(4, 5, requires_grad=True)
    sub = torch.randn(4, 5, requires_grad=True)
    loss.sub(sub, main).backward()
    assert main.grad is None and sub.grad is not None


def test_bce_sub_targets_are_not_binarised() -> None:
    """DeiT-III binarises the mixed labels (threshold 0.0); the sub-branch's sigmoid targets stay soft."""
    recipe = RecipeConfig(loss=LossConfig(name="bce", bce_target_thresh=0.0))
    loss = build_loss(recipe, mixing=True)
    main, sub = torch.randn(4, 5), torch.randn(4, 5)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(sub, torch.sigmoid(main))
    torch.testing.assert_close(loss.sub(sub, main), expected)


@pytest.mark.parametrize("masksub", [False, True])
def test_accumulation_equals_one_big_batch(masksub: bool) -> None:
    # ratio 0: the sub-branch is deterministic, so k micro-steps must equal one step on k x the batch
    a, b = wrapped(0.0).train(), wrapped(0.0).train()
    loss = build_loss(RecipeConfig(), mixing=False)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    x, y = batch(8)
    train_step(a, (x, y), opt_a, loss, masksub=masksub, accum_steps=4)
    train_step(b, (x, y), opt_b, loss, masksub=masksub, accum_steps=1)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


def test_step_returns_detached_losses_and_updates_weights() -> None:
    model = wrapped(0.5).train()
    before = copy.deepcopy(model.state_dict())
    loss = build_loss(RecipeConfig(), mixing=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    result = train_step(model, batch(), opt, loss, masksub=True, clip_grad=1.0)
    assert not result.loss_main.requires_grad and result.loss_sub is not None
    assert torch.isfinite(result.loss_main) and torch.isfinite(result.loss_sub)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)


def test_masksub_off_has_no_sub_loss() -> None:
    model = MaskSubModel(tiny_vit(), None).train()
    loss = build_loss(RecipeConfig(), mixing=False)
    result = train_step(model, batch(), torch.optim.SGD(model.parameters(), lr=0.1), loss, masksub=False)
    assert result.loss_sub is None
    with pytest.raises(RuntimeError, match="MaskSub is off"):
        model(batch()[0], sub=True)
