"""What a `for_loop` iterates: its rendered `iterate_over` as a list, the same on both engines."""

from __future__ import annotations

from typing import Any

from orchestrator.errors import TaskError


def loop_items(value: Any) -> list[Any]:
    """The items of `iterate_over`'s value: a list as it is, a mapping as its `[key, value]`
    pairs (lists, as JSON gives them back on AWS), anything else an `InvalidLoopItems` error."""
    if isinstance(value, dict):
        return [[key, item] for key, item in value.items()]
    if isinstance(value, list | tuple):
        return list(value)
    raise TaskError(
        "InvalidLoopItems",
        f"iterate_over must give a list or a mapping, got {type(value).__name__}",
    )
