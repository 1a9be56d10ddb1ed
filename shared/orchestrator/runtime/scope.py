"""Name lookup for templates and `context`: the current iteration's names first, then outward."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoopFrame:
    """The loop iteration a scope belongs to (for `get_loop_variable` / `get_loop_iteration`)."""

    index: int
    state: dict[str, Any] = field(default_factory=dict)  # while_loop: loop_state
    item_variable: str | None = None  # for_loop
    item: Any = None


class Scope(Mapping[str, Any]):
    """A chain of frames read in place; Jinja evaluates against it without copying."""

    __slots__ = ("_values", "loop", "outputs", "parent", "place")

    def __init__(
        self,
        values: Mapping[str, Any],
        parent: Scope | None = None,
        *,
        loop: LoopFrame | None = None,
        place: tuple[str, ...] | None = None,
    ) -> None:
        self._values = values
        self.parent: Scope | None = parent
        self.loop: LoopFrame | None = loop if loop is not None else (parent.loop if parent else None)
        self.outputs: dict[str, Any] = {}
        # the task path (`runtime.telemetry`) the tasks run in this scope are under
        self.place: tuple[str, ...] = place if place is not None else (parent.place if parent else ())

    def child(
        self,
        values: dict[str, Any] | None = None,
        *,
        loop: LoopFrame | None = None,
        place: tuple[str, ...] | None = None,
    ) -> Scope:
        return Scope(values or {}, self, loop=loop, place=place)

    def __getitem__(self, key: str) -> Any:
        scope: Scope | None = self
        while scope is not None:
            if key in scope.outputs:
                return scope.outputs[key]
            if key in scope._values:
                return scope._values[key]
            scope = scope.parent
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        scope: Scope | None = self
        while scope is not None:
            if key in scope.outputs or key in scope._values:
                return True
            scope = scope.parent
        return False

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        scope: Scope | None = self
        while scope is not None:
            for key in (*scope.outputs, *scope._values):
                if key not in seen:
                    seen.add(key)
                    yield key
            scope = scope.parent

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def task_output(self, name: str) -> tuple[bool, Any]:
        """A finished task's output by name, innermost first."""
        scope: Scope | None = self
        while scope is not None:
            if name in scope.outputs:
                return True, scope.outputs[name]
            scope = scope.parent
        return False, None
