"""The mask preview: per family, the recorded mask is the one the training step used, and the picture
shows exactly that mask; a real run writes mask_preview.png at its first step, train.mask_preview=false none."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from masksub_exp.config import MaskSubConfig, RecipeConfig
from masksub_exp.losses import build_loss
from masksub_exp.mask_preview import GREY, MASK_TOKEN_RGB, image_panels, pixel_masks, text_rows
from masksub_exp.models import MaskSubModel
from masksub_exp.step import train_step
from masksub_exp.subbranch import build_subbranch
from masksub_exp.train import train

from .conftest import compose_cfg, smoke_overrides
from .test_families import FAMILIES, inputs, make

RATIO = 0.5
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def logits_from_record(net: torch.nn.Module, family: str, record, sub) -> torch.Tensor:  # noqa: ANN001
    """The sub-branch's logits rebuilt from the recorded mask alone, without the adapter's masking code."""
    x, mask = record.fed, record.mask
    if family == "vit":
        tokens = net._pos_embed(net.patch_embed(x))
        prefix, patches = tokens[:, :net.num_prefix_tokens], tokens[:, net.num_prefix_tokens:]
        kept = torch.stack([patches[i][~mask[i]] for i in range(len(x))])  # same count in every row
        return net.forward_head(net.norm(net.blocks(net.norm_pre(torch.cat([prefix, kept], 1)))))
    if family == "swin":
        tokens = net.patch_embed(x)
        tokens = torch.where(mask.unsqueeze(-1), sub.mask_token, tokens)
        return net.forward_head(net.norm(net.layers(tokens)))
    if family == "cnn":
        return net(x.masked_fill(mask, 0.0))
    rows = []  # bert: each row's kept tokens at their own positions, one row at a time
    for i in range(len(x["input_ids"])):
        keep = x["attention_mask"][i].bool() & ~mask[i]
        positions = torch.arange(len(keep))[keep]
        rows.append(net(input_ids=x["input_ids"][i][keep][None], attention_mask=torch.ones(1, len(positions)),
                        token_type_ids=x["token_type_ids"][i][keep][None], position_ids=positions[None]).logits)
    return torch.cat(rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_recorded_mask_is_the_one_the_step_used(family: str) -> None:
    net = make(family).eval()  # eval: no dropout, so the mask is the pass's only randomness
    model = MaskSubModel(net, build_subbranch(net, MaskSubConfig(mode="mask", ratio=RATIO)))
    before = copy.deepcopy(model)  # the weights the step's forward saw
    loss = build_loss(RecipeConfig(), mixing=False)
    seen = {}
    real_sub = loss.sub
    loss.sub = lambda out_sub, out_main: (seen.setdefault("out_sub", out_sub.detach()), real_sub(out_sub, out_main))[1]
    x = inputs(family)
    y = torch.arange(len(x["input_ids"]) if family == "bert" else len(x)) % 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.sub.record_next = True
    train_step(model, (x, y), optimizer, loss, masksub=True)
    record = model.sub.take_record()
    assert record is not None and model.sub.take_record() is None and not model.sub.record_next
    with torch.no_grad():
        rebuilt = logits_from_record(before.net, family, record, before.sub)
    tol = 1e-4 * float(seen["out_sub"].abs().max())  # timm's tiny init gives logits of ~1e-4: scale the bound
    torch.testing.assert_close(rebuilt, seen["out_sub"], atol=tol, rtol=0)
    # a different mask gives different logits: the comparison can fail
    with torch.no_grad():
        flipped = copy.copy(record)
        flipped.mask = record.mask.roll(1, dims=0)  # another sample's mask
        other = logits_from_record(before.net, family, flipped, before.sub)
        assert (other - seen["out_sub"]).abs().max() > 10 * tol
    # not asked: nothing is kept (the hot path holds no reference to inputs or masks)
    model(x, sub=True)
    assert model.sub.recorded is None


def recorded(family: str, ratio: float = RATIO):  # noqa: ANN201
    net = make(family).train()
    sub = build_subbranch(net, MaskSubConfig(mode="mask", ratio=ratio))
    sub.record_next = True
    sub.forward(net, inputs(family))
    return sub.take_record()


@pytest.mark.parametrize("family", ["vit", "swin", "cnn"])
def test_the_picture_shows_the_recorded_mask(family: str) -> None:
    record = recorded(family)
    px = pixel_masks(record)
    h, w = record.fed.shape[-2:]
    assert px.shape == (len(record.fed), h, w)
    assert px.float().mean().item() == pytest.approx(RATIO)  # whole units, r of them (every unit fits the image)
    panels = image_panels(record, MEAN, STD)
    assert len(panels) == 4
    for i, (shown, seen) in enumerate(panels):
        expected_input = (record.fed[i] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1))
        expected_input = expected_input.clamp(0, 1).permute(1, 2, 0).numpy()
        assert abs(shown - expected_input).max() < 1e-6
        hidden, visible = px[i].numpy(), ~px[i].numpy()
        assert abs(seen[visible] - shown[visible]).max() < 1e-6  # what the sub-branch saw is untouched
        if family == "vit":
            assert (seen[hidden] == GREY).all()
        elif family == "swin":
            assert abs(seen[hidden] - MASK_TOKEN_RGB).max() < 1e-6
        else:  # the zeroed input, un-normalised: the mean colour
            assert abs(seen[hidden] - MEAN).max() < 1e-6


def test_text_preview_lists_the_dropped_tokens() -> None:
    record = recorded("bert")
    rows = text_rows(record)
    for i, (kept, dropped) in enumerate(rows):
        ids = record.fed["input_ids"][i]
        attended = record.fed["attention_mask"][i].bool()
        assert dropped == [str(t) for t in ids[record.mask[i]].tolist()]
        assert kept == [str(t) for t in ids[attended & ~record.mask[i]].tolist()]
        content = int((attended & ~record.fed["special_tokens_mask"][i].bool()).sum())
        assert len(dropped) == int(content * RATIO) > 0


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or []) > 10  # not a blank canvas
        return image.size


@pytest.mark.slow
def test_a_run_writes_its_preview_at_the_first_step_and_can_turn_it_off(tmp_path: Path) -> None:
    train(compose_cfg(smoke_overrides(train__max_steps=2, train__batch_size=8), tmp_path / "vit"))
    width, height = _png(tmp_path / "vit" / "mask_preview.png")
    assert width > 400 and height > 200
    train(compose_cfg(smoke_overrides(train__max_steps=2, train__batch_size=8, model="bert_micro",
                                      data="synthetic_text"), tmp_path / "bert"))
    text = (tmp_path / "bert" / "mask_preview.txt").read_text()
    assert "step 1" in text and text.count("dropped:") == 4
    _png(tmp_path / "bert" / "mask_preview.png")
    train(compose_cfg(smoke_overrides(train__max_steps=2, train__batch_size=8, train__mask_preview=False),
                      tmp_path / "off"))
    assert not (tmp_path / "off" / "mask_preview.png").exists()
    assert json.loads((tmp_path / "off" / "summary.json").read_text())["step"] == 2
    # MaskSub off: no sub-branch, no preview
    train(compose_cfg(smoke_overrides(train__max_steps=2, train__batch_size=8, masksub="off"), tmp_path / "plain"))
    assert not (tmp_path / "plain" / "mask_preview.png").exists()
