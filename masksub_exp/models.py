"""Build the network from config and wrap it with its sub-branch.

`MaskSubModel.forward(x, sub=True)` runs the sub-branch. Routing both passes through one module's
forward keeps DDP's reducer in charge of both backwards (calling the inner modules directly would
bypass DDP's forward and its bookkeeping).
"""

from __future__ import annotations

import sys
from typing import Any

import timm
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .config import ConfigError, DataConfig, MaskSubConfig, ModelConfig
from .pretrained import load_pretrained
from .subbranch import SubBranch, build_subbranch
from .subbranch.base import call_network


def build_transformers_network(model_cfg: ModelConfig, data_cfg: DataConfig) -> nn.Module:
    """A transformers sequence classifier built from a config (random weights; never downloads)."""
    import transformers  # imported only for text models

    model_class = getattr(transformers, model_cfg.name, None)
    if model_class is None:
        raise ConfigError(f"model.name={model_cfg.name!r} is not a transformers model class")
    if model_cfg.checkpoint is not None:  # a local HF folder (config, weights, tokenizer); the classifier starts new
        from .hf import bert_for_classification

        return bert_for_classification(model_cfg.checkpoint, data_cfg.num_classes,
                                       log=lambda line: print(line, file=sys.stderr, flush=True),
                                       config_overrides=transformers_dropout(model_cfg))
    config_class = model_class.config_class
    kwargs = dict(model_cfg.kwargs)
    kwargs.setdefault("num_labels", data_cfg.num_classes)
    kwargs.update(transformers_dropout(model_cfg))
    return model_class(config_class(**kwargs))


def transformers_dropout(model_cfg: ModelConfig) -> dict[str, float]:
    """model.drop_rate as a BERT config value; 0.0 is a rate, null keeps the checkpoint's or class's default."""
    return {} if model_cfg.drop_rate is None else {"hidden_dropout_prob": model_cfg.drop_rate}


def build_network(model_cfg: ModelConfig, data_cfg: DataConfig) -> nn.Module:
    """A timm model with the data's classes, channels and input size. Never downloads weights."""
    if model_cfg.library == "transformers":
        return build_transformers_network(model_cfg, data_cfg)
    kwargs = dict(model_cfg.kwargs)
    kwargs.setdefault("num_classes", data_cfg.num_classes)
    kwargs.setdefault("in_chans", data_cfg.in_chans)
    # 0.0 is a rate like any other (timm's Swin defaults to 0.1); only null keeps the architecture's default
    if model_cfg.drop_path_rate is not None:
        kwargs["drop_path_rate"] = model_cfg.drop_path_rate
    if model_cfg.drop_rate is not None:
        kwargs["drop_rate"] = model_cfg.drop_rate
    if not timm.is_model(model_cfg.name):
        raise ConfigError(f"model.name={model_cfg.name!r} is not a timm model (timm.list_models() lists them)")
    try:
        net = timm.create_model(model_cfg.name, pretrained=False, **kwargs)
    except TypeError as exc:  # an argument the architecture does not take
        raise ConfigError(f"model.kwargs for {model_cfg.name}: {exc}") from exc
    if model_cfg.checkpoint is not None:
        load_pretrained(net, model_cfg.checkpoint, log=lambda line: print(line, file=sys.stderr, flush=True),
                        trusted=model_cfg.trust_checkpoint_globals)
    return net


class MaskSubModel(nn.Module):
    """The network plus the adapter that runs its sub-branch (None when MaskSub is off)."""

    def __init__(self, net: nn.Module, sub: SubBranch | None) -> None:
        super().__init__()
        self.net = net
        self.sub = sub
        # adapter-owned parameters (e.g. a mask token) live here so DDP and the optimizer see them
        self.sub_params = nn.ParameterList(sub.extra_parameters() if sub else [])

    def forward(self, x: Any, sub: bool = False) -> torch.Tensor:
        if sub:
            if self.sub is None:
                raise RuntimeError("sub-branch requested but MaskSub is off")
            return self.sub.forward(self.net, x)
        return call_network(self.net, x)


def build_model(model_cfg: ModelConfig, data_cfg: DataConfig, masksub_cfg: MaskSubConfig) -> MaskSubModel:
    net = build_network(model_cfg, data_cfg)
    return MaskSubModel(net, build_subbranch(net, masksub_cfg))


def is_token_model(net: nn.Module) -> bool:
    return isinstance(net, VisionTransformer | SwinTransformer) or not hasattr(net, "pretrained_cfg")


def compile_network(model: MaskSubModel, mode: str = "model") -> None:
    """torch.compile in place, so that the sub-branch benefits too.

    `model`: the wrapper's forward compiles whole, one static graph per branch (main, and the
    sub-branch with its own token count), so fusions cross block boundaries. `blocks`: ViT and Swin
    blocks compile one by one (each block gets a graph per token count); other models compile whole.
    Evaluation calls the bare network, eagerly.
    """
    # every block shares one forward's code: allow its graphs (two token counts, train and eval) to coexist
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    net = model.net
    if mode == "model":
        model.compile(dynamic=False)
        return
    if isinstance(net, VisionTransformer):
        blocks = list(net.blocks)
    elif isinstance(net, SwinTransformer):
        blocks = [blk for stage in net.layers for blk in stage.blocks]
    else:
        model.compile(dynamic=False)
        return
    for blk in blocks:
        blk.compile(dynamic=False)
