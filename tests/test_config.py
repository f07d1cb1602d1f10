"""Composition of every option and preset, and the promised config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from masksub_exp.config import ConfigError, Settings, to_settings

from .conftest import CONF, compose_cfg

GROUPS = ["model", "data", "recipe", "masksub", "logger", "paths"]


def _options(group: str) -> list[str]:
    folder = CONF / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group: str, option: str, tmp_path: Path) -> None:
    overrides = [f"{group}={option}"]
    if group == "data" and option in ("imagefolder", "imagenet", "glue"):
        (tmp_path / "img" / "train").mkdir(parents=True)
        overrides.append(f"data.root={tmp_path / 'img'}")
    settings = to_settings(compose_cfg(overrides, tmp_path / "run"))
    assert isinstance(settings, Settings)


def image_root(tmp_path: Path) -> Path:
    (tmp_path / "img" / "train").mkdir(parents=True, exist_ok=True)
    return tmp_path / "img"


@pytest.mark.parametrize("preset", _options("experiment"))
def test_every_experiment_preset_composes(preset: str, tmp_path: Path) -> None:
    overrides = [f"experiment={preset}"]
    cfg = compose_cfg(overrides, tmp_path / "run")
    # ("???" in a group file does not survive the merge onto the schema's default; validation reports it)
    if cfg.data.name in ("imagefolder", "text") and not cfg.data.root:
        overrides.append(f"data.root={image_root(tmp_path)}")  # ImageNet / GLUE presets need their folder
    if cfg.model.library == "transformers" and not cfg.model.checkpoint:
        overrides.append(f"model.checkpoint={tmp_path}")  # BERT-base: a local Hugging Face folder
    settings = to_settings(compose_cfg(overrides, tmp_path / "run"))
    assert settings.name == preset


def test_default_is_the_demo(tmp_path: Path) -> None:
    s = to_settings(compose_cfg([], tmp_path / "run"))
    assert s.name == "demo" and s.data.name == "fashion_mnist" and s.masksub.mode == "mask"
    assert s.train.epochs == s.recipe.epochs == 5


def test_cli_contract_keys(tmp_path: Path) -> None:
    s = to_settings(compose_cfg(["masksub=off", "train.epochs=3", "train.max_steps=7", "train.batch_size=16",
                                 "seed=4"], tmp_path / "run"))
    assert (s.masksub.enabled, s.train.epochs, s.train.max_steps, s.train.batch_size, s.seed) == (False, 3, 7, 16, 4)
    s = to_settings(compose_cfg(["masksub=mask", "masksub.ratio=0.25"], tmp_path / "run"))
    assert s.masksub.mode == "mask" and s.masksub.ratio == 0.25


@pytest.mark.parametrize("override,key", [
    ("masksub.ratoi=0.5", "ratoi"),
    ("train.batchsize=3", "batchsize"),
    ("recipe.optimizer.lrr=0.1", "lrr"),
])
def test_misspelt_key_fails_at_compose_naming_it(override: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg([override], tmp_path / "run")
    assert key in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("override,expected", [
    ("+train.max_step=3", "train.max_step is not a key of the config; nearest known keys: train.max_steps"),
    ("+foo=1", "foo is not a key of the config (top-level keys are: model, data"),
    ("+data.holdot=5", "data.holdot is not a key of the config; nearest known keys: data.holdout"),
])
def test_added_keys_the_schema_lacks_fail_validation(override: str, expected: str, tmp_path: Path) -> None:
    """Hydra composes a `+key` the schema lacks; train() and the launcher's check refuse it (not silently ignored)."""
    cfg = compose_cfg(["experiment=smoke", override], tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        to_settings(cfg)
    assert expected in str(info.value)


def test_added_keys_under_a_mapping_pass_validation(tmp_path: Path) -> None:
    settings = to_settings(compose_cfg(["experiment=smoke", "+model.kwargs.qkv_bias=false"], tmp_path / "run"))
    assert settings.model.kwargs["qkv_bias"] is False


def test_wrong_type_fails_at_compose(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["masksub.ratio=half"], tmp_path / "run")
    assert "ratio" in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("override,key", [
    ("masksub.ratio=1.0", "masksub.ratio"),
    ("masksub.ratio=-0.1", "masksub.ratio"),
    ("masksub.ratio=1.5", "masksub.ratio"),
    ("masksub.mode=blur", "masksub.mode"),
    ("recipe.optimizer.lr=-1", "recipe.optimizer.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.accum_steps=3", "train.batch_size"),
    ("train.precision=fp8", "train.precision"),
    ("data=fashion_mnist data.root=/nonexistent/folder", "data.root"),
    ("data=imagefolder", "data.root"),
])
def test_bad_values_name_the_key(override: str, key: str, tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=smoke", *override.split()], tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        to_settings(cfg)
    assert key in str(info.value)
