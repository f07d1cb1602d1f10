"""The results command (docs/results.md): end to end on the real local SLURM at a tiny budget, and its rules."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from masksub_exp.results import Sweep, plan, run_sweeps
from masksub_exp.results_page import Budget, verdict
from masksub_exp.results_plots import compare_curves

from .conftest import PYTHON, ROOT

SECTIONS = ["## Summary", "## Fashion-MNIST: baseline vs MaskSub (r = 0.5)", "## ViT: the masking ratio",
            "## ViT: sub-branch variants", "## ViT with little data and a long schedule",
            "## BERT: MiniLM on the 2016 election tweets",
            "## Training loss: does MaskSub converge faster?", "## Wall-clock per epoch"]


def test_results_command_runs_every_sweep_on_slurm_and_writes_every_section(slurm_env: dict, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    committed = (ROOT / "docs" / "results.md").read_text()
    cmd = [PYTHON, "-m", "masksub_exp.results", "--tiny", "--runs", str(runs)]
    proc = subprocess.run(cmd, cwd=ROOT, env=slurm_env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    budget_dir = runs / Budget(seeds=1, epochs=1, train_limit=768, small_epochs=1, small_train_limit=768,
                               text_epochs=1, text_train_limit=96).tag()
    docs = budget_dir  # a pipeline check writes its page next to its runs, never over docs/
    assert (ROOT / "docs" / "results.md").read_text() == committed
    page = (docs / "results.md").read_text()
    positions = [page.find(s) for s in SECTIONS]
    assert -1 not in positions, [s for s, p in zip(SECTIONS, positions, strict=True) if p < 0]

    # every run of the plan trained (as a SLURM job of its sweep) and its number is on the page
    summaries = sorted(budget_dir.rglob("summary.json"))
    assert len(summaries) == 15  # vit 2 + swin 2 + resnet 2 + ratios 3 + variants 2 + little data 2 + bert 2
    for sweep in plan():
        assert any((budget_dir / sweep.key / ".submitit").iterdir()), f"{sweep.key} did not go through SLURM"
    for path in summaries:
        summary = json.loads(path.read_text())
        assert summary["status"] == "complete" and summary["epoch"] == 1
        assert f"{summary['top1']:.2f}" in page and summary["epoch_train_s"] > 0
    assert page.count("(n=1)") >= 15 and "one seed: no verdict" in page  # one seed never claims a gain
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert len(images) == 6  # the ratio curve and five loss-curve figures
    for image in images:
        assert (docs / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the page is a function of the runs: --report-only rewrites the same tables without training
    again = subprocess.run([*cmd, "--report-only"], cwd=ROOT, env=slurm_env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    body = lambda text: text[text.index("## Summary"):]  # noqa: E731  (the header names the command and time)
    assert body((docs / "results.md").read_text()) == body(page)
    assert len(sorted(budget_dir.rglob("summary.json"))) == 15


def test_a_failing_sweep_stops_the_command_with_its_log(slurm_env: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    bad = Sweep("bad", "results/vit", {"masksub.ratio": "1.5"})  # refused by the launcher before submission
    with pytest.raises(SystemExit, match=r"(?s)some sweeps failed.*bad \(exit 2.*masksub.ratio"):
        run_sweeps([bad], Budget(seeds=1, max_steps=1), tmp_path)
    assert not list(tmp_path.rglob("summary.json"))


def test_without_slurm_the_command_says_how_to_start_it(tmp_path: Path, cli_env: dict) -> None:
    env = dict(cli_env, SLURM_CONF=str(tmp_path / "missing.conf"))
    proc = subprocess.run([PYTHON, "-m", "masksub_exp.results", "--tiny", "--runs", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "slurm-local up" in proc.stderr and "Traceback" not in proc.stderr
    assert "missing.conf does not exist" in proc.stderr


def test_report_only_without_runs_is_a_clear_error(tmp_path: Path, cli_env: dict) -> None:
    proc = subprocess.run([PYTHON, "-m", "masksub_exp.results", "--report-only", "--runs", str(tmp_path)],
                          cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no finished runs" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("base", "ours", "expected"), [
    ([80.0, 81.0, 82.0], [84.0, 85.0, 86.0], "gain"),
    ([80.0, 81.0, 82.0], [76.0, 77.0, 78.0], "worse"),
    ([80.0, 81.0, 82.0], [80.5, 81.5, 82.5], "no measurable effect"),
    ([80.0, 81.0, 82.0], [81.0, 81.2, 90.0], "no measurable effect"),  # +3 points, but one seed carries it
    ([80.0], [85.0], "one seed"),
    ([], [85.0], "missing"),
])
def test_verdict_counts_a_delta_only_beyond_the_seed_spread(base: list, ours: list, expected: str) -> None:
    assert expected in verdict(base, ours)


def test_loss_comparison_reads_the_checkpoints_and_the_crossing(tmp_path: Path) -> None:
    steps = list(range(10, 110, 10))
    base = [2.0 - 0.1 * i for i in range(10)]  # ends at 1.1
    faster = [1.9 - 0.12 * i for i in range(10)]  # always below, reaches 1.1 at step 80 (1.9 - 0.84 = 1.06)
    curve = compare_curves((steps, base), (steps, faster), tmp_path / "x.png")
    assert curve.faster == "yes" and curve.reaches.startswith("step 80 of 100")
    assert curve.checkpoints[-1] == pytest.approx((1.1, 1.9 - 1.08))
    slower = [2.1 - 0.05 * i for i in range(10)]
    assert compare_curves((steps, base), (steps, slower), tmp_path / "x.png").faster == "no"
    crossing = [2.2 - 0.15 * i for i in range(10)]  # above early, below late
    result = compare_curves((steps, base), (steps, crossing), tmp_path / "x.png")
    assert result.faster == "mixed" and result.reaches != "never"
