"""Hydra's compose errors as one line each (exit code 2), as the README promises for bad input.

Hydra reports a misspelt key, an unknown group option or a wrongly typed value in 5-30 lines with exit
code 1. `compact_compose_errors()` wraps Hydra's own reporting (`run_and_report`, which runs the
composition, the job and the sweep) so that these errors print one line naming the key (for a group,
its options) and exit 2; every other error goes to Hydra's reporting unchanged, and
`HYDRA_FULL_ERROR=1` still gives Hydra's full traceback for all of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

COMPOSE_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException)
SHELL_COMPLETION_ERRORS = ("No completion plugin for", "Expecting one subcommand from")
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
            except InterpolationResolutionError as exc:  # `--cfg ... --resolve`: a value that cannot resolve
                # (before ValueError, which OmegaConf's errors also are)
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                where = f"{exc.full_key}: " if getattr(exc, "full_key", None) else ""
                print(f"config error: {where}{_first_line(str(exc))}", file=sys.stderr, flush=True)
                sys.exit(2)
            except ValueError as exc:  # `-sc install=tcsh`: Hydra's own check, reported with a traceback
                if not str(exc).startswith(SHELL_COMPLETION_ERRORS) or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"usage error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
                sys.exit(2)

        return run_and_report(compact)

    report.compact_compose_errors = True  # type: ignore[attr-defined]
    return report


def schema_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass schema, those of nested dataclasses included."""
    keys = []
    for name, kind in _fields(schema).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(kind):
            keys += schema_keys(kind, f"{prefix}{name}.")
    return keys


def unknown_key(key: str, schema: type) -> str | None:
    """None when the dotted `key` is a key of `schema`, or lies under a key typed as a mapping (model.kwargs takes
    any key); otherwise one line naming it and the nearest known keys."""
    node: Any = schema
    parts = key.split(".")
    for depth, name in enumerate(parts):
        fields = _fields(node) if dataclasses.is_dataclass(node) else {}
        if name not in fields:
            if depth and not fields and _is_mapping(node):
                return None
            return _not_a_key(key, schema, ".".join(parts[:depth]), list(fields))
        node = fields[name]
    return None


def unknown_keys_in(cfg: Any, schema: type, prefix: str = "") -> str | None:
    """The line for the first key of a composed config (a DictConfig) that the schema does not know, else None.
    Hydra puts a `+key=value` into the config even where the schema has no such key, and nothing would read it."""
    for name in cfg.keys():
        key = f"{prefix}{name}"
        if key == "hydra":
            continue  # Hydra's own node, checked by Hydra's schema
        line = unknown_key(key, schema)
        if line is not None:
            return line
        child = cfg._get_node(name)
        if hasattr(child, "keys") and not child._is_none() and not child._is_missing() and _schema_node(key, schema):
            line = unknown_keys_in(child, schema, key + ".")
            if line is not None:
                return line
    return None


def check_added_keys(argv: list[str], schema: type, conf_dir: Path) -> str | None:
    """The line for the first `+key=value` / `++key=value` of a command line whose key the schema does not know,
    else None: checked before Hydra composes, so `--cfg job` refuses it as a run would. `+group=option` is left to
    Hydra (it lists the group's options), `hydra.*` to Hydra's schema, an unparsable override to Hydra's parser."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, _ = get_args_parser().parse_known_args(argv)
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except OverrideParseException:
        return None
    for override in overrides:
        key = override.key_or_group
        if not (override.is_add() or override.is_force_add()) or override.package is not None:
            continue
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or (conf_dir / key).is_dir():
            continue
        line = unknown_key(key, schema)
        if line is not None:
            return f"{override.input_line}: {line}"
    return None


@functools.cache
def _fields(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)  # the schema's annotations are strings (`from __future__ import`)
    return {field.name: hints[field.name] for field in dataclasses.fields(schema)}


def _is_mapping(kind: Any) -> bool:
    union = isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union  # `dict[str, Any] | None`
    kinds = typing.get_args(kind) if union else (kind,)
    return any(k is Any or k is dict or typing.get_origin(k) is dict for k in kinds)


def _schema_node(key: str, schema: type) -> bool:
    """Whether `key` names a nested dataclass of the schema (whose keys are checked in turn)."""
    node: Any = schema
    for name in key.split("."):
        node = _fields(node)[name]
    return dataclasses.is_dataclass(node)


def _not_a_key(key: str, schema: type, prefix: str, siblings: list[str]) -> str:
    known = schema_keys(schema)
    nearest = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    if nearest:
        return f"{key} is not a key of the config; nearest known keys: {', '.join(nearest)}"
    if not siblings:
        return f"{key} is not a key of the config ({prefix} is a value, not a group of keys)"
    where = f"{prefix} has" if prefix else "top-level keys are"
    return f"{key} is not a key of the config ({where}: {', '.join(siblings)})"


def resolve_before_masking(show_cfg: Callable[..., None]) -> Callable[..., None]:
    """Hydra's `--cfg` printer, where `--cfg hydra --resolve` resolves the whole config before keeping the hydra
    node: Hydra drops the job's keys first, and `hydra.run.dir` refers to them (`${paths.log_dir}/${name}/...`)."""

    def show(self: Any, config_name: str | None, overrides: list[str], cfg_type: str, package: str | None,
             resolve: bool = False) -> None:
        if cfg_type != "hydra" or not resolve:
            return show_cfg(self, config_name, overrides, cfg_type, package, resolve)
        sanitize = self.get_sanitized_cfg

        def resolved_then_sanitized(cfg: DictConfig, kind: str) -> DictConfig:
            try:
                OmegaConf.resolve(cfg)  # `show_cfg` has made the hydra node writable and set HydraConfig by now
            except InterpolationResolutionError as exc:
                if not getattr(exc, "full_key", None):  # OmegaConf.resolve does not say which value failed
                    exc.full_key = _unresolvable_key(cfg) or ""  # type: ignore[attr-defined]
                raise
            return sanitize(cfg, kind)

        self.get_sanitized_cfg = resolved_then_sanitized  # this call only
        try:
            return show_cfg(self, config_name, overrides, cfg_type, package, resolve)
        finally:
            del self.get_sanitized_cfg

    show.resolve_before_masking = True  # type: ignore[attr-defined]
    return show


def _unresolvable_key(cfg: Any, prefix: str = "") -> str | None:
    """The first key of `cfg` whose value does not resolve (searched only once resolving has failed)."""
    for name in cfg.keys():
        key = f"{prefix}{name}"
        try:
            value = cfg[name]
        except InterpolationResolutionError:
            return key
        if isinstance(value, DictConfig) and not value._is_none():
            found = _unresolvable_key(value, key + ".")
            if found:
                return found
    return None


def install() -> None:
    """Wrap Hydra's reporting and its `--cfg` printer (once) for this process: called by the command line entry."""
    import hydra._internal.utils as hydra_utils
    from hydra._internal.hydra import Hydra

    if not getattr(hydra_utils.run_and_report, "compact_compose_errors", False):
        hydra_utils.run_and_report = compact_compose_errors(hydra_utils.run_and_report)
    if not getattr(Hydra.show_cfg, "resolve_before_masking", False):
        Hydra.show_cfg = resolve_before_masking(Hydra.show_cfg)
