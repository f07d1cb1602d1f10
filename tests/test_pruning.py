"""Optuna pruning and asynchronous trials (hydra/sweeper=optuna): bad input, a pruned trial on the real local
SLURM cluster that is never rerun, and k-at-a-time scheduling with real processes (submitit's local launcher)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from .conftest import FMNIST, PYTHON, ROOT, run_command, tmpfs
from .test_search import states

SMOKE = ["experiment=smoke", "hydra/sweeper=optuna", "train.progress=false", "masksub.ratio=0.5"]


def run_search(args: list[str], env: dict, sweep: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    cmd = [PYTHON, "-m", "masksub_exp.train", "-m", *SMOKE, *args, f"hydra.sweep.dir={sweep}"]
    return run_command(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def enqueue(sweep: Path, name: str, *params: dict) -> None:
    """Trials the study hands out first, in this order: the test decides which trial is good and which is bad."""
    sweep.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{sweep / 'optuna.db'}", direction="maximize")
    for p in params:
        study.enqueue_trial(p)


def search_record(sweep: Path) -> dict:
    return json.loads(next((sweep / "searches").glob("*.json")).read_text())


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A real read-only file system (root only): the study file cannot be created there, whoever asks."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        yield mount


@pytest.mark.parametrize("case", ["unknown_pruner", "no_slots", "pruner_without_holdout", "unwritable_study"])
def test_bad_search_input_is_one_line_and_exit_2(case: str, tmp_path: Path, cli_env: dict,
                                                 request: pytest.FixtureRequest) -> None:
    sweep = tmp_path / "sweep"
    args, expected = {
        "unknown_pruner": (["data.holdout=48", "hydra.sweeper.pruner=medain"], "hydra.sweeper.pruner=medain"),
        "no_slots": (["data.holdout=48", "hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0"),
        "pruner_without_holdout": (["hydra.sweeper.pruner=median"], "data.holdout"),
        "unwritable_study": (["data.holdout=48", "hydra.sweeper.pruner=median"], "cannot write the study file"),
    }[case]
    if case == "unwritable_study":
        ro = request.getfixturevalue("read_only_dir")
        args = [*args, f"hydra.sweeper.storage=sqlite:///{ro}/optuna.db"]
    proc = run_search(args, cli_env, sweep, timeout=300)
    refused = [line for line in proc.stderr.splitlines() if line.startswith("search refused:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(refused) == 1 and expected in refused[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not states(sweep / "optuna.db")  # no trial asked
    assert not list(sweep.glob("*/config.yaml")) and not (sweep / ".submitit").exists()  # nothing launched


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist")
def test_a_pruned_trial_stops_keeps_its_checkpoint_and_is_never_rerun(slurm_env: dict, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # trial 0 learns (lr 3e-3, no warmup), trial 1 cannot (lr 1e-8): after epoch 1 its held-out top-1 is below
    # trial 0's, and the median pruner (one finished trial is enough here) stops it there
    enqueue(sweep, "prune", {"recipe.optimizer.lr": 3e-3}, {"recipe.optimizer.lr": 1e-8})
    args = ["data=fashion_mnist", "data.train_limit=1280", "data.holdout=256", "train.epochs=2",
            "recipe.schedule.warmup_epochs=0",
            "recipe.optimizer.lr=tag(log,interval(1e-9,1e-2))", "hydra.sweeper.study_name=prune",
            "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_options.n_startup_trials=1",
            "hydra.sweeper.n_jobs=1", "hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1",
            'hydra.launcher.setup=["export OMP_NUM_THREADS=1"]', "hydra.launcher.timeout_min=20"]
    first = run_search([*args, "hydra.sweeper.n_trials=2"], slurm_env, sweep)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert states(sweep / "optuna.db") == [(0, "COMPLETE"), (1, "PRUNED")], (first.stdout + first.stderr)[-3000:]

    trials = search_record(sweep)["trials"]
    good, bad = (Path(t["run_dir"]) for t in trials)
    assert trials[1]["epochs_reported"] == 1  # reported after epoch 1, pruned there
    summary = json.loads((bad / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["epoch"] == 1 and summary["eval_split"] == "holdout"
    assert "test_top1" not in summary  # a pruned trial spends nothing on the test set
    checkpoint = bad / "checkpoints" / "last.pt"
    assert checkpoint.exists()
    assert json.loads((good / "summary.json").read_text())["status"] == "complete"
    assert summary["top1"] < json.loads((good / "summary.json").read_text())["top1"]
    kept = {p: p.stat().st_mtime_ns for p in (checkpoint, bad / "summary.json", bad / "metrics.jsonl")}

    # the same search, one trial larger: only the new trial runs; the pruned one is finished for good
    second = run_search([*args, "hydra.sweeper.n_trials=3"], slurm_env, sweep)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert "Resuming trial" not in second.stdout + second.stderr
    got = states(sweep / "optuna.db")
    assert got[:2] == [(0, "COMPLETE"), (1, "PRUNED")] and len(got) == 3 and got[2][1] in ("COMPLETE", "PRUNED")
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


def overlaps(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end before a start at the same instant)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda e: (e[0], e[1]))
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


@pytest.mark.slow
def test_slots_take_the_next_trial_as_soon_as_theirs_ends(tmp_path: Path, cli_env: dict) -> None:
    sweep = tmp_path / "sweep"
    # trial 0 is long, trials 1 and 2 short: with 2 slots, trial 2 must start when trial 1 ends, while trial 0
    # still runs (a batch launcher would wait for trial 0); never 3 at once. Real processes (submitit local).
    enqueue(sweep, "slots", {"train.epochs": 10}, {"train.epochs": 1}, {"train.epochs": 2})
    args = ["data.holdout=48", "train.epochs=int(interval(1,20))", "hydra.sweeper.study_name=slots",
            "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "hydra/launcher=local"]
    env = {**cli_env, "OMP_NUM_THREADS": "1"}
    proc = run_search(args, env, sweep)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert states(sweep / "optuna.db") == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    record = search_record(sweep)
    launch = {t["number"]: (t["launched_at"], t["returned_at"]) for t in record["launches"]}
    assert sorted(launch) == [0, 1, 2]
    # started = the job's process spawned (submitit local: at launch); trial 2 took trial 1's slot while trial 0 ran
    assert launch[1][1] <= launch[2][0] < launch[0][1]
    assert overlaps(list(launch.values())) == 2
    # the trainings themselves (the trial opened the study .. summary.json written) never overlap more than 2;
    # not when each began: a loaded machine may take longer to import torch than trial 0 takes to finish
    study = optuna.load_study(study_name="slots", storage=f"sqlite:///{sweep / 'optuna.db'}")
    lives = [(t.user_attrs["process_started_at"], os.path.getmtime(Path(t.user_attrs["run_dir"]) / "summary.json"))
             for t in study.trials]
    assert len(lives) == 3 and overlaps(lives) <= 2


def _rank_reports(rank: int, world: int, init_file: str, storage: str, out: str) -> None:
    import torch.distributed as dist

    from masksub_exp.pruning import TrialReporter

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        reporter = TrialReporter(storage, "ranks", 1, is_main=rank == 0, run_dir=out)
        # only rank 0 sees a lagging top-1; the others see a leading one and must still stop with it
        top1 = 10.0 if rank == 0 else 95.0
        Path(out, f"rank{rank}").write_text(str(reporter(1, {"top1": top1, "eval_split": "holdout"})))
    finally:
        dist.destroy_process_group()


def test_rank_0_decides_and_every_rank_stops_with_it(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="ranks", storage=storage, direction="maximize")
    study.set_user_attr("pruner", {"name": "median", "options": {"n_startup_trials": 1}})
    done = study.ask()
    done.report(90.0, step=1)
    study.tell(done, 91.0)
    study.ask()  # trial 1: the one the two ranks run
    mp.spawn(_rank_reports, args=(2, str(tmp_path / "init"), storage, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["stop", "stop"]
    trial = optuna.load_study(study_name="ranks", storage=storage).trials[1]
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values == {1: 10.0}
    assert trial.user_attrs["run_dir"] == str(tmp_path)  # written by rank 0 alone
