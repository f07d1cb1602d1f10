"""Every `conf/model/*.yaml` builds the network it says: rates reach the model as written, 0.0 included.

A rate of 0.0 is a value, not "unset": timm's Swin defaults to drop_path_rate 0.1, so a config saying 0.0
must get 0.0. Only `null` means the architecture's own default. Image models are built on the meta device
(no weights are initialised: building ViT-H this way takes milliseconds); the rates are read off the
DropPath / Dropout modules timm made, per block, against the linear schedule timm documents
(block i of n gets rate * i / (n - 1), ViT, Swin and ResNet alike).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import DropPath
from torch import nn

from masksub_exp.config import ModelConfig, to_settings
from masksub_exp.models import build_network

from .conftest import CONF, compose_cfg

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def blocks_of(net: nn.Module) -> list[nn.Module]:
    """The residual blocks in depth order (the unit timm's drop-path schedule counts)."""
    if hasattr(net, "blocks"):  # ViT
        return list(net.blocks)
    if hasattr(net, "layers") and hasattr(net.layers[0], "blocks"):  # Swin
        return [blk for stage in net.layers for blk in stage.blocks]
    return [blk for name in ("layer1", "layer2", "layer3", "layer4") for blk in getattr(net, name)]  # ResNet


def block_rate(block: nn.Module) -> float:
    """The drop-path rate of one block: 0.0 where timm put an Identity instead of a DropPath."""
    rates = {m.drop_prob for m in block.modules() if isinstance(m, DropPath)}
    assert len(rates) <= 1, f"one block with several drop-path rates: {rates}"
    return rates.pop() if rates else 0.0


def dropout_rates(net: nn.Module) -> set[float]:
    """Every dropout probability timm wired in (modules, and ResNet's functional head dropout)."""
    rates = {float(m.p) for m in net.modules() if isinstance(m, nn.Dropout)}
    if isinstance(getattr(net, "drop_rate", None), float):
        rates.add(net.drop_rate)
    return rates


def image_settings(model: str, tmp_path: Path, extra: list[str] | None = None):
    img = 64 if "micro" in model else 28 if "fmnist" in model else 224
    chans = 1 if "fmnist" in model else 3
    overrides = [f"model={model}", "data=synthetic", f"data.img_size={img}", f"data.in_chans={chans}",
                 f"data.mean=[{','.join(['0.0'] * chans)}]", f"data.std=[{','.join(['1.0'] * chans)}]"]
    return to_settings(compose_cfg(overrides + (extra or []), tmp_path / "run"))


def build_on_meta(model_cfg: ModelConfig, data_cfg) -> nn.Module:
    with torch.device("meta"):
        return build_network(model_cfg, data_cfg)


def check_image_model(model: str, tmp_path: Path, extra: list[str] | None = None) -> None:
    s = image_settings(model, tmp_path, extra)
    net = build_on_meta(s.model, s.data)
    blocks = blocks_of(net)
    got = [block_rate(b) for b in blocks]
    if s.model.drop_path_rate is None:  # null: exactly what timm builds when told nothing
        with torch.device("meta"):
            ref = timm.create_model(s.model.name, num_classes=s.data.num_classes, in_chans=s.data.in_chans,
                                    **s.model.kwargs)
        assert got == [block_rate(b) for b in blocks_of(ref)]
    else:
        rate, n = s.model.drop_path_rate, len(blocks)
        want = [rate * i / (n - 1) if n > 1 else rate for i in range(n)]
        assert got == pytest.approx(want, abs=1e-6), f"{model}: drop-path per block {got}, configured {rate}"
    drops = dropout_rates(net)
    if s.model.drop_rate is not None:
        assert drops <= {0.0, s.model.drop_rate}, f"{model}: dropout rates {drops}, configured {s.model.drop_rate}"
        assert s.model.drop_rate in drops, f"{model}: configured dropout {s.model.drop_rate} is nowhere in {drops}"
    else:
        assert drops <= {0.0}, f"{model}: null drop_rate should keep timm's default 0.0, got {drops}"


def tiny_bert_folder(root: Path, hidden_dropout: float) -> Path:
    """A local Hugging Face BERT folder (2 layers, random weights) with a non-default dropout."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = root / "bert"
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=hidden_dropout)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    return folder


def hidden_dropouts(net: nn.Module) -> set[float]:
    """BERT's hidden dropouts (embeddings, block outputs, classifier); attention-probability dropout aside."""
    return {float(m.p) for name, m in net.named_modules()
            if isinstance(m, nn.Dropout) and not name.endswith("attention.self.dropout")}


def check_text_model(model: str, tmp_path: Path, extra: list[str]) -> None:
    overrides = [f"model={model}", "data=synthetic_text", *extra]
    if model == "bert_base":
        overrides.append(f"model.checkpoint={tiny_bert_folder(tmp_path, 0.25)}")
    s = to_settings(compose_cfg(overrides, tmp_path / "run"))
    net = build_network(s.model, s.data)
    if s.model.drop_rate is None:  # the folder's (or the class's) own value
        if s.model.checkpoint:
            want = json.loads((Path(s.model.checkpoint) / "config.json").read_text())["hidden_dropout_prob"]
        else:
            want = net.config.__class__().hidden_dropout_prob
    else:
        want = s.model.drop_rate
    assert hidden_dropouts(net) == {want}, f"{model}: hidden dropout {hidden_dropouts(net)}, expected {want}"


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_builds_its_configured_rates(model: str, tmp_path: Path) -> None:
    s = to_settings(compose_cfg([f"model={model}", "data=synthetic_text"], tmp_path / "probe"))
    if s.model.library == "transformers":
        check_text_model(model, tmp_path, [])
    else:
        check_image_model(model, tmp_path)


@pytest.mark.parametrize("model", ["vit_fmnist", "swin_fmnist", "resnet_fmnist", "swin_t", "vit_b16_clip"])
@pytest.mark.parametrize("rates", [(0.0, 0.0), (0.2, 0.3)])
def test_explicit_rates_reach_every_image_family(model: str, rates: tuple[float, float], tmp_path: Path) -> None:
    drop_path, drop = rates
    check_image_model(model, tmp_path, [f"model.drop_path_rate={drop_path}", f"model.drop_rate={drop}"])


@pytest.mark.parametrize("model", ["bert_micro", "bert_base"])
@pytest.mark.parametrize("rate", ["0.0", "0.3", "null"])
def test_bert_dropout_is_the_configured_one(model: str, rate: str, tmp_path: Path) -> None:
    check_text_model(model, tmp_path, [f"model.drop_rate={rate}"])


def test_swin_zero_drop_path_is_zero_not_timms_default(tmp_path: Path) -> None:
    """The defect this file exists for: timm's Swin default (0.1) must not survive a configured 0.0."""
    s = image_settings("swin_fmnist", tmp_path)
    assert s.model.drop_path_rate == 0.0
    assert {block_rate(b) for b in blocks_of(build_on_meta(s.model, s.data))} == {0.0}
    s = image_settings("swin_fmnist", tmp_path, ["model.drop_path_rate=null"])
    assert max(block_rate(b) for b in blocks_of(build_on_meta(s.model, s.data))) == pytest.approx(0.1)
