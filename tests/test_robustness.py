"""Nothing lost, nothing silent: bad configs, bad data, NaNs, kills, signals and full disks."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from masksub_exp import checkpoints
from masksub_exp.config import ConfigError
from masksub_exp.data.imagefolder import BadImageError
from masksub_exp.meters import NonFiniteLoss
from masksub_exp.step import Precision, apply_gradients
from masksub_exp.train import train

from .conftest import PYTHON, ROOT, compose_cfg, run_cli, smoke_overrides, start_command

SMOKE = ["experiment=smoke", "train.progress=false"]
SLURM_BAD_SHAPE = ["-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=2", "hydra.launcher.tasks_per_node=1"]

# (overrides, what the one-line message must name)
BAD_INPUTS = [
    (["model=no_such_model"], "no_such_model"),
    (["data=no_such_data"], "no_such_data"),
    (["masksub=sometimes"], "sometimes"),
    (["experiment=no_such_preset"], "no_such_preset"),
    (["masksub.ratoi=0.5"], "ratoi"),
    (["train.batchsize=3"], "batchsize"),
    (["recipe.optimizer.lrr=1"], "lrr"),
    (["masksub.ratio=half"], "masksub.ratio"),
    (["train.epochs=two"], "train.epochs"),
    (["seed=abc"], "seed"),
    (["masksub.ratio=1.0"], "masksub.ratio"),
    (["masksub.ratio=-0.1"], "masksub.ratio"),
    (["masksub.mode=blur"], "masksub.mode"),
    (["recipe.optimizer.lr=-1"], "recipe.optimizer.lr"),
    (["recipe.optimizer.lr=0"], "recipe.optimizer.lr"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.accum_steps=3"], "train.accum_steps"),
    (["train.accum_steps=0"], "train.accum_steps"),
    (["train.max_steps=0"], "train.max_steps"),
    (["train.precision=fp8"], "train.precision"),
    (["train.precision=fp16", "train.device=cpu"], "fp16"),
    (["train.device=tpu"], "train.device"),
    (["train.resume=maybe"], "train.resume"),
    (["recipe.loss.name=focal"], "recipe.loss.name"),
    (["recipe.schedule.name=step"], "recipe.schedule.name"),
    (["recipe.aug.mixup=-1"], "recipe.aug.mixup"),
    (["recipe.aug.label_smoothing=1.0"], "recipe.aug.label_smoothing"),
    (["recipe.ema_decay=1.0"], "recipe.ema_decay"),
    (["recipe.aug.mixup=0.8", "train.batch_size=31"], "even batch"),
    (["model.drop_path_rate=1.0"], "model.drop_path_rate"),
    (["model.name=vit_nonexistent_patch3"], "vit_nonexistent_patch3"),
    (["data.num_classes=1"], "data.num_classes"),
    (["data=fashion_mnist", "data.root=/nonexistent/fmnist"], "/nonexistent/fmnist"),
    (["data=imagefolder"], "data.root"),
    (["data.synthetic_train_size=8"], "train.batch_size"),
    (["logger=wandb", "logger.mode=sometimes"], "logger.mode"),
    (["model=resnet_micro", "masksub=dropout"], "not supported"),
    (["model=bert_micro", "data=synthetic_text", "masksub=droppath"], "not supported"),
    (["model=swin_micro", "data.img_size=64", "masksub.unit_px=30"], "masksub.unit_px"),
    ([*SLURM_BAD_SHAPE], "tasks_per_node"),
    (["-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null"], "hydra/launcher=slurm_cpu"),
    (["masksub.ratio=0.5=3"], "cannot parse"),
    (["model.checkpoint=/nonexistent/weights.pt"], "model.checkpoint"),
]



@pytest.mark.slow  # 43 command-line starts (~150 s of imports, 2 at a time)
def test_bad_inputs_fail_fast_with_one_clear_message(tmp_path: Path, cli_env: dict) -> None:
    assert len(BAD_INPUTS) >= 40

    def attempt(i: int) -> tuple[int, subprocess.CompletedProcess]:
        overrides, _ = BAD_INPUTS[i]
        run_dir = tmp_path / f"case{i}"
        where = [f"hydra.sweep.dir={run_dir}"] if "-m" in overrides else [f"hydra.run.dir={run_dir}"]
        flags = [a for a in overrides if a.startswith("-")]  # before the overrides, or argparse refuses the line
        return i, run_cli([*flags, *SMOKE, *[a for a in overrides if a not in flags], *where], cli_env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(attempt, range(len(BAD_INPUTS))))
    failures = []
    for i, (overrides, key) in enumerate(BAD_INPUTS):
        proc = results[i]
        err = proc.stderr
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]  # [..][HYDRA] logs
        ok = (proc.returncode == 2 and len(lines) == 1 and key in lines[0]  # README: one line, exit code 2
              and not lines[0].startswith("usage:")
              and not list((tmp_path / f"case{i}").rglob("metrics.jsonl"))  # nothing was trained
              and not list((tmp_path / f"case{i}").rglob(".submitit")))  # nothing was submitted
        if not ok:
            failures.append(f"{overrides}: rc={proc.returncode}\n{err[-800:]}")
    assert not failures, "\n\n".join(failures)


def test_hydra_full_error_still_gives_the_full_trace(cli_env: dict, tmp_path: Path) -> None:
    proc = run_cli([*SMOKE, "masksub.ratoi=0.5", f"hydra.run.dir={tmp_path}"], {**cli_env, "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigCompositionException" in proc.stderr
    assert "masksub.ratoi" in proc.stderr and len(proc.stderr.splitlines()) > 10


def test_a_run_folder_in_use_is_refused_in_one_line(cli_env: dict, tmp_path: Path) -> None:
    import os

    from masksub_exp.run_folder import RunLock

    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock(run)  # this test process holds the folder, as a live job of the same command would
    try:
        proc = run_cli([*SMOKE, "train.max_steps=1", f"hydra.run.dir={run}"], cli_env)
    finally:
        lock.release()
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"run folder {run} is in use by pid {os.getpid()}" in lines[0]
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()  # nothing written


# ---- data ------------------------------------------------------------------------------------------

def make_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 20) -> None:
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                colour = (40 * c + 10 * i, 80, 200 - 40 * c)
                Image.new("RGB", (size, size), colour).save(folder / f"{i}.png")


IMAGEFOLDER = ["data=imagefolder", "data.num_classes=3", "data.img_size=16", "data.num_workers=0",
               "train.batch_size=6", "train.max_steps=3", "recipe.aug.hflip=0.5"]


def test_corrupt_image_error_names_the_file_and_skip_counts_it(tmp_path: Path) -> None:
    root = tmp_path / "images"
    make_image_folder(root)
    bad = root / "train" / "class1" / "2.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    with pytest.raises(BadImageError, match=str(bad)):
        train(compose_cfg([*SMOKE, *IMAGEFOLDER, f"data.root={root}"], tmp_path / "error"))
    summary = train(compose_cfg([*SMOKE, *IMAGEFOLDER, f"data.root={root}", "data.on_bad_image=skip"],
                                tmp_path / "skip"))
    logged = (tmp_path / "skip" / "bad_images.txt").read_text().splitlines()
    assert summary["bad_images"] == len(logged) >= 1 and all(line.startswith(str(bad)) for line in logged)
    assert summary["step"] == 3


def test_empty_class_folder_and_labels_beyond_the_head(tmp_path: Path) -> None:
    root = tmp_path / "images"
    make_image_folder(root)
    (root / "train" / "class9").mkdir()
    with pytest.raises(FileNotFoundError, match="class9"):
        train(compose_cfg([*SMOKE, *IMAGEFOLDER, f"data.root={root}"], tmp_path / "a"))
    (root / "train" / "class9").rmdir()
    with pytest.raises(ConfigError, match="data.num_classes=2 but .* 3 class folders"):
        train(compose_cfg([*SMOKE, *IMAGEFOLDER, f"data.root={root}", "data.num_classes=2"], tmp_path / "b"))


# ---- numerics ---------------------------------------------------------------------------------------

def test_nan_loss_stops_naming_step_and_branch_and_keeps_the_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from masksub_exp import losses

    calls = {"n": 0}
    real_sub = losses.RecipeLoss.sub

    def poisoned_sub(self, sub_logits, main_logits):  # noqa: ANN001, ANN202
        calls["n"] += 1
        loss = real_sub(self, sub_logits, main_logits)
        return loss * float("nan") if calls["n"] == 5 else loss  # the sub-branch of step 5 goes NaN

    monkeypatch.setattr(losses.RecipeLoss, "sub", poisoned_sub)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=r"non-finite sub-branch loss at step 5.*last good checkpoint \(step 4\)"):
        train(compose_cfg(smoke_overrides(train__ckpt_every=2, train__log_every=100), run))
    payload = checkpoints.load(run / "checkpoints" / "last.pt")
    assert payload["state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())


def test_fp16_scaler_skips_are_reported_not_fatal() -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = Precision(scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))
    before = model.weight.detach().clone()
    precision.scaler.scale(model(torch.ones(1, 4)).sum() * float("inf")).backward()
    skipped = apply_gradients(optimizer, list(model.parameters()), precision=precision)
    assert bool(skipped) and torch.equal(model.weight, before)  # skipped, weights untouched
    optimizer.zero_grad()
    precision.scaler.scale(model(torch.ones(1, 4)).sum()).backward()
    assert not bool(apply_gradients(optimizer, list(model.parameters()), precision=precision))
    assert not torch.equal(model.weight, before)


# ---- kills and signals -------------------------------------------------------------------------------

KILL_RUN = [*SMOKE, "model=vit_fmnist", "data.img_size=28", "data.synthetic_train_size=2048", "train.batch_size=32",
            "train.epochs=5", "train.ckpt_every=1", "train.log_every=1"]


def steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    return path.read_text().count('"kind": "train"') if path.exists() else 0


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_or_corrupts_anything(tmp_path: Path, cli_env: dict) -> None:
    rng = random.Random(1234)
    run = tmp_path / "killed"
    args = [*KILL_RUN, f"hydra.run.dir={run}"]
    last_step, kills_during_write = 0, 0
    for _ in range(20):
        proc = start_command([PYTHON, "-m", "masksub_exp.train", *args], cwd=ROOT, env=cli_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = steps_logged(run)
        deadline = time.monotonic() + 120
        while steps_logged(run) <= start and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the first new step, not waiting out a race
        time.sleep(rng.uniform(0.0, 0.4))
        kills_during_write += any((run / "checkpoints").glob(".*.tmp.*"))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = run / "checkpoints" / "last.pt"
        if not ckpt.exists():  # killed between the first logged step and the first checkpoint
            assert last_step == 0
            continue
        payload = checkpoints.load(ckpt)  # always a complete checkpoint, never a torn one
        assert payload["state"]["step"] >= last_step
        last_step = payload["state"]["step"]
    # go on to 10 steps past the last kill, and an uninterrupted reference to the same step, without a
    # checkpoint every step (the cadence is not part of the trajectory, so the resume is allowed and the
    # weights must still match; the step cap is not either, and spares the rest of the 320 steps)
    cap = f"train.max_steps={last_step + 10}"
    assert run_cli([*args, "train.ckpt_every=0", cap], cli_env, timeout=600).returncode == 0
    reference = tmp_path / "reference"
    assert run_cli([*KILL_RUN, "train.ckpt_every=0", cap, f"hydra.run.dir={reference}"], cli_env,
                   timeout=600).returncode == 0
    a = checkpoints.load(run / "checkpoints" / "last.pt")
    b = checkpoints.load(reference / "checkpoints" / "last.pt")
    assert a["state"] == b["state"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert 0 < last_step < b["state"]["step"]
    print(f"kills that caught a checkpoint write in progress: {kills_during_write}/20")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_save_and_exit_cleanly(tmp_path: Path, cli_env: dict, sig: signal.Signals,
                                                  code: int) -> None:
    run = tmp_path / "run"
    args = [*KILL_RUN, "train.ckpt_every=0", f"hydra.run.dir={run}"]
    proc = start_command([PYTHON, "-m", "masksub_exp.train", *args], cwd=ROOT, env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while steps_logged(run) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert f"stopped by {sig.name}" in err and "Traceback" not in err
    saved = checkpoints.load(run / "checkpoints" / "last.pt")["state"]["step"]
    assert saved >= 3 and not (run / "summary.json").exists()
    # the same command resumes at the saved step (capped 2 steps later: the rest of the 320 steps would show
    # nothing more, and took over 300 s on a loaded 2-core machine)
    rerun = run_cli([*args, f"train.max_steps={saved + 2}"], cli_env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == saved and summary["step"] == saved + 2


# ---- disks ------------------------------------------------------------------------------------------

def test_full_disk_is_a_clear_error(tiny_fs: Path, cli_env: dict) -> None:
    proc = run_cli([*KILL_RUN, "train.max_steps=2", f"hydra.run.dir={tiny_fs / 'run'}"], cli_env)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
    assert "cannot write checkpoint" in proc.stderr and "full disk" in proc.stderr
    assert not list(tiny_fs.rglob(".*.tmp.*"))  # the partial file was cleaned up


def test_read_only_output_folder_is_a_clear_error(tiny_fs: Path, cli_env: dict) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    # from the command line, the folder is checked before Hydra starts the job
    proc = run_cli([*SMOKE, f"hydra.run.dir={tiny_fs / 'run'}"], cli_env)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
    assert "cannot write to the run folder" in proc.stderr and "Read-only file system" in proc.stderr
    # train() itself (tests, notebooks, an existing folder gone read-only) checks before building anything
    from masksub_exp.checkpoints import StorageError

    with pytest.raises(StorageError, match="cannot write to the run folder .*Read-only file system"):
        train(compose_cfg(SMOKE, tiny_fs / "run"))
