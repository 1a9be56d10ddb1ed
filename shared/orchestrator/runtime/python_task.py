"""Run a `python_task` script: compile it as a function body and call it with `context`."""

from __future__ import annotations

import datetime as _datetime
import json
import math
import traceback
from typing import Any

from orchestrator.errors import TaskError
from orchestrator.runtime.context import StateConflictError
from orchestrator.spec.scripts import FUNCTION_NAME, compile_script

PRELUDE: dict[str, Any] = {
    "json": json,
    "math": math,
    "datetime": _datetime.datetime,
    "timedelta": _datetime.timedelta,
}
"""Names every script may use without importing (the guide calls `datetime.now()` bare)."""


def run_script(script: str, task_name: str, context: Any, inputs: dict[str, Any], storage: Any) -> Any:
    """Execute a rendered script; its return value is the task's output."""
    filename = f"<task {task_name}>"
    code = compile_script(script, filename)
    namespace: dict[str, Any] = {"__name__": f"orchestrator_task_{task_name}", **PRELUDE}
    exec(code, namespace)
    try:
        result = namespace[FUNCTION_NAME](context, inputs, storage)
    except (TaskError, StateConflictError):
        raise
    except Exception as error:
        raise TaskError(type(error).__name__, _describe(error, filename)) from error
    return result


def _describe(error: BaseException, filename: str) -> str:
    """The exception's message with the script line it came from."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == filename and frame.lineno is not None:
            line = frame.lineno - 1
    message = str(error) or type(error).__name__
    return f"{message} (script line {line})" if line else message
