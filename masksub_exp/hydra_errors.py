"""Hydra's compose errors as one line each (exit code 2), as the README promises for bad input.

Hydra reports a misspelt key, an unknown group option or a wrongly typed value in 5-30 lines with exit
code 1. `compact_compose_errors()` wraps Hydra's own reporting (`run_and_report`, which runs the
composition, the job and the sweep) so that these errors print one line naming the key (for a group,
its options) and exit 2; every other error goes to Hydra's reporting unchanged, and
`HYDRA_FULL_ERROR=1` still gives Hydra's full traceback for all of them.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

COMPOSE_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException)
MISSING_OPTION = re.compile(r"Could not find '(?P<path>[^']+/[^']+)'")


def describe(exc: BaseException) -> str:
    """One line: what is wrong, the key (or group and its options) it concerns."""
    cause = exc.__cause__
    full_key = getattr(cause, "full_key", None)
    if full_key and type(cause).__name__ in ("ConfigAttributeError", "ConfigKeyError"):
        return _unknown_key(str(full_key), getattr(cause, "parent_node", None))
    if full_key:  # a value the schema cannot take (wrong type)
        return f"{full_key}: {_first_line(str(cause))}"
    text = str(exc)
    missing = MISSING_OPTION.search(text)
    if missing:
        parts = missing["path"].split("/")
        top = 2 if parts[0] == "hydra" and len(parts) > 2 else 1  # `hydra/launcher=x`, `experiment=swin/x`
        group, option = "/".join(parts[:top]), "/".join(parts[top:])
        options = group_options(group) or _listed_options(text)
        listed = f"; {group} options: {', '.join(options)}" if options else ""
        return f"{group}={option}: no such option{listed}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the overrides: {_first_line(text)} ({_second_line(text)})"
    lines = [line.strip() for line in text.splitlines() if line.strip()][:2]
    if cause is not None:
        lines.append(_first_line(str(cause)))
    return "; ".join(lines)


def group_options(group: str) -> list[str]:
    """A config group's options, those in its subfolders included (`experiment` lists `swin/t`)."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return []
    loader = GlobalHydra.instance().config_loader()
    options = list(loader.get_group_options(group))
    for sub in loader.list_groups(group):
        options += [f"{sub}/{name}" for name in group_options(f"{group}/{sub}")]
    return sorted(options)


def _listed_options(text: str) -> list[str]:
    """The options Hydra's message lists (its tab-indented lines before 'Config search path')."""
    listed = text.split("Available options in", 1)[-1].split("Config search path", 1)[0]
    return [line.strip() for line in listed.splitlines()[1:] if line.startswith("\t")]


def _unknown_key(full_key: str, parent: Any) -> str:
    prefix, _, name = full_key.rpartition(".")
    keys = [str(k) for k in parent.keys()] if parent is not None and hasattr(parent, "keys") else []
    where = f"{prefix} has" if prefix else "top-level keys are"
    close = difflib.get_close_matches(name, keys, n=1)
    hint = f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else ""
    listed = f" ({where}: {', '.join(keys)}{hint})" if keys else ""
    return f"{full_key} is not a key{listed}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _second_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else "see Hydra's override grammar"


def compact_compose_errors(run_and_report: Callable[[Callable[[], Any]], Any]) -> Callable[[Callable[[], Any]], Any]:
    """Hydra's `run_and_report`, with compose errors reported as one line and exit code 2."""

    def report(func: Callable[[], Any]) -> Any:
        def compact() -> Any:
            try:
                return func()
            except COMPOSE_ERRORS as exc:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise  # Hydra's reporting prints the full trace
                print(f"config error: {describe(exc)}", file=sys.stderr, flush=True)
                sys.exit(2)

        return run_and_report(compact)

    report.compact_compose_errors = True  # type: ignore[attr-defined]
    return report


def install() -> None:
    """Wrap Hydra's reporting (once) for this process: called by the command line entry only."""
    import hydra._internal.utils as hydra_utils

    if not getattr(hydra_utils.run_and_report, "compact_compose_errors", False):
        hydra_utils.run_and_report = compact_compose_errors(hydra_utils.run_and_report)
