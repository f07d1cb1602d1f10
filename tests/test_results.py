"""The results command (docs/results.md): end to end on the real local SLURM at a tiny budget, and its rules."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from masksub_exp.results.command import Sweep, plan, run_sweeps
from masksub_exp.results.page import Budget
from masksub_exp.results.plots import compare_curves

from .conftest import PYTHON, ROOT, run_command

SECTIONS = ["## Summary", "## CPU part", "### Fashion-MNIST: baseline vs MaskSub (r = 0.5), paired by seed",
            "### ViT: the masking ratio", "### ViT: sub-branch variants",
            "### ViT with little data and a long schedule", "### BERT: MiniLM on the 2016 election tweets",
            "### Training loss of the main branch", "### Wall-clock per epoch"]
TINY = Budget(seeds=1, epochs=1, train_limit=768, small_epochs=1, small_train_limit=768, text_epochs=1,
              text_train_limit=96)


def test_results_command_runs_every_sweep_on_slurm_and_writes_every_section(slurm_env: dict, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    committed = (ROOT / "docs" / "results.md").read_text()
    cmd = [PYTHON, "-m", "masksub_exp.results", "--tiny", "--runs", str(runs)]
    proc = run_command(cmd, cwd=ROOT, env=slurm_env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    budget_dir = runs / TINY.tag()
    docs = budget_dir  # a pipeline check writes its page next to its runs, never over docs/
    assert (ROOT / "docs" / "results.md").read_text() == committed
    page = (docs / "results.md").read_text()
    positions = [page.find(s) for s in SECTIONS]
    assert -1 not in positions, [s for s, p in zip(SECTIONS, positions, strict=True) if p < 0]

    # every run of the plan trained (as a SLURM job of its sweep) and its number is on the page
    summaries = sorted(budget_dir.rglob("summary.json"))
    assert len(summaries) == 17  # vit, vit 49 tokens, swin, resnet, little data, bert: 2 each; ratios 3; variants 2
    for sweep in plan():
        assert any((budget_dir / sweep.key / ".submitit").iterdir()), f"{sweep.key} did not go through SLURM"
    for path in summaries:
        summary = json.loads(path.read_text())
        assert summary["status"] == "complete" and summary["epoch"] == 1
        assert f"{summary['top1']:.2f}" in page and summary["epoch_train_s"] > 0
    assert page.count("(n=1)") >= 2 * 8 and "too few pairs (needs 2)" in page  # one seed never claims anything
    assert "| gain |" not in page and "| worse |" not in page  # no verdict column claims a difference
    assert "Every planned run finished." not in page  # the SLURM path writes no plan.json: no claim either way
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert len(images) == 7  # the ratio curve and six loss-curve figures
    for image in images:
        assert (docs / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the page is a function of the runs: --report-only rewrites the same tables without training
    again = subprocess.run([*cmd, "--report-only"], cwd=ROOT, env=slurm_env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    body = lambda text: text[text.index("## Summary"):]  # noqa: E731  (the header names the command and time)
    assert body((docs / "results.md").read_text()) == body(page)
    assert len(sorted(budget_dir.rglob("summary.json"))) == 17


def test_a_failing_sweep_stops_the_command_with_its_log(slurm_env: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    bad = Sweep("bad", "results/vit", {"masksub.ratio": "1.5"})  # refused by the launcher before submission
    with pytest.raises(SystemExit, match=r"(?s)some sweeps failed.*bad \(exit 2.*masksub.ratio"):
        run_sweeps([bad], Budget(seeds=1, max_steps=1), tmp_path)
    assert not list(tmp_path.rglob("summary.json"))


def test_without_slurm_the_command_says_how_to_start_it(tmp_path: Path, cli_env: dict) -> None:
    env = dict(cli_env, SLURM_CONF=str(tmp_path / "missing.conf"))
    proc = run_command([PYTHON, "-m", "masksub_exp.results", "--tiny", "--runs", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "slurm-local up" in proc.stderr and "Traceback" not in proc.stderr
    assert "missing.conf does not exist" in proc.stderr


def test_report_only_without_runs_is_a_clear_error(tmp_path: Path, cli_env: dict) -> None:
    proc = run_command([PYTHON, "-m", "masksub_exp.results", "--report-only", "--runs", str(tmp_path)],
                          cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no finished runs" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.fast  # the inner loop: `make test-fast`
def test_loss_comparison_gives_the_share_of_steps_where_masksub_is_lower(tmp_path: Path) -> None:
    steps = list(range(10, 170, 10))  # 16 logged steps: quarters of 4
    base = [2.0 - 0.1 * i for i in range(16)]
    below = [b - 0.05 for b in base]
    curve = compare_curves((steps, base), (steps, below), tmp_path / "x.png")
    assert (curve.steps, curve.lower_share, curve.lower_first, curve.lower_last) == (16, 1.0, 1.0, 1.0)
    assert curve.final == pytest.approx((0.5, 0.45))
    crossing = [b + 0.3 - 0.04 * i for i, b in enumerate(base)]  # above for 8 steps (0.3 - 0.04 i > 0 for i < 7.5)
    curve = compare_curves((steps, base), (steps, crossing), tmp_path / "x.png")
    assert curve.lower_share == pytest.approx(8 / 16) and curve.lower_first == 0.0 and curve.lower_last == 1.0
    assert compare_curves((steps, base), (steps, [b + 0.1 for b in base]), tmp_path / "x.png").lower_share == 0.0


# ---- without SLURM: the local runner, its deadline, and the page's GPU part ----

@pytest.mark.fast  # the inner loop: `make test-fast`
def test_local_plan_runs_the_main_comparison_first_and_every_seed() -> None:
    from masksub_exp.results.command import planned_runs

    runs = planned_runs(plan(), Budget(seeds=2))
    names = [f"{r.key}/{r.name}" for r in runs]
    assert len(names) == len(set(names)) == 2 * 17  # every setting of every sweep, once per seed
    main = {"fmnist_vit", "fmnist_vit_tokens", "fmnist_swin", "fmnist_resnet"}
    firsts = [r.key in main for r in runs]
    assert firsts == sorted(firsts, reverse=True)  # no other sweep's run before the last main one
    assert names[:4] == ["fmnist_vit/masksub=mask,seed=0", "fmnist_vit/masksub=off,seed=0",
                         "fmnist_vit_tokens/masksub=mask,seed=0", "fmnist_vit_tokens/masksub=off,seed=0"]
    seeds = [r.name.endswith("seed=1") for r in runs if r.key in main]
    assert seeds == sorted(seeds)  # every main setting's seed 0 before any seed 1: a deadline costs seeds, not models
    ratio = next(r for r in runs if r.key == "vit_ratio")
    assert "masksub.ratio=0" in ratio.overrides and "recipe.epochs=4" in ratio.overrides


def test_local_runner_trains_writes_the_plan_and_reports_runs_cut_by_the_deadline(tmp_path: Path, cli_env: dict,
                                                                                    monkeypatch) -> None:
    from masksub_exp.results.doc import write_page
    from masksub_exp.results.runs import expand, run_locally

    for key, value in cli_env.items():
        monkeypatch.setenv(key, value)
    common = ["recipe.epochs=1", "data.train_limit=512", "train.max_steps=2", "train.log_every=1"]
    runs = expand("fmnist_vit", "results/vit", {"masksub": "mask,off"}, [0], common)
    outcome = run_locally(runs, tmp_path, parallel=2, threads=1, device="cpu")
    assert outcome == {"fmnist_vit/masksub=off,seed=0": "done", "fmnist_vit/masksub=mask,seed=0": "done"}
    for run in runs:
        summary = json.loads((tmp_path / run.key / run.name / "summary.json").read_text())
        assert summary["step"] == 2 and summary["masksub_mode"] == ("off" if "off" in run.name else "mask")

    logs = {run.name: (tmp_path / run.key / f"{run.name}.log").read_text() for run in runs}

    # a deadline already past: nothing more starts, and the page names the runs that did not finish; the
    # finished runs are kept as they are (not run again: their logs are those of the runs that trained)
    late = expand("fmnist_swin", "results/swin", {"masksub": "mask,off"}, [0], common)
    outcome = run_locally(runs + late, tmp_path, parallel=2, threads=1, device="cpu", deadline_s=0)
    assert outcome == {**{f"{r.key}/{r.name}": "done" for r in runs},
                       **{f"{r.key}/{r.name}": "not started (deadline)" for r in late}}
    assert logs == {run.name: (tmp_path / run.key / f"{run.name}.log").read_text() for run in runs}
    # a later call for other sweeps adds to the plan and never drops what an earlier call planned
    run_locally(late, tmp_path, parallel=2, threads=1, device="cpu", deadline_s=0)
    assert json.loads((tmp_path / "plan.json").read_text()) == [f"{r.key}/{r.name}" for r in runs + late]
    page = write_page(tmp_path, tmp_path / "page", Budget(seeds=1, launcher="local"), "test").read_text()
    assert "**2 planned run(s) did not finish**" in page and "`fmnist_swin/masksub=off,seed=0`" in page
    assert "as local processes" in page


def test_local_runner_keeps_the_log_of_every_attempt_of_an_unfinished_run(tmp_path: Path, cli_env: dict,
                                                                         monkeypatch) -> None:
    """A run that failed is tried again by the next call; its log gains the new attempt and keeps the first
    one's output (the reason it stopped), each under a dated header."""
    from masksub_exp.results.runs import expand, run_locally

    for key, value in cli_env.items():
        monkeypatch.setenv(key, value)
    runs = expand("fmnist_vit", "results/vit", {"masksub": "off"}, [0], ["train.no_such_key=1"])
    for _ in range(2):
        assert run_locally(runs, tmp_path, parallel=1, threads=1, device="cpu") == {
            "fmnist_vit/masksub=off,seed=0": "exit 2"}
    log = (tmp_path / "fmnist_vit" / "masksub=off,seed=0.log").read_text()
    assert log.count("[results] attempt started ") == 2
    assert log.count("no_such_key") >= 2, log  # the refusal of both attempts


