"""What loops mean, for both engines: a for_loop's items and iterations, a while_loop's step.

The embedded engine runs these in its own loops; on AWS a Map state iterates the items the
dispatch Lambda's `items` action returns, and its `while` action takes one while_loop step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.errors import TaskError
from orchestrator.runtime.leaf import render
from orchestrator.runtime.scope import LoopFrame, Scope
from orchestrator.runtime.task import condition_holds
from orchestrator.spec.models import ForLoop, WhileLoop


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


def for_loop_items(task: ForLoop, scope: Scope) -> list[Any]:
    """A for_loop's items: its `iterate_over` rendered (a template) or as written."""
    value = task.iterate_over
    return loop_items(render(value, scope) if isinstance(value, str) else value)


def for_iteration(scope: Scope, item_variable: str, index: int, item: Any, loop: str = "") -> Scope:
    """The scope of for_loop iteration `index`: the item under its variable, `loop_index`
    (`loop`: the loop's name, for the task path of the tasks inside)."""
    frame = LoopFrame(index, item_variable=item_variable, item=item)
    place = (*scope.place, loop, str(index))
    return scope.child({item_variable: item, "loop_index": index}, loop=frame, place=place)


def iteration_output(names: Iterable[str], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """What one for_loop iteration gives the loop's output: its body tasks' outputs, by name,
    in file order (a task that did not run gives None)."""
    return {name: outputs.get(name) for name in names}


def for_loop_output(iterations: Mapping[int, Any]) -> list[Any]:
    """A finished for_loop's output: its iterations' outputs (`iteration_output`, by index) as
    a list in item order, however they finished."""
    return [iterations[index] for index in sorted(iterations)]


def while_scope(scope: Scope, index: int, state: dict[str, Any], loop: str = "") -> Scope:
    """The scope of while_loop iteration `index`: `loop_state` and `loop_index` (`loop`: the
    loop's name, for the task path of the tasks inside)."""
    frame = LoopFrame(index, state=state)
    place = (*scope.place, loop, str(index))
    return scope.child({"loop_state": state, "loop_index": index}, loop=frame, place=place)


def while_iteration(
    task: WhileLoop, scope: Scope, index: int, state: dict[str, Any], loop: str = ""
) -> Scope | None:
    """One while_loop step, taken before each iteration: the scope of iteration `index` when
    the loop goes on (fewer than `max_iterations` done and its condition true), else None."""
    if index >= task.max_iterations:
        return None
    iteration = while_scope(scope, index, state, loop)
    return iteration if condition_holds(task.condition, iteration) else None


def while_state(last_output: Any) -> dict[str, Any]:
    """The `loop_state` after an iteration: its last task's output if a mapping, else `{}`."""
    return last_output if isinstance(last_output, dict) else {}


def while_output(iterations: int, state: dict[str, Any]) -> dict[str, Any]:
    """A finished while_loop's output."""
    return {"iterations": iterations, "state": state}
