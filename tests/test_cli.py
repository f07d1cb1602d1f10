"""The command line as a new user meets it: inspecting configs, CPU jobs on SLURM, and sbatch's refusals."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import CONF, PYTHON, ROOT, RUN_MAIN_SOURCE, run_cli

PRESETS = sorted(str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml"))

# one interpreter, every preset and mode: the real entry point (`python -m masksub_exp.train`) run as __main__
# each time, its exit code and output collected (a subprocess per call would cost ~5 s of imports each)
LOOP = RUN_MAIN_SOURCE + """
import json, sys
for preset in json.loads(sys.argv[1]):
    for mode in (["--cfg", "job", "--resolve"], ["--cfg", "all", "--resolve"], ["--info"]):
        code, out, err = run_main(["masksub_exp/train.py", f"experiment={preset}", *mode])
        print(json.dumps({"preset": preset, "mode": mode[1] if len(mode) > 1 else "info", "code": code,
                          "out": out, "err": err[-2000:]}))
"""


@pytest.mark.slow
def test_cfg_job_resolve_cfg_all_and_info_work_for_every_preset(cli_env: dict) -> None:
    import yaml

    env = {**cli_env, "PYTHONWARNINGS": "ignore::RuntimeWarning"}  # runpy's note about re-running the module
    env.pop("MASKSUB_OUTPUT_ROOT", None)
    proc = subprocess.run([PYTHON, "-c", LOOP, json.dumps(PRESETS)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 3 * len(PRESETS) and len(PRESETS) >= 30
    failures = [f"{r['preset']} {r['mode']}: exit {r['code']}\n{r['err']}" for r in results
                if r["code"] != 0 or "Traceback" in r["err"] or "Error" in r["err"]]
    assert not failures, "\n".join(failures)
    for r in results:
        if r["mode"] == "info":
            assert "Defaults List" in r["out"] + r["err"] and f"name: {r['preset']}" in r["out"] + r["err"]
            continue
        cfg = yaml.safe_load(r["out"])
        # the folder a run of the same command uses (Hydra makes it absolute), not None or an interpolation
        kind = "sweeps" if r["preset"] == "demo" else "runs"  # the demo preset is a sweep of masksub=off,mask
        assert cfg["paths"]["output_dir"] == str(ROOT / "outputs" / r["preset"] / kind / "default"), r["preset"]
        assert cfg["name"] == r["preset"] and isinstance(cfg["train"]["epochs"], int)
        assert "${" not in r["out"]  # every value resolved
        if r["mode"] == "all":
            assert cfg["hydra"]["run"]["dir"] == f"outputs/{r['preset']}/runs/default"



def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without Hydra's own log lines of a multirun ([date][HYDRA] ...)."""
    return [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[")]


def test_gpu_launchers_with_no_gpus_say_to_use_slurm_cpu(cli_env: dict, tmp_path: Path) -> None:
    def attempt(preset: str) -> subprocess.CompletedProcess:
        return run_cli(["-m", f"hydra/launcher={preset}", "hydra.launcher.gpus_per_node=null", "experiment=smoke",
                        f"hydra.sweep.dir={tmp_path / preset}"], cli_env)

    presets = ["slurm", "slurm_1x8", "slurm_8x8"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for preset, proc in zip(presets, pool.map(attempt, presets), strict=True):
            lines = error_lines(proc)
            assert proc.returncode == 2 and len(lines) == 1, (preset, proc.stderr[-2000:])
            assert "gpus_per_node=null" in lines[0] and "hydra/launcher=slurm_cpu" in lines[0]
            assert not (tmp_path / preset / ".submitit").exists()


@pytest.mark.slow
def test_slurm_cpu_runs_on_the_local_cluster(slurm_env: dict, tmp_path: Path) -> None:
    # the preset as it is (4 CPUs, no GPU, one task), on the real one-node cluster (8 CPUs, no GPUs)
    name = f"c{uuid.uuid4().hex[:8]}"
    proc = run_cli(["-m", "hydra/launcher=slurm_cpu", f"hydra.launcher.name={name}", "experiment=smoke",
                    "train.max_steps=2", "train.progress=false", f"hydra.sweep.dir={tmp_path}"], slurm_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "train.max_steps=2" / "summary.json").read_text())
    assert summary["step"] == 2 and summary["world_size"] == 1
    assert " CPU cores (" in summary["machine"] and summary["machine"].endswith("CPU only")  # where it ran
    [script] = list((tmp_path / ".submitit").rglob("*_submission.sh"))
    text = script.read_text()
    assert "#SBATCH --cpus-per-task=4" in text and "#SBATCH --ntasks-per-node=1" in text
    assert "gpu" not in text.lower() and "gres" not in text.lower()
    assert "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK" in text


@pytest.mark.parametrize("args,reason,asked", [
    (["hydra/launcher=slurm"], "Invalid generic resource (gres) specification",
     "--gpus-per-node=1 (hydra.launcher.gpus_per_node; CPU only: hydra/launcher=slurm_cpu)"),
    (["hydra/launcher=slurm_cpu", "hydra.launcher.partition=nosuch"], "Invalid partition name",
     "partition=nosuch (hydra.launcher.partition)"),
])
def test_sbatch_refusals_name_what_was_asked_and_the_override(slurm_env: dict, tmp_path: Path, args: list[str],
                                                              reason: str, asked: str) -> None:
    proc = run_cli(["-m", *args, "hydra.launcher.timeout_min=7", "experiment=smoke", f"hydra.sweep.dir={tmp_path}"],
                   slurm_env)
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("launch refused: sbatch said:") and reason in lines[0] and asked in lines[0]
    assert "time=7 min (hydra.launcher.timeout_min)" in lines[0] and "Traceback" not in proc.stderr


def test_no_slurm_on_the_machine_is_one_line(cli_env: dict, tmp_path: Path) -> None:
    env = {**cli_env, "PATH": os.pathsep.join(p for p in cli_env["PATH"].split(os.pathsep)
                                              if not (Path(p) / "srun").exists())}
    proc = run_cli(["-m", "hydra/launcher=slurm_cpu", "experiment=smoke", f"hydra.sweep.dir={tmp_path}"], env)
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1 and "no SLURM here" in lines[0], proc.stderr[-2000:]
    assert "hydra/launcher=local" in lines[0]


# --- completion, unknown keys, `--cfg hydra --resolve`, every command's --help ----------------------------------

COMPLETE = """
eval "$(masksub-train -sc install=bash)"
for line in "masksub-train experiment=de" "masksub-train experiment=swin/" "masksub-train masksub=" \\
            "masksub-train masksub.r" "masksub-train hydra/launcher=slurm_c"; do
    COMP_LINE="$line"; COMP_POINT=${#line}; read -ra COMP_WORDS <<< "$line"; COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
    COMPREPLY=(); hydra_bash_completion
    echo "$line -> ${COMPREPLY[*]}"
done
"""


def test_bash_completion_of_the_console_script_lists_presets_options_and_keys(cli_env: dict, tmp_path: Path) -> None:
    """Hydra's own bash function (what TAB runs), sourced from `masksub-train -sc install=bash`, outside the repo."""
    env = {**cli_env, "PATH": f"{Path(PYTHON).parent}{os.pathsep}{cli_env['PATH']}"}
    proc = subprocess.run(["bash", "-c", COMPLETE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = dict(line.split(" -> ") for line in proc.stdout.splitlines())
    got = {line.split(" ", 1)[1]: set(words.split()) for line, words in got.items()}
    assert {"experiment=demo", "experiment=deit3/vit_b_400ep", "experiment=deit3_ft/vit_l"} <= got["experiment=de"]
    assert "experiment=smoke" not in got["experiment=de"]
    assert got["experiment=swin/"] == {"experiment=swin/b", "experiment=swin/s", "experiment=swin/t"}
    assert got["masksub="] == {"masksub=off", "masksub=mask", "masksub=droppath", "masksub=dropout"}
    assert got["masksub.r"] == {"masksub.ratio="}
    assert got["hydra/launcher=slurm_c"] == {"hydra/launcher=slurm_cpu"}


def test_completion_query_under_python_m(cli_env: dict) -> None:
    line = "masksub-train experiment=sm"
    proc = run_cli(["-sc", "query=bash"], {**cli_env, "COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert proc.returncode == 0 and proc.stdout.split() == ["experiment=smoke"], proc.stderr[-2000:]


@pytest.mark.parametrize("args", [["-sc", "install=tcsh"], ["-sc", "install=bash", "query=bash"]])
def test_a_bad_completion_request_is_one_line(cli_env: dict, args: list[str]) -> None:
    proc = run_cli(args, cli_env)
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("usage error:"), proc.stderr[-2000:]
    assert "bash fish zsh" in lines[0] if "tcsh" in args[1] else "install" in lines[0]


@pytest.mark.parametrize("override,expected", [
    ("+foo=1", "+foo=1: foo is not a key of the config (top-level keys are: model, data, recipe"),
    ("+train.max_step=3", "+train.max_step=3: train.max_step is not a key of the config; nearest known keys: "
                          "train.max_steps"),
    ("++trian.epochs=3", "nearest known keys: train.epochs"),
    ("+foo/bar=x", "foo/bar is not a key of the config"),
    ("+masksub=nope", "masksub=nope: no such option; masksub options: dropout, droppath, mask, off"),
])
def test_added_keys_the_schema_lacks_are_refused(cli_env: dict, tmp_path: Path, override: str, expected: str) -> None:
    for mode in (["--cfg", "job"], [f"hydra.run.dir={tmp_path}", "train.max_steps=1"]):  # inspected, or run
        proc = run_cli(["experiment=smoke", override, *mode], cli_env)
        lines = error_lines(proc)
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
        assert lines[0].startswith("config error: ") and not (tmp_path / "metrics.jsonl").exists()


def test_added_keys_the_schema_takes_still_work(cli_env: dict) -> None:
    import yaml

    proc = run_cli(["experiment=smoke", "+model.kwargs.qkv_bias=false", "--cfg", "job"], cli_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert yaml.safe_load(proc.stdout)["model"]["kwargs"]["qkv_bias"] is False


def test_cfg_hydra_resolve_shows_the_run_folders(cli_env: dict) -> None:
    import yaml

    env = {k: v for k, v in cli_env.items() if k != "MASKSUB_OUTPUT_ROOT"}
    proc = run_cli(["experiment=smoke", "seed=3", "--cfg", "hydra", "--resolve"], env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["hydra"]["run"]["dir"] == "outputs/smoke/runs/seed=3" and "${" not in proc.stdout
    proc = run_cli(["experiment=smoke", "name=${nope}", "--cfg", "hydra", "--resolve"], env)  # cannot resolve
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1 and "Interpolation key 'nope' not found" in lines[0], proc.stderr


@pytest.mark.parametrize("module,options", [
    ("masksub_exp.results", ["--plan", "--tiny", "--seeds", "--launcher {slurm,local}", "--only", "--report-only",
                             "--out"]),
    ("masksub_exp.tools.report", ["python -m masksub_exp.tools.report", "--wandb ENTITY/PROJECT", "--group",
                                  "--out", "--metric", "hydra/sweeper=optuna"]),
    ("masksub_exp.tools.prepare", ["python -m masksub_exp.tools.prepare", "src", "dst", "--short-side",
                                   "--quality", "--workers", "data.root=DST"]),
])
def test_every_command_help_lists_its_modes_and_options(cli_env: dict, module: str, options: list[str]) -> None:
    proc = subprocess.run([PYTHON, "-m", module, "--help"], cwd=ROOT, env=cli_env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    missing = [option for option in options if option not in proc.stdout]
    assert not missing, f"{module} --help lacks {missing}:\n{proc.stdout}"
