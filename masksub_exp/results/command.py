"""Regenerate docs/results.md: run the evidence sweeps, then write the page from their run folders.

    python -m masksub_exp.results --plan docs/plans/cpu_vit_15ep.yaml   # a registered plan (make results)
    python -m masksub_exp.results --plan ... --report-only  # rewrite the page and README's block from its record
    eval "$(launchers/slurm-local up)"          # or any SLURM cluster (SLURM_CONF set), then an unplanned budget:
    python -m masksub_exp.results --tiny        # 1 seed, a few steps: checks the pipeline end to end
    python -m masksub_exp.results --launcher local --seeds 3 --epochs 4   # exploration, never evidence
    benchmarks/gpu_results.sh                   # the GPU matrix (its runs are committed under docs/results_gpu/)

A plan (docs/plans/*.yaml) must be committed and clean; its runs are stamped with its commit and only those
count (masksub_exp/results/plan.py). Verdicts pair runs by seed (masksub_exp/results/stats.py).

With `--launcher slurm` every sweep goes through the project's own launcher (`hydra/launcher=slurm`) as a
multirun; the sweeps are submitted together and SLURM runs `--parallel` jobs at a time (each asks for its
share of the node's CPUs), each with `--threads` CPU threads. With `--launcher local` each run is its own
process, `--parallel` at a time, in the plan's order. Re-running the same command resumes: finished runs
are kept (their folders are named by their overrides), so only missing or interrupted runs train.
The page gets a GPU part when `--gpu-runs` (default docs/results_gpu) holds runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import host
from . import plan as plan_module
from .doc import export_record, readme_block, readme_with_block, restore_record, write_page
from .page import MAIN_KEYS, Budget
from .plan import Plan, PlanError
from .runs import PlannedRun, expand, interleave, run_locally

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sweep:
    """One multirun: an experiment preset and the sweeper params it varies (seeds are added)."""

    key: str  # folder under the budget's folder, and how the page finds it
    experiment: str
    params: dict[str, str] = field(default_factory=dict)
    regime: str = "main"  # which budget: main (Fashion-MNIST), small (little data, long schedule) or text


def plan() -> list[Sweep]:
    """The page's sweeps, in the order they run. The ratio and variant sections reuse the ViT's runs. The slower
    arm (MaskSub) is written first: a pair's two runs start together, the longer one first."""
    return [
        Sweep("fmnist_vit", "results/vit", {"masksub": "mask,off"}),
        Sweep("fmnist_vit_tokens", "results/vit_tokens", {"masksub": "mask,off"}),
        Sweep("fmnist_swin", "results/swin", {"masksub": "mask,off"}),
        Sweep("fmnist_resnet", "results/resnet", {"masksub": "mask,off"}),
        Sweep("vit_ratio", "results/vit", {"masksub": "mask", "masksub.ratio": "0,0.25,0.75"}),
        Sweep("vit_variants", "results/vit", {"masksub": "droppath,dropout"}),
        Sweep("vit_small_data", "results/vit", {"masksub": "mask,off"}, regime="small"),
        Sweep("bert_minilm", "results/bert", {"masksub": "mask,off"}, regime="text"),
    ]


# the CPU budget runs these (a shared 2-core machine fits one model at the full data); the GPU matrix runs the rest
CPU_SWEEPS = ("fmnist_vit",)


def budget_overrides(sweep: Sweep, budget: Budget) -> list[str]:
    epochs, limit = {"main": (budget.epochs, budget.train_limit), "text": (budget.text_epochs, budget.text_train_limit),
                     "small": (budget.small_epochs, budget.small_train_limit)}[sweep.regime]
    out = [f"recipe.epochs={epochs}"]
    if sweep.regime == "small":
        out.append(f"train.eval_every={max(1, epochs // 8)}")  # 8 evaluations of the 10,000 test images
    if limit:
        out.append(f"data.train_limit={limit}")
    if budget.max_steps:
        out.append(f"train.max_steps={budget.max_steps}")
    if budget.log_every:
        out.append(f"train.log_every={budget.log_every}")  # not part of a run's name: changes no result
    return out + budget.extra.split()


