"""Fine-tuning from local checkpoints: each release layout loads into a tiny timm model, head re-initialised.

The files are written here from tiny random models in the layouts the real releases use (MAE, OpenAI
CLIP, open_clip, timm/DeiT-III, our own last.pt), so nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from masksub_exp.config import ConfigError
from masksub_exp.pretrained import LoadReport, PretrainedError, load_pretrained, load_state_dict_file

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "pretrained": False}
TEXT_TOWER = {  # a CLIP checkpoint's text side: must be ignored, not reported as a misfit
    "token_embedding.weight": torch.randn(10, 32),
    "positional_embedding": torch.randn(8, 32),
    "transformer.resblocks.0.attn.in_proj_weight": torch.randn(96, 32),
    "transformer.resblocks.0.ln_1.weight": torch.ones(32),
    "ln_final.weight": torch.ones(32),
    "text_projection": torch.randn(32, 16),
    "logit_scale": torch.tensor(4.6),
}


def vit(name: str = "vit_base_patch16_224", **kw: object) -> nn.Module:
    torch.manual_seed(len(kw))  # different kwargs, different random weights: equality below is not luck
    return timm.create_model(name, **{**TINY_VIT, **kw}).eval()


def state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def load(net: nn.Module, path: Path) -> tuple[LoadReport, list[str]]:
    lines: list[str] = []
    return load_pretrained(net, path, log=lines.append), lines


def assert_same_except(net: nn.Module, src: dict[str, torch.Tensor], skip: tuple[str, ...]) -> None:
    own = net.state_dict()
    compared = [k for k in own if not k.startswith(skip)]
    assert compared  # the comparison is not vacuous
    for k in compared:
        assert torch.equal(own[k], src[k]), k


def to_openai_clip(sd: dict[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """timm CLIP tower -> OpenAI CLIP `visual.*` keys: the inverse of timm's `_convert_openai_clip`."""
    out: dict[str, torch.Tensor] = {}
    swaps = [("patch_embed.proj", "conv1"), ("norm_pre", "ln_pre"), ("blocks.", "transformer.resblocks."),
             ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
    for k, v in sd.items():
        if k == "cls_token":
            k, v = "class_embedding", v.reshape(-1)
        elif k == "pos_embed":
            k, v = "positional_embedding", v[0]
        elif k == "head.weight":
            k, v = "proj", v.t().contiguous()  # CLIP's projection is [width, embed_dim], bias-free
        elif k == "head.bias":
            continue
        elif k.startswith("norm."):
            k = k.replace("norm.", "ln_post.")
        for old, new in swaps:
            k = k.replace(old, new)
        out[prefix + k] = v
    return out


def test_mae_encoder_loads_with_fc_norm_and_a_new_head(tmp_path: Path) -> None:
    src = vit(num_classes=0)
    sd = state(src)
    sd |= {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(16, 32),
           "decoder_pos_embed": torch.zeros(1, 17, 16), "decoder_pred.weight": torch.randn(192, 16)}
    torch.save({"model": sd, "args": {"mask_ratio": 0.75}}, tmp_path / "mae.pth")

    net = vit(global_pool="avg", fc_norm=True, num_classes=5)
    fresh = state(net)
    report, lines = load(net, tmp_path / "mae.pth")

    assert_same_except(net, sd, ("head.", "fc_norm."))
    assert report.reinitialised == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert report.missing == report.reinitialised
    assert {"norm.weight", "norm.bias", "decoder_embed.weight", "decoder_pred.weight"} <= set(report.unexpected)
    for k in report.reinitialised:  # the new head and fc_norm keep their own init
        assert torch.equal(net.state_dict()[k], fresh[k]), k
    assert any("fc_norm.weight" in line for line in lines)


def test_a_misfit_key_raises_naming_it(tmp_path: Path) -> None:
    sd = state(vit(num_classes=0))
    sd["blocks.1.mlp.fc_1.weight"] = sd.pop("blocks.1.mlp.fc1.weight")
    torch.save({"model": sd}, tmp_path / "renamed.pth")
    with pytest.raises(ConfigError, match=r"blocks\.1\.mlp\.fc1\.weight.*blocks\.1\.mlp\.fc_1\.weight") as err:
        load(vit(global_pool="avg", fc_norm=True, num_classes=5), tmp_path / "renamed.pth")
    assert isinstance(err.value, PretrainedError) and str(tmp_path / "renamed.pth") in str(err.value)


def test_a_wrong_width_raises_before_loading(tmp_path: Path) -> None:
    torch.save(state(vit(num_classes=0)), tmp_path / "w32.pth")
    shapes = r"(?s)shapes differ.*pos_embed: file \(1, 17, 32\) vs model \(1, 17, 48\).*and 20 more"
    with pytest.raises(PretrainedError, match=shapes):
        load(vit(embed_dim=48, num_classes=0), tmp_path / "w32.pth")


@pytest.mark.parametrize("num_classes", [0, 5])
def test_openai_clip_visual_tower_gives_the_same_features(tmp_path: Path, num_classes: int) -> None:
    src = vit("vit_base_patch16_clip_224", num_classes=16)
    sd = to_openai_clip(state(src)) | TEXT_TOWER
    assert sd["visual.proj"].shape == (32, 16)
    assert {"visual.conv1.weight", "visual.ln_pre.weight", "visual.ln_post.bias",
            "visual.transformer.resblocks.1.attn.in_proj_weight", "visual.transformer.resblocks.1.mlp.c_proj.bias",
            "visual.transformer.resblocks.0.attn.out_proj.weight"} <= set(sd)
    torch.save(sd, tmp_path / "ViT-tiny.pt")

    net = vit("vit_base_patch16_clip_224", num_classes=num_classes)
    report, lines = load(net, tmp_path / "ViT-tiny.pt")

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_features(x), src.forward_features(x), atol=1e-5, rtol=0)
    assert report.unexpected == []  # the text tower never reaches load_state_dict
    # timm turns visual.proj into head.weight (+ a zero bias); fine-tuning drops it for a fresh head
    assert any("dropped the checkpoint's classifier (head.bias, head.weight)" in line for line in lines)
    assert report.reinitialised == (["head.bias", "head.weight"] if num_classes else [])
    if num_classes:
        assert net.get_classifier().weight.shape == (5, 32)
    else:
        assert isinstance(net.head, nn.Identity)


