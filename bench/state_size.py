"""How large the execution state of a run gets on AWS Step Functions, against its 256 KiB quota.

Step Functions fails a run whose state input or output passes 256 KiB (`States.DataLimitExceeded`,
which no Catch handles). Values go to S3 above their share of a state budget
(`orchestrator.aws.state_budget`), so that no number of outputs, of any size, reaches it. This
runs workloads made of many large outputs as their compiled state machines on the emulated AWS
(`orchestrator.aws.emulator.run_execution`, the engine behind `--engine stepfunctions`) and
measures, from each execution's history, the largest state (the JSON of a state's input or
output, as the emulator checks the quota: `state_budget.largest_state`):

- `100 outputs of 50 KB`: 100 python tasks, each returning 50 KB (5 MB in all);
- `for_loop, 100 x 50 KB`: a for_loop over `range(100)` (its count known at run time) whose
  body returns 50 KB per iteration;
- `for_loop, literal 100 x 50 KB`: the same over a literal list of 100 items;
- `100 outputs at their inline limit`: the worst case for 100 records: each output just small
  enough to stay in the state (`STATE_BUDGET` / 100 bytes), so the state holds the whole budget.

`make bench` runs it too (`bench/run.py --only state` for this section alone).

    .venv/bin/python bench/state_size.py                  # print the table
    .venv/bin/python bench/state_size.py --json runs.json # the measurements, for bench/run.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "shared") not in sys.path:
    sys.path.insert(0, str(ROOT / "shared"))

SIZE = 50_000
COUNT = 100


def _tasks_yaml(count: int, size: int) -> str:
    tasks = "".join(
        f"""
  - name: task_{i}
    type: python_task
    script: return "{i % 10}" * {size}"""
        for i in range(count)
    )
    return f"name: {count} outputs\ntasks:{tasks}\n"


def _loop_yaml(count: int, size: int, *, literal: bool) -> str:
    items = json.dumps(list(range(count))) if literal else f'"{{{{ range({count}) | list }}}}"'
    return f"""name: loop of {count}
tasks:
  - name: each
    type: for_loop
    iterate_over: {items}
    max_concurrency: 10
    tasks:
      - name: make
        type: python_task
        script: return str({{{{ item }}}} % 10) * {size}
"""


def _at_limit() -> int:
    """The length of a string whose JSON is exactly the inline limit of `COUNT` records."""
    from orchestrator.aws.state_budget import STATE_BUDGET, inline_limit

    return inline_limit(STATE_BUDGET, COUNT) - 2  # (its two quotes)


# label -> (file stem, the pipeline's text, the characters each of its COUNT values has)
WORKLOADS: dict[str, tuple[str, Callable[[int], str], Callable[[], int]]] = {
    f"{COUNT} outputs of {SIZE // 1000} KB": ("outputs", lambda n: _tasks_yaml(COUNT, n), lambda: SIZE),
    f"for_loop, {COUNT} x {SIZE // 1000} KB": (
        "loop",
        lambda n: _loop_yaml(COUNT, n, literal=False),
        lambda: SIZE,
    ),
    f"for_loop, literal {COUNT} x {SIZE // 1000} KB": (
        "literal_loop",
        lambda n: _loop_yaml(COUNT, n, literal=True),
        lambda: SIZE,
    ),
    f"{COUNT} outputs at their inline limit": ("at_limit", lambda n: _tasks_yaml(COUNT, n), _at_limit),
}


def measure(label: str, stem: str, text: str, values_bytes: int) -> dict[str, Any]:
    """Run one workload on the emulated AWS; the largest state of its execution."""
    from orchestrator.aws.emulator import run_execution
    from orchestrator.aws.state_budget import STATE_BUDGET, STATE_QUOTA, largest_state
    from orchestrator.aws.stepfunctions_engine import execution_input
    from orchestrator.plan import build_plan
    from orchestrator.spec.loading import read_pipeline

    with tempfile.TemporaryDirectory(prefix="state-size-") as folder:
        path = Path(folder) / f"{stem}.yaml"
        path.write_text(text, encoding="utf-8")
        saved = dict(os.environ)
        os.environ["ORCHESTRATOR_HOME"] = str(Path(folder) / ".orchestrator")
        try:
            plan = build_plan(read_pipeline(path))
            run_id = f"state-size-{stem}"
            run = {"id": run_id, "pipeline": plan.pipeline_id, "started_at": "2026-01-01T00:00:00Z"}
            started = time.monotonic()
            execution = run_execution(plan, lambda: execution_input(plan, {}, run), run_id)
            seconds = time.monotonic() - started
        finally:
            os.environ.clear()
            os.environ.update(saved)
    largest = largest_state(execution["history"])
    return {
        "workload": label,
        "status": execution["status"],
        "values_bytes": values_bytes,
        "largest_state": largest,
        "quota": STATE_QUOTA,
        "budget": STATE_BUDGET,
        "quota_ratio": largest / STATE_QUOTA,
        "in_s3": len(execution["payloads"].objects),
        "seconds": seconds,
    }


def measure_all() -> list[dict[str, Any]]:
    runs = []
    for label, (stem, text, characters) in WORKLOADS.items():
        print(f"state size: {label}", file=sys.stderr, flush=True)
        size = characters()
        runs.append(measure(label, stem, text(size), COUNT * size))
    return runs


def render(runs: list[dict[str, Any]]) -> str:
    """A markdown table of the runs."""
    lines = [
        "| workload | run | values | largest state | of the 256 KiB quota | objects in S3 | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['workload']} | {run['status'].lower()} | {run['values_bytes'] / 1e6:.1f} MB "
            f"| {run['largest_state']:,} bytes | {run['quota_ratio']:.0%} | {run['in_s3']} "
            f"| {run['seconds']:.1f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write the measurements here (for bench/run.py)")
    arguments = parser.parse_args(argv)
    runs = measure_all()
    if arguments.json:
        arguments.json.write_text(json.dumps(runs, indent=2), encoding="utf-8")
    print(render(runs))
    return 0 if all(run["status"] == "SUCCEEDED" and run["quota_ratio"] < 1 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
