"""Generated benchmark workloads: pipeline YAML for Orchestrator, flow scripts for Prefect."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


def _script(lines: list[str], body: str) -> None:
    lines.append("    script: |")
    lines.extend("      " + line for line in body.splitlines())


def chain_yaml(n: int, *, template: bool = False) -> str:
    """`n` python tasks in a chain: each returns its predecessor's output plus one.

    The default passes the value with `context.get_task_output` (which is also what makes it a
    dependency); `template=True` writes it into the script as `{{ t<i-1> }}` instead.
    """
    lines = ['name: "bench chain"', "tasks:"]
    for index in range(n):
        lines += [f"  - name: t{index}", "    type: python_task"]
        if index == 0:
            _script(lines, "return 0")
        elif template:
            _script(lines, f"return {{{{ t{index - 1} }}}} + 1")
        else:
            _script(lines, f'return context.get_task_output("t{index - 1}") + 1')
    return "\n".join(lines) + "\n"


def independent_yaml(n: int) -> str:
    """`n` python tasks that depend on nothing; each computes its own number plus one."""
    lines = ['name: "bench independent"', "tasks:"]
    for index in range(n):
        lines += [f"  - name: t{index}", "    type: python_task"]
        _script(lines, f"return {index} + 1")
    return "\n".join(lines) + "\n"


def pipeline_dict_of(yaml_text: str) -> dict[str, object]:
    """The same pipeline as plain data (for the in-process run that skips YAML parsing)."""
    import yaml

    loaded = yaml.safe_load(yaml_text)
    assert isinstance(loaded, dict)
    return loaded


def for_loop_yaml(n: int, max_concurrency: int) -> str:
    """A `for_loop` over `range(n)` whose body is one trivial python task reading the item."""
    return f"""name: "bench for_loop"
tasks:
  - name: loop
    type: for_loop
    iterate_over: "{{{{ range({n}) | list }}}}"
    item_variable: item
    max_concurrency: {max_concurrency}
    tasks:
      - name: body
        type: python_task
        script: |
          return context.get_loop_variable("item") * 2
  - name: check
    type: python_task
    script: |
      results = context.get_task_output("loop")
      return {{"count": len(results), "last": results[-1]["body"]}}
"""


@dataclass(frozen=True)
class Dag:
    durations: list[float]  # seconds
    parents: list[list[int]]

    def critical_path(self) -> float:
        finish: list[float] = []
        for index, duration in enumerate(self.durations):
            start = max((finish[parent] for parent in self.parents[index]), default=0.0)
            finish.append(start + duration)
        return max(finish)

    def width(self) -> int:
        """Most tasks running at once in an ideal schedule (every task starts when it may)."""
        finish: list[float] = []
        events: list[tuple[float, int]] = []
        for index, duration in enumerate(self.durations):
            start = max((finish[parent] for parent in self.parents[index]), default=0.0)
            finish.append(start + duration)
            events += [(start, 1), (start + duration, -1)]
        running = widest = 0
        for _, change in sorted(events, key=lambda event: (event[0], event[1])):
            running += change
            widest = max(widest, running)
        return widest


def random_dag(nodes: int = 200, seed: int = 7, edge_probability: float = 0.03) -> Dag:
    """Seeded DAG: durations 20-80 ms, an edge from each lower to each higher index with p."""
    rng = random.Random(seed)
    durations = [rng.uniform(0.020, 0.080) for _ in range(nodes)]
    parents = [[i for i in range(j) if rng.random() < edge_probability] for j in range(nodes)]
    return Dag(durations, parents)


def dag_yaml(dag: Dag) -> str:
    lines = ['name: "bench dag"', "tasks:"]
    for index, duration in enumerate(dag.durations):
        lines += [f"  - name: n{index}", "    type: python_task"]
        if dag.parents[index]:
            lines.append("    depends_on: " + json.dumps([f"n{p}" for p in dag.parents[index]]))
        _script(lines, f"import time\ntime.sleep({duration:.6f})\nreturn {index}")
    return "\n".join(lines) + "\n"


def compile_yaml(n: int) -> str:
    """A 1,000-task pipeline for the compiler: a mix of chained tasks, conditions and retries."""
    lines = ['name: "bench compile"', "input_variables:", "  mode: {type: string, default: fast}", "tasks:"]
    for index in range(n):
        lines += [f"  - name: t{index}", "    type: python_task"]
        if index % 10 == 3:
            lines.append("    condition: \"{{ mode == 'fast' }}\"")
        if index % 10 == 7:
            lines += ["    error_handling:", "      retry_count: 2", "      on_failure: skip"]
        if index == 0:
            _script(lines, "return 0")
        else:
            previous = index - 1 if (index - 1) % 10 != 3 else index - 2
            _script(lines, f'return (context.get_task_output("t{previous}") or 0) + 1')
    return "\n".join(lines) + "\n"


PREFECT_FLOWS = '''"""Prefect 3 equivalents of the Orchestrator benchmark pipelines (bench/.venv-prefect)."""

import sys

from prefect import flow, task


@task
def work(x):
    return x + 1


@flow
def chain(n):
    x = work(-1)
    for _ in range(n - 1):
        x = work(x)
    return x


@flow
def independent(n):
    futures = [work.submit(i) for i in range(n)]
    return sum(future.result() for future in futures)


if __name__ == "__main__":
    kind, count = sys.argv[1], int(sys.argv[2])
    result = (chain if kind == "chain" else independent)(count)
    expected = count - 1 if kind == "chain" else count * (count + 1) // 2
    if result != expected:
        sys.exit(f"wrong result {result!r}, expected {expected!r}")
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