@pytest.mark.parametrize("layout", ["openai_keys", "timm_trunk"])
def test_open_clip_checkpoint_gives_the_same_features(tmp_path: Path, layout: str) -> None:
    src = vit("vit_base_patch16_clip_224", num_classes=16)
    if layout == "openai_keys":  # open_clip's own ViT: OpenAI names, saved from DDP
        sd = {"module." + k: v for k, v in (to_openai_clip(state(src)) | TEXT_TOWER).items()}
    else:  # open_clip with a timm trunk: timm names under visual.trunk, projection in visual.head.proj
        sd = {"visual.trunk." + k: v for k, v in state(src).items() if not k.startswith("head.")}
        sd |= {"visual.head.proj.weight": src.head.weight.detach().clone()} | TEXT_TOWER
    torch.save({"epoch": 32, "name": "ViT-tiny", "state_dict": sd, "optimizer": {"state": {}}}, tmp_path / "e32.pt")

    net = vit("vit_base_patch16_clip_224", num_classes=5)
    report, _ = load(net, tmp_path / "e32.pt")

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_features(x), src.forward_features(x), atol=1e-5, rtol=0)
    assert report.unexpected == [] and report.reinitialised == ["head.bias", "head.weight"]


@pytest.mark.parametrize("layout", ["plain", "ours", "facebook_deit3"])
def test_deit3_checkpoint_loads_with_a_new_head(tmp_path: Path, layout: str) -> None:
    sd = state(vit("deit3_small_patch16_224", num_classes=10))
    if layout == "plain":
        payload: object = sd
    elif layout == "ours":  # a run's last.pt
        payload = {"format": 1, "model": sd, "sub_params": {}, "ema": None, "optimizer": {"state": {}}, "epoch": 3}
    else:  # the official DeiT-III release: layer scale as gamma_1/gamma_2, EMA beside the model
        renamed = {re.sub(r"ls([12])\.gamma", r"gamma_\1", k): v for k, v in sd.items()}
        assert "blocks.0.gamma_1" in renamed
        payload = {"model": renamed, "model_ema": {k: torch.zeros_like(v) for k, v in sd.items()}}
    torch.save(payload, tmp_path / "ckpt.pth")

    net = vit("deit3_small_patch16_224", num_classes=5)
    fresh_head = net.head.weight.detach().clone()
    report, _ = load(net, tmp_path / "ckpt.pth")

    assert_same_except(net, sd, ("head.",))
    assert report.reinitialised == ["head.bias", "head.weight"] and report.unexpected == []
    assert net.head.weight.shape == (5, 32) and torch.equal(net.head.weight, fresh_head)


