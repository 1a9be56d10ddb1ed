"""Run telemetry: what each leaf attempt did and when, recorded while the run goes on, and the
run document's telemetry fields assembled from it, for both engines.

Recording. A leaf attempt is one entry of the run's `TelemetryLog` (`Stores.telemetry`),
written twice: when the attempt starts (`status: running`) and when it ends (replaced whole,
with its status, error, printed lines, LLM calls and rendered inputs). `TaskRun.attempting`
opens the entry around each attempt on both engines; the attempt's own code reaches it through
`current_recording()` (the script's prints in `task_streams.TaskLog`, a sandboxed child's
output in `sandbox`, provider calls in `llm`, rendered inputs in `leaf`). A driver that runs
the attempt on another thread passes it along with `carrying`.

An entry is placed by its task path, the task's place in the run: `["summarise"]` at the top
level, `["loop", "2", "inner"]` inside iteration 2 of `loop`, `["group", "gen_1", "gen_1"]`
for a task a dynamic_task_group generated (its key is its own name). Names and keys alternate;
parallel groups add nothing (their children are flat, as in the document). A child pipeline's
tasks are recorded under the top run with `pipeline_run` set to the child pipeline's id.

Assembling. `with_telemetry` turns a run document and its entries into the added fields
(docs/telemetry.md): spans, `attempt_log`, `inputs`, and `children` of containers, whose
spans are those of what is inside (containers have no attempts of their own: on AWS they are
Map and Parallel states), and `usage`: tokens and cost of each LLM call, task and the run, from
the model prices of the config the caller passes (`Settings.prices`: cost is worked out where
the document is assembled, never where the call is made); `record_usage` writes a run's usage
to the audit log as it ends. `live_document` does the same for a run still going on.

Nothing unredacted enters an entry: lines and errors are redacted as they come, inputs
before they are stored, and everything again with the run's redactor when it is written.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.errors import TaskError
from orchestrator.runtime.documents import ErrorInfo
from orchestrator.spec.models import ForLoop, ParallelGroup, PipelineGroup, TaskBase, WhileLoop

if TYPE_CHECKING:
    from orchestrator.plan import Plan
    from orchestrator.runtime.redact import Redactor
    from orchestrator.settings import ModelPrice
    from orchestrator.stores.base import AuditLog, Stores, TelemetryLog

PRINTED_LINES = 200
"""The most printed lines an attempt keeps: its last ones."""
PRINTED_BYTES = 64 * 1024
"""The most bytes of printed lines an attempt keeps (its last ones)."""
LINE_CHARS = 16 * 1024
"""The most characters of one printed line (a longer one is cut, ending with `CUT`)."""
INPUT_CHARS = 16 * 1024
"""The most characters of one rendered input (a prompt, a script) an entry keeps."""
LLM_CALLS = 100
"""The most LLM calls an attempt keeps (its first ones)."""
CUT = " [...]"

T = TypeVar("T")

_CURRENT: ContextVar[Recording | None] = ContextVar("orchestrator_attempt_recording", default=None)
_PROCESS = uuid.uuid4().hex[:12]
"""This process's part of an entry id: entries of one run come from many processes (Lambdas)."""
_ENTRIES = itertools.count()


def now() -> float:
    return time.time()


def iso(moment: float | None) -> str | None:
    """A time as the run document shows it: ISO-8601 UTC with milliseconds."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def seconds(started: float | None, ended: float | None) -> float | None:
    if started is None or ended is None:
        return None
    return round(max(0.0, ended - started), 3)


@dataclass(frozen=True)
class TaskPlace:
    """Where a task's attempts are recorded: the log, the top run's id, the child pipeline
    the task belongs to ("" for the top pipeline) and the task's path (see the module)."""

    log: TelemetryLog
    run_id: str
    pipeline_run: str
    path: tuple[str, ...]


GENERATED = "*"
"""The last part of the place of a dynamic_task_group's generated tasks: each one is keyed by
its own name (no task name can be `*`)."""


def task_path(place: tuple[str, ...], name: str) -> tuple[str, ...]:
    """The path of task `name` run in a scope whose place is `place` (`Scope.place`)."""
    if place and place[-1] == GENERATED:
        return (*place[:-1], name, name)
    return (*place, name)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + CUT