def node_cpus() -> int:
    """CPUs SLURM offers on the (first) node; a clear error when no cluster answers."""
    if shutil.which("sinfo") is None:
        raise SystemExit("error: SLURM is not installed here: run `make results` (as root it sets up "
                         "launchers/slurm-local) or point SLURM_CONF at a cluster")
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # sinfo would retry for a minute before saying so
        raise SystemExit(f"error: SLURM_CONF={conf} does not exist: run `eval \"$(launchers/slurm-local up)\"` "
                         "first, or `make results`")
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise SystemExit("error: SLURM does not answer (sinfo timed out after 120 s)") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SystemExit(f"error: SLURM does not answer ({proc.stderr.strip() or 'no nodes'}): run "
                         "`eval \"$(launchers/slurm-local up)\"` first, or `make results`")
    return int(proc.stdout.split()[0].rstrip("+"))


def sweep_command(sweep: Sweep, budget: Budget, sweep_dir: Path, cpus_per_task: int) -> list[str]:
    seeds = ",".join(str(s) for s in budget.seed_values())
    # seed first: Hydra's sweeper varies the first override slowest, so a pair's arms are adjacent jobs
    return [
        sys.executable, "-m", "masksub_exp.train", "-m", f"experiment={sweep.experiment}", f"seed={seeds}",
        *(f"{k}={v}" for k, v in sweep.params.items()), *budget_overrides(sweep, budget),
        "train.progress=false", f"hydra.sweep.dir={sweep_dir}",
        "hydra/launcher=slurm_cpu",
        f"hydra.launcher.cpus_per_task={cpus_per_task}", f"hydra.launcher.timeout_min={budget.timeout_min}",
        "hydra.launcher.name=masksub-results",
        f'hydra.launcher.setup=["export OMP_NUM_THREADS={budget.threads}"]',
    ]


