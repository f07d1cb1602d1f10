"""Turn sweeps into the paper's table and plots, from the run folders alone.

    python -m masksub_exp.report outputs/demo/sweeps [more folders ...] [--out DIR]
    python -m masksub_exp.report --wandb ENTITY/PROJECT [--group SWEEP] [--out DIR]     (online)

Every folder below the given ones that holds a `summary.json` is a run. Runs are grouped by model,
recipe and data; in each group the baseline (`masksub=off`) is compared with every MaskSub setting
(mode and ratio): mean +- std of the final top-1 over seeds, and the delta. Plots: training loss
(main, and sub for MaskSub) against step, and eval top-1 against epoch, baseline vs MaskSub.
"""

from __future__ import annotations

import argparse
import json
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
            (run.train if record.get("kind") == "train" else run.evals).append(record)
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


def report(folders: list[Path], out: Path, metric: str = "top1", extra_runs: list[Run] | None = None) -> str:
    runs = find_runs(folders) + list(extra_runs or [])
    if not runs:
        raise FileNotFoundError(f"no run folders (with summary.json) under {', '.join(map(str, folders))}")
    out.mkdir(parents=True, exist_ok=True)
    images = plots(runs, out)
    text = "\n".join([
        f"# MaskSub vs baseline ({len(runs)} runs)", "",
        f"Final eval {metric} (%), mean +- std over seeds.", "",
        table(runs, metric), "",
        *[f"![{p.stem}]({p.name})" for p in images], "",
    ])
    (out / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="sweep or run folders")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read runs from W&B (online)")
    parser.add_argument("--group", help="with --wandb: only this group (a sweep)")
    parser.add_argument("--out", type=Path, default=None, help="where report.md and the PNGs go "
                        "(default: <first folder>/report)")
    parser.add_argument("--metric", default="top1", help="summary key to compare (top1, top5, ema_top1)")
    args = parser.parse_args(argv)
    if not args.folders and not args.wandb:
        parser.error("give run or sweep folders, or --wandb ENTITY/PROJECT")
    remote = runs_from_wandb(args.wandb, args.group) if args.wandb else []
    out = args.out or (args.folders[0] / "report" if args.folders else Path("report"))
    print(report(args.folders, out, args.metric, remote))


if __name__ == "__main__":
    main()
