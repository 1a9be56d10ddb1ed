"""Issue 12: `--engine stepfunctions` runs Lambda calls side by side wherever the state machine
does (Parallel branches, Map iterations), each call in a container of its function, as Lambda
would; and what the run shows (progress, the run document) is right when top-level tasks overlap.

Concurrency is asserted from what the tasks record (`time.time()` when they start and end),
never from how long a run takes.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import CliResult, every_state
from orchestrator.aws import emulator
from orchestrator.aws.emulator import _Invoker, _load_handler, _one_request_at_a_time, run_execution
from orchestrator.aws.execution import HistoryProgress, document_from_execution, last_known_tasks
from orchestrator.aws.state_records import PARALLEL_MARK
from orchestrator.aws.stepfunctions_engine import execution_input
from orchestrator.errors import OrchestratorError
from orchestrator.plan import Plan, build_plan
from orchestrator.runtime.documents import TaskOutcome
from orchestrator.spec.loading import read_pipeline

Cli = Callable[..., CliResult]
Write = Callable[..., Path]
RunBoth = Callable[..., dict[str, CliResult]]
REPO = Path(__file__).resolve().parent.parent.parent
PYTHON_TASK_HANDLER = REPO / "functions" / "python_task" / "app.py"


def timed(seconds: float, indent: int, *, after: str = "") -> str:
    """A python_task's `script: |` block, indented by `indent`: it sleeps, runs `after`, and
    returns when it started and ended."""
    lines = ["import time", "started = time.time()", f"time.sleep({seconds})", *after.splitlines()]
    lines.append('return {"start": started, "end": time.time()}')
    return "".join(f"{' ' * indent}{line}\n" for line in lines)


def group_of(name: str, children: dict[str, str]) -> str:
    """A pipeline of one parallel_group whose children are python tasks (name -> script block
    indented by 10)."""
    text = f"name: {name}\ntasks:\n  - name: group\n    type: parallel_group\n    tasks:\n"
    for child, script in children.items():
        text += f"      - name: {child}\n        type: python_task\n        script: |\n{script}"
    return text


def most_at_once(intervals: list[dict[str, float]]) -> int:
    """The largest number of intervals that share an instant."""
    edges = sorted([(i["start"], 1) for i in intervals] + [(i["end"], -1) for i in intervals])
    running = most = 0
    for _, step in edges:  # at equal times an end (-1) sorts before a start
        running += step
        most = max(most, running)
    return most


# the state machine's concurrency, end to end -----------------------------------------------


@pytest.mark.slow
def test_the_independent_children_of_a_group_run_at_once(write_pipeline: Write, cli: Cli) -> None:
    path = write_pipeline(group_of("four at once", {f"t{n}": timed(1, 10) for n in range(1, 5)}))
    result = cli("run", path, "--json", "--engine", "stepfunctions")
    assert result.code == 0, result.stderr
    intervals = list(result.document()["outputs"]["group"].values())
    assert len(intervals) == 4
    # the four one-second calls share an instant: they ran side by side, not one after another
    assert max(i["start"] for i in intervals) < min(i["end"] for i in intervals)


@pytest.mark.slow
def test_a_for_loop_runs_max_concurrency_iterations_at_once_and_no_more(
    write_pipeline: Write, cli: Cli
) -> None:
    path = write_pipeline(
        "name: two at a time\ntasks:\n  - name: each\n    type: for_loop\n"
        "    iterate_over: [1, 2, 3, 4]\n    max_concurrency: 2\n    tasks:\n"
        "      - name: work\n        type: python_task\n        script: |\n" + timed(0.8, 10)
    )
    result = cli("run", path, "--json", "--engine", "stepfunctions")
    assert result.code == 0, result.stderr
    intervals = [iteration["work"] for iteration in result.document()["outputs"]["each"]]
    assert len(intervals) == 4
    assert most_at_once(intervals) == 2


@pytest.mark.slow
def test_concurrent_tasks_print_their_own_lines_none_lost(
    write_pipeline: Write, run_on_both_engines: RunBoth
) -> None:
    """What each task prints is told as its own `[task]` lines on both engines, while the
    functions' metrics and logs of calls at once do not cross (a metric set shared by two
    calls would make one of them warn on stderr that it had none to publish)."""
    names = ("alpha", "beta", "gamma")
    chatty = "          import time\n          for i in range(25):\n"
    chatty += (
        '              print(f"line {i} of NAME")\n              time.sleep(0.01)\n          return "NAME"\n'
    )
    path = write_pipeline(group_of("chatty", {name: chatty.replace("NAME", name) for name in names}))
    results = run_on_both_engines(path)
    expected = sorted(f"[{name}] line {i} of {name}" for name in names for i in range(25))
    for engine, result in results.items():
        assert sorted(result.stderr.splitlines()) == expected, engine
    assert results["stepfunctions"].document()["outputs"] == results["local"].document()["outputs"]


# containers ----------------------------------------------------------------------------------


@pytest.fixture
def powertools_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "orchestrator-test")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Orchestrator")


def test_each_container_has_its_own_powertools_metrics_and_logger(
    powertools_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Powertools keeps a process's metrics in class attributes of `Metrics` and its log keys in
    the one `logging` logger of the service: two containers share neither, even when their
    calls run at the same time."""
    from aws_lambda_powertools import Metrics

    one = _load_handler(PYTHON_TASK_HANDLER, "test-python_task#1")
    two = _load_handler(PYTHON_TASK_HANDLER, "test-python_task#2")
    assert one is not two and one.lambda_handler is not two.lambda_handler
    assert one.metrics.provider.metric_set is not two.metrics.provider.metric_set
    assert all(Metrics._metrics is not m.metrics.provider.metric_set for m in (one, two))  # nor the process's
    # two calls at once: each adds its metric, then each publishes (prints) its own
    both_added = threading.Barrier(2)

    def call(module: Any, metric: str) -> None:
        module.metrics.add_metric(name=metric, unit="Count", value=1)
        both_added.wait(5)
        module.metrics.flush_metrics()

    threads = [threading.Thread(target=call, args=(m, n)) for m, n in ((one, "One"), (two, "Two"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    published = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = sorted(
        [metric["Name"] for metric in emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]] for emf in published
    )
    assert names == [["One"], ["Two"]]
    # and the keys a call appends to its logs (the request id, the correlation id) are its own
    one.logger.append_keys(correlation_id="run-of-one")
    assert "correlation_id" not in two.logger.get_current_keys()
    assert one.logger._logger is not two.logger._logger


def test_a_handler_whose_powertools_objects_cannot_be_its_own_is_refused(
    powertools_env: None, tmp_path: Path
) -> None:
    handler = tmp_path / "custom" / "app.py"
    handler.parent.mkdir()
    handler.write_text(
        "from aws_lambda_powertools.metrics import Metrics\n"
        "metrics = Metrics()\n"
        "def lambda_handler(event, context):\n    return {}\n",
        encoding="utf-8",
    )
    with pytest.raises(OrchestratorError, match="`metrics` is a Powertools Metrics shared by every"):
        _load_handler(handler)


CONTAINER_HANDLER = """
import time

busy = False


def lambda_handler(event, context):
    global busy
    if busy:
        raise RuntimeError("two calls at once in one container")
    busy = True
    try:
        event["together"].wait(5)
        time.sleep(0.05)
        return {"container": id(globals())}
    finally:
        busy = False
"""


def test_a_function_starts_a_container_for_each_call_running_at_once(tmp_path: Path) -> None:
    """As Lambda scales out: a call takes an idle container, or starts one when all are busy;
    a container never serves two calls at once; idle ones are used again."""
    handler = tmp_path / "function" / "app.py"
    handler.parent.mkdir()
    handler.write_text(CONTAINER_HANDLER, encoding="utf-8")
    invoker = _Invoker({"f": _load_handler(handler)})
    function = SimpleNamespace(function_name="f")

    def calls(count: int, together: threading.Barrier | None = None) -> list[tuple[str, bool, str]]:
        results: list[tuple[str, bool, str]] = []
        event = {"together": together or threading.Barrier(1)}
        threads = [
            threading.Thread(target=lambda: results.append(invoker(function, event))) for _ in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    at_once = calls(4, threading.Barrier(4))  # each waits for the others: four containers
    assert [errored for _, errored, _ in at_once] == [False] * 4
    containers = {json.loads(payload)["container"] for payload, _, _ in at_once}
    assert len(containers) == 4 == len(invoker.functions["f"].containers)
    for _ in range(3):
        ((payload, errored, _),) = calls(1)
        assert not errored and json.loads(payload)["container"] in containers
    assert len(invoker.functions["f"].containers) == 4


def test_a_handler_with_no_file_is_one_container_serving_one_call_at_a_time() -> None:
    running: list[int] = []
    most: list[int] = [0]
    lock = threading.Lock()

    def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
        with lock:
            running.append(1)
            most[0] = max(most[0], len(running))
        threading.Event().wait(0.05)
        with lock:
            running.pop()
        return {}

    invoker = _Invoker({"only": SimpleNamespace(lambda_handler=lambda_handler)})  # type: ignore[dict-item]
    threads = [
        threading.Thread(target=invoker, args=(SimpleNamespace(function_name="only"), {})) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1 and invoker.in_flight == 0


@pytest.fixture
def fast_thread_switches() -> Iterator[None]:
    """Threads switch every microsecond: a race that needs a switch at the wrong moment shows."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(saved)


def test_requests_to_the_emulated_services_are_atomic(aws: None, fast_thread_switches: None) -> None:
    """A DynamoDB conditional write is atomic on AWS; moto reads the item, then writes it. While
    emulating, two compare-and-set writes at once never both succeed: no update is lost."""
    import boto3

    client = boto3.client("dynamodb")
    client.create_table(
        TableName="counters",
        AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "key", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.put_item(TableName="counters", Item={"key": {"S": "hits"}, "value": {"N": "0"}})
    written: list[int] = []

    def add_one() -> None:
        while True:
            found = client.get_item(TableName="counters", Key={"key": {"S": "hits"}}, ConsistentRead=True)
            value = int(found["Item"]["value"]["N"])
            try:
                client.put_item(
                    TableName="counters",
                    Item={"key": {"S": "hits"}, "value": {"N": str(value + 1)}},
                    ConditionExpression="#v = :seen",
                    ExpressionAttributeNames={"#v": "value"},
                    ExpressionAttributeValues={":seen": {"N": str(value)}},
                )
            except client.exceptions.ConditionalCheckFailedException:
                continue
            written.append(value)
            return

    def worker() -> None:
        for _ in range(15):
            add_one()

    with _one_request_at_a_time():
        threads = [threading.Thread(target=worker) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    final = int(client.get_item(TableName="counters", Key={"key": {"S": "hits"}})["Item"]["value"]["N"])
    assert sorted(written) == list(range(90)) and final == 90


# top-level tasks that overlap: progress and the run document --------------------------------


class Recorder:
    """An observer that keeps what it hears, in order."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, str, TaskOutcome | None]] = []

    def task_started(self, name: str) -> None:
        self.heard.append(("started", name, None))

    def task_finished(self, name: str, outcome: TaskOutcome) -> None:
        self.heard.append(("finished", name, outcome))

    def finished(self) -> dict[str, TaskOutcome]:
        return {name: outcome for kind, name, outcome in self.heard if kind == "finished" and outcome}


def hand_written_parallel(plan: Plan, branches: list[str], after: str) -> dict[str, Any]:
    """`plan`'s tasks as the compiler's states for them, with `branches` in the branches of a
    Parallel state named `.parallel1` whose branches output the whole branch state (each its
    task's record at `$.tasks.<name>`) and whose result keeps the records at `$.tasks`; then
    `after`, reading them there."""
    from orchestrator.aws.asl import compile_pipeline

    compiled = every_state(compile_pipeline(plan))

    def alone(name: str) -> dict[str, Any]:
        state = {k: v for k, v in compiled[name].items() if k not in {"OutputPath", "Next", "End"}}
        # the compiler's own layout keeps side-by-side records under a step's key: read them at $.tasks
        loaded: dict[str, Any] = json.loads(
            re.sub(r"\$\.tasks\.parallel\d+\.", "$.tasks.", json.dumps(state))
        )
        return loaded

    return {
        "StartAt": ".parallel1",
        "States": {
            ".parallel1": {
                "Type": "Parallel",
                "Branches": [
                    {"StartAt": name, "States": {name: {**alone(name), "End": True}}} for name in branches
                ],
                "ResultSelector": {f"{name}.$": f"$[{i}].tasks.{name}" for i, name in enumerate(branches)},
                "ResultPath": "$.tasks",
                "Next": after,
            },
            after: {**alone(after), "End": True},
        },
    }


def _run(plan: Plan, progress: HistoryProgress, run_id: str) -> dict[str, Any]:
    run = {"id": run_id, "pipeline": plan.pipeline_id, "started_at": "2026-01-01T00:00:00+00:00"}
    execution = run_execution(plan, lambda: execution_input(plan, {}, run), run_id, on_event=progress.event)
    document = document_from_execution(
        plan, run_id, execution["status"], execution["output"], execution["history"]
    )
    progress.finish(document)
    return document


READ_ENDS = 'return [context.get_task_output("a")["end"], context.get_task_output("b")["end"]]'
SIDE_BY_SIDE = (
    "name: side by side\ntasks:\n"
    "  - name: a\n    type: python_task\n    script: |\n" + timed(0.6, 6) + "  - name: b\n"
    "    type: python_task\n    script: |\n" + timed(0.3, 6) + "  - name: c\n    type: python_task\n"
    f"    depends_on: [a, b]\n    script: {READ_ENDS}\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["hand-written", "compiled"])
def test_progress_and_document_when_top_level_tasks_overlap(
    layout: str, write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks `a` and `b` in the branches of a Parallel state (`.parallel1`): each is told
    started when its state is entered and finished when its record is written, while the other
    still runs; the document has both, with their attempts."""
    plan = build_plan(read_pipeline(write_pipeline(SIDE_BY_SIDE)))
    if layout == "hand-written":
        definition = hand_written_parallel(plan, ["a", "b"], "c")
        monkeypatch.setattr(emulator, "compile_pipeline", lambda _plan: definition)
    recorder = Recorder()
    document = _run(plan, HistoryProgress(plan, recorder), "overlap")
    assert document["status"] == "succeeded"
    a, b = document["outputs"]["a"], document["outputs"]["b"]
    assert max(a["start"], b["start"]) < min(a["end"], b["end"])  # they did overlap
    assert document["outputs"]["c"] == [a["end"], b["end"]]
    assert {name: record["status"] for name, record in document["tasks"].items()} == dict.fromkeys(
        "abc", "succeeded"
    )
    assert {name: record["attempts"] for name, record in document["tasks"].items()} == dict.fromkeys("abc", 1)
    heard = [(kind, name) for kind, name, _ in recorder.heard]
    first_to_end, last_to_end = ("a", "b") if a["end"] < b["end"] else ("b", "a")
    assert sorted(heard[:2]) == [("started", "a"), ("started", "b")]
    assert heard[2:] == [
        ("finished", first_to_end),
        ("finished", last_to_end),
        ("started", "c"),
        ("finished", "c"),
    ]
    for name, outcome in recorder.finished().items():
        assert (outcome.status.value, outcome.output, outcome.attempts) == (
            "succeeded",
            document["outputs"][name],
            1,
        )


BRANCH_FAILS = (
    "name: a branch fails\ntasks:\n"
    "  - name: a\n    type: python_task\n    script: |\n"
    + timed(0.05, 6, after='context.set_shared_state("a", True)')
    + "  - name: b\n    type: python_task\n    script: |\n"
    + timed(0.2, 6, after='context.set_shared_state("b", True)')
    + """  - name: x
    type: python_task
    script: |
      import time
      for _ in range(400):
          if context.get_shared_state("a") and context.get_shared_state("b"):
              break
          time.sleep(0.05)
      time.sleep(0.5)
      raise ValueError("x broke")
  - name: c
    type: python_task
    depends_on: [a, b, x]
    script: return "never"
"""
)


@pytest.mark.slow
def test_a_failed_execution_keeps_the_records_of_every_branch(
    write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`x` fails the execution after `a` and `b` finished in other branches: a failed execution
    has no output, and each branch's states hold only their own task's record, so the document
    gathers them from all (the last state to finish holds `b`'s record, not `a`'s)."""
    plan = build_plan(read_pipeline(write_pipeline(BRANCH_FAILS)))
    definition = hand_written_parallel(plan, ["a", "b", "x"], "c")
    monkeypatch.setattr(emulator, "compile_pipeline", lambda _plan: definition)
    recorder = Recorder()
    document = _run(plan, HistoryProgress(plan, recorder), "branch-fails")
    assert document["status"] == "failed"
    assert {name: (record["status"], record["attempts"]) for name, record in document["tasks"].items()} == {
        "a": ("succeeded", 1),
        "b": ("succeeded", 1),
        "x": ("failed", 1),
        "c": ("not_run", 0),
    }
    assert document["error"] == {"task": "x", "type": "ValueError", "message": "x broke (script line 7)"}
    assert set(document["outputs"]["a"]) == {"start", "end"}
    finished = recorder.finished()
    assert {name: outcome.status.value for name, outcome in finished.items()} == {
        "a": "succeeded",
        "b": "succeeded",
        "x": "failed",
    }
    assert [name for kind, name, _ in recorder.heard if kind == "finished"][-1] == "x"  # told by finish()
    assert ("started", "c", None) not in recorder.heard


def _exited(event_id: int, name: str, output: Any) -> dict[str, Any]:
    details = {"name": name, "output": json.dumps(output)}
    return {
        "id": event_id,
        "previousEventId": 0,
        "type": "TaskStateExited",
        "stateExitedEventDetails": details,
    }


def test_last_known_tasks_gathers_records_from_every_branch() -> None:
    before = {"status": "succeeded", "output": 0}
    a = {"status": "succeeded", "output": 1}
    b = {"status": "skipped", "output": None}
    group = {
        "status": "succeeded",
        "output": {"x": 2},
        "children": {"x": {"status": "succeeded", "output": 2}},
    }
    history = [
        _exited(1, "first", {"tasks": {"first": before}}),
        _exited(2, "a", {"tasks": {"first": before, "a": a}}),  # a branch's whole state
        _exited(3, "b", b),  # a one-task branch's last state outputs its record only
        _exited(4, "group", {"tasks": {"first": before, "group": {"children": group["children"]}}}),
        _exited(5, "group.result", group),
        # a longer branch's last state outputs its `$.tasks`: its own records, a step's too
        _exited(6, "d", {"d": a, "parallel2": {PARALLEL_MARK: True, "e": b, "f": a}}),
        _exited(7, "loop/inner", {"tasks": {"inner": a}}),  # inside a task: not a top-level record
    ]
    assert last_known_tasks(history) == {
        "first": before,
        "a": a,
        "b": b,
        "group": group,
        "d": a,
        "e": b,
        "f": a,
    }
    # a container's raw result, before its last state shapes it, is no record
    assert "group" not in last_known_tasks(history[:4])
