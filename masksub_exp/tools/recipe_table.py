"""The README's recipe table, generated from the presets in conf/experiment (never typed by hand).

    python -m masksub_exp.tools.recipe_table            # print the table
    python -m masksub_exp.tools.recipe_table --write    # replace the table between the README's markers
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
README = ROOT / "README.md"
BEGIN, END = "<!-- recipe-table:begin -->", "<!-- recipe-table:end -->"
FAMILIES = ("deit3", "deit3_ft", "mae_ft", "clip_ft", "swin", "rsb", "bert")


def presets() -> list[str]:
    folder = CONF / "experiment"
    found = [str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml") if p.parent.name in FAMILIES]
    return sorted(found, key=lambda name: (FAMILIES.index(name.split("/")[0]), name))


def _top1(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table() -> str:
    import masksub_exp.train  # noqa: F401  (registers the schema and resolvers)

    rows = ["| command | model | epochs | global batch | paper layout (GPUs x batch) "
            "| paper top-1: baseline -> +MaskSub |", "|---|---|---|---|---|---|"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in presets():
            cfg = compose(config_name="train", overrides=[f"experiment={name}", "paths.output_dir=unused"])
            paper = cfg.paper
            result = f"{_top1(paper.baseline_top1)} -> {_top1(paper.masksub_top1)}"
            if paper.baseline_top1 is None and paper.masksub_top1 is None:
                result = "-"
            rows.append(f"| `experiment={name}` | {cfg.model.name} | {cfg.recipe.epochs} | {cfg.recipe.global_batch} "
                        f"| {paper.layout or '-'} | {result} |")
    return "\n".join(rows)


def readme_with_table(text: str, generated: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"README.md lacks the {BEGIN} / {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{generated}\n{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args(argv)
    generated = table()
    if args.write:
        README.write_text(readme_with_table(README.read_text(), generated))
    print(generated)


if __name__ == "__main__":
    main()
