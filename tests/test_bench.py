"""The benchmark runs and reports every mode; compiled training runs both branches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from masksub_exp import bench
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
