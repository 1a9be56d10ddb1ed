"""`orchestrator run --engine stepfunctions`: the same run document, from the compiled state machine.

The pipeline is compiled, its resources are created in moto, and that exact state machine
runs on moto's Step Functions emulator with the project's Lambda handlers called in process
(`emulator.py`). Sensitive inputs enter the execution sealed with KMS; the `outputs` section
is rendered by the state machine's last state, a dispatch call, into `$.result`. The run's
observer (the CLI's progress lines) hears about top-level tasks from the execution's history
as it is recorded (`execution.HistoryProgress`), as the embedded engine tells it.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Any

from orchestrator.aws.emulator import run_execution
from orchestrator.aws.execution import HistoryProgress, document_from_execution
from orchestrator.engine.local import RunOptions, new_run_id
from orchestrator.plan import Plan
from orchestrator.runtime.documents import RunStatus, redacted_document
from orchestrator.runtime.redact import Redactor
from orchestrator.settings import exchange_environment

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
    run = {
        "id": run_id,
        "pipeline": plan.pipeline_id,
        "started_at": datetime.now(UTC).isoformat(),
        "user_id": options.user_id or getpass.getuser(),
        "no_cache": options.no_cache,
    }
    progress = HistoryProgress(plan, options.observer) if options.observer is not None else None
    execution = run_execution(
        plan,
        lambda: execution_input(plan, inputs, run),
        run_id,
        on_event=progress.event if progress is not None else None,
        account=options.settings.home / EMULATED_ACCOUNT,
        environment=exchange_environment(options.settings),
    )
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
    redactor = Redactor()
    for name in plan.pipeline.sensitive_inputs() & set(inputs):
        redactor.add(inputs[name])
    document = redacted_document(document, redactor)
    if progress is not None:
        progress.finish(document)
    options.stores.runs.save(document)
    return document