@pytest.mark.fast  # the inner loop: `make test-fast`
def test_budget_json_keeps_every_call_that_ran_under_the_budget(tmp_path: Path) -> None:
    """A second call for more sweeps (ratio, variants) is a new part: the first call's record stays."""
    from masksub_exp.results.command import budget_record
    from masksub_exp.results.doc import Part, budget_lines

    budget = Budget(seeds=3, epochs=4, launcher="local")
    first = budget_record(tmp_path, budget, ["fmnist_vit"], "cmd one", 0.0)
    first["finished"] = first["parts"][-1]["finished"] = "1970-01-01 01:00:00 UTC"
    (tmp_path / "budget.json").write_text(json.dumps(first))
    second = budget_record(tmp_path, budget, ["vit_ratio", "fmnist_vit"], "cmd two", 7200.0)
    assert second["sweeps"] == ["fmnist_vit", "vit_ratio"] and second["started"] == "1970-01-01 00:00:00 UTC"
    assert [p["command"] for p in second["parts"]] == ["cmd one", "cmd two"]
    assert second["parts"][0]["finished"] == "1970-01-01 01:00:00 UTC" and "finished" not in second["parts"][1]
    (tmp_path / "budget.json").write_text(json.dumps(second))
    text = "\n".join(budget_lines(Part.load(tmp_path, budget), [], "a machine"))
    assert "from 1970-01-01 00:00:00 UTC to 1970-01-01 01:00:00 UTC (fmnist_vit: `cmd one`; on " in text
    assert ("from 1970-01-01 02:00:00 UTC, end unknown (no end recorded, no run of it finished here) "
            "(vit_ratio, fmnist_vit: `cmd two`; on ") in text  # the call names the machine it ran on
    assert "1.00 hours of wall clock over the 1 of 2 call(s) whose end is known" in text
    assert "Sweeps: fmnist_vit, vit_ratio" in text
    # a call stopped with its machine: the end of its last run attempt stands in, said as such, and counts
    attempts = [{"run": "a", "start": 7200.0, "end": 9000.0}, {"run": "b", "start": 7300.0, "end": 10800.0},
                {"run": "c", "start": 100.0, "end": 20000.0}]  # c started in the first call: not the second's end
    (tmp_path / "attempts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in attempts))
    text = "\n".join(budget_lines(Part.load(tmp_path, budget), [], "a machine"))
    assert ("from 1970-01-01 02:00:00 UTC to 1970-01-01 03:00:00 UTC (the end of its last run: the call was stopped "
            "before it recorded its own)") in text
    assert "2.00 hours of wall clock over the 2 call(s) whose end is known" in text


@pytest.mark.fast  # the inner loop: `make test-fast`
def test_page_gets_a_gpu_part_from_committed_runs(tmp_path: Path) -> None:
    """The GPU part reads its budget and machine from its own budget.json, not from the CPU command's flags."""
    import shutil

    from masksub_exp.results.doc import write_page

    source = next(ROOT.glob("docs/results_gpu/budget.json"), None)
    src_root = source.parent if source else None
    if src_root is None:  # before the first GPU run is committed: a CPU run folder stands in for it
        src_root = tmp_path / "src"
        run = src_root / "fmnist_vit" / "masksub=off,seed=0"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"model": "m", "recipe": "demo", "masksub_mode": "off",
                                                      "masksub_ratio": 0.0, "top1": 87.5, "seed": 0}))
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    shutil.copytree(src_root, cpu)
    shutil.copytree(src_root, gpu)
    record = {"budget": {"seeds": 3, "epochs": 20, "device": "cuda", "launcher": "local"},
              "sweeps": ["fmnist_vit"], "machine": "NVIDIA TEST GPU, torch 9"}
    (gpu / "budget.json").write_text(json.dumps(record))
    page = write_page(cpu, tmp_path / "page", Budget(seeds=1), "cmd", gpu_root=gpu).read_text()
    assert page.index("## CPU part") < page.index("## GPU, exploratory")
    assert "NVIDIA TEST GPU, torch 9" in page and "Fashion-MNIST 20 epoch(s)" in page
    assert (tmp_path / "page" / "results" / "gpu").is_dir()
    no_gpu = write_page(cpu, tmp_path / "page2", Budget(seeds=1), "cmd", gpu_root=tmp_path / "absent").read_text()
    assert "## GPU" not in no_gpu


@pytest.mark.slow
def test_gpu_matrix_script_dry_run_on_the_cpu(tmp_path: Path, cli_env: dict) -> None:
    """benchmarks/gpu_results.sh end to end on the CPU at a tiny budget: what the GPU call runs, minus the GPU."""
    env = dict(cli_env, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), PY=PYTHON, LOADER_S="0",
               ONLY="fmnist_vit", CARRY=str(tmp_path / "no-carry"))
    proc = subprocess.run(["bash", "benchmarks/gpu_results.sh", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "matrix: exit 0" in proc.stdout
    listing = subprocess.run(["tar", "tzf", str(tmp_path / "out" / "gpu_runs.tgz")], capture_output=True,
                             text=True, check=True).stdout.split()
    summaries = [n for n in listing if n.endswith("summary.json")]
    assert len(summaries) == 2 and "./budget.json" in listing and "./plan.json" in listing
    assert not [n for n in listing if n.endswith(".pt")]  # no checkpoints travel back
