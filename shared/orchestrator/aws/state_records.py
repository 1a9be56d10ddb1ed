"""Reading task records out of an execution's state, as the compiler (`asl.py`) lays them out.

Every task writes its record (`{"status", "output", ...}`) at `$.tasks.<name>` of the state it
runs in. Tasks that run side by side, in the branches of a compiler-made Parallel state, end
up under that step's own key once it ends: `$.tasks.parallel<N>`, a mapping marked with
`PARALLEL_MARK` holding their records by name. Whoever reads a state's `$.tasks` whole (the run
document, the API's run view) reads it through `task_records`.
"""

from __future__ import annotations

from typing import Any

PARALLEL_MARK = "~parallel"
"""A key only a parallel step's mapping holds: no task's name has a `~`."""


def task_records(tasks: dict[str, Any]) -> dict[str, Any]:
    """`$.tasks` of an execution's state as one record per task, by name."""
    found: dict[str, Any] = {}
    for name, record in tasks.items():
        if isinstance(record, dict) and record.get(PARALLEL_MARK) is True:
            found.update({inner: value for inner, value in record.items() if inner != PARALLEL_MARK})
        else:
            found[name] = record
    return found
