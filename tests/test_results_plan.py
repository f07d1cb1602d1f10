"""Pre-registration: the results command runs only under a committed, clean plan, stamps its runs, and its page and
README block count only runs made under that plan's commit."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from masksub_exp.results.command import plan as sweeps
from masksub_exp.results.doc import README_BEGIN, README_END, Part, machines, readme_block, write_page
from masksub_exp.results.plan import PlanError, load, stamp, stamped_by
from masksub_exp.results.runs import expand
from masksub_exp.tools.report import Run

from .conftest import PYTHON, ROOT, run_command

TOY = """name: toy
part: cpu
seeds: [0, 1]
epochs: 1
train_limit: 512
parallel: 2
threads: 1
minutes_per_epoch: {off: 0.1, mask: 0.2}
comparisons:
  - sweep: fmnist_vit
    claim: the toy claim
analysis: paired t
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding a committed toy plan."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "toy.yaml").write_text(TOY)
    git(repo, "add", "toy.yaml")
    git(repo, "commit", "-qm", "plan")
    return repo


def results(*args: str | Path, env: dict) -> subprocess.CompletedProcess:
    return run_command([PYTHON, "-m", "masksub_exp.results", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("edit", "expected"), [
    ("missing", "does not exist"),
    ("unparsable", "is not valid YAML"),
    ("untracked", "is not committed"),
    ("dirty", "has uncommitted changes"),
    ("seeds twice", "seed(s) [1] given twice"),
    ("deadline", "cannot finish one pair"),
    ("unknown key", "unknown key(s) epoch"),
])
def test_a_bad_plan_is_one_line_exit_2_and_starts_nothing(repo: Path, cli_env: dict, edit: str, expected: str) -> None:
    path = repo / "toy.yaml"
    if edit == "missing":
        path = repo / "absent.yaml"
    elif edit == "unparsable":
        path.write_text("name: [unclosed\n")
    elif edit == "untracked":
        path = repo / "new.yaml"
        path.write_text(TOY)
    elif edit == "dirty":
        path.write_text(TOY.replace("epochs: 1", "epochs: 2"))
    else:
        text = {"seeds twice": TOY.replace("[0, 1]", "[0, 1, 1]"), "unknown key": TOY + "epoch: 3\n",
                "deadline": TOY + "deadline_min: 0.1\n"}[edit]
        path.write_text(text)
        git(repo, "commit", "-qam", edit)
    proc = results("--plan", path, "--runs", repo / "runs", "--record", repo / "record", env=cli_env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (repo / "runs").exists() and not (repo / "record").exists()


def test_a_plan_changed_after_its_runs_started_is_refused(repo: Path) -> None:
    registered = load(repo / "toy.yaml", [s.key for s in sweeps()])
    (repo / "toy.yaml").write_text(TOY.replace("the toy claim", "another claim"))
    git(repo, "commit", "-qam", "moved the goalposts")
    from masksub_exp.results.command import registered_plan

    root = repo / "runs" / "toy"
    root.mkdir(parents=True)
    (root / "budget.json").write_text(json.dumps({"plan": {"commit": registered.commit}}))
    with pytest.raises(PlanError, match="changed .* after runs under .* started"):
        registered_plan(repo / "toy.yaml", root)


def test_runs_made_before_the_plan_are_never_counted(repo: Path, tmp_path: Path) -> None:
    registered = load(repo / "toy.yaml", [s.key for s in sweeps()])
    early, fresh = tmp_path / "early", tmp_path / "fresh"
    early.mkdir()
    (early / "metrics.jsonl").write_text("{}\n")  # a run that started before the plan was committed
    assert stamp(early, registered) is False and not (early / ".plan").exists()
    assert stamp(fresh, registered) is True and stamp(fresh, registered) is True
    assert json.loads((fresh / ".plan").read_text())["plan_commit"] == registered.commit


@pytest.mark.slow
def test_a_plan_runs_pair_by_pair_stamps_its_runs_and_its_page_prints_the_plan_commit(
        repo: Path, cli_env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    registered = load(repo / "toy.yaml", [s.key for s in sweeps()])
    # a run folder from before the plan: left alone by the runner, listed on the page as not counted
    stale = repo / "runs" / "toy" / "fmnist_vit" / "masksub=off,seed=1"
    stale.mkdir(parents=True)
    (stale / "summary.json").write_text(json.dumps({"status": "complete", "model": "m", "recipe": "demo",
                                                    "masksub_mode": "off", "masksub_ratio": 0.0, "seed": 1,
                                                    "top1": 99.0}))
    proc = results("--plan", repo / "toy.yaml", "--runs", repo / "runs", "--record", repo / "record", "--out",
                   repo / "page", env=cli_env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    root = repo / "runs" / "toy"
    record = json.loads((root / "budget.json").read_text())
    assert record["plan"]["commit"] == registered.commit and record["plan"]["claims"] == {"fmnist_vit": "the toy claim"}
    attempts = [json.loads(line) for line in (root / "attempts.jsonl").read_text().splitlines()]
    order = [a["run"] for a in sorted(attempts, key=lambda a: a["start"])]
    assert order == ["fmnist_vit/masksub=mask,seed=0", "fmnist_vit/masksub=off,seed=0",
                     "fmnist_vit/masksub=mask,seed=1"]  # the pair's slower arm first; the stale run never ran
    assert not (stale / ".plan").exists()
    assert not (repo / "record" / "toy" / "fmnist_vit" / "masksub=off,seed=1").exists()
    assert not list((repo / "record").rglob("*.pt"))  # the committed record carries no checkpoints
    page = (repo / "page" / "results.md").read_text()
    assert f"plan commit {registered.commit[:8]}" in page and "the toy claim" in page
    assert "Not counted" in page and "masksub=off,seed=1" in page
    assert "ViT (" in page and "| 1 |" in page and "too few pairs (needs 2)" in page
    assert "seed 1 (baseline missing" in page  # the stale baseline is not paired with the stamped MaskSub run
    assert "CPU only (3 run(s))" in page  # the machine each counted run recorded, not the page writer's
    # a machine that kept only git (the record): the same command trains nothing that finished
    for name in ("masksub=mask,seed=0", "masksub=off,seed=0", "masksub=mask,seed=1"):
        shutil.rmtree(root / "fmnist_vit" / name)
    for name in ("budget.json", "attempts.jsonl", "plan.json"):
        (root / name).unlink()
    again = results("--plan", repo / "toy.yaml", "--runs", repo / "runs", "--record", repo / "record", "--out",
                    repo / "page", env=cli_env)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    # restored: the plan's three; kept: those and the stale complete run (left as it is, still not counted)
    assert "3 finished run(s) restored" in again.stdout and "4 run(s) already finished: kept" in again.stdout, \
        again.stdout
    assert len((root / "attempts.jsonl").read_text().splitlines()) == 3  # no run trained again
    assert len(json.loads((root / "budget.json").read_text())["parts"]) == 2  # both calls on record


def test_readme_evidence_block_is_generated_from_the_committed_page_data(tmp_path: Path) -> None:
    """README cannot claim more than the page: its block is regenerated from the committed run records."""
    cpu = ROOT / "docs" / "results_runs" / "cpu_vit_15ep"
    part = Part.load(cpu)
    page = write_page(cpu, tmp_path, part.budget, "test", gpu_root=ROOT / "docs" / "results_gpu")
    readme = (ROOT / "README.md").read_text()
    committed = readme[readme.index(README_BEGIN):readme.index(README_END) + len(README_END)]
    assert committed == readme_block(page), "rerun `python -m masksub_exp.results --plan ... --report-only`"


@pytest.mark.fast  # the inner loop: `make test-fast`
def test_the_page_names_the_machines_the_runs_recorded_and_says_when_runs_did_not() -> None:
    """A budget run in parts: each machine with its count of runs, never the page writer's machine in their place."""
    def run(machine: str | None) -> Run:
        return Run(Path("r"), {"model": "m", "recipe": "r", **({"machine": machine} if machine else {})}, {})

    runs = [run("2 CPU cores (AMD EPYC)"), run("2 CPU cores (Intel Xeon)"), run("2 CPU cores (AMD EPYC)"), run(None)]
    assert machines(runs, "writer") == ("2 CPU cores (AMD EPYC) (2 run(s)); 2 CPU cores (Intel Xeon) (1 run(s)); "
                                        "not recorded by 1 run(s) made before runs recorded it")
    assert machines([run(None)], "the writer (runs did not record theirs)") == "the writer (runs did not record theirs)"


def test_pairs_are_scheduled_as_pairs_slower_arm_first() -> None:
    runs = expand("fmnist_vit", "results/vit", {"masksub": "mask,off"}, [3, 4], [])
    assert [r.name for r in runs] == ["masksub=mask,seed=3", "masksub=off,seed=3", "masksub=mask,seed=4",
                                      "masksub=off,seed=4"]


def test_a_committed_record_brings_back_its_finished_runs_on_a_machine_that_kept_nothing(
        repo: Path, tmp_path: Path) -> None:
    """The budget runs in parts across machines: finished runs come back from git, unfinished ones train again."""
    from masksub_exp.results.doc import restore_record
    from masksub_exp.results.runs import is_complete

    registered = load(repo / "toy.yaml", [s.key for s in sweeps()])
    record = tmp_path / "record"
    runs = {"masksub=off,seed=0": "complete", "masksub=mask,seed=0": "running", "masksub=mask,seed=1": "complete"}
    for name, status in runs.items():
        folder = record / "fmnist_vit" / name
        assert stamp(folder, registered)
        (folder / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
        (folder / "summary.json").write_text(json.dumps({"status": status, "seed": int(name[-1])}))
    (record / "fmnist_vit" / "masksub=mask,seed=1" / ".plan").write_text('{"plan_commit": "0000"}')  # another plan
    (record / "budget.json").write_text(json.dumps({"plan": {"commit": registered.commit}, "parts": [{"n": 1}]}))
    (record / "attempts.jsonl").write_text('{"run": "a"}\n{"run": "b"}\n')
    root = tmp_path / "runs"
    (root / "fmnist_vit" / "masksub=mask,seed=0").mkdir(parents=True)
    (root / "attempts.jsonl").write_text('{"run": "b"}\n{"run": "c"}\n')

    assert restore_record(record, root, registered.commit) == ["fmnist_vit/masksub=off,seed=0"]
    assert is_complete(root / "fmnist_vit" / "masksub=off,seed=0")
    assert (root / "fmnist_vit" / "masksub=off,seed=0" / "metrics.jsonl").read_text() == '{"step": 2, "loss": 1.0}\n'
    assert stamped_by(root / "fmnist_vit" / "masksub=off,seed=0") == registered.commit
    assert not any((root / "fmnist_vit" / "masksub=mask,seed=0").iterdir())  # unfinished: trains again here
    assert not (root / "fmnist_vit" / "masksub=mask,seed=1").exists()  # another plan's run never counts
    assert json.loads((root / "budget.json").read_text())["parts"] == [{"n": 1}]  # the earlier parts stay on record
    assert (root / "attempts.jsonl").read_text().splitlines() == ['{"run": "a"}', '{"run": "b"}', '{"run": "c"}']
    assert restore_record(record, root, "f" * 40) == []  # a record of another commit of the plan: nothing


def test_the_record_keeps_the_calls_of_machines_that_kept_nothing(tmp_path: Path) -> None:
    """A part run on a machine that was wiped stays in the committed budget history when a later part exports."""
    from masksub_exp.results.doc import LOST, export_record

    record, root = tmp_path / "record", tmp_path / "runs"
    record.mkdir()
    root.mkdir()
    old = {"started": "2026-12-01 01:00:00 UTC", "command": "c", "sweeps": ["fmnist_vit"]}
    new = {"started": "2026-12-02 11:00:00 UTC", "command": "c", "sweeps": ["fmnist_vit"]}
    (record / "budget.json").write_text(json.dumps({"plan": {"commit": "abc"}, "parts": [old]}))
    (root / "budget.json").write_text(json.dumps({"plan": {"commit": "abc"}, "parts": [new], "started": "x"}))
    export_record(root, record)
    kept = json.loads((record / "budget.json").read_text())
    lost = {**old, "note": LOST}  # the page says its runs are gone, so nothing is left out silently
    assert kept["parts"] == [lost, new] and kept["started"] == old["started"]
    export_record(root, record)  # exporting again adds nothing twice
    assert json.loads((record / "budget.json").read_text())["parts"] == [lost, new]
    (root / "budget.json").write_text(json.dumps({"plan": {"commit": "def"}, "parts": [new]}))
    export_record(root, record)  # another commit of the plan: its history is not this plan's
    assert json.loads((record / "budget.json").read_text())["parts"] == [new]
