"""What one run of each bundled pipeline costs on AWS Step Functions, next to the fewest possible.

Each pipeline in `pipelines/` runs once as its compiled state machine on the emulated AWS
(`orchestrator.aws.emulator.run_execution`, the engine behind `--engine stepfunctions`), with
the local fake LLM and search servers of `tests/fakes/servers.py`. From the execution history:

- state transitions: events whose type ends in `StateEntered` (what a Standard workflow bills);
- Lambda calls: `TaskScheduled` / `LambdaFunctionScheduled` events on Lambda;
- dispatch calls: those on the dispatch function (conditions, `iterate_over`, loop steps, ...);
- leaf calls: the rest, one per attempt of a python / LLM / web search task. This is the
  fewest possible: one Lambda call per leaf task that runs;
- leaf tasks skipped without a call: `<task>.skip` Pass states entered for leaf tasks.

`make bench` runs it too (`bench/run.py --only cloud` for this section alone): section (f) of
bench/RESULTS.md, and docs/cost.md from the same runs.

    .venv/bin/python bench/cloud_cost.py                     # print the report
    .venv/bin/python bench/cloud_cost.py --write docs/cost.md
    .venv/bin/python bench/cloud_cost.py --json runs.json    # the measurements, for bench/run.py
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import os
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "pipelines"
for _folder in (ROOT / "shared", ROOT / "tests"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

# inputs a pipeline needs to run here, as `-i name=value` text (as in the conformance tests)
INPUTS: dict[str, dict[str, str]] = {
    "circuit_breaker": {"failure_rate": "0"},
    "caching_strategy": {"simulated_work_seconds": "0"},
}
# LLM answers a pipeline needs to succeed (the fake server otherwise echoes the prompt)
LLM_ANSWERS: dict[str, list[str]] = {
    # a quality score below the threshold, the improved text, then a score above it: two rounds
    "iterative_improvement": ["0.6", "Pipelines are YAML files; each one runs its tasks in order.", "0.9"],
}
SKIP = {"api_integration": "needs a live API endpoint"}
ENVIRONMENT = {
    "OPENAI_API_KEY": "test-key",
    "ORCHESTRATOR_SECRET_DATABASE_PASSWORD": "pa55word",
    "SECURE_API_KEY": "key-123",
}
LEAF_TYPES = frozenset({"python_task", "llm_task", "web_search_task"})
SCHEDULED = frozenset({"TaskScheduled", "LambdaFunctionScheduled"})
DISPATCH = "orchestrator-dispatch"

# The fewest states ANY state machine must enter for the run measured here, beyond one Task
# state per leaf task that ran (see `fewest_transitions` and docs/cost.md): what each pipeline
# needs to keep the plan's concurrency and decide its conditions without a Lambda call
FEWEST_ABOVE_LEAVES: dict[str, tuple[tuple[int, str], ...]] = {
    "batch_processing": ((1, "a Map over the items"),),
    "conditional_processing": (
        (
            1,
            "one Choice deciding the three conditions at once (all read `analyze_input` only); "
            "with one task to run, no Parallel",
        ),
    ),
    "demo": (
        (1, "a Parallel (`countdown` beside the rest)"),
        (1, "a Parallel (`score_words` beside `long_list_note`, both after `prepare`)"),
        (1, "a Map (`score_words`)"),
        (1, "a Parallel (the two summaries)"),
        (1, "a Choice (`long_list_note`'s condition)"),
        (3, "three Choices, one after each tick (`countdown` goes on twice, then stops)"),
        (1, "a state after the last Choice, which cannot end a Parallel branch"),
    ),
    "dynamic_task_generation": ((1, "a Map over the generated tasks"),),
    "iterative_improvement": (
        (2, "two Choices, one per round (`improve_if_needed`'s condition)"),
        (2, "two Choices, one after each round (the loop goes on once, then stops)"),
        (1, "a state after the last Choice, which cannot end an execution"),
    ),
    "pipeline_parallelism": ((1, "a Parallel (the three child pipelines)"),),
    "secure_credentials": ((1, "a Parallel (`secure_operation` beside `audit_log`)"),),
    "task_parallelism": ((1, "a Parallel (the four chunks)"),),
}
# what the bound gives back where the criterion is only the critical path (the longest chain of
# leaf calls), not that every independent task starts at once: `demo`'s `long_list_note` may
# wait for `score_words` and join the summaries' Parallel
FEWER_BY_CRITICAL_PATH_ONLY = {"demo": 1}

# us-east-1 list prices
TRANSITION_PRICE = 0.025 / 1_000  # Step Functions Standard, per state transition
REQUEST_PRICE = 0.20 / 1_000_000  # Lambda, per request (duration ignored)


def pipelines() -> list[Path]:
    """The bundled pipelines this report covers."""
    return [path for path in sorted(PIPELINES.glob("*.yaml")) if path.stem not in SKIP]


def cost_per_1000_runs(transitions: int, lambda_calls: int) -> float:
    """Dollars for 1,000 runs: Standard state transitions plus Lambda requests."""
    return 1_000 * (transitions * TRANSITION_PRICE + lambda_calls * REQUEST_PRICE)


def _leaf_names(tasks: list[Any], folder: Path) -> set[str]:
    """Names of the leaf tasks of a task list, nested ones and child pipelines' included."""
    from orchestrator.spec.loading import read_pipeline

    names: set[str] = set()
    for task in tasks:
        kind = getattr(task, "type", None)
        if kind in LEAF_TYPES and task.name:
            names.add(task.name)
        nested = getattr(task, "tasks", None)
        if isinstance(nested, list):
            names |= _leaf_names([t for t in nested if not isinstance(t, dict)], folder)
        for child in getattr(task, "pipelines", None) or []:
            child_path = (folder / child.pipeline).resolve()
            names |= _leaf_names(read_pipeline(child_path).pipeline.tasks, child_path.parent)
    return names


