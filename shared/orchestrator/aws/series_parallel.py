"""The series-parallel shape of a body's dependency graph: what runs after what, and what side by side.

A state machine has no "start when these finish" join, only chains and `Parallel` states (each
branch a chain, all joined at the end). `decompose` turns a body's tasks and their dependencies
into nested `Series` and `Parallel` parts, so that the compiled machine keeps the plan's
concurrency:

- a body whose graph is **series-parallel** (every bundled pipeline's is) becomes exactly that
  graph: no task waits for anything it does not depend on, and the longest chain of tasks is
  the plan's critical path;
- any other graph (the smallest is the "N": a -> c, b -> c, b -> d) has no such form. Its first
  tasks (those depending on nothing left in it) run as one parallel step and the rest is
  decomposed again. The longest chain still has as many tasks as the critical path, but a task
  may wait for an unrelated task of the step before it: at worst each step lasts as long as its
  slowest task;
- parallel parts nest at most `MAX_NESTING` deep; below that the rest runs in levels (each level
  the tasks whose longest chain of dependencies has the same length), which keeps the same
  number of tasks on the longest chain with the waits of the case above.

Cuts are found with ancestor bit sets over one topological order: a body of n tasks costs
O(n) big-integer operations per level of nesting.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

MAX_NESTING = 8


@dataclass(frozen=True)
class Series:
    """Parts that run one after another."""

    parts: tuple[Shape, ...]


@dataclass(frozen=True)
class Parallel:
    """Parts that run side by side, all finished before what follows starts."""

    parts: tuple[Shape, ...]


Shape = str | Series | Parallel
"""A task's name, or parts of them in series or in parallel."""


def names(shape: Shape) -> list[str]:
    """The tasks of a shape, in the order they appear in it."""
    if isinstance(shape, str):
        return [shape]
    return [name for part in shape.parts for name in names(part)]


def decompose(dependencies: Mapping[str, Set[str]]) -> Shape:
    """The shape of tasks (in file order, each with the names it depends on; names outside the
    mapping are ignored). A graph with a cycle, which validation rejects, runs in file order."""
    order = _topological(dependencies)
    if order is None:
        return _series([*dependencies])
    within = {name: {d for d in dependencies[name] if d in dependencies} for name in order}
    return _decompose(order, within, 0)


def longest_chain(shape: Shape, weight: Mapping[str, int] | None = None) -> int:
    """The largest total weight of tasks that run one after another (each task 1 by default)."""
    if isinstance(shape, str):
        return 1 if weight is None else weight[shape]
    lengths = [longest_chain(part, weight) for part in shape.parts]
    return sum(lengths) if isinstance(shape, Series) else max(lengths)


def critical_path(dependencies: Mapping[str, Set[str]], weight: Mapping[str, int] | None = None) -> int:
    """The largest total weight along a chain of dependencies (each task 1 by default)."""
    order = _topological(dependencies) or list(dependencies)
    finish: dict[str, int] = {}
    for name in order:
        before = [finish[d] for d in dependencies[name] if d in finish]
        finish[name] = max(before, default=0) + (1 if weight is None else weight[name])
    return max(finish.values(), default=0)


def _topological(dependencies: Mapping[str, Set[str]]) -> list[str] | None:
    """File order, except that a task never comes before what it depends on; None on a cycle."""
    placed: list[str] = []
    done: set[str] = set()
    waiting = {name: {d for d in needs if d in dependencies} for name, needs in dependencies.items()}
    remaining = list(dependencies)
    while remaining:
        ready = [name for name in remaining if waiting[name] <= done]
        if not ready:
            return None
        placed += ready
        done.update(ready)
        remaining = [name for name in remaining if name not in done]
    return placed


def _decompose(order: list[str], within: dict[str, set[str]], nesting: int) -> Shape:
    """`order`: some tasks in a topological order, a set closed under paths between its members
    (so dependencies outside it never matter); `within`: each one's dependencies inside it."""
    if len(order) == 1:
        return order[0]
    members = set(order)
    components = _components(order, {name: within[name] & members for name in order})
    if len(components) > 1:
        if nesting >= MAX_NESTING:
            return _levels(order, within)
        return Parallel(tuple(_decompose(part, within, nesting + 1) for part in components))
    segments = _series_cuts(order, within)
    if len(segments) > 1:
        return _series([_decompose(segment, within, nesting) for segment in segments])
    # not series-parallel: the tasks depending on nothing here go first, as one step
    first = [name for name in order if not within[name] & members]
    rest = [name for name in order if within[name] & members]
    return _series([_decompose(first, within, nesting), _decompose(rest, within, nesting)])


def _components(order: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Weakly connected parts, each in `order`, ordered by their first task."""
    parent = {name: name for name in order}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for name in order:
        for dependency in edges[name]:
            parent[root(name)] = root(dependency)
    groups: dict[str, list[str]] = {}
    for name in order:
        groups.setdefault(root(name), []).append(name)
    return list(groups.values())


def _series_cuts(order: list[str], within: dict[str, set[str]]) -> list[list[str]]:
    """`order` cut wherever every task after the cut depends, directly or not, on every task
    before it. Every topological order puts such a prefix first, so one order finds them all."""
    position = {name: index for index, name in enumerate(order)}
    ancestors: list[int] = []
    for name in order:
        mask = 0
        for dependency in within[name]:
            if dependency in position:
                mask |= ancestors[position[dependency]] | (1 << position[dependency])
        ancestors.append(mask)
    common_after = [0] * (len(order) + 1)
    everything = (1 << len(order)) - 1
    common_after[len(order)] = everything
    for index in range(len(order) - 1, -1, -1):
        common_after[index] = common_after[index + 1] & ancestors[index]
    segments: list[list[str]] = []
    start = 0
    for cut in range(1, len(order)):
        prefix = (1 << cut) - 1
        if prefix & ~common_after[cut] == 0:
            segments.append(order[start:cut])
            start = cut
    segments.append(order[start:])
    return segments


def _levels(order: list[str], within: dict[str, set[str]]) -> Shape:
    """Tasks grouped by the length of their longest chain of dependencies, the groups in series."""
    depth: dict[str, int] = {}
    for name in order:
        depth[name] = max((depth[d] + 1 for d in within[name] if d in depth), default=0)
    levels: dict[int, list[str]] = {}
    for name in order:
        levels.setdefault(depth[name], []).append(name)
    steps: list[Shape] = []
    for level in sorted(levels):
        tasks = levels[level]
        steps.append(tasks[0] if len(tasks) == 1 else Parallel(tuple(tasks)))
    return _series(steps)


def _series(parts: list[Shape]) -> Shape:
    flat: list[Shape] = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, Series) else [part])
    return flat[0] if len(flat) == 1 else Series(tuple(flat))
