"""Fine-tuning from local checkpoints: read a weights file, convert it to the net's layout, load it.

Nothing is downloaded: `model.checkpoint` names a file on disk. The file may be one of our own
checkpoints (`{"format": 1, "model": ...}`), an MAE / DeiT / timm / open_clip / OpenAI CLIP release,
or a plain state dict. Foreign layouts are converted by timm's own per-architecture
`checkpoint_filter_fn` (the function timm runs for its hub weights), which also resamples position
embeddings and patch kernels to the net's input size. The classifier always starts fresh, as in the
fine-tuning recipes, and every other key must match: a silent partial load would fine-tune mostly
random weights.

Files are read without running their code (masksub_exp/safe_load.py): torch's weights_only unpickler
with a named allowlist, TorchScript archives through an inert reader, `model.trust_checkpoint_globals`
for anything else in a file the user trusts. `check_pretrained_file` refuses a file before anything of
the run is built.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError, ModelConfig
from .safe_load import check_file, is_torchscript_archive, load_torchscript_weights, safe_torch_load

# keys under which checkpoints nest the weights, in order of preference: "model" wins over
# "model_ema"/"ema" because fine-tuning recipes (MAE, DeiT) start from the online weights
_CONTAINER_KEYS = ("model", "state_dict", "module", "net")
_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile wrappers
# MAE pretraining extras and the text tower of a CLIP checkpoint: present in the file, never in a vision net
_IGNORED_UNEXPECTED = re.compile(
    r"^(mask_token$|decoder[_.]|token_embedding\.|positional_embedding$|transformer\.|ln_final\.|text_projection$"
    r"|logit_scale$|logit_bias$|text\.)"
)


class PretrainedError(ConfigError):
    """A checkpoint that cannot initialise the configured model; the message names the file and the keys."""


@dataclass
class LoadReport:
    """What `load_pretrained` did: keys the net kept from its own init and keys of the file it ignored."""

    path: Path
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    # a whole pickled module (only loads when its classes are listed in model.trust_checkpoint_globals)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping | nn.Module)), None)
        if inner is None:
            break
        obj = inner.state_dict() if isinstance(inner, nn.Module) else inner
    if not isinstance(obj, Mapping):
        raise PretrainedError(f"model.checkpoint={path}: holds a {type(obj).__name__}, not a state dict")
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise PretrainedError(f"model.checkpoint={path}: no tensors found (top-level keys: {sorted(map(str, obj))})")
    for prefix in _STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.checkpoint={path}: no such file (checkpoints are read locally, not downloaded)")
    return path


def check_pretrained_file(model_cfg: ModelConfig) -> None:
    """Refuse a missing `model.checkpoint` file, or one that needs a global outside the allowlist, before the
    run builds anything (its pickle's opcodes are read; nothing is unpickled). BERT folders are read by
    transformers (safetensors, or torch.load with weights_only=True)."""
    if model_cfg.library != "timm" or model_cfg.checkpoint is None:
        return
    path = _existing(model_cfg.checkpoint)
    if path.suffix != ".safetensors":
        check_file(path, label=f"model.checkpoint={path}", trusted=model_cfg.trust_checkpoint_globals)


def load_state_dict_file(path: str | Path, trusted: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The model weights in a .pt/.pth/.bin/.safetensors file, unwrapped from their container, on the CPU.

    No code of the file runs: pickles load with weights_only=True and the allowlist of safe_load (plus
    `trusted`, the names in model.trust_checkpoint_globals); a TorchScript archive (OpenAI CLIP) gives the
    tensors of its module tree without being compiled or run."""
    path = _existing(path)
    label = f"model.checkpoint={path}"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _unwrap(load_file(str(path), device="cpu"), path)
    if is_torchscript_archive(path):
        return _unwrap(load_torchscript_weights(path, label=label, trusted=trusted), path)
    return _unwrap(safe_torch_load(path, label=label, trusted=trusted), path)


def _classifier_names(net: nn.Module) -> list[str]:
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    names = cfg.get("classifier")
    if names:
        return [names] if isinstance(names, str) else list(names)
    # not a timm model with a cfg: find the classifier module by identity
    get = getattr(net, "get_classifier", None)
    head = get() if callable(get) else None
    return [n for n, m in net.named_modules() if head is not None and m is head and n]


def _under(key: str, names: list[str]) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def _has_params(module: Any) -> bool:
    return isinstance(module, nn.Module) and any(True for _ in module.parameters())


def _convert(net: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's per-architecture conversion (CLIP/open_clip/DINOv2 layouts, pos-embed and patch resampling)."""
    filter_fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if callable(filter_fn):
        kwargs: dict[str, Any] = {}
        # official DeiT-III releases store layer scale as blocks.N.gamma_1; timm asks for the remap explicitly
        if "adapt_layer_scale" in inspect.signature(filter_fn).parameters and any(
            re.search(r"\.gamma_\d$", k) for k in sd
        ):
            kwargs["adapt_layer_scale"] = True
        sd = filter_fn(dict(sd), net, **kwargs)  # a copy: some converters pop keys
    # fallback for layouts the filter leaves alone (or nets without one): match the net's token grid
    pos = getattr(net, "pos_embed", None)
    if isinstance(pos, torch.Tensor) and "pos_embed" in sd and sd["pos_embed"].shape != pos.shape:
        from timm.layers import resample_abs_pos_embed

        grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
        if grid is not None and sd["pos_embed"].ndim == 3:
            prefix = 0 if getattr(net, "no_embed_class", False) else getattr(net, "num_prefix_tokens", 1)
            sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=list(grid), num_prefix_tokens=prefix)
    return sd


def load_pretrained(net: nn.Module, path: str | Path, *, log: Callable[[str], Any] = print,
                    trusted: Sequence[str] = ()) -> LoadReport:
    """Initialise `net` (a timm model) from the local checkpoint at `path`, with a fresh classifier.

    Raises PretrainedError (a ConfigError) when a key other than the expected differences is missing
    or unexpected, or when a shape differs: head keys (always re-initialised), `fc_norm` when the file
    only has `norm` (MAE fine-tuning), MAE decoder / mask token, CLIP text tower. `trusted`: globals
    the file may load beyond the allowlist (model.trust_checkpoint_globals).
    """
    path = Path(path).expanduser()
    sd = _convert(net, load_state_dict_file(path, trusted))
    heads = _classifier_names(net)
    dropped = sorted(k for k in sd if _under(k, heads))
    sd = {k: v for k, v in sd.items() if k not in dropped}
    if dropped:
        log(f"pretrained: dropped the checkpoint's classifier ({', '.join(dropped)}): fine-tuning starts a new head")

    own = net.state_dict()
    wrong_shape = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                   for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if wrong_shape:
        more = f"\n  ... and {len(wrong_shape) - 10} more" if len(wrong_shape) > 10 else ""
        raise PretrainedError(f"model.checkpoint={path}: shapes differ from the model's (wrong architecture or size?):"
                              + "".join(f"\n  {line}" for line in wrong_shape[:10]) + more)

    missing, unexpected = (sorted(keys) for keys in net.load_state_dict(sd, strict=False))
    # MAE fine-tuning: with global_pool=avg the encoder's final `norm` is dropped and `fc_norm` is new
    mae_pool = (_has_params(getattr(net, "fc_norm", None)) and not _has_params(getattr(net, "norm", None))
                and not any(k.startswith("fc_norm.") for k in sd))
    reinit = [k for k in missing if _under(k, heads) or (mae_pool and k.startswith("fc_norm."))]
    ignored = [k for k in unexpected if _IGNORED_UNEXPECTED.match(k) or (mae_pool and k.startswith("norm."))]
    bad_missing = [k for k in missing if k not in reinit]
    bad_unexpected = [k for k in unexpected if k not in ignored]

    log(f"pretrained: loaded {len(sd) - len(unexpected)} tensors from {path}")
    if missing:
        log(f"pretrained: missing (kept the model's init): {', '.join(missing)}")
    if unexpected:
        log(f"pretrained: unexpected (ignored): {', '.join(unexpected)}")
    if bad_missing or bad_unexpected:
        raise PretrainedError(
            f"model.checkpoint={path} does not fit {type(net).__name__}: "
            f"missing {bad_missing or 'none'}; unexpected {bad_unexpected or 'none'}"
        )
    return LoadReport(path=path, missing=missing, unexpected=unexpected, reinitialised=reinit)
