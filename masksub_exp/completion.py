"""Shell completion (`eval "$(masksub-train -sc install=bash)"`): Hydra's, plus the presets in sub-folders.

Hydra completes `experiment=` with the options in the group's own folder only (`demo`, `smoke`); the paper's
presets live one folder down (`experiment=swin/t`), where Hydra sees a sub-group `experiment/swin`. Here a
`group=...` word is also completed with every option below the group, written as `group=sub/option`, which is
how the command line takes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Query = Callable[[Any, str, Any, list[str]], tuple[list[str], bool]]


def nested_options(loader: Any, group: str, overrides: list[str] | None = None) -> list[str]:
    """The options of `group` in its sub-folders, as `sub/option` (`swin/t` for `experiment`)."""
    from hydra.core.object_type import ObjectType

    options = []
    for sub in loader.get_group_options(group, results_filter=ObjectType.GROUP, overrides=overrides):
        child = f"{group}/{sub}"
        options += [f"{sub}/{name}" for name in loader.get_group_options(child, overrides=overrides)]
        options += [f"{sub}/{name}" for name in nested_options(loader, child, overrides)]
    return sorted(options)


def with_nested_options(query: Query) -> Query:
    """Hydra's `CompletionPlugin._query_config_groups`, with `group=sub/option` among a group's candidates."""

    def complete(self: Any, word: str, config_name: Any, words: list[str]) -> tuple[list[str], bool]:
        matched, exact = query(self, word, config_name, words)
        sign = word[:1] if word[:1] in "+~" else ""
        group, eq, typed = word[len(sign):].rpartition("=")
        if not eq or not group:
            return matched, exact
        extra = [f"{sign}{group}={option}" for option in nested_options(self.config_loader, group, words)
                 if option.startswith(typed)]
        return sorted(set(matched) | set(extra)), exact or bool(extra)

    complete.with_nested_options = True  # type: ignore[attr-defined]
    return complete


def install() -> None:
    """Patch Hydra's completion (once) for this process: called by the command line entry."""
    from hydra.plugins.completion_plugin import CompletionPlugin

    if not getattr(CompletionPlugin._query_config_groups, "with_nested_options", False):
        CompletionPlugin._query_config_groups = with_nested_options(CompletionPlugin._query_config_groups)
