"""End to end: train(cfg) in-process and the CLI in a subprocess, the promised files, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from masksub_exp import checkpoints
from masksub_exp.config import ConfigError
from masksub_exp.train import train

from .conftest import FMNIST, PYTHON, ROOT, compose_cfg, run_command, smoke_overrides


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_run_folder(run: Path, masksub: bool, n_val: int = 64) -> None:
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    records = read_jsonl(run / "metrics.jsonl")
    train_lines = [r for r in records if r["kind"] == "train"]
    eval_lines = [r for r in records if r["kind"] == "eval"]
    assert train_lines and eval_lines
    for r in train_lines:
        assert {"step", "epoch", "loss_main", "lr", "img_per_s"} <= r.keys()
        assert math.isfinite(r["loss_main"]) and r["img_per_s"] > 0
        assert ("loss_sub" in r) == masksub
        if masksub:
            assert math.isfinite(r["loss_sub"])
    assert {"top1", "top5"} <= eval_lines[-1].keys()
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["top1"] <= summary["top5"] <= 100
    assert summary["top1"] == eval_lines[-1]["top1"]
    # counted over exactly the n_val validation images (64 synthetic ones, or Fashion-MNIST's 10,000 test
    # images): a whole number of them, no other denominator
    correct = summary["top1"] * n_val / 100
    assert abs(correct - round(correct)) < 1e-6, (summary["top1"], n_val)


@pytest.mark.parametrize("masksub", ["off", "mask"])
def test_train_in_process_writes_the_promised_files(masksub: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = train(compose_cfg(smoke_overrides(masksub=masksub), run))
    assert_run_folder(run, masksub == "mask")
    assert summary["step"] == 16 and summary["masksub_mode"] == masksub
    assert "ratio: 0.5" in (run / "config.yaml").read_text()


def _state(run: Path) -> dict[str, torch.Tensor]:
    return checkpoints.load(run / "checkpoints" / "last.pt")["model"]


def test_resume_gives_identical_weights(tmp_path: Path) -> None:
    # 11 steps straight vs 5 steps, then the same command again with the full budget (mid-epoch resume,
    # across an epoch boundary: 8 steps per epoch)
    common = smoke_overrides(train__log_every=1, recipe__ema_decay=0.9)
    train(compose_cfg(common + ["train.max_steps=11"], tmp_path / "straight"))
    train(compose_cfg(common + ["train.max_steps=5"], tmp_path / "resumed"))
    first = checkpoints.load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert first["state"] == {"step": 5, "epoch": 0, "batch_in_epoch": 5}
    summary = train(compose_cfg(common + ["train.max_steps=11"], tmp_path / "resumed"))
    assert summary["steps_this_session"] == 6
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ema_a = checkpoints.load(tmp_path / "straight" / "checkpoints" / "last.pt")["ema"]
    ema_b = checkpoints.load(tmp_path / "resumed" / "checkpoints" / "last.pt")["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # the resumed run's log has each step exactly once, and the same losses as the straight run
    steps = [r["step"] for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, 12))
    losses_a = [r["loss_main"] for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl") if r["kind"] == "train"]
    losses_b = [r["loss_main"] for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "train"]
    assert losses_a == losses_b


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path: Path) -> None:
    train(compose_cfg(smoke_overrides(train__max_steps=2), tmp_path / "run"))
    with pytest.raises(ConfigError, match="different configuration"):
        train(compose_cfg(smoke_overrides(train__max_steps=2, masksub__ratio=0.25), tmp_path / "run"))


def test_resume_never_keeps_the_old_run_aside(tmp_path: Path) -> None:
    train(compose_cfg(smoke_overrides(train__max_steps=2), tmp_path / "run"))
    summary = train(compose_cfg(smoke_overrides(train__max_steps=3, train__resume="never"), tmp_path / "run"))
    assert summary["steps_this_session"] == 3
    aside = list((tmp_path / "run").glob("previous-*/checkpoints/last.pt"))
    assert len(aside) == 1 and checkpoints.load(aside[0])["state"]["step"] == 2


def test_accumulation_and_bf16_run(tmp_path: Path) -> None:
    summary = train(compose_cfg(smoke_overrides(train__max_steps=2, train__accum_steps=4,
                                                train__precision="bf16"), tmp_path / "run"))
    assert summary["step"] == 2 and math.isfinite(summary["top1"])


def test_cli_demo_sweep_writes_both_runs_and_prints_both_accuracies(tmp_path: Path, cli_env: dict) -> None:
    if not FMNIST.is_dir():
        pytest.fail(f"{FMNIST} is missing: run `make test` (it installs dataset-fashion-mnist)")
    proc = run_command(
        [PYTHON, "-m", "masksub_exp.train", "train.max_steps=3", "train.log_every=1", "data.train_limit=2048",
         f"hydra.sweep.dir={tmp_path}"],
        cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {p.name: p for p in tmp_path.iterdir() if p.is_dir()}
    assert set(runs) == {"data.train_limit=2048,masksub=off,train.max_steps=3",
                         "data.train_limit=2048,masksub=mask,train.max_steps=3"}, runs
    for name, run in runs.items():
        assert_run_folder(run, masksub="masksub=mask" in name, n_val=10_000)
    table = proc.stdout[proc.stdout.index("results in"):]
    for name, run in runs.items():
        top1 = json.loads((run / "summary.json").read_text())["top1"]
        assert name in table and f"{top1:.2f}" in table


def test_cli_config_error_is_one_clear_line(tmp_path: Path, cli_env: dict) -> None:
    proc = run_command(
        [PYTHON, "-m", "masksub_exp.train", "experiment=smoke", "masksub.ratio=1.2", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "masksub.ratio=1.2" in proc.stderr and "[0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_rerunning_a_finished_run_redoes_nothing_and_keeps_its_numbers(tmp_path: Path) -> None:
    cfg = smoke_overrides(train__max_steps=3, train__log_every=1)
    first = train(compose_cfg(cfg, tmp_path / "run"))
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = train(compose_cfg(cfg, tmp_path / "run"))
    assert again == first  # wall time and accuracy of the run that trained, not of the re-run
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == first
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == log  # no second evaluation logged
    more = train(compose_cfg(smoke_overrides(train__max_steps=5, train__log_every=1), tmp_path / "run"))
    assert more["step"] == 5 and more["resumed_from_step"] == 3  # a raised cap still continues
