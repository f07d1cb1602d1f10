"""Turn sweeps into the paper's table and plots, from the run folders alone.

    python -m masksub_exp.tools.report outputs/demo/sweeps [more folders ...] [--out DIR]
    python -m masksub_exp.tools.report --wandb ENTITY/PROJECT [--group SWEEP] [--out DIR]     (online)

Every folder below the given ones that holds a `summary.json` is a run. Runs are grouped by model,
recipe and data; in each group the baseline (`masksub=off`) is compared with every MaskSub setting
(mode and ratio): mean +- std of the final top-1 over seeds, and the delta. Plots: training loss
(main, and sub for MaskSub) against step, and eval top-1 against epoch, baseline vs MaskSub.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Run:
    folder: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def group(self) -> tuple[str, str, str]:
        return self.summary["model"], self.summary["recipe"], self.config.get("data", {}).get("name", "?")

    @property
    def variant(self) -> str:
        mode = self.summary["masksub_mode"]
        return "baseline" if mode == "off" else f"{mode} r={self.summary['masksub_ratio']:g}"


def load_run(folder: Path) -> Run:
    summary = json.loads((folder / "summary.json").read_text())
    config_path = folder / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    run = Run(folder, summary, config or {})
    metrics = folder / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill
                continue
            if record.get("kind") in ("train", "eval"):  # (a data.holdout run's end-of-run "test" line is not a curve)
                (run.train if record["kind"] == "train" else run.evals).append(record)
    return run


def find_runs(folders: list[Path]) -> list[Run]:
    found: dict[Path, Run] = {}
    for folder in folders:
        if not folder.exists():
            raise FileNotFoundError(f"{folder} does not exist")
        for path in sorted(folder.rglob("summary.json")):
            if any(part.startswith("previous-") for part in path.parts):
                continue  # runs set aside by train.resume=never
            found.setdefault(path.parent.resolve(), load_run(path.parent))
    return list(found.values())


def runs_from_wandb(path: str, group: str | None = None, api: Any = None) -> list[Run]:
    """The runs of W&B project `entity/project` (one group: a sweep), through the W&B API (online)."""
    if api is None:
        import wandb

        api = wandb.Api()
    runs = []
    for remote in api.runs(path, filters={"group": group} if group else None):
        cfg = dict(remote.config)
        if "masksub" not in cfg:
            continue  # not a masksub-exp run
        history = remote.history(keys=None, pandas=False)
        train = [{"step": h["_step"], "loss_main": h["train/loss_main"],
                  **({"loss_sub": h["train/loss_sub"]} if h.get("train/loss_sub") is not None else {})}
                 for h in history if h.get("train/loss_main") is not None]
        evals = [{"step": h["_step"], "epoch": h["eval/epoch"], "top1": h["eval/top1"]}
                 for h in history if h.get("eval/top1") is not None]
        mode = cfg["masksub"]["mode"]
        summary = {"model": cfg["model"]["name"], "recipe": cfg["recipe"]["name"], "masksub_mode": mode,
                   "masksub_ratio": cfg["masksub"]["ratio"] if mode != "off" else 0.0, "seed": cfg["seed"]}
        for key in ("top1", "top5", "ema_top1"):
            if remote.summary.get(f"eval/{key}") is not None:
                summary[key] = remote.summary[f"eval/{key}"]
        runs.append(Run(Path(f"wandb:{path}/{remote.id}"), summary, cfg, train, evals))
    return runs


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f} (n={len(values)})"


def table(runs: list[Run], metric: str = "top1") -> str:
    groups: dict[tuple, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if metric in run.summary:
            groups[run.group][run.variant].append(run)
    lines = [f"| model | recipe | data | MaskSub setting | baseline {metric} | +MaskSub {metric} | delta |",
             "|---|---|---|---|---|---|---|"]
    for (model, recipe, data), variants in sorted(groups.items()):
        base = [r.summary[metric] for r in variants.get("baseline", [])]
        for variant, members in sorted(variants.items()):
            if variant == "baseline":
                continue
            ours = [r.summary[metric] for r in members]
            delta = f"{statistics.mean(ours) - statistics.mean(base):+.2f}" if base and ours else "-"
            lines.append(f"| {model} | {recipe} | {data} | {variant} | {mean_std(base)} | {mean_std(ours)} | {delta} |")
        if set(variants) == {"baseline"}:
            lines.append(f"| {model} | {recipe} | {data} | - | {mean_std(base)} | - | - |")
    return "\n".join(lines)


def _slug(parts: tuple[str, ...]) -> str:
    return "_".join(p.replace("/", "-") for p in parts)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (imported late: only plotting commands pay for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plots(runs: list[Run], out: Path) -> list[Path]:
    plt = pyplot()
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.group].append(run)
    written = []
    for key, members in sorted(groups.items()):
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
        colours: dict[str, str] = {}
        for run in sorted(members, key=lambda r: (r.variant != "baseline", r.variant, r.summary["seed"])):
            colour = colours.setdefault(run.variant, f"C{len(colours)}")
            label = f"{run.variant} seed {run.summary['seed']}"
            steps = [r["step"] for r in run.train]
            ax_loss.plot(steps, [r["loss_main"] for r in run.train], color=colour, lw=1, label=f"{label} main")
            if run.train and "loss_sub" in run.train[0]:
                ax_loss.plot(steps, [r["loss_sub"] for r in run.train], color=colour, lw=1, ls="--",
                             label=f"{label} sub")
            ax_acc.plot([r["epoch"] for r in run.evals], [r["top1"] for r in run.evals], "o-", color=colour,
                        label=label)
        ax_loss.set(xlabel="step", ylabel="training loss", title="training loss (main solid, sub dashed)")
        ax_acc.set(xlabel="epoch", ylabel="eval top-1 (%)", title="eval top-1")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(" / ".join(key))
        fig.tight_layout()
        path = out / f"curves_{_slug(key)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def find_searches(folders: list[Path]) -> list[Path]:
    """The `searches/<study>.json` files that hydra/sweeper=optuna writes into its sweep folder."""
    return sorted({path.resolve() for folder in folders for path in folder.rglob("searches/*.json")})


def _read_summary(run_dir: str | None) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json" if run_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def _fmt(value: Any, digits: str = ".2f") -> str:
    return "-" if value is None else format(value, digits) if isinstance(value, float) else str(value)


def search_section(path: Path, out: Path) -> str:
    """A search's trials (held-out top-1 it was selected on, test top-1 beside it), its best parameters,
    and a plot of top-1 against the first searched parameter (masksub.ratio when searched)."""
    search = json.loads(path.read_text())
    trials = search["trials"]
    names = sorted({name for t in trials for name in t["params"]}, key=lambda n: (n != "masksub.ratio", n))
    lines = [f"## Search `{search['study_name']}`", "",
             f"{sum(t['state'] == 'COMPLETE' for t in trials)} complete of {len(trials)} trial(s) "
             f"({search['n_trials']} wanted); selected on held-out top-1 (data.holdout), test top-1 only reported.",
             "", "| trial | state | " + " | ".join(names) + " | held-out top-1 | test top-1 | run |",
             "|---|---|" + "---|" * len(names) + "---|---|---|"]
    points = []
    for t in trials:
        summary = _read_summary(t.get("run_dir"))
        params = " | ".join(_fmt(t["params"].get(n), ".4g") for n in names)
        run = Path(t.get("run_dir") or "-").name
        lines.append(f"| {t['number']} | {t['state']} | {params} | {_fmt(t['value'])} | "
                     f"{_fmt(summary.get('test_top1'))} | {run} |")
        if t["state"] == "COMPLETE" and names and isinstance(t["params"].get(names[0]), int | float):
            points.append((t["params"][names[0]], t["value"], summary.get("test_top1"), t["number"]))
    best = search.get("best")
    if best:
        summary = _read_summary(next((t.get("run_dir") for t in trials if t["number"] == best["number"]), None))
        lines += ["", f"Best: trial {best['number']}, {best['params']}: held-out top-1 {best['value']:.2f}, "
                  f"test top-1 {_fmt(summary.get('test_top1'))}."]
    if points:
        image = out / ("search_" + re.sub(r"[^A-Za-z0-9._-]+", "_", search["study_name"]) + ".png")
        _search_plot(points, names[0], search["study_name"], image)
        lines += ["", f"![{image.stem}]({image.name})"]
    return "\n".join(lines)


def _search_plot(points: list[tuple], name: str, title: str, image: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    x = [p[0] for p in points]
    ax.plot(x, [p[1] for p in points], "o", color="C0", label="held-out top-1 (selected on)")
    tested = [p for p in points if p[2] is not None]
    if tested:
        ax.plot([p[0] for p in tested], [p[2] for p in tested], "s", mfc="none", color="C1", label="test top-1")
    for value, held, _, number in points:
        ax.annotate(str(number), (value, held), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel=name, ylabel="top-1 (%)", title=title if len(title) < 70 else title[:67] + "...")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(image, dpi=110)
    plt.close(fig)


def report(folders: list[Path], out: Path, metric: str = "top1", extra_runs: list[Run] | None = None) -> str:
    runs = find_runs(folders) + list(extra_runs or [])
    if not runs:
        raise FileNotFoundError(f"no run folders (with summary.json) under {', '.join(map(str, folders))}")
    out.mkdir(parents=True, exist_ok=True)
    images = plots(runs, out)
    searches = [search_section(path, out) for path in find_searches(folders)]
    held = any(r.summary.get("eval_split") == "holdout" for r in runs)
    text = "\n".join([
        f"# MaskSub vs baseline ({len(runs)} runs)", "",
        f"Final eval {metric} (%), mean +- std over seeds."
        + (" Runs with data.holdout are scored on their held-out samples, not the test set." if held else ""), "",
        table(runs, metric), "",
        *[f"![{p.stem}]({p.name})" for p in images], "",
        *[section + "\n" for section in searches],
    ])
    (out / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    # the whole docstring: its usage lines are the command's modes (local folders, W&B)
    parser = argparse.ArgumentParser(
        prog="python -m masksub_exp.tools.report", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A search's sweep folder (hydra/sweeper=optuna) also gets its trials, the best parameters and\n"
               "top-1 against each searched parameter (from <sweep>/searches/*.json).")
    parser.add_argument("folders", nargs="*", type=Path, help="sweep or run folders (every folder below them "
                        "with a summary.json is a run)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read runs from W&B (online)")
    parser.add_argument("--group", help="with --wandb: only this group (a sweep)")
    parser.add_argument("--out", type=Path, default=None, help="where report.md and the PNGs go "
                        "(default: <first folder>/report)")
    parser.add_argument("--metric", default="top1", help="summary key to compare: top1 (default), top5, ema_top1, "
                        "ema_top5")
    args = parser.parse_args(argv)
    if not args.folders and not args.wandb:
        parser.error("give run or sweep folders, or --wandb ENTITY/PROJECT")
    remote = runs_from_wandb(args.wandb, args.group) if args.wandb else []
    out = args.out or (args.folders[0] / "report" if args.folders else Path("report"))
    print(report(args.folders, out, args.metric, remote))


if __name__ == "__main__":
    main()