def _scheduled_call(event: dict[str, Any]) -> tuple[str, Any]:
    """The Lambda function a scheduled event calls (its ARN, or "" if not Lambda) and its payload."""
    if event["type"] == "LambdaFunctionScheduled":
        details = event.get("lambdaFunctionScheduledEventDetails", {})
        try:
            payload = json.loads(details.get("input") or "null")
        except ValueError:
            payload = None
        return str(details.get("resource", "")), payload
    details = event.get("taskScheduledEventDetails", {})
    if details.get("resourceType") != "lambda":
        return "", None
    try:
        parameters = json.loads(details.get("parameters") or "{}")
    except ValueError:
        return str(details.get("parameters", "")), None
    if not isinstance(parameters, dict):
        return "", None
    return str(parameters.get("FunctionName", "")), parameters.get("Payload")


def count_history(history: list[dict[str, Any]], leaf_names: set[str]) -> dict[str, Any]:
    """Transitions, Lambda calls (dispatch and leaf) and leaf tasks skipped without a call."""
    by_id = {event["id"]: event for event in history}
    transitions = lambda_calls = dispatch_calls = skipped = self_skipped = 0
    leaf_states: set[int] = set()  # the states entered that called a leaf task (retries are in them)
    actions: Counter[str] = Counter()
    for event in history:
        kind = event["type"]
        if kind.endswith("StateEntered"):
            transitions += 1
            name = event["stateEnteredEventDetails"]["name"]
            last = name.rsplit("/", 1)[-1]
            if kind == "PassStateEntered" and last.endswith(".skip") and last[: -len(".skip")] in leaf_names:
                skipped += 1
        elif kind in SCHEDULED:
            function, payload = _scheduled_call(event)
            if not function:
                continue
            lambda_calls += 1
            if DISPATCH in function:
                dispatch_calls += 1
                actions[str(payload.get("action", "?")) if isinstance(payload, dict) else "?"] += 1
            else:
                entered = by_id.get(event.get("previousEventId"))
                while entered is not None and not entered["type"].endswith("StateEntered"):
                    entered = by_id.get(entered.get("previousEventId"))
                leaf_states.add(entered["id"] if entered is not None else -event["id"])
        elif kind in {"TaskSucceeded", "LambdaFunctionSucceeded"}:
            # a leaf whose condition only its Lambda can decide may answer "skipped"
            scheduled = by_id.get(event.get("previousEventId"))
            while scheduled is not None and scheduled["type"] not in SCHEDULED:
                scheduled = by_id.get(scheduled.get("previousEventId"))
            if scheduled is None or DISPATCH in _scheduled_call(scheduled)[0]:
                continue
            details = event.get("taskSucceededEventDetails") or event.get(
                "lambdaFunctionSucceededEventDetails", {}
            )
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                payload = json.loads(details.get("output") or "{}").get("Payload")
                if isinstance(payload, dict) and payload.get("status") == "skipped":
                    self_skipped += 1
    return {
        "transitions": transitions,
        "lambda_calls": lambda_calls,
        "dispatch_calls": dispatch_calls,
        "leaf_calls": lambda_calls - dispatch_calls,
        "leaf_states": len(leaf_states),
        "leaf_skipped_without_call": skipped,
        "leaf_calls_answering_skipped": self_skipped,
        "dispatch_actions": dict(sorted(actions.items())),
    }