def capped_inputs(value: Any) -> Any:
    """Rendered inputs as an entry keeps them: long strings cut (`INPUT_CHARS`)."""
    if isinstance(value, str):
        return _cut(value, INPUT_CHARS)
    if isinstance(value, dict):
        return {str(key): capped_inputs(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [capped_inputs(item) for item in value]
    return value


class Recording:
    """One leaf attempt being recorded (see the module)."""

    def __init__(self, place: TaskPlace, redactor: Redactor, *, fallback: bool) -> None:
        self._place = place
        self._redactor = redactor
        self._lock = threading.Lock()  # what the attempt adds, from any thread
        self._writing = threading.Lock()  # its two writes, in order, each once
        self._lines: deque[str] = deque()
        self._bytes = 0
        self._llm_calls: list[dict[str, Any]] = []
        self._inputs: Any = None
        self._ended = False
        self._started = False
        self.entry_id = f"{now():.6f}-{_PROCESS}-{next(_ENTRIES):x}"
        self.started_at = now()
        self.fallback = fallback

    def _entry(self, status: str, ended_at: float | None, error: ErrorInfo | None) -> dict[str, Any]:
        with self._lock:
            printed, calls, inputs = list(self._lines), list(self._llm_calls), self._inputs
        redact = self._redactor
        return {
            "id": self.entry_id,
            "pipeline_run": self._place.pipeline_run,
            "path": list(self._place.path),
            "fallback": self.fallback,
            "status": status,
            "started_at": self.started_at,
            "ended_at": ended_at,
            "error": None if error is None else {"type": error.type, "message": redact.text(error.message)},
            "printed": [redact.text(line) for line in printed],
            "llm_calls": calls,
            "inputs": redact.value(inputs),
        }

    def start(self) -> None:
        """The attempt's work begins (the first time only, and not once it has ended): its
        entry is written, `running`."""
        with self._writing:
            if self._started or self._ended:
                return
            self._started = True
            self.started_at = now()
            self._place.log.put(self._place.run_id, self.entry_id, self._entry("running", None, None))

    def end(self, error: ErrorInfo | None) -> None:
        """The attempt ended: its entry is replaced with how."""
        with self._writing:
            if self._ended:
                return
            self._ended = True
            status = "failed" if error is not None else "succeeded"
            self._place.log.put(self._place.run_id, self.entry_id, self._entry(status, now(), error))

    def printed(self, text: str) -> None:
        """Lines the attempt printed (redacted as they were shown; again when written, with
        what the attempt learnt since), kept within the caps."""
        with self._lock:
            for line in text.split("\n"):
                line = _cut(line, LINE_CHARS)
                self._lines.append(line)
                self._bytes += len(line.encode("utf-8", errors="replace")) + 1
                while self._lines and (len(self._lines) > PRINTED_LINES or self._bytes > PRINTED_BYTES):
                    dropped = self._lines.popleft()
                    self._bytes -= len(dropped.encode("utf-8", errors="replace")) + 1

    def llm_call(self, model: str, tokens_in: int | None, tokens_out: int | None, latency: float) -> None:
        """One call to an LLM provider: its model, tokens (None when not told) and latency."""
        with self._lock:
            if len(self._llm_calls) < LLM_CALLS:
                self._llm_calls.append(
                    {
                        "model": self._redactor.text(model),
                        "tokens_in": tokens_in,
                        "tokens_out": tokens_out,
                        "latency": round(latency, 3),
                    }
                )

    def calls(self) -> list[dict[str, Any]]:
        """The LLM calls recorded so far."""
        with self._lock:
            return list(self._llm_calls)

    def inputs(self, value: Any) -> None:
        """What the task was given after templating (stored redacted and cut)."""
        with self._lock:
            self._inputs = capped_inputs(self._redactor.value(value))


def current_recording() -> Recording | None:
    """The attempt the calling code runs in, if it is recorded."""
    return _CURRENT.get()


@contextmanager
def recorded_attempt(place: TaskPlace | None, redactor: Redactor, *, fallback: bool) -> Iterator[None]:
    """Record one leaf attempt around the block: its entry is written when its work starts
    (`carrying`: on the thread that runs it) and when it ends; a `TaskError` out of the block
    is its error. An attempt cancelled (any other exception) is not ended: it has no entry if
    its work had not started, else an open one that the run's end closes."""
    if place is None:
        yield
        return
    recording = Recording(place, redactor, fallback=fallback)
    token = _CURRENT.set(recording)
    try:
        yield
    except TaskError as error:
        recording.end(ErrorInfo(error.error_type, error.message))
        raise
    except BaseException:
        # cancelled (a failure elsewhere, a timeout around it, Ctrl-C): left as it is, as on
        # AWS, where a function's attempt goes on unheard once its state is abandoned; once
        # the run has ended, an attempt left open is shown ended with it (`with_telemetry`)
        raise
    else:
        recording.end(None)
    finally:
        _CURRENT.reset(token)


@contextmanager
def collected_calls(redactor: Redactor, calls: list[dict[str, Any]]) -> Iterator[None]:
    """Record the block as an attempt whose LLM calls are added to `calls` as it ends (a
    sandboxed attempt's own process, which sends them to its parent)."""
    from orchestrator.stores.memory import MemoryTelemetryLog

    recording = Recording(TaskPlace(MemoryTelemetryLog(), "", "", ("",)), redactor, fallback=False)
    token = _CURRENT.set(recording)
    try:
        yield
    finally:
        _CURRENT.reset(token)
        calls.extend(recording.calls())


def carrying(function: Callable[[], T]) -> Callable[[], T]:
    """`function` made to run as the current attempt wherever it runs (a worker thread), with
    the attempt's context (its recording, the budgets covering it: `runtime.budget`)."""
    recording = _CURRENT.get()
    if recording is None:
        return function
    context = copy_context()

    @functools.wraps(function)
    def carried() -> T:
        recording.start()
        return context.run(function)

    return carried


RUN_ENTRY = "run"
"""The id of a run's own entry: its top-level task names, in document order."""


def record_run_start(log: TelemetryLog, run_id: str, tasks: list[str], groups: dict[str, list[str]]) -> None:
    """The run's own entry, written as it starts: its top-level tasks (what a live view lists
    as `not_run`) and its parallel groups' children (`parallel_children`)."""
    log.put(run_id, RUN_ENTRY, {"id": RUN_ENTRY, "tasks": tasks, "groups": groups})


def document_task_names(plan: Plan) -> list[str]:
    """The run document's task names, in its order: the top-level tasks, each parallel group's
    named children after it."""
    names: list[str] = []
    for name, node in plan.body.nodes.items():
        names.append(name)
        if isinstance(node.task, ParallelGroup):
            names += [child.name for child in node.task.tasks if child.name]
    return names


def parallel_children(tasks: Sequence[TaskBase]) -> dict[str, list[str]]:
    """Every parallel_group of a pipeline (loop bodies included), innermost first, with the
    names of its children as the document lists them: flat, a nested group's included."""
    found: dict[str, list[str]] = {}

    def flat(children: Sequence[TaskBase]) -> list[str]:
        names: list[str] = []
        for child in children:
            if child.name:
                names.append(child.name)
            if isinstance(child, ParallelGroup):
                names += flat(child.tasks)
        return names

    def walk(body: Sequence[TaskBase]) -> None:
        for task in body:
            if isinstance(task, ForLoop | WhileLoop | ParallelGroup):
                walk(task.tasks)
            if isinstance(task, ParallelGroup) and task.name:
                found[task.name] = flat(task.tasks)

    walk(tasks)
    return found


def pipeline_children(plan: Plan) -> dict[str, list[str]]:
    """The child pipelines (ids) each top-level pipeline_group of `plan` runs, in order."""
    from orchestrator.runtime.pipelines import child_path

    return {
        name: list(
            dict.fromkeys(child_path(node.task, i, plan.path).stem for i in range(len(node.task.pipelines)))
        )
        for name, node in plan.body.nodes.items()
        if isinstance(node.task, PipelineGroup)
    }


# -- assembling ----------------------------------------------------------------------------------


class _Node:
    """A task's entries and the inner runs of its body, by key."""

    __slots__ = ("attempts", "children")

    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []
        self.children: dict[str, dict[str, _Node]] = {}


def _tree(entries: list[dict[str, Any]]) -> dict[str, dict[str, _Node]]:
    """Entries by pipeline run, then by task path (see the module)."""
    pipelines: dict[str, dict[str, _Node]] = {}
    ordered = sorted(entries, key=lambda entry: (entry.get("started_at") or 0.0, str(entry.get("id"))))
    for entry in ordered:
        path = entry.get("path") or []
        if not isinstance(path, list) or len(path) % 2 != 1:
            continue
        tasks = pipelines.setdefault(str(entry.get("pipeline_run") or ""), {})
        node = tasks.setdefault(str(path[0]), _Node())
        for position in range(1, len(path), 2):
            body = node.children.setdefault(str(path[position]), {})
            node = body.setdefault(str(path[position + 1]), _Node())
        node.attempts.append(entry)
    return pipelines


def _closed(entry: dict[str, Any], run_ended: float | None) -> dict[str, Any]:
    """An attempt entry as the document shows it; one still `running` in a run that has
    ended is shown as ended with the run."""
    started, ended, status, error = (
        entry.get("started_at"),
        entry.get("ended_at"),
        entry.get("status"),
        entry.get("error"),
    )
    if status == "running" and run_ended is not None:
        ended = max(run_ended, started or run_ended)
        status = "failed"
        error = {"type": "RunEnded", "message": "the run ended while this attempt was under way"}
    return {
        "fallback": bool(entry.get("fallback")),
        "status": status,
        "started_at": iso(started),
        "ended_at": iso(ended),
        "duration": seconds(started, ended),
        "error": error,
        "printed": list(entry.get("printed") or []),
        "llm_calls": list(entry.get("llm_calls") or []),
        "_started": started,
        "_ended": ended,
        "_inputs": entry.get("inputs"),
    }


def _key_order(key: str) -> list[tuple[int, int, str]]:
    """Keys in natural order, the same on both engines: `2` before `10`, `job_2` before `job_10`."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", key) if part
    ]


def _telemetry(
    node: _Node | None, run_ended: float | None, groups: Mapping[str, list[str]]
) -> tuple[dict[str, Any], float | None, float | None, bool]:
    """A task's added fields, its span and whether anything in it is still running."""
    if node is None:
        nothing: dict[str, Any] = {
            "started_at": None,
            "ended_at": None,
            "duration": None,
            "inputs": None,
            "attempt_log": [],
        }
        return nothing, None, None, False
    attempts = [_closed(entry, run_ended) for entry in node.attempts]
    ordinary = [a for a in attempts if not a["fallback"]]
    fallbacks = [a for a in attempts if a["fallback"]]
    log: list[dict[str, Any]] = []
    for number, attempt in enumerate([*ordinary, *fallbacks], start=1):
        log.append({"attempt": number, **{k: v for k, v in attempt.items() if not k.startswith("_")}})
    starts = [a["_started"] for a in attempts if a["_started"] is not None]
    ends = [a["_ended"] for a in attempts if a["_ended"] is not None]
    running = any(a["status"] == "running" for a in attempts)
    fields: dict[str, Any] = {
        "inputs": ordinary[-1]["_inputs"] if ordinary else (fallbacks[-1]["_inputs"] if fallbacks else None),
        "attempt_log": log,
    }
    if node.children:
        children = []
        for key in sorted(node.children, key=_key_order):
            tasks: dict[str, Any] = {}
            for name, inner in node.children[key].items():
                record, started, ended, inner_running = _inner_record(inner, run_ended, groups)
                tasks[name] = record
                running = running or inner_running
                if started is not None:
                    starts.append(started)
                if ended is not None:
                    ends.append(ended)
            _group_spans(tasks, groups)
            children.append({"key": key, "tasks": tasks})
        fields["children"] = children
    started = min(starts) if starts else None
    ended = None if running or not ends else max(ends)
    fields.update(started_at=iso(started), ended_at=iso(ended), duration=seconds(started, ended))
    return fields, started, ended, running


def _inner_record(
    node: _Node, run_ended: float | None, groups: Mapping[str, list[str]]
) -> tuple[dict[str, Any], float | None, float | None, bool]:
    """The record of a task inside a container, from its entries alone."""
    fields, started, ended, running = _telemetry(node, run_ended, groups)
    log = fields["attempt_log"]
    ordinary = [a for a in log if not a["fallback"]]
    last = log[-1] if log else None
    if running:
        status = "running"
    elif last is None:  # a container whose inner tasks ran
        status = "succeeded"
    elif last["status"] == "succeeded":
        status = "fallback" if last["fallback"] else "succeeded"
    else:
        status = "failed"
    error = None
    if status == "failed" and last is not None:
        error = last["error"]
    record = {"status": status, "attempts": len(ordinary), "error": error, **fields}
    return record, started, ended, running


def with_telemetry(
    document: dict[str, Any],
    entries: list[dict[str, Any]],
    *,
    run_started: float | None = None,
    run_ended: float | None = None,
    pipeline_groups: Mapping[str, list[str]] | None = None,
    groups: Mapping[str, list[str]] | None = None,
    prices: Mapping[str, ModelPrice] | None = None,
) -> dict[str, Any]:
    """The run document with its added fields (docs/telemetry.md) from the run's entries.

    `run_started` / `run_ended` are the run's own times when the caller knows them (else those
    the document has, or the entries'); a run that is not `running` closes the attempts left
    open. `pipeline_groups`: the child pipelines each top-level pipeline_group ran, in order,
    whose tasks become its children. `groups`: the pipeline's `parallel_children` (else the
    run's own entry's), whose spans are those of their children. `prices`: each model's price
    (`Settings.prices`), from which the `usage` fields' costs come."""
    finished = document.get("status") != "running"
    started = run_started if run_started is not None else _parse_iso(document.get("started_at"))
    ended = run_ended if run_ended is not None else _parse_iso(document.get("ended_at"))
    pipelines = _tree(entries)
    if finished and ended is None:
        seen = [e.get("ended_at") or e.get("started_at") for e in entries]
        ended = max(
            [t for t in seen if isinstance(t, int | float)] + ([started] if started else []), default=None
        )
    closing = ended if finished else None
    top = pipelines.get("", {})
    records = dict(document.get("tasks") or {})
    known = set(records)
    own = [e for e in entries if e.get("id") == RUN_ENTRY]
    names = [n for e in own for n in e.get("tasks") or [] if isinstance(n, str)]
    names += [name for name in top if name not in names]  # (a run whose own entry is not kept)
    if groups is None:
        groups = next((e["groups"] for e in own if isinstance(e.get("groups"), dict)), {})
    if names:  # every task the run has, in order; those the document does not know yet: not run
        records = {
            **{
                name: records.get(name) or {"status": "not_run", "attempts": 0, "error": None}
                for name in names
            },
            **records,
        }
    tasks: dict[str, Any] = {}
    for name, record in records.items():
        if not isinstance(record, dict):
            tasks[name] = record
            continue
        # a task the engine says did not run shows no attempt, whatever began (the embedded
        # engine may start one in the moment before a failure cancels it; AWS never does)
        settled = name in known and record.get("status") == "not_run"
        fields, _, _, running = _telemetry(None if settled else top.get(name), closing, groups)
        for group, children in (pipeline_groups or {}).items():
            if group == name:
                fields["children"] = [
                    {"key": child, "tasks": _pipeline_tasks(pipelines.get(child, {}), closing)}
                    for child in children
                ]
                if fields["started_at"] is None:
                    _span_from_children(fields)
        updated = {**record, **fields}
        if name not in known and fields["started_at"] is not None:
            # not in the document yet: under way, or cut short by the run's end (a process that died)
            updated["status"] = "running" if running else "cancelled"
        tasks[name] = updated
    _group_spans(tasks, groups)
    total = _Usage()
    for name, record in tasks.items():
        if isinstance(record, dict):
            tasks[name], usage = _with_usage(record, prices or {})
            total.add(usage)
    return {
        **document,
        "started_at": iso(started),
        "ended_at": iso(ended) if finished else None,
        "duration": seconds(started, ended) if finished else None,
        "usage": total.fields(),
        "tasks": tasks,
    }


COST_DIGITS = 10
"""Costs are shown rounded to 1e-10 US dollars; sums are taken before rounding."""


class _Usage:
    """Tokens and cost summed over LLM calls. The cost is unknown (`null`) when no call was
    to a priced model, or when a call to a priced model did not report its tokens."""

    __slots__ = ("calls", "cost", "priced", "tokens_in", "tokens_out", "unknown")

    def __init__(self) -> None:
        self.calls = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost: list[float] = []
        self.priced = False
        self.unknown = False

    def call(self, call: dict[str, Any], prices: Mapping[str, ModelPrice]) -> float | None:
        """Count one call; its cost (None when its model has no price or its tokens are not known)."""
        tokens_in, tokens_out = _count(call.get("tokens_in")), _count(call.get("tokens_out"))
        self.calls += 1
        self.tokens_in += tokens_in or 0
        self.tokens_out += tokens_out or 0
        price = prices.get(str(call.get("model")))
        if price is None:
            return None
        self.priced = True
        if tokens_in is None or tokens_out is None:
            self.unknown = True
            return None
        cost = (tokens_in * price.input_per_million + tokens_out * price.output_per_million) / 1_000_000
        self.cost.append(cost)
        return cost

    def add(self, other: _Usage) -> None:
        self.calls += other.calls
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cost += other.cost
        self.priced = self.priced or other.priced
        self.unknown = self.unknown or other.unknown

    def fields(self) -> dict[str, Any]:
        known = self.priced and not self.unknown
        cost = round(math.fsum(self.cost), COST_DIGITS) if known else None
        return {
            "llm_calls": self.calls,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": cost,
        }


USAGE_EVENT = "llm_usage"


def record_usage(audit: AuditLog, document: dict[str, Any]) -> None:
    """Write the usage of a run that has ended to the audit log, if it called an LLM: one entry
    with the run's `usage` and that of each top-level task that called one (docs/telemetry.md)."""
    usage = document.get("usage") or {}
    if not usage.get("llm_calls"):
        return
    tasks = {
        name: record["usage"]
        for name, record in (document.get("tasks") or {}).items()
        if isinstance(record, dict) and (record.get("usage") or {}).get("llm_calls")
    }
    audit.append(
        {
            "pipeline_id": document.get("pipeline"),
            "execution_id": document.get("run_id"),
            "task": None,
            "user_id": document.get("user"),
            "logged_at": datetime.now(UTC).isoformat(),
            "event": USAGE_EVENT,
            "status": document.get("status"),
            "usage": usage,
            "tasks": tasks,
        }
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _with_usage(record: dict[str, Any], prices: Mapping[str, ModelPrice]) -> tuple[dict[str, Any], _Usage]:
    """A task record with `usage` (its attempts' calls and its children's), each LLM call with
    `cost_usd`; new dicts throughout (the entries stay as they were read)."""
    usage = _Usage()
    log = []
    for attempt in record.get("attempt_log") or []:
        calls = []
        for call in attempt.get("llm_calls") or []:
            cost = usage.call(call, prices)
            calls.append({**call, "cost_usd": None if cost is None else round(cost, COST_DIGITS)})
        log.append({**attempt, "llm_calls": calls})
    updated = {**record, "attempt_log": log}
    if isinstance(record.get("children"), list):
        children = []
        for child in record["children"]:
            inner = {}
            for name, task in (child.get("tasks") or {}).items():
                inner[name], child_usage = _with_usage(task, prices)
                usage.add(child_usage)
            children.append({**child, "tasks": inner})
        updated["children"] = children
    updated["usage"] = usage.fields()
    return updated, usage


def _pipeline_tasks(nodes: dict[str, _Node], run_ended: float | None) -> dict[str, Any]:
    return {name: _inner_record(node, run_ended, {})[0] for name, node in nodes.items()}


def _group_spans(tasks: dict[str, Any], groups: Mapping[str, list[str]]) -> None:
    """Each parallel group among `tasks` (innermost first) spans its children, which are
    listed beside it; one whose child is under way is running."""
    for group, children in groups.items():
        record = tasks.get(group)
        if not isinstance(record, dict) or record.get("attempt_log"):
            continue
        inner = [tasks[c] for c in children if isinstance(tasks.get(c), dict) and tasks[c].get("started_at")]
        if not inner:
            continue
        starts = [_parse_iso(r["started_at"]) for r in inner]
        ends = [_parse_iso(r["ended_at"]) for r in inner]
        started = min(t for t in starts if t is not None)
        ended = None if any(t is None for t in ends) else max(t for t in ends if t is not None)
        record.update(started_at=iso(started), ended_at=iso(ended), duration=seconds(started, ended))
        if ended is None and record.get("status") in (None, "not_run"):
            record["status"] = "running"


def _span_from_children(fields: dict[str, Any]) -> None:
    starts = [r["started_at"] for c in fields["children"] for r in c["tasks"].values() if r["started_at"]]
    ends = [r["ended_at"] for c in fields["children"] for r in c["tasks"].values() if r["ended_at"]]
    if starts:
        fields["started_at"] = min(starts)
        fields["ended_at"] = max(ends) if ends and len(ends) == len(starts) else None
        fields["duration"] = seconds(_parse_iso(fields["started_at"]), _parse_iso(fields["ended_at"]))


def _parse_iso(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def live_document(
    stores: Stores, run_id: str, prices: Mapping[str, ModelPrice] | None = None
) -> dict[str, Any] | None:
    """The run document as known now, with the added fields, for a finished run or one still
    going on (`status: running`; tasks with an attempt under way `running`, tasks not started
    `not_run`). None when there is no such run. Everything in it has been redacted. `prices`:
    as for `with_telemetry` (a finished run's document has the costs it was saved with)."""
    document = stores.runs.load(run_id)
    if document is None:
        return None
    if document.get("status") != "running" and "attempt_log" in next(
        iter((document.get("tasks") or {}).values()), {}
    ):
        return document  # assembled when it ended
    return with_telemetry(document, stores.telemetry.query(run_id), prices=prices)