@pytest.mark.parametrize("name, prefix_tokens", [("vit_base_patch16_224", 1), ("deit3_small_patch16_224", 0)])
def test_position_embedding_is_resampled_to_a_larger_input(tmp_path: Path, name: str, prefix_tokens: int) -> None:
    sd = state(vit(name, num_classes=0))  # 32 px / patch 8: a 4x4 grid
    torch.save(sd, tmp_path / "small.pth")

    net = vit(name, img_size=48, num_classes=0)  # a 6x6 grid
    load(net, tmp_path / "small.pth")

    assert net.pos_embed.shape == (1, 36 + prefix_tokens, 32)
    expected = resample_abs_pos_embed(sd["pos_embed"], new_size=[6, 6], num_prefix_tokens=prefix_tokens)
    torch.testing.assert_close(net.pos_embed.detach(), expected)
    with torch.no_grad():
        assert torch.isfinite(net(torch.randn(1, 3, 48, 48))).all()


class LocalViT(VisionTransformer):
    """A ViT from a module without timm's checkpoint_filter_fn and without a pretrained_cfg."""


def test_a_net_without_timm_filter_still_gets_pos_embed_resampled_and_a_new_head(tmp_path: Path) -> None:
    sd = state(vit(num_classes=10))
    torch.save(sd, tmp_path / "small.pth")
    kw = {k: v for k, v in TINY_VIT.items() if k != "pretrained"}
    net = LocalViT(**{**kw, "img_size": 48, "num_classes": 5})
    report, _ = load(net, tmp_path / "small.pth")

    torch.testing.assert_close(net.pos_embed.detach(), resample_abs_pos_embed(sd["pos_embed"], new_size=[6, 6]))
    assert report.reinitialised == ["head.bias", "head.weight"]  # the classifier found by get_classifier()
    assert torch.equal(net.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])


@pytest.mark.parametrize("name, kwargs, head", [
    ("swin_tiny_patch4_window7_224",
     {"img_size": 64, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2), "window_size": 4}, "head.fc."),
    ("resnet10t", {}, "fc."),
])
def test_swin_and_resnet_round_trip_with_another_head(tmp_path: Path, name: str, kwargs: dict, head: str) -> None:
    torch.manual_seed(0)
    src = timm.create_model(name, num_classes=3, pretrained=False, **kwargs).eval()
    torch.save(src.state_dict(), tmp_path / "src.pth")
    net = timm.create_model(name, num_classes=7, pretrained=False, **kwargs).eval()
    report, _ = load(net, tmp_path / "src.pth")

    assert_same_except(net, state(src), (head,))
    assert report.reinitialised == [head + "bias", head + "weight"] and report.unexpected == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_features(x), src.forward_features(x))
        assert net(x).shape == (1, 7)


def test_missing_file_names_the_key_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "mae_pretrain.pth"
    with pytest.raises(FileNotFoundError, match=rf"model\.checkpoint.*{re.escape(str(path))}"):
        load_pretrained(vit(num_classes=0), path)


def test_safetensors_and_torchscript_files_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    lin = nn.Linear(2, 3)
    save_file({"module." + k: v for k, v in lin.state_dict().items()}, str(tmp_path / "w.safetensors"))
    got = load_state_dict_file(tmp_path / "w.safetensors")
    assert got.keys() == {"weight", "bias"} and torch.equal(got["weight"], lin.weight)

    # OpenAI's CLIP .pt releases are TorchScript archives: their weights come out without torch.jit.load,
    # which would compile and run the archive's code (a tripwire, not a mock: nothing may call it)
    torch.jit.script(lin).save(str(tmp_path / "jit.pt"))

    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.jit.load ran the archive")

    monkeypatch.setattr(torch.jit, "load", tripwire)
    got = load_state_dict_file(tmp_path / "jit.pt")
    assert got.keys() == {"weight", "bias"} and torch.equal(got["bias"], lin.bias)


def test_a_file_without_weights_is_refused(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, tmp_path / "meta.pt")
    with pytest.raises(PretrainedError, match=r"no tensors found.*'args', 'epoch'"):
        load_state_dict_file(tmp_path / "meta.pt")