def fewest_transitions(pipeline: str, leaf_states: int) -> int | None:
    """The fewest state transitions any state machine needs for the run measured of `pipeline`
    while keeping the plan's concurrency and deciding conditions without a Lambda call: one Task
    state per leaf task that ran, and the states of `FEWEST_ABOVE_LEAVES`. None for a pipeline
    it does not list (not a bundled one)."""
    if pipeline not in FEWEST_ABOVE_LEAVES and pipeline not in NO_STATE_ABOVE_LEAVES:
        return None
    return leaf_states + sum(count for count, _why in FEWEST_ABOVE_LEAVES.get(pipeline, ()))


NO_STATE_ABOVE_LEAVES = frozenset(
    {
        "caching_strategy",
        "circuit_breaker",
        "data_analysis_pipeline",
        "database_integration",
        "hierarchical_error_handling",
        "input_validation",
        "model_training_pipeline",
        "resource_management",
        "shared_state",
        "stateful_processing",
        "validation_pipeline",
    }
)
"""The bundled pipelines whose run needs no state but its leaf tasks' (one after another, no
condition decided at run time)."""


@contextlib.contextmanager
def _isolated(home: Path, environment: dict[str, str]) -> Iterator[None]:
    """This process's environment and working folder, set for one run and then put back."""
    saved_environment = dict(os.environ)
    saved_cwd = Path.cwd()
    os.environ.pop("ORCHESTRATOR_CONFIG", None)
    os.environ.update(environment)
    os.environ["ORCHESTRATOR_HOME"] = str(home / ".orchestrator")
    os.chdir(home)  # files a pipeline writes stay in the temporary folder
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environment)


