"""Run a `python_task` script: compile it as a function body and call it with `context`.

A script runs in the run's own process, on a worker thread (or on the event loop's thread:
see `engine.local._Activity`), so that a plain task costs a function call, not a process.
Whatever way a script tries to end, it only ends its attempt, which fails and goes through
the task's error policy like any script error:

- `sys.exit(n)` / `raise SystemExit`: a `SystemExit` task error; `KeyboardInterrupt`,
  `GeneratorExit` and any other `BaseException` a script raises: a task error of that class's
  name. Only `AttemptStopped` (the attempt's timeout) and `UserInterrupt` (Ctrl-C in the
  terminal) pass through, so that the engine can stop the attempt or the run.
- `os._exit(n)` and `os.abort()` called from a script's thread (or a thread it started)
  raise `SystemExit` there instead of ending the process (`os._exit` in a process the script
  forked still ends that process, and in a sandboxed attempt's own process it ends that
  process, which the sandbox reports as a `SandboxError`). A script that goes further (a
  signal to its own process, `ctypes`) can still end it: the run is then shown as `crashed`
  and can be resumed.
"""

from __future__ import annotations

import datetime as _datetime
import json
import math
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from orchestrator.errors import TaskError
from orchestrator.runtime.attempt import AttemptStopped
from orchestrator.runtime.context import StateConflictError
from orchestrator.spec.scripts import FUNCTION_NAME, compile_script

PRELUDE: dict[str, Any] = {
    "json": json,
    "math": math,
    "datetime": _datetime.datetime,
    "timedelta": _datetime.timedelta,
}
"""Names every script may use without importing (the guide calls `datetime.now()` bare)."""


class UserInterrupt(KeyboardInterrupt):
    """Ctrl-C in the terminal (the engine's SIGINT handler raises it): it stops the run, while
    a `KeyboardInterrupt` a script raises itself only fails its task."""


class _ProcessExit(SystemExit):
    """What `os._exit` / `os.abort` raise when a script calls them."""

    def __init__(self, call: str, code: int | None) -> None:
        super().__init__(code)
        self.call = call


_SCRIPT_THREADS: dict[int, tuple[int, int]] = {}
"""Thread id -> (the process it runs a script in, how many nested scripts it runs). The
process id tells a process a script forked (where `os._exit` must work) from the script."""


def _is_script_thread() -> bool:
    pid = os.getpid()
    entry = _SCRIPT_THREADS.get(threading.get_ident())
    if entry is not None and entry[0] == pid:
        return True
    return getattr(threading.current_thread(), "_orchestrator_script_pid", None) == pid


def _guarded(call: str, original: Callable[..., NoReturn]) -> Callable[..., NoReturn]:
    def guard(*arguments: Any) -> NoReturn:
        if _is_script_thread():
            raise _ProcessExit(call, arguments[0] if arguments else None)
        original(*arguments)

    guard.__name__ = guard.__qualname__ = original.__name__
    guard.__doc__ = original.__doc__
    return guard


_original_thread_init = threading.Thread.__init__


def _thread_init(self: threading.Thread, *arguments: Any, **keywords: Any) -> None:
    _original_thread_init(self, *arguments, **keywords)
    if _is_script_thread():  # a thread a script starts is a script thread too
        self._orchestrator_script_pid = os.getpid()  # type: ignore[attr-defined]


SANDBOX_CHILD = "orchestrator.runtime.sandbox"
"""The module a sandboxed attempt's own process runs: there `os._exit` ends only that process,
which the sandbox reports as the attempt's `SandboxError`, so it is left alone."""


_INSTALL_LOCK = threading.Lock()


def _intercept_exits() -> None:
    """Install the `os._exit` / `os.abort` guards once per process (see the module)."""
    if threading.Thread.__init__ is _thread_init:
        return
    if getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None) == SANDBOX_CHILD:
        return
    with _INSTALL_LOCK:
        if threading.Thread.__init__ is not _thread_init:
            for name in ("_exit", "abort"):
                setattr(os, name, _guarded(f"os.{name}", getattr(os, name)))
            threading.Thread.__init__ = _thread_init  # type: ignore[method-assign]


def run_script(script: str, task_name: str, context: Any, inputs: dict[str, Any], storage: Any) -> Any:
    """Execute a rendered script; its return value is the task's output."""
    filename = f"<task {task_name}>"
    code = compile_script(script, filename)
    namespace: dict[str, Any] = {"__name__": f"orchestrator_task_{task_name}", **PRELUDE}
    _intercept_exits()
    ident = threading.get_ident()
    _SCRIPT_THREADS[ident] = (os.getpid(), _SCRIPT_THREADS.get(ident, (0, 0))[1] + 1)
    try:
        exec(code, namespace)
        return namespace[FUNCTION_NAME](context, inputs, storage)
    except (TaskError, StateConflictError, AttemptStopped, UserInterrupt):
        raise
    except Exception as error:
        raise TaskError(type(error).__name__, _describe(error, filename)) from error
    except BaseException as error:  # sys.exit, os._exit, KeyboardInterrupt, GeneratorExit, ...
        raise TaskError(_base_type(error), _describe_exit(error, filename)) from None
    finally:
        pid, depth = _SCRIPT_THREADS.pop(ident)
        if depth > 1:
            _SCRIPT_THREADS[ident] = (pid, depth - 1)


def _base_type(error: BaseException) -> str:
    return "SystemExit" if isinstance(error, SystemExit) else type(error).__name__


def _describe_exit(error: BaseException, filename: str) -> str:
    """Why a script that tried to end more than its attempt failed, and what to do instead."""
    if isinstance(error, _ProcessExit):
        what = f"the script called {error.call}({'' if error.code is None else error.code})"
    elif isinstance(error, SystemExit):
        what = f"the script called sys.exit({'' if error.code is None else repr(error.code)})"
    else:
        what = f"the script raised {type(error).__name__}"
        if str(error):
            what += f": {error}"
    line = _script_line(error, filename)
    where = f" (script line {line})" if line else ""
    return (
        f"{what}{where}; a script ends its task by returning its output or raising an "
        "exception, never the process"
    )


def _script_line(error: BaseException, filename: str) -> int | None:
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == filename and frame.lineno is not None:
            line = frame.lineno - 1
    return line


def _describe(error: BaseException, filename: str) -> str:
    """The exception's message with the script line it came from."""
    line = _script_line(error, filename)
    message = str(error) or type(error).__name__
    return f"{message} (script line {line})" if line else message
