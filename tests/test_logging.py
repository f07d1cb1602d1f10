"""W&B (real offline runs), the local sinks, progress output, and the report command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from masksub_exp import checkpoints
from masksub_exp.report import report
from masksub_exp.sinks.console import ConsoleSink
from masksub_exp.train import train

from .conftest import PYTHON, ROOT, compose_cfg, smoke_overrides
from .wandb_records import run_info


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")  # no credentials: logger.mode=auto must pick offline
    monkeypatch.setenv("WANDB_SILENT", "true")


def wandb_files(run: Path) -> list[Path]:
    return sorted(run.glob("wandb/offline-run-*/run-*.wandb"))


def test_offline_wandb_run_logs_config_and_metrics(offline: None, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = train(compose_cfg(smoke_overrides(logger="wandb", train__max_steps=4, train__log_every=2,
                                                masksub__ratio=0.25), run))
    files = wandb_files(run)
    assert len(files) == 1 and files[0].stat().st_size > 0
    info = run_info(files[0])
    run_id = (run / "run_id").read_text().strip()
    assert info["id"] == run_id == checkpoints.load(run / "checkpoints" / "last.pt")["run_id"]
    assert info["job_type"] == "demo"  # the recipe
    config = info["config"]
    assert config["masksub"] == {"mode": "mask", "ratio": 0.25, "unit_px": 32}  # resolved values
    assert config["train"]["epochs"] == 2 and config["train"]["max_steps"] == 4
    assert config["meta"]["world_size"] == 1 and config["meta"]["git_commit"]
    for key in ("train/loss_main", "train/loss_sub", "train/lr", "train/img_per_s", "train/data_wait_frac",
                "eval/top1", "eval/top5"):
        assert key in info["history_keys"], key
    assert summary["step"] == 4


def test_resume_reuses_the_wandb_run_and_new_runs_get_new_ids(offline: None, tmp_path: Path) -> None:
    overrides = smoke_overrides(logger="wandb")
    train(compose_cfg(overrides + ["train.max_steps=3"], tmp_path / "a"))
    train(compose_cfg(overrides + ["train.max_steps=6"], tmp_path / "a"))  # resumes
    train(compose_cfg(overrides + ["train.max_steps=3"], tmp_path / "b"))
    ids_a = {run_info(f)["id"] for f in wandb_files(tmp_path / "a")}
    ids_b = {run_info(f)["id"] for f in wandb_files(tmp_path / "b")}
    assert len(wandb_files(tmp_path / "a")) == 2 and len(ids_a) == 1  # two sessions, one W&B run
    assert ids_a.isdisjoint(ids_b)


def test_disabled_wandb_writes_nothing(offline: None, tmp_path: Path) -> None:
    train(compose_cfg(smoke_overrides(logger="wandb", logger__mode="disabled", train__max_steps=2), tmp_path / "r"))
    assert not (tmp_path / "r" / "wandb").exists()
    assert (tmp_path / "r" / "metrics.jsonl").stat().st_size > 0  # the local sink is independent


def test_logger_none_never_imports_our_wandb_sink(tmp_path: Path, cli_env: dict) -> None:
    # timm 1.0.31 itself runs `try: import wandb` when imported (timm/utils/summary.py), so the module
    # is in sys.modules whatever we do; what we own is that our sink is never loaded and no run starts
    code = ("import sys\nfrom tests.conftest import compose_cfg, smoke_overrides\nfrom masksub_exp.train import train\n"
            f"train(compose_cfg(smoke_overrides(train__max_steps=2), __import__('pathlib').Path('{tmp_path}')))\n"
            "w = sys.modules.get('wandb')\n"
            "print('masksub_exp.sinks.wandb' in sys.modules, getattr(w, 'run', None) is not None)")
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False False"
    assert not (tmp_path / "wandb").exists()


def test_console_is_a_bar_on_a_terminal_and_lines_otherwise(capsys: pytest.CaptureFixture) -> None:
    record = {"kind": "train", "step": 5, "epoch": 0, "loss_main": 1.0, "loss_sub": 2.0, "lr": 1e-3, "img_per_s": 10}
    lines = ConsoleSink(10, tty=False)
    lines.log(record)
    assert "step 5/10" in capsys.readouterr().err
    bar = ConsoleSink(10, tty=True)
    bar.log(record)
    assert bar.bar is not None and bar.bar.n == 5
    bar.close()


def test_report_on_a_real_demo_sweep(tmp_path: Path, cli_env: dict) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [PYTHON, "-m", "masksub_exp.train", "train.max_steps=6", "train.log_every=2", "data.train_limit=2048",
         "train.progress=false", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = report([sweep], tmp_path / "report")
    top1 = {p.parent.name: json.loads(p.read_text())["top1"] for p in sweep.glob("*/summary.json")}
    base = next(v for k, v in top1.items() if "masksub=off" in k)
    ours = next(v for k, v in top1.items() if "masksub=mask" in k)
    row = next(line for line in text.splitlines() if line.startswith("| vit_tiny_patch16_224"))
    assert f"{base:.2f} (n=1)" in row and f"{ours:.2f} (n=1)" in row and f"{ours - base:+.2f}" in row
    pngs = list((tmp_path / "report").glob("*.png"))
    assert len(pngs) == 1 and (tmp_path / "report" / "report.md").exists()
    with Image.open(pngs[0]) as image:
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 300
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or []) > 10  # not a blank canvas


def test_report_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run folders"):
        report([tmp_path], tmp_path / "out")


class StubRemoteRun:
    """Stands in for a wandb.apis.public.Run: W&B's server cannot be reached from this machine."""

    def __init__(self, run_id: str, mode: str, seed: int, top1: float) -> None:
        self.id = run_id
        self.config = {"model": {"name": "vit_s"}, "recipe": {"name": "deit3"}, "seed": seed,
                       "masksub": {"mode": mode, "ratio": 0.5}, "data": {"name": "imagenet"}}
        self.summary = {"eval/top1": top1}
        self._history = [{"_step": 10, "train/loss_main": 2.0, **({"train/loss_sub": 2.5} if mode != "off" else {})},
                         {"_step": 20, "eval/epoch": 1, "eval/top1": top1}]

    def history(self, keys=None, pandas=False):  # noqa: ANN001, ANN201
        return self._history


class StubApi:
    def __init__(self, runs: list[StubRemoteRun]) -> None:
        self._runs = runs
        self.asked: list = []

    def runs(self, path, filters=None):  # noqa: ANN001, ANN201
        self.asked.append((path, filters))
        return self._runs


def test_report_from_the_wandb_api(tmp_path: Path) -> None:
    from masksub_exp.report import runs_from_wandb

    api = StubApi([StubRemoteRun("a", "off", 0, 80.0), StubRemoteRun("b", "off", 1, 81.0),
                   StubRemoteRun("c", "mask", 0, 82.0), StubRemoteRun("d", "mask", 1, 82.5)])
    runs = runs_from_wandb("me/proj", group="sweep-1", api=api)
    assert api.asked == [("me/proj", {"group": "sweep-1"})]
    text = report([], tmp_path / "out", extra_runs=runs)
    assert "| vit_s | deit3 | imagenet | mask r=0.5 | 80.50 +- 0.71 (n=2) | 82.25 +- 0.35 (n=2) | +1.75 |" in text
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