def run_sweeps(sweeps: list[Sweep], budget: Budget, root: Path) -> None:
    """Submit every sweep at once (each waits for its own jobs); fail with every failed sweep's log tail."""
    cpus = max(1, node_cpus() // budget.parallel)
    root.mkdir(parents=True, exist_ok=True)
    procs = []
    for sweep in sweeps:
        log = root / f"{sweep.key}.log"
        cmd = sweep_command(sweep, budget, root / sweep.key, cpus)
        print(f"[results] {sweep.key}: {' '.join(cmd[2:])}", flush=True)
        handle = log.open("w")
        procs.append((sweep, log, handle, subprocess.Popen(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)))
    failed = []
    for sweep, log, handle, proc in procs:
        code = proc.wait()
        handle.close()
        print(f"[results] {sweep.key}: {'done' if code == 0 else f'FAILED (exit {code})'}", flush=True)
        if code != 0:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            failed.append(f"--- {sweep.key} (exit {code}, log {log}):\n{tail}")
    if failed:
        raise SystemExit("error: some sweeps failed; finished runs are kept, re-run the same command to resume "
                         "the rest\n" + "\n".join(failed))


def planned_runs(sweeps: list[Sweep], budget: Budget) -> list[PlannedRun]:
    """The main comparison's runs first (every seed), then the ratio, variant, little-data and text sweeps."""
    def runs(subset: list[Sweep]) -> list[PlannedRun]:
        return interleave([expand(s.key, s.experiment, s.params, budget.seed_values(), budget_overrides(s, budget))
                           for s in subset])
    return runs([s for s in sweeps if s.key in MAIN_KEYS]) + runs([s for s in sweeps if s.key not in MAIN_KEYS])


def run_local(sweeps: list[Sweep], budget: Budget, root: Path, device: str, deadline_min: float | None,
              plan: Plan | None = None) -> None:
    admit = None if plan is None else functools.partial(plan_module.stamp, plan=plan)
    outcome = run_locally(planned_runs(sweeps, budget), root, budget.parallel, budget.threads, device,
                          None if deadline_min is None else deadline_min * 60, admit=admit)
    failed = {k: v for k, v in outcome.items() if v.startswith("exit")}
    late = [k for k, v in outcome.items() if v != "done" and k not in failed]
    if late:
        print(f"[results] {len(late)} run(s) not finished by the deadline: the page lists them", flush=True)
    if failed:
        logs = "\n".join(f"--- {k} ({v}): {root / (k + '.log')}" for k, v in failed.items())
        raise SystemExit("error: some runs failed; finished runs are kept, re-run the same command to resume the "
                         "rest\n" + logs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m masksub_exp.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, help="a committed plan (docs/plans/*.yaml): its sweeps, seeds, budget, "
                        "deadline and claims replace the budget options; runs go to RUNS/<plan name>/")
    parser.add_argument("--record", type=Path, default=REPO / "docs" / "results_runs",
                        help="with --plan: where the plan's run files (no checkpoints) are copied for the page and "
                        "for git (default docs/results_runs/<plan name>)")
    parser.add_argument("--tiny", action="store_true", help="1 seed, 1 epoch of 3 steps per run: a pipeline "
                        "check, no evidence")
    parser.add_argument("--seeds", type=int, help="seeds per setting (default 3; --tiny: 1)")
    parser.add_argument("--epochs", type=int, default=4, help="Fashion-MNIST epochs")
    parser.add_argument("--train-limit", type=int, default=0, help="Fashion-MNIST training images (0: all 60,000)")
    parser.add_argument("--small-epochs", type=int, default=40, help="the little-data ViT's epochs")
    parser.add_argument("--small-train-limit", type=int, default=3000, help="the little-data ViT's training images")
    parser.add_argument("--text-epochs", type=int, default=2, help="MiniLM epochs")
    parser.add_argument("--text-train-limit", type=int, default=1536, help="training tweets (0: all 5,155)")
    parser.add_argument("--max-steps", type=int, help="cap every run at this many steps (--tiny: 3)")
    parser.add_argument("--parallel", type=int, default=2, help="jobs run at once")
    parser.add_argument("--launcher", choices=("slurm", "local"), default="slurm",
                        help="slurm: multiruns through the project's SLURM launcher; local: one process per run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="train.device of every run")
    parser.add_argument("--only", default=",".join(CPU_SWEEPS),
                        help="comma-separated sweep keys to run, or 'all' (default: the CPU budget's sweeps); keys: "
                        + ", ".join(s.key for s in plan()))
    parser.add_argument("--deadline-min", type=float, help="local launcher: start no run after this many "
                        "minutes, stop (checkpoint) the ones still going; the page lists them as unfinished")
    parser.add_argument("--extra", default="", help="more overrides for every run, space-separated (the GPU "
                        "matrix: data.batch_augment=true)")
    parser.add_argument("--gpu-runs", type=Path, default=REPO / "docs" / "results_gpu",
                        help="the GPU matrix's run folders (the page's GPU part; skipped when absent)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per job")
    parser.add_argument("--timeout-min", type=int, default=120, help="SLURM time limit per job")
    parser.add_argument("--runs", type=Path, default=REPO / "outputs" / "results", help="where the run folders go")
    parser.add_argument("--out", type=Path, help="the page goes to OUT/results.md (default: docs/; with --tiny "
                        "the budget's run folder, so a pipeline check never overwrites the real page)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; write the page from the runs")
    args = parser.parse_args(argv)
    if args.tiny:  # one whole epoch of 3 steps, so every number on the page (epoch time included) exists
        args.seeds = args.seeds or 1
        args.only = "all"
        args.epochs = args.text_epochs = args.small_epochs = 1
        args.train_limit, args.small_train_limit, args.text_train_limit = 3 * 256, 3 * 256, 3 * 32
    args.seeds = args.seeds or 3
    keys = [s.key for s in plan()]
    args.only = keys if args.only == "all" else args.only.split(",")
    unknown = [k for k in args.only if k not in keys]
    if unknown:
        parser.error(f"--only: unknown sweep(s) {', '.join(unknown)}; known: {', '.join(keys)}, or all")
    for name in ("seeds", "epochs", "small_epochs", "small_train_limit", "text_epochs", "parallel", "threads",
                 "timeout_min"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def budget_record(root: Path, budget: Budget, sweeps: list[str], command: str, started: float) -> dict:
    """budget.json: the budget and every call that ran sweeps under it (a later call for more sweeps is a new
    part; the earlier parts, their commands and times stay on record)."""
    path = root / "budget.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    parts = earlier.get("parts") or ([{k: earlier[k] for k in ("sweeps", "command", "started", "finished")
                                       if k in earlier}] if earlier else [])
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    parts = [*parts, {"sweeps": sweeps, "command": command, "started": when, "machine": host.cores()}]
    union = list(dict.fromkeys(k for part in parts for k in part.get("sweeps", [])))
    return {"budget": budget.__dict__, "sweeps": union, "parts": parts, "command": command,
            "started": parts[0].get("started", when)}


