"""W&B (real offline runs), the local sinks, progress output, and the report command."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from PIL import Image

from masksub_exp import checkpoints
from masksub_exp.config import to_settings
from masksub_exp.distributed import DistributedTimeout
from masksub_exp.sinks.console import ConsoleSink
from masksub_exp.tools.report import report
from masksub_exp.train import train

from .conftest import PYTHON, ROOT, compose_cfg, run_command, smoke_overrides
from .wandb_records import alerts, exit_code, history, kinds, metric_definitions, run_info, tags
from .wandb_records import summary as summary_of


def wandb_files(run: Path) -> list[Path]:
    return sorted(run.glob("wandb/offline-run-*/run-*.wandb"))  # offline-run-<date>_<time>-<id>: oldest first


def metric_steps(run: Path) -> list[int]:
    """The steps of the metric rows (train/, eval/, test/) across all the run's offline files, oldest first:
    what W&B holds after `wandb sync` of every offline folder."""
    return [step for f in wandb_files(run) for step in metric_steps_of(f)]


def metric_steps_of(path: Path) -> list[int]:
    return [row["_step"] for row in history(path) if any(k.startswith(("train/", "eval/", "test/")) for k in row)]


def jsonl_steps(run: Path) -> list[int]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return sorted({line["step"] for line in lines})


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
    assert metric_steps(run) == jsonl_steps(run) == [2, 4]
    # dashboards: eval curves against the epoch, the best top-1 and summary.json's values in the summary, tags
    defs = metric_definitions(files[0])
    assert defs["eval/*"]["step_metric"] == "eval/epoch" and defs["test/*"]["step_metric"] == "test/epoch"
    assert defs["eval/top1"]["summary"] == {"max": True, "last": True}
    final = summary_of(files[0])
    assert final["best/top1"] == summary["top1"] and final["best/epoch"] == summary["epoch"]
    written = json.loads((run / "summary.json").read_text())
    assert final["final/top1"] == written["top1"] and final["final/status"] == written["status"]
    assert final["final/wall_time_s"] == written["wall_time_s"] and final["final/seed"] == 0
    assert tags(files[0]) == ["preset:smoke", "family:vit", "masksub:mask"]
    # the first step's mask preview, as an image at step 1
    [image] = [row for row in history(files[0]) if "masksub/preview/_type" in row]
    assert image["masksub/preview/_type"] == "image-file" and image["_step"] == 1
    assert alerts(files[0]) == []


def test_resume_reuses_the_wandb_run_and_new_runs_get_new_ids(offline: None, tmp_path: Path) -> None:
    overrides = smoke_overrides(logger="wandb")
    train(compose_cfg(overrides + ["train.max_steps=3"], tmp_path / "a"))
    train(compose_cfg(overrides + ["train.max_steps=6"], tmp_path / "a"))  # resumes
    train(compose_cfg(overrides + ["train.max_steps=3"], tmp_path / "b"))
    ids_a = {run_info(f)["id"] for f in wandb_files(tmp_path / "a")}
    ids_b = {run_info(f)["id"] for f in wandb_files(tmp_path / "b")}
    assert len(wandb_files(tmp_path / "a")) == 2 and len(ids_a) == 1  # two sessions, one W&B run
    assert ids_a.isdisjoint(ids_b)
    assert metric_steps(tmp_path / "a") == jsonl_steps(tmp_path / "a")  # each step once, in order


def wandb_service_children() -> list[int]:
    """Live W&B service (wandb-core) processes started by this process."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        if "wandb" in name and int(rest.split()[1]) == os.getpid() and rest.split()[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def test_wandb_run_file_is_complete_when_train_returns(offline: None, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # finish() alone returns before wandb-core has flushed the run file (it closes the run's stream after a
    # one-way message): the file was sometimes 7 bytes long here, and `wandb sync` would upload a partial
    # run. The sink waits for the service to exit, so the file is whole, read at once, with no waiting.
    run = tmp_path / "ok"
    train(compose_cfg(smoke_overrides(logger="wandb", train__max_steps=2), run))
    assert not wandb_service_children(), "W&B's service is still running: the run file may be incomplete"
    [file] = wandb_files(run)
    assert "run" in kinds(file) and kinds(file)[-1] == "exit" and exit_code(file) == 0
    # a run that fails still finishes its W&B run, with exit code 1 (README: "finish() is always called")
    from masksub_exp import losses
    from masksub_exp.meters import NonFiniteLoss

    real_main = losses.RecipeLoss.main
    monkeypatch.setattr(losses.RecipeLoss, "main", lambda self, *a: real_main(self, *a) * float("nan"))
    with pytest.raises(NonFiniteLoss):
        train(compose_cfg(smoke_overrides(logger="wandb", train__max_steps=2, train__log_every=1), tmp_path / "nan"))
    [failed] = wandb_files(tmp_path / "nan")
    assert exit_code(failed) == 1 and not wandb_service_children()
    [(title, text, level)] = alerts(failed)
    assert title == "NaN stop" and level == "ERROR" and "NonFiniteLoss" in text and "non-finite" in text


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
    proc = run_command(
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


@pytest.mark.fast  # the inner loop: `make test-fast`
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


@pytest.mark.fast  # the inner loop: `make test-fast`
def test_report_from_the_wandb_api(tmp_path: Path) -> None:
    from masksub_exp.tools.report import runs_from_wandb

    api = StubApi([StubRemoteRun("a", "off", 0, 80.0), StubRemoteRun("b", "off", 1, 81.0),
                   StubRemoteRun("c", "mask", 0, 82.0), StubRemoteRun("d", "mask", 1, 82.5)])
    runs = runs_from_wandb("me/proj", group="sweep-1", api=api)
    assert api.asked == [("me/proj", {"group": "sweep-1"})]
    text = report([], tmp_path / "out", extra_runs=runs)
    assert "| vit_s | deit3 | imagenet | mask r=0.5 | 80.50 +- 0.71 (n=2) | 82.25 +- 0.35 (n=2) | +1.75 |" in text
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


@pytest.mark.slow
def test_a_requeued_slurm_job_continues_its_wandb_run_and_logs_its_slurm_ids(slurm_env: dict, tmp_path: Path) -> None:
    from .test_slurm import train_steps, wait_until

    env = {**slurm_env, "NETRC": "/nonexistent", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    cmd = [PYTHON, "-m", "masksub_exp.train", "-m", "hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1",
           "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=3", "hydra.launcher.wait=false",
           f"hydra.launcher.name=w{uuid.uuid4().hex[:8]}", "experiment=smoke", "model=vit_fmnist", "data.img_size=28",
           "data.synthetic_train_size=2048", "train.batch_size=32", "train.epochs=1", "train.log_every=1",
           "logger=wandb", f"hydra.sweep.dir={tmp_path}"]
    proc = run_command(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [job] = [line.split()[1].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("submitted")]
    try:
        run = wait_until(lambda: next((p for p in tmp_path.iterdir() if p.is_dir() and p.name[0] != "."), None),
                         60, "the run folder")
        wait_until(lambda: len(train_steps(run)) >= 5, 180, "five training steps")
        subprocess.run(["scancel", "--signal=USR2", job], env=env, check=True)  # preempted: save, requeue
        summary = wait_until(lambda: (run / "summary.json").exists() and json.loads((run / "summary.json")
                             .read_text()), 300, "the requeued job's summary")
        # summary.json lands before the sinks close: W&B's finish() (the exit record) comes after it, so the job
        # must leave the queue on its own before the cleanup below may cancel it
        wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True,
                                              text=True).stdout.strip(), 120, "the requeued job to end")
    finally:
        subprocess.run(["scancel", job], env=env)
    assert summary["restarts"] == 1 and summary["status"] == "complete"
    files = wandb_files(run)
    infos = [run_info(f) for f in files]
    assert len(files) == 2 and {i["id"] for i in infos} == {(run / "run_id").read_text().strip()}  # one W&B run
    metas = sorted((i["config"]["meta"] for i in infos), key=lambda m: m["slurm_restart_count"])
    assert [m["slurm_restart_count"] for m in metas] == [0, 1]  # the second session is the requeued job
    for meta in metas:  # the job's own SLURM ids (an array task's are <array job>_<task>)
        assert job in (meta["slurm_job_id"], f"{meta['slurm_array_job_id']}_{meta['slurm_array_task_id']}")
        assert meta["world_size"] == 1
    assert all(exit_code(f) == 0 for f in files)


def sink_session(run: Path, records: list[dict], *, fail: BaseException | None = None) -> None:
    """One attempt of a run as the W&B sink sees it: built (replaying), fed `records`, closed as train.py does."""
    from masksub_exp.sinks.wandb import WandbSink

    settings = to_settings(compose_cfg(smoke_overrides(logger="wandb"), run))
    sink = WandbSink(settings, run, "sinktest01", group=None, name="t", world_size=1)
    try:
        for record in records:
            sink.log(record)
        if fail is not None:
            raise fail
    finally:  # like train.py: the failure is the exception being handled while the sink closes
        sink.close(0 if fail is None else 1)


def train_line(step: int) -> dict:
    return {"kind": "train", "step": step, "epoch": step // 8, "loss_main": 1.0 / step, "lr": 1e-3, "img_per_s": 1.0}


def test_wandb_gets_every_metrics_step_once_whatever_it_held_before(offline: None, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    # attempt 1 logged steps 2-8 to W&B; its checkpoint was at step 4, so the resume keeps metrics.jsonl to 4
    sink_session(run, [train_line(s) for s in (2, 4, 6, 8)])
    (run / "metrics.jsonl").write_text("".join(json.dumps(train_line(s)) + "\n" for s in (2, 4)))
    sink_session(run, [train_line(s) for s in (6, 8, 10, 12)])  # 6 and 8 again: W&B keeps its own
    assert metric_steps(run) == [2, 4, 6, 8, 10, 12]
    # an attempt logged to metrics.jsonl only (W&B was off, or its file was lost): the next attempt replays
    evals = [{"kind": "eval", "step": 16, "epoch": 2, "top1": 40.0, "top5": 90.0},
             {"kind": "eval", "step": 24, "epoch": 3, "top1": 35.0, "top5": 91.0}]
    lines = [train_line(s) for s in (2, 4, 6, 8, 10, 12, 14, 16)] + [evals[0]] + [train_line(s) for s in (18, 20)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"kind": "tr')  # torn
    sink_session(run, [train_line(22), train_line(24), evals[1]])
    assert metric_steps(run) == list(range(2, 25, 2))
    last = wandb_files(run)[-1]
    assert [row["_step"] for row in history(last)] == list(range(14, 25, 2))  # the replay, then the live steps
    [row16] = [row for row in history(last) if row["_step"] == 16]  # train and eval of one step: one row
    assert row16["train/loss_main"] == 1 / 16 and row16["eval/top1"] == 40.0 and row16["eval/epoch"] == 2
    final = summary_of(last)
    assert (final["best/top1"], final["best/epoch"]) == (40.0, 2)  # the replayed eval was the best


def test_an_eval_that_wandb_missed_at_a_step_it_holds_still_reaches_it_once(offline: None, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    # attempt 1 was stopped (preempted) during the epoch's last steps: it saved at the epoch's end, step 8, before
    # the epoch's eval, and finished its W&B run with the train rows to 8; the resumed attempt starts at step 8,
    # finds no batch left in the epoch and evaluates, at step 8, which W&B already holds
    lines = [train_line(s) for s in (2, 4, 6, 8)]
    sink_session(run, lines)
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    ev8 = {"kind": "eval", "step": 8, "epoch": 1, "top1": 50.0, "top5": 90.0}
    sink_session(run, [ev8, train_line(10)])
    rows = [row for f in wandb_files(run) for row in history(f)]
    evals = [row for row in rows if "eval/top1" in row]
    # the eval, once, at the first step W&B had not passed; its epoch and optimizer step say what it is
    assert [(r["_step"], r["eval/epoch"], r["eval/step"], r["eval/top1"]) for r in evals] == [(9, 1, 8, 50.0)]
    assert [row["_step"] for row in rows] == [2, 4, 6, 8, 9, 10]
    assert summary_of(wandb_files(run)[-1])["best/top1"] == 50.0
    # a third attempt that replays it all (metrics.jsonl now holds the eval): W&B already holds it, at step 9
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                               [*(train_line(s) for s in (2, 4, 6, 8)), ev8, train_line(10)]))
    sink_session(run, [train_line(12)])
    rows = [row for f in wandb_files(run) for row in history(f)]
    assert len([row for row in rows if "eval/top1" in row]) == 1 and rows[-1]["_step"] == 12


@pytest.mark.parametrize("failure,title", [
    (DistributedTimeout("rank 0: a collective of the training loop did not complete: another rank died"),
     "lost rank"),
    (OSError("disk on fire"), "run failed"),
])
def test_a_failed_run_raises_an_alert_naming_why(offline: None, tmp_path: Path, failure: BaseException,
                                                  title: str) -> None:
    # train.py turns a peer lost mid-collective into DistributedTimeout before its `finally` closes the sinks
    with pytest.raises(type(failure)):
        sink_session(tmp_path, [train_line(2)], fail=failure)
    [file] = wandb_files(tmp_path)
    assert alerts(file) == [(title, f"{type(failure).__name__}: {failure}", "ERROR")] and exit_code(file) == 1