def measure(path: Path | str) -> dict[str, Any]:
    """Run one pipeline once on the emulated AWS and count what it would be billed for."""
    from fakes.servers import FakeOpenAIServer, FakeSearchServer
    from orchestrator.aws.emulator import run_execution
    from orchestrator.aws.stepfunctions_engine import execution_input
    from orchestrator.engine.local import new_run_id
    from orchestrator.plan import build_plan
    from orchestrator.runtime.inputs import resolve_inputs
    from orchestrator.spec.loading import read_pipeline

    path = Path(path).resolve()
    with (
        FakeOpenAIServer() as openai,
        FakeSearchServer() as search,
        tempfile.TemporaryDirectory(prefix="cloud-cost-") as folder,
    ):
        openai.enqueue(*LLM_ANSWERS.get(path.stem, []))
        environment = {
            **ENVIRONMENT,
            "OPENAI_BASE_URL": openai.base_url,
            "ORCHESTRATOR_SEARCH_URL": search.url,
        }
        with _isolated(Path(folder), environment):
            plan = build_plan(read_pipeline(path))
            given = INPUTS.get(path.stem, {})
            inputs = resolve_inputs(plan.pipeline, dict(given), text_keys=frozenset(given))
            run_id = new_run_id()
            run = {
                "id": run_id,
                "pipeline": plan.pipeline_id,
                "started_at": datetime.now(UTC).isoformat(),
                "user_id": getpass.getuser(),
                "no_cache": False,
            }
            started = time.monotonic()
            execution = run_execution(plan, lambda: execution_input(plan, inputs, run), run_id)
            seconds = time.monotonic() - started
    counts = count_history(execution["history"], _leaf_names(plan.pipeline.tasks, path.parent))
    leaf = counts["leaf_calls"]
    fewest = fewest_transitions(path.stem, counts["leaf_states"])
    return {
        "pipeline": path.stem,
        "status": execution["status"],
        **counts,
        "fewest_transitions": fewest,
        "fewest_transitions_per_leaf_call": fewest / leaf if fewest is not None and leaf else None,
        "overhead_ratio": counts["lambda_calls"] / leaf if leaf else None,
        "transitions_per_leaf_call": counts["transitions"] / leaf if leaf else None,
        "cost_per_1000_runs": cost_per_1000_runs(counts["transitions"], counts["lambda_calls"]),
        "minimum_cost_per_1000_runs": cost_per_1000_runs(leaf, leaf),
        "seconds": seconds,
    }


