"""What pip is told: ranges in pyproject.toml (installs where users are), the exact set in the lock files.

Fast and offline: these read files and the installed packages' metadata; nothing is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

# Exact pins pyproject may carry: the code uses these packages' private internals (see the comments there).
EXACT_ALLOWED = {"submitit", "hydra-submitit-launcher", "hydra-optuna-sweeper"}
CI_TORCH = {"torch": "2.14.1", "torchvision": "0.29.1"}  # the local wheels CI and the demo install


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements() -> list[Requirement]:
    project = _project()
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in project["optional-dependencies"]["test"]]
    return reqs


def _pins(path: Path) -> dict[str, str]:
    """name -> version of a pip-compile lock; every requirement line must be an exact `name==version` pin."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
        assert m, f"{path.name}: not an exact pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


def test_pyproject_declares_ranges_not_pins():
    spec = _project()["requires-python"]
    assert "<" not in spec and "!=" not in spec, f"requires-python has an upper cap: {spec}"
    assert ">=3.11" in spec
    for req in _requirements():
        ops = {s.operator for s in req.specifier}
        name = canonicalize_name(req.name)
        if name in EXACT_ALLOWED:
            continue
        assert "==" not in ops and "===" not in ops, f"pyproject pins {req} exactly"
        assert ">=" in ops, f"{req}: no lower bound (the oldest version tested)"
    by_name = {canonicalize_name(r.name): r for r in _requirements()}
    for name in ("torch", "torchvision", "timm"):
        assert not any(s.operator in ("<", "<=", "==", "~=") for s in by_name[name].specifier), by_name[name]


@pytest.mark.parametrize("lock", ["lock.txt", "oldest.txt"])
def test_lock_pins_every_dependency_within_pyproject_ranges(lock: str):
    pins = _pins(ROOT / "requirements" / lock)
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{lock}: {name}=={pins[name]} not in {req}"


def test_ci_lock_has_the_local_torch_and_the_test_tools():
    pins = _pins(ROOT / "requirements" / "lock.txt")
    for name, version in CI_TORCH.items():
        assert pins[name] == version
    assert pins["pytest-xdist"] == "3.8.0"


def test_oldest_env_is_pyprojects_lower_bounds():
    """requirements/oldest.in pins what pyproject claims as the oldest: the two must not drift apart."""
    oldest = _pins(ROOT / "requirements" / "oldest.txt")
    claimed = _pins_of_in(ROOT / "requirements" / "oldest.in")
    assert {"torch", "torchvision", "timm"} <= set(claimed)
    for req in _requirements():
        name = canonicalize_name(req.name)
        if name not in claimed:
            continue
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lower and Version(claimed[name]) == lower[0], f"oldest.in has {name}=={claimed[name]}, pyproject {req}"
        assert oldest[name] == claimed[name], f"oldest.txt has {name}=={oldest[name]}; recompile (make lock)"
    assert Version(oldest["torch"]) >= Version("2.6")  # weights_only=True by default: safe checkpoint loading


def _pins_of_in(path: Path) -> dict[str, str]:
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    return {canonicalize_name(k): v for k, v in (ln.split("==") for ln in lines if ln)}


def test_make_installs_the_lock_then_the_project_without_deps():
    recipe = (ROOT / "Makefile").read_text().split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    lock_at = recipe.index("pip install -q -r requirements/lock.txt")
    assert lock_at < recipe.index("pip install -q --no-deps -e .")
    assert "requirements/lock.txt" in recipe.splitlines()[0]  # a new lock reinstalls


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="only the project's .venv is built from requirements/lock.txt")
def test_the_venv_runs_the_locked_set():
    pins = _pins(ROOT / "requirements" / "lock.txt")
    off = {name: (version, metadata.version(name)) for name, version in pins.items()
           if name not in ("setuptools", "wheel", "pip") and _installed(name) != version}
    assert not off, f"locked vs installed: {off}"


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
