"""The package's layout: the engine at the top, commands in sub-packages, imports only run downwards.

Read statically (ast), so a function-level import counts as much as a module-level one: a command
module reached from the engine through any path would drag its weight and its concerns in.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "masksub_exp"
COMMANDS = ("results", "bench", "tools")  # sub-packages that drive or read runs


def module_name(path: Path, pkg: Path = PKG) -> str:
    parts = path.relative_to(pkg.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, pkg: Path = PKG) -> set[str]:
    """Every masksub_exp module `path` imports, relative imports resolved."""
    name = module_name(path, pkg)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from . import checkpoints`
    return {m for m in found if m == "masksub_exp" or m.startswith("masksub_exp.")}


def graph(pkg: Path = PKG) -> dict[str, set[str]]:
    modules = {module_name(p, pkg): p for p in pkg.rglob("*.py")}
    return {name: {m for m in imports_of(path, pkg) if m in modules and m != name} for name, path in modules.items()}


def is_command(module: str) -> bool:
    return module.split(".")[1:2] in ([c] for c in COMMANDS)


def test_no_engine_module_imports_a_command_module() -> None:
    edges = graph()
    engine = [m for m in edges if not is_command(m)]
    assert len(engine) > 20 and any(is_command(m) for m in edges)  # the walk found both sides
    wrong = sorted(f"{m} -> {t}" for m in engine for t in edges[m] if is_command(t))
    assert not wrong, f"engine modules importing commands: {wrong}"


def test_the_package_top_holds_only_engine_modules() -> None:
    top = sorted(p.stem for p in PKG.glob("*.py"))
    for name in ("results", "results_page", "bench", "bench_loader", "report", "recipe_table", "prepare"):
        assert name not in top, f"masksub_exp/{name}.py is a command: it belongs in a sub-package"
    for sub in COMMANDS:
        assert (PKG / sub / "__init__.py").is_file()


def test_no_import_cycles_between_modules() -> None:
    edges = graph()
    # a module importing its own package's __init__ is how Python loads it, not a cycle of ours
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle.extend([*path, node, nxt])
                return True
            if nxt not in state and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for start in sorted(edges):
        if start not in state and visit(start, []):
            break
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"


def test_the_checks_see_a_planted_upward_import(tmp_path: Path) -> None:
    """The walk is not vacuous: a relative import of a command from an engine file (in a copy) is found."""
    copy = tmp_path / "masksub_exp"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "data" / "planted.py").write_text("from ..tools.report import report\n")
    (copy / "engine.py").write_text((copy / "engine.py").read_text() + "\nfrom .results import command\n")
    edges = graph(copy)
    assert "masksub_exp.tools.report" in edges["masksub_exp.data.planted"]
    assert "masksub_exp.results.command" in edges["masksub_exp.engine"]
