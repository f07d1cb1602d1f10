"""train.precision=auto: every paper preset trains in bf16 autocast (TF32 for the rest) on CUDA, fp32 on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from masksub_exp.build import build_precision, describe_precision, resolve_precision
from masksub_exp.config import ConfigError, to_settings
from masksub_exp.train import train

from .conftest import CONF, compose_cfg, smoke_overrides

PAPER_GROUPS = ("deit3", "deit3_ft", "mae_ft", "clip_ft", "swin", "rsb", "bert")
PRESETS = sorted(f"{p.parent.name}/{p.stem}" for group in PAPER_GROUPS
                 for p in (CONF / "experiment" / group).glob("*.yaml"))


@pytest.fixture
def keep_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_every_paper_preset_is_listed() -> None:
    assert len(PRESETS) >= 20 and "deit3/vit_s_400ep" in PRESETS and "rsb/resnet50" in PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_preset_resolves_to_bf16_on_cuda_and_fp32_on_cpu(preset: str, tmp_path: Path, keep_tf32) -> None:
    settings = to_settings(compose_cfg([f"experiment={preset}", f"data.root={tmp_path}"], tmp_path / "run"))
    assert settings.train.precision == "auto"
    assert resolve_precision(settings.train.precision, "cuda") == ("bf16", True)
    cuda = build_precision(settings.train.precision, torch.device("cuda"))  # no GPU needed to build it
    assert cuda.dtype == torch.bfloat16 and cuda.scaler is None
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert "bf16 autocast, TF32" in describe_precision(settings.train.precision, "cuda")
    assert resolve_precision(settings.train.precision, "cpu") == ("fp32", False)
    assert build_precision(settings.train.precision, torch.device("cpu")).dtype is None


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
def test_explicit_values_mean_what_they_say(keep_tf32) -> None:
    assert resolve_precision("fp32", "cuda") == ("fp32", False)
    build_precision("fp32", torch.device("cuda"))
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert resolve_precision("bf16", "cpu") == ("bf16", False)
    assert build_precision("bf16", torch.device("cpu")).dtype == torch.bfloat16
    fp16 = build_precision("fp16", torch.device("cuda"))
    assert fp16.dtype == torch.float16 and fp16.scaler is not None
    with pytest.raises(ConfigError, match="fp16"):
        build_precision("fp16", torch.device("cpu"))


def test_cpu_run_says_fp32_in_its_plan_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    summary = train(compose_cfg(smoke_overrides(train__max_steps=1, train__device="cpu"), tmp_path / "run"))
    assert "fp32 (train.precision=auto on cpu)" in summary["batch_plan"]
    assert "train.precision=auto on cpu" in capsys.readouterr().err
