"""The benchmark runs and reports every mode; compiled training runs both branches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from masksub_exp.bench import step as bench
from masksub_exp.train import train

from .conftest import compose_cfg, smoke_overrides


def test_bench_json_has_every_mode(capsys: pytest.CaptureFixture) -> None:
    bench.main(["--device", "cpu", "--models", "vit_s16,resnet50", "--img-size", "32", "--batch-size", "2",
                "--steps", "1", "--warmup", "1", "--json"])
    records = json.loads(capsys.readouterr().out)
    assert {(r["model"], r["mode"]) for r in records} == {
        (m, mode) for m in ("vit_s16", "resnet50") for mode in bench.MODES}
    assert all(r["img_per_s"] > 0 and r["peak_mem_mb"] is None for r in records)


def test_bench_table_prints_ratios(capsys: pytest.CaptureFixture) -> None:
    bench.main(["--device", "cpu", "--models", "vit_s16", "--img-size", "32", "--batch-size", "2", "--steps", "1",
                "--warmup", "0"])
    out = capsys.readouterr().out
    assert "x speed" in out and "ours/bare" in out and out.count("vit_s16") == 4


def test_bench_rejects_unknown_models() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "vit_zz"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["model", "blocks"])
def test_compiled_training_runs_both_branches(mode: str, tmp_path: Path) -> None:
    summary = train(compose_cfg(smoke_overrides(train__max_steps=3, train__log_every=1, train__compile="true",
                                                train__compile_mode=mode), tmp_path / "run"))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["step"] == 3 and all("loss_sub" in r for r in lines if r["kind"] == "train")
    # the compiled model computes what the eager one does: the first step's main loss (same weights, same
    # batch; the sub-branch's masks come from another RNG stream inside a compiled graph, so not that one)
    train(compose_cfg(smoke_overrides(train__max_steps=1, train__log_every=1), tmp_path / "eager"))
    eager = [json.loads(x) for x in (tmp_path / "eager" / "metrics.jsonl").read_text().splitlines()]
    first = [r for r in lines if r["kind"] == "train"][0]
    assert first["step"] == 1 and math.isfinite(first["loss_sub"])
    assert first["loss_main"] == pytest.approx(eager[0]["loss_main"], rel=1e-4)


@pytest.mark.slow
def test_gpu_loader_script_dry_run(tmp_path: Path) -> None:
    """benchmarks/gpu_loader.sh on the CPU at toy sizes: JPEGs, prepared copy, reference, runs, table, JSON."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(root / "benchmarks" / "gpu_loader.sh"), "--dry-run", "--work", str(tmp_path / "work"),
                           "--variants", "full,prepared,dali", "--images", "16"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (tmp_path / "out" / "gpu_loader.err").read_text()[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_loader.json").read_text())
    got = {(r["model"], r["mode"], r["variant"]) for r in result["rows"]}
    variants = {"full", "prepared"} | ({"dali"} if not result["skipped"] else set())
    assert got == {("vit_s16", mode, v) for mode in ("baseline", "masksub") for v in variants}
    assert all(r["img_per_s"] > 0 and 0 <= r["data_wait_frac"] <= 1 for r in result["rows"])
    assert all(r["synthetic_img_per_s"] > 0 for r in result["rows"])
    assert "vs synthetic" in proc.stdout and result["prepare"]["images"] == 16 + 8