def totals(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The sums over all the runs measured, with the same keys (and ratios) as one run."""
    summed = (
        "transitions",
        "lambda_calls",
        "dispatch_calls",
        "leaf_calls",
        "leaf_states",
        "leaf_skipped_without_call",
        "leaf_calls_answering_skipped",
        "cost_per_1000_runs",
        "minimum_cost_per_1000_runs",
    )
    total: dict[str, Any] = {key: sum(r[key] for r in results) for key in summed}
    fewest = [r["fewest_transitions"] for r in results]
    total["fewest_transitions"] = None if None in fewest else sum(fewest)
    actions: Counter[str] = Counter()
    for r in results:
        actions.update(r["dispatch_actions"])
    leaf = total["leaf_calls"]
    total["dispatch_actions"] = dict(sorted(actions.items()))
    total["overhead_ratio"] = total["lambda_calls"] / leaf if leaf else None
    total["transitions_per_leaf_call"] = total["transitions"] / leaf if leaf else None
    total["fewest_transitions_per_leaf_call"] = (
        total["fewest_transitions"] / leaf if total["fewest_transitions"] is not None and leaf else None
    )
    return total


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _actions(actions: dict[str, int]) -> str:
    return ", ".join(f"{action} {count}" for action, count in actions.items()) or "-"


def _row(label: str, status: str, r: dict[str, Any]) -> list[str]:
    """One row of docs/cost.md's table: one run, or the totals of all of them."""
    return [
        label,
        status,
        str(r["transitions"]),
        str(r["lambda_calls"]),
        str(r["leaf_calls"]),
        str(r["dispatch_calls"]),
        _actions(r["dispatch_actions"]),
        str(r["leaf_skipped_without_call"]),
        _ratio(r["overhead_ratio"]),
        _ratio(r["transitions_per_leaf_call"]).removesuffix("×"),
        "-" if r["fewest_transitions"] is None else str(r["fewest_transitions"]),
        _ratio(r["fewest_transitions_per_leaf_call"]).removesuffix("×"),
        f"${r['cost_per_1000_runs']:.4f}",
        f"${r['minimum_cost_per_1000_runs']:.4f}",
    ]


TARGET_TRANSITIONS_PER_LEAF_CALL = 1.3  # issue 12's target over the bundled pipelines


def _bound_lines() -> list[str]:
    """The states of `FEWEST_ABOVE_LEAVES`, a list item per pipeline, for docs/cost.md."""
    return [
        textwrap.fill(
            f"- `{pipeline}` (+{sum(count for count, _why in states)}): "
            + "; ".join(why for _c, why in states),
            96,
            subsequent_indent="  ",
            break_on_hyphens=False,
        )
        for pipeline, states in FEWEST_ABOVE_LEAVES.items()
    ]


def render(results: list[dict[str, Any]]) -> str:
    """docs/cost.md."""
    header = [
        "pipeline",
        "run",
        "state transitions",
        "Lambda calls",
        "leaf calls (minimum)",
        "dispatch calls (overhead)",
        "dispatch calls by action",
        "leaf tasks skipped, no call",
        "Lambda calls ÷ minimum",
        "transitions per leaf call",
        "fewest transitions, any machine",
        "fewest per leaf call",
        "cost per 1,000 runs",
        "at the minimum",
    ]
    rows = [_row(f"`{r['pipeline']}`", r["status"].lower(), r) for r in results]
    rows.append(_row("**all**", "", totals(results)))
    table = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i in {0, 1, 6} else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    answering = [r for r in results if r["leaf_calls_answering_skipped"]]
    notes = []
    if answering:
        listed = ", ".join(f"`{r['pipeline']}` {r['leaf_calls_answering_skipped']}" for r in answering)
        notes.append(
            "- Some leaf calls only answered `skipped`: their condition is a template that ASL "
            "cannot test, so the task's own Lambda evaluates it (" + listed + "). They are counted "
            "as leaf calls above."
        )
    failed = [r["pipeline"] for r in results if r["status"] != "SUCCEEDED"]
    if failed:
        notes.append(
            "- Runs that did not succeed (by design of the pipeline, or see the conformance tests): "
            + ", ".join(f"`{name}`" for name in failed)
            + "."
        )
    skipped_pipelines = ", ".join(f"`{name}` ({why})" for name, why in SKIP.items())
    all_runs = totals(results)
    leaf_total = all_runs["leaf_calls"]
    bound_total = all_runs["fewest_transitions"]
    bound_ratio = _ratio(all_runs["fewest_transitions_per_leaf_call"])
    measured = {r["pipeline"] for r in results}
    fewer = sum(count for name, count in FEWER_BY_CRITICAL_PATH_ONLY.items() if name in measured)
    if bound_total is None or not leaf_total:
        conclusion = "Some runs measured here are not of bundled pipelines: the bound is not summed."
    else:
        target = TARGET_TRANSITIONS_PER_LEAF_CALL
        took = _ratio(all_runs["transitions_per_leaf_call"])
        compiled = f"the compiled machines take {all_runs['transitions']} ({took})"
        if bound_total > target * leaf_total:
            verdict = (
                f"A target of {target}× transitions per leaf call is below it: no state machine that keeps "
                f"the plan's concurrency and decides conditions in ASL can meet it; {compiled}."
            )
        else:
            verdict = f"A target of {target}× transitions per leaf call is at or above it; {compiled}."
        conclusion = textwrap.fill(
            f"Over the bundled pipelines the bound is {bound_total} transitions for {leaf_total} leaf "
            f"calls: **{bound_ratio}**. {verdict} Where the criterion is only that the longest chain of "
            "leaf calls equals the critical path, `demo`'s `long_list_note` may wait for `score_words` and "
            f"join the summaries' `Parallel` (no chain gets longer): {bound_total - fewer} transitions, "
            f"{_ratio((bound_total - fewer) / leaf_total)}.",
            96,
            break_on_hyphens=False,
        )
    text = f"""# What a run costs on AWS Step Functions

One run of each pipeline in `pipelines/`, as its compiled state machine on the emulated AWS
(`--engine stepfunctions`: moto's Step Functions running the exact definition `orchestrator build`
deploys, with this project's Lambda handlers), against the local fake LLM and search servers of
`tests/fakes/servers.py`. Generated by `bench/cloud_cost.py`; `make bench` runs it too, for section
(f) of `bench/RESULTS.md`, and writes this page from the same runs:

    .venv/bin/python bench/cloud_cost.py --write docs/cost.md

What is counted, from each execution's history:

- **State transitions**: states entered (history events whose type ends in `StateEntered`),
  Map iterations and Parallel branches included. A Standard workflow is billed per state
  transition: **$0.025 per 1,000** in us-east-1 (after the free tier of 4,000 a month).
- **Lambda calls**: `TaskScheduled` events on `lambda:invoke`, retries included. Lambda bills
  **$0.20 per 1M requests**; duration (GB-seconds) is left out here.
- **Leaf calls** are the Lambda calls to the python, LLM and web search task functions, one per
  attempt of a leaf task that ran. This is **the fewest possible: one Lambda call per executed
  leaf task**, which no orchestration can go below.
- **Dispatch calls** are the rest: the dispatch function evaluating what ASL cannot, by
  `action`: `condition` (a templated condition), `items` (an `iterate_over` list that is not
  the pipeline's own array input), `while` (a `while_loop`'s start, unless its condition reads
  only the loop's variables, and each step, unless the body ends with a leaf task, whose
  function then takes it), `expand` (a `dynamic_task_group`'s specs, each with the function
  that runs it), `render`
  (a `fallback_value`), `child_inputs` (a child pipeline's inputs, unless they are constants or
  copies of the parent's inputs, which the state machine gives by Parameters) and `outputs`
  (the pipeline's `outputs` section, rendered once at the end). They are the Lambda overhead of the compiled
  state machine.
- **Leaf tasks skipped, no call**: leaf tasks whose condition the state machine decided with a
  Choice state, so that no Lambda ran for them.
- **Cost per 1,000 runs** = transitions × $0.025 + Lambda calls × $0.0002 (1,000 runs).
  **At the minimum** is what 1,000 runs would cost with one Task state and one Lambda call per
  leaf call and nothing else.

Inputs are the pipelines' defaults, except `failure_rate=0` for `circuit_breaker` and
`simulated_work_seconds=0` for `caching_strategy` (as in `tests/conformance`). The fake LLM
echoes each prompt, except for `iterative_improvement`, which is answered a quality score of 0.6,
an improved text, then 0.9 (two rounds of its `while_loop`; with echoes its first score does not
parse and the run fails). Counts can vary from run to run where a pipeline draws at random or
reads the clock, and they follow the compiler: regenerate this page when `asl.py` changes.
Not measured: {skipped_pipelines}.

{chr(10).join(table)}

Where the transitions above the minimum go: every one is a decision or a join the run needs. A
`Choice` per condition the state machine decides (and a `Pass` writing the record of a task it
skips), a `while_loop`'s start (unless its first test is known when compiling: the `Parameters`
of its `Parallel` then put its first state in place), its check after each iteration and its
end, a `Parallel` state per step of tasks that run side by side, a `Map` per loop, a `Choice`
per for_loop whose count is known only at run time (an inline `Map` for few items, a Distributed
Map for more than its history allows), and a one-branch `Parallel` holding a container's own
states where the task's `Retry` and `Catch` must cover all of them (a task with error handling
of its own) and around every `while_loop`. No state routes a generated task to its function (the
`expand` call names it, and the `Map` calls it by name); a container without error handling runs
its own states in the body, with no `Parallel` (a for_loop's `Choice` between an inline and a
Distributed Map too); no `Pass` gathers the records of a branch of more than one task (the
`Parallel`'s `Parameters` give its branches the records before it apart, so a branch's `$.tasks`
holds its own only, and its last state outputs it); and a loop iteration (or a child pipeline)
that ends with a leaf task needs no `Pass` to collect its outputs: that task's call hands them
back with its own; a child pipeline whose inputs are constants or copies of the parent's gets
them by Parameters, with no call. Before issue 12 (commit 292cb5c) the bundled pipelines took
126 transitions and 73 Lambda calls for the same 60 leaf calls (2.10× and 1.22×), with every
top-level task run one after another; before these last changes (a generated task named by its
spec, containers without error handling out of their `Parallel`, iterations collected by their
last leaf, child inputs by Parameters), 108 transitions (1.80×) and 66 Lambda calls (1.10×);
before the last three (a `while_loop` started by its `Parallel`'s `Parameters`, a for_loop's
`Choice` between its Maps out of a `Parallel`, no `Pass` gathering a branch's records), 98
transitions (1.63×).

## The fewest transitions any state machine needs

The column **fewest transitions, any machine** is a lower bound, not this compiler's count: the
states that any Step Functions state machine must enter for the same run if it keeps the plan's
concurrency (tasks that do not depend on each other run side by side, so the longest chain of
leaf calls is the plan's critical path) and decides conditions without a Lambda call. A Standard
workflow bills every state entered, whatever its type, so each term is a state entered:

- **one Task state per leaf task that ran**: only a Task state calls a Lambda (a retry runs
  inside the state and adds no transition);
- **one `Parallel` or `Map` per point where leaf calls run side by side**: only they run states
  at the same time. A loop over items known only at run time needs its `Map` whatever their
  number; a `Parallel` is needed only where at least two of its branches have work;
- **one `Choice` per decision taken at run time**: a condition ASL can test, and a
  `while_loop`'s test after each iteration (the first is known when compiling where the
  condition reads only `loop_state` and `loop_index`). Conditions that read the same finished
  tasks share one `Choice`, which can route to any combination of the tasks they guard: so a
  `Parallel` whose branches are all skipped but one is not needed either;
- **one state after a `Choice` that ends a branch or the execution**: a `Choice` can be neither
  the last state of a `Parallel` branch nor of an execution, so a `while_loop` ending its branch
  (or the run) enters one more state (a `Succeed` or a `Pass`) once its last test says stop.

Everything else the compiled machines enter counts for nothing in the bound, as if a perfect
compiler avoided it: dispatch calls (the `items`, `expand` and `outputs` values could come from
the leaf call that produces what they read, or from `Parameters`), the `Choice` between an
inline and a Distributed Map (the loop could run as a Distributed Map every time), the `Pass`
writing a skipped task's record (the `Choice` could go to a copy of the states after it that
knows the task was skipped), one-branch `Parallel` states. Left out of the bound's reach: a
machine leaving a loop by a Lambda error that a `Catch` turns into the way out (every loop would
end with a failed Lambda call, and the task's output would travel in the error's text), and
Express workflows, billed by duration instead.

The states above one Task state per leaf task, per pipeline (none for the others, whose tasks
run one after another with no condition left to run time):

{chr(10).join(_bound_lines())}

{conclusion}
"""
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", type=Path, help="write the report here (e.g. docs/cost.md)")
    parser.add_argument("--json", type=Path, help="write the measurements here, as JSON (for bench/run.py)")
    parser.add_argument("pipelines", nargs="*", type=Path, help="pipeline files (default: pipelines/)")
    arguments = parser.parse_args(argv)
    results = []
    for path in arguments.pipelines or pipelines():
        logs = io.StringIO()  # what the Lambda handlers log while emulated
        try:
            with contextlib.redirect_stderr(logs):
                result = measure(path)
        except Exception:
            sys.stderr.write(logs.getvalue()[-5000:])
            raise
        results.append(result)
        print(
            f"{result['pipeline']:32} {result['status']:10} transitions {result['transitions']:4}"
            f"  lambda {result['lambda_calls']:3}  leaf {result['leaf_calls']:3}"
            f"  dispatch {result['dispatch_calls']:3}  ({result['seconds']:.1f}s)",
            flush=True,
        )
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
        print(f"wrote {arguments.json}")
    if arguments.write:
        arguments.write.write_text(render(results), encoding="utf-8")
        print(f"wrote {arguments.write}")
    elif not arguments.json:
        print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
