"""`orchestrator run --engine stepfunctions`: the same run document, from the compiled state machine.

The pipeline is compiled, its resources are created in moto, and that exact state machine
runs on moto's Step Functions emulator with the project's Lambda handlers called in process
(`emulator.py`). Sensitive inputs enter the execution sealed with KMS; the `outputs` section
is rendered by the state machine's last state, a dispatch call, into `$.result`. The run's
observer (the CLI's progress lines) hears about top-level tasks from the execution's history
as it is recorded (`execution.HistoryProgress`), as the embedded engine tells it.

The run is recorded in the state folder as the embedded engine records its runs: `running`
when it starts, each top-level task checkpointed as it finishes, and the telemetry the task
functions write in the emulated account (`runtime.telemetry`) copied to the state folder's
log while the execution goes on, so that `runs show` (and the UI) see it live; the document
saved at the end has the telemetry fields.
"""

from __future__ import annotations

import contextlib
import getpass
from datetime import UTC, datetime
from typing import Any

from orchestrator.aws.emulator import emulated_telemetry, run_execution
from orchestrator.aws.execution import HistoryProgress, document_from_execution
from orchestrator.engine.local import RunOptions, new_run_id
from orchestrator.plan import Plan
from orchestrator.runtime.documents import (
    RunStatus,
    TaskOutcome,
    redacted_document,
    redacted_record,
    run_document,
)
from orchestrator.runtime.redact import Redactor
from orchestrator.runtime.telemetry import (
    document_task_names,
    now,
    parallel_children,
    pipeline_children,
    record_run_start,
    record_usage,
    with_telemetry,
)
from orchestrator.settings import exchange_environment
from orchestrator.stores.base import TelemetryLog

EMULATED_ACCOUNT = "emulated-aws"
"""The state folder's subfolder that keeps the emulated account's tables between runs."""


def execution_input(plan: Plan, inputs: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """What a trigger starts the state machine with; sensitive inputs sealed."""
    from orchestrator.sealing.inputs import default_sealer, seal_inputs

    sensitive = plan.pipeline.sensitive_inputs() & set(inputs)
    sealed = seal_inputs(plan.pipeline_id, inputs, sensitive, default_sealer()) if sensitive else dict(inputs)
    return {
        "inputs": sealed,
        "run": run,
        "tasks": {},
        "errors": {},
        "items": {},
        "loops": {},
        "conditions": {},
        "child_inputs": {},
        "children": {},
    }


def run_plan_on_stepfunctions(plan: Plan, inputs: dict[str, Any], options: RunOptions) -> dict[str, Any]:
    """Run a plan on the emulated AWS and return its run document."""
    run_id = options.run_id or new_run_id()
    started = now()
    run = {
        "id": run_id,
        "pipeline": plan.pipeline_id,
        "started_at": datetime.now(UTC).isoformat(),
        "user_id": options.user_id or getpass.getuser(),
        "no_cache": options.no_cache,
    }
    redactor = Redactor()
    for name in plan.pipeline.sensitive_inputs() & set(inputs):
        redactor.add(inputs[name])
    fields = {"engine": "stepfunctions", "user": run["user_id"], "pipeline_file": str(plan.path.resolve())}
    running = run_document(
        run_id=run_id,
        pipeline=plan.pipeline_id,
        status=RunStatus.RUNNING,
        outcomes={},
        result=None,
        error=None,
    )
    options.stores.runs.save(with_telemetry({**running, **fields}, [], run_started=started))
    record_run_start(
        options.stores.telemetry, run_id, document_task_names(plan), parallel_children(plan.pipeline.tasks)
    )
    progress = HistoryProgress(plan, _Checkpoints(options, run_id, redactor))
    mirror = _Mirror(options.stores.telemetry, run_id)
    try:
        execution = run_execution(
            plan,
            lambda: execution_input(plan, inputs, run),
            run_id,
            on_event=progress.event,
            account=options.settings.home / EMULATED_ACCOUNT,
            environment=exchange_environment(options.settings),
            while_running=mirror.copy,
        )
    except BaseException as stopped:
        _record_stopped(options, {**running, **fields}, started, stopped)
        raise
    document = document_from_execution(
        plan,
        run_id,
        execution["status"],
        execution["output"],
        execution["history"],
        payloads=execution["payloads"],
    )
    if document["status"] != RunStatus.FAILED:
        document["result"] = ((execution["output"] or {}).get("result") or {}).get("value")
    document = redacted_document(document, redactor)
    mirror.copy(execution["telemetry"])
    document = with_telemetry(
        {**document, **fields},
        options.stores.telemetry.query(run_id),
        run_started=started,
        run_ended=now(),
        pipeline_groups=pipeline_children(plan),
        groups=parallel_children(plan.pipeline.tasks),
        prices=options.settings.prices,
    )
    progress.finish(document)
    record_usage(options.stores.audit, document)
    options.stores.runs.save(document)
    return document


class _Checkpoints:
    """Top-level tasks finishing: told to the run's observer (the CLI's progress lines) and
    checkpointed in the run store, as the embedded engine does, for a live view of the run."""

    def __init__(self, options: RunOptions, run_id: str, redactor: Redactor) -> None:
        self._observer = options.observer
        self._runs = options.stores.runs
        self._run_id = run_id
        self._redactor = redactor

    def task_started(self, name: str) -> None:
        if self._observer is not None:
            self._observer.task_started(name)

    def task_finished(self, name: str, outcome: TaskOutcome) -> None:
        if self._observer is not None:
            self._observer.task_finished(name, outcome)
        record = redacted_record({**outcome.record(), "output": outcome.output}, self._redactor)
        self._runs.checkpoint(self._run_id, name, record)


class _Mirror:
    """Copies the run's telemetry entries from the emulated account's table to the state
    folder's log while the execution runs (at most every `EVERY` seconds), then all of them."""

    EVERY = 0.25

    def __init__(self, log: TelemetryLog, run_id: str) -> None:
        self._log = log
        self._run_id = run_id
        self._seen: dict[str, Any] = {}
        self._last = 0.0

    def copy(self, entries: list[dict[str, Any]] | None = None) -> None:
        """`entries` as given, or (throttled) as the emulated account holds them now."""
        if entries is None:
            if now() - self._last < self.EVERY:
                return
            self._last = now()
            try:
                entries = emulated_telemetry(self._run_id)
            except Exception:  # read while the functions write: the next poll will see it
                return
        for entry in entries:
            key = str(entry.get("id"))
            if self._seen.get(key) != entry:
                self._seen[key] = entry
                self._log.put(self._run_id, key, entry)


def _record_stopped(
    options: RunOptions, running: dict[str, Any], started: float, stopped: BaseException
) -> None:
    """A run whose emulation stopped before it ended (Ctrl-C, an error) is saved as `crashed`,
    never left `running`; best effort, the error that stopped it is the one to report."""
    error = {
        "task": None,
        "type": type(stopped).__name__,
        "message": str(stopped) or "stopped before it finished",
    }
    with contextlib.suppress(Exception):
        entries = options.stores.telemetry.query(running["run_id"])
        crashed = {**running, "status": RunStatus.CRASHED.value, "error": error}
        crashed = with_telemetry(
            crashed, entries, run_started=started, run_ended=now(), prices=options.settings.prices
        )
        record_usage(options.stores.audit, crashed)
        options.stores.runs.save(crashed)