def budget_from(plan: Plan) -> Budget:
    return Budget(seeds=len(plan.seeds), seed_list=list(plan.seeds), epochs=plan.epochs,
                  train_limit=plan.train_limit or None, parallel=plan.parallel, threads=plan.threads,
                  launcher=plan.launcher, device=plan.device, extra=plan.extra)


def registered_plan(path: Path, root: Path) -> Plan:
    """The committed plan; refused when it changed after runs under an earlier commit of it started."""
    registered = plan_module.load(path, [s.key for s in plan()])
    record = root / "budget.json"
    earlier = json.loads(record.read_text()).get("plan", {}).get("commit") if record.exists() else None
    if earlier and earlier != registered.commit:
        raise PlanError(f"plan {path} changed (now {registered.commit[:8]}) after runs under {earlier[:8]} started: "
                        "a changed plan is a new plan: give it a new name")
    return registered


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    registered = None
    if args.plan is not None:
        try:
            name = plan_module.parse(args.plan, [s.key for s in plan()]).name
            registered = registered_plan(args.plan, args.runs / name)
        except PlanError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        budget = budget_from(registered)
        args.only, args.launcher, args.deadline_min = registered.sweeps, registered.launcher, registered.deadline_min
        root = args.runs / registered.name  # one folder per plan: a page never mixes plans
    else:
        budget = Budget(seeds=args.seeds, epochs=args.epochs, train_limit=args.train_limit or None,
                        small_epochs=args.small_epochs, small_train_limit=args.small_train_limit,
                        text_epochs=args.text_epochs, text_train_limit=args.text_train_limit or None,
                        max_steps=args.max_steps, log_every=1 if args.tiny else None, parallel=args.parallel,
                        threads=args.threads, timeout_min=args.timeout_min, launcher=args.launcher,
                        device=args.device, extra=args.extra)
        root = args.runs / budget.tag()  # one folder per budget: pages never mix budgets
    out = args.out or (root if args.tiny else REPO / "docs")
    started = time.time()
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    command = " ".join(["python -m masksub_exp.results", *given])  # what trains these runs again
    if not args.report_only:
        sweeps = [s for s in plan() if s.key in args.only]
        if registered is not None:  # finished runs committed by an earlier part (another machine) are kept
            restored = restore_record(args.record / registered.name, root, registered.commit)
            if restored:
                print(f"[results] {len(restored)} finished run(s) restored from the committed record "
                      f"{args.record / registered.name}", flush=True)
        root.mkdir(parents=True, exist_ok=True)
        record = budget_record(root, budget, [s.key for s in sweeps], command, started)
        if registered is not None:
            record["plan"] = {"name": registered.name, "path": str(registered.path), "commit": registered.commit,
                              "committed_at": registered.committed_at,
                              "claims": {c.sweep: c.claim for c in registered.comparisons}}
        (root / "budget.json").write_text(json.dumps(record, indent=1))  # fixed before any run starts
        if args.launcher == "local":
            run_local(sweeps, budget, root, args.device if registered is None else budget.device, args.deadline_min,
                      registered)
        else:
            if registered is not None:
                for run in planned_runs(sweeps, budget):
                    plan_module.stamp(root / run.key / run.name, registered)
            run_sweeps(sweeps, budget, root)
        record["finished"] = record["parts"][-1]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        (root / "budget.json").write_text(json.dumps(record, indent=1))
    gpu_root = None if args.tiny else args.gpu_runs
    if registered is not None:  # the page reads the committed record, so anyone can rewrite it from the repo
        record = args.record / registered.name
        if root.exists():
            export_record(root, record)
        root = record
    page = write_page(root, out, budget, command, gpu_root=gpu_root)
    if out.resolve() == (REPO / "docs").resolve():
        readme = REPO / "README.md"
        readme.write_text(readme_with_block(readme.read_text(), readme_block(page)))
    print(f"[results] wrote {page} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
