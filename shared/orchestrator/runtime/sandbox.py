"""Run one attempt of a leaf task in a child process with a memory limit, CPU affinity and a wall-clock kill.

SPEC section 10: `memory_limit` is an address-space limit (RLIMIT_AS), `cpu_limit` is CPU
affinity where the platform has it, and a timeout kills the child. Both engines run a limited
task here, so a breach is the same error everywhere: the embedded engine for its attempts, and
on AWS the task function (`aws.task_function`) inside a Lambda function sized for the task
(`aws.functions`), whose own memory is only the backstop. The parent sends one JSON request on
the child's stdin (the task, a JSON copy of its scope, run ids and limits) and reads its
messages from its stdout. The child opens the same stores as the parent (`open_stores` with the
same settings), on first use, so state, caches and the audit log are shared and a script that
touches none of them does not pay for them under its limit. The child's stdout is a line of
JSON per message: each secret the task reads, as soon as it reads it (so the parent can redact
the child's stderr, and its crash message, even when the child dies without replying), then
the reply.

The child is started with `subprocess.Popen` (never fork: the parent has threads). Its own
side is `main()`, run as `python -m orchestrator.runtime.sandbox`; it sets its limits before
importing anything heavy. This module's top level therefore imports only light modules.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from orchestrator.errors import TaskError
from orchestrator.runtime.redact import Redactor

if TYPE_CHECKING:
    from orchestrator.runtime.context import RunInfo
    from orchestrator.runtime.scope import Scope
    from orchestrator.settings import Settings
    from orchestrator.spec.models import Pipeline, TaskBase
    from orchestrator.stores.base import Stores

CHILD_MODULE = "orchestrator.runtime.sandbox"
SANDBOX_GRACE = 5.0
"""Seconds a driver waits past a sandboxed attempt's timeout before giving up on it: the child is
killed at its own deadline, so this wait is only a backstop."""
STDERR_TAIL_LINES = 20
_PARENT_POLL_SECONDS = 0.5
_WATCHER_STACK_BYTES = 256 * 1024
_FATAL_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "out of memory")


@dataclass(frozen=True)
class Limits:
    """What one sandboxed attempt may use."""

    memory_bytes: int | None  # address-space limit (RLIMIT_AS)
    cpus: float | None  # CPU affinity: the first ceil(cpus) CPUs of os.sched_getaffinity(0), where available
    timeout: float | None  # wall clock; the child is killed (SIGKILL) when it is exceeded


def limits_for(task: TaskBase, pipeline: Pipeline) -> Limits | None:
    """Task resource_limits / timeout over pipeline resource_limits (memory_limit, cpu_limit only; the
    pipeline's timeout bounds the whole run, not each task). None when the task has no memory or cpu
    limit, so it stays in process. (A task with only `timeout` stays in process: the engine already
    enforces timeouts in process.)"""
    from orchestrator.runtime.policy import memory_and_cpus, task_timeout

    memory, cpus = memory_and_cpus(task, pipeline)
    if memory is None and cpus is None:
        return None
    return Limits(memory_bytes=memory, cpus=cpus, timeout=task_timeout(task))


# -- the parent's side ----------------------------------------------------------------------------


def run_sandboxed(
    task: TaskBase,
    name: str,
    scope: Scope,
    run: RunInfo,
    backend: str,
    inputs: dict[str, Any],
    limits: Limits,
) -> Any:
    """Run one attempt of a leaf task in a child process and return its output, or raise TaskError."""
    from orchestrator.runtime.context import StateConflictError

    request = _request(task, name, scope, run, backend, inputs, limits)
    with tempfile.TemporaryFile() as stderr_file:
        # stderr goes to a file, not a pipe: a process the script starts may keep it open.
        with subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            env=_child_environment(),
            start_new_session=os.name == "posix",  # its own process group, killed as a whole
        ) as process:
            try:
                stdout, _ = process.communicate(request, timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                _kill(process)
                raise TaskError(
                    "TaskTimeout", f"task '{name}' exceeded its timeout of {limits.timeout:g}s"
                ) from None
            finally:
                if process.poll() is None:  # interrupted while waiting: never leave the child behind
                    _kill(process)
        stderr_file.seek(0)
        stderr = stderr_file.read().decode("utf-8", errors="replace")
    reply = _read_messages(stdout, run.redactor)
    stderr = run.redactor.text(stderr)
    _record_child(name, stderr, reply)
    if reply is None:
        raise _crash_error(name, process.returncode, stderr, limits)
    if stderr.strip():
        sys.stderr.write(stderr)
    if reply.get("ok"):
        return reply.get("output")
    if reply.get("conflict"):
        raise StateConflictError(str(reply.get("message", "")))
    error_type = str(reply.get("type") or "TaskFailed")
    if error_type == "MemoryError" and limits.memory_bytes is not None:
        raise _memory_error(name, limits.memory_bytes)
    retry_after = reply.get("retry_after")
    seconds = float(retry_after) if isinstance(retry_after, (int, float)) else None
    raise TaskError(error_type, str(reply.get("message", "")), retry_after=seconds)  # retryable by type


def _record_child(name: str, stderr: str, reply: dict[str, Any] | None) -> None:
    """What the child printed (its `[task] ` prefix taken off) and its LLM calls, in the
    attempt's telemetry when it is recorded (`runtime.telemetry`)."""
    from orchestrator.runtime.telemetry import current_recording

    recording = current_recording()
    if recording is None:
        return
    prefix = f"[{name}] "
    lines = [line.removeprefix(prefix) for line in stderr.splitlines()]
    if lines:
        recording.printed("\n".join(lines))
    for call in (reply or {}).get("llm_calls") or []:
        if isinstance(call, dict):
            recording.llm_call(
                str(call.get("model")),
                call.get("tokens_in"),
                call.get("tokens_out"),
                float(call.get("latency") or 0.0),
            )


def _request(
    task: TaskBase,
    name: str,
    scope: Scope,
    run: RunInfo,
    backend: str,
    inputs: dict[str, Any],
    limits: Limits,
) -> bytes:
    from orchestrator.runtime.budget import current_covering

    outputs = _visible_outputs(scope)
    loop = scope.loop
    frame = None
    if loop is not None:
        frame = {
            "index": loop.index,
            "state": loop.state if _is_json(loop.state) else {},
            "item_variable": loop.item_variable,
            "item": loop.item if _is_json(loop.item) else None,
        }
    request = {
        "parent": os.getpid(),
        "limits": dataclasses.asdict(limits),
        "task": task.model_dump(mode="json"),
        "name": name,
        "values": _scope_values(scope, outputs),
        "outputs": outputs,
        "loop": frame,
        "run": {
            "run_id": run.run_id,
            "pipeline_id": run.pipeline_id,
            "user_id": run.user_id,
            "persistence": run.persistence,
            "state_ttl": run.state_ttl,
            "started_at": run.started_at,
            "child_outputs": {k: v for k, v in run.child_outputs.items() if _is_json(v)},
        },
        "backend": backend,
        "inputs": inputs,
        # what the parent already redacts, so the child's audit entries are redacted the same way
        "known_secrets": run.redactor.known(),
        "budgets": None if (covering := current_covering()) is None else covering.as_dict(),
    }
    return json.dumps(request, default=str).encode("utf-8")


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _visible_outputs(scope: Scope) -> dict[str, Any]:
    """What `context.get_task_output` can see: every frame's outputs, innermost first."""
    outputs: dict[str, Any] = {}
    seen: set[str] = set()
    frame: Scope | None = scope
    while frame is not None:
        for key, value in frame.outputs.items():
            if key not in seen:
                seen.add(key)
                if _is_json(value):
                    outputs[key] = value
        frame = frame.parent
    return outputs


def _scope_values(scope: Scope, outputs: dict[str, Any]) -> dict[str, Any]:
    """Every name the scope resolves to a JSON value, except Jinja's globals (the child has its own)
    and names that resolve to a task output (sent once, in `outputs`)."""
    from orchestrator.template.jinja import GLOBALS

    values: dict[str, Any] = {}
    for key in scope:
        value = scope[key]
        if key in GLOBALS and value is GLOBALS[key]:
            continue
        if key in outputs and outputs[key] is value:
            continue
        if _is_json(value):
            values[key] = value
    return values


_ENVIRONMENT_HOOKS: list[Callable[[dict[str, str]], None]] = []


@contextmanager
def child_environment_hook(hook: Callable[[dict[str, str]], None]) -> Iterator[None]:
    """Within: `hook` may change each sandboxed child's environment (a copy of this process's)
    just before the child starts. The emulator's way to give a child the address of the
    emulated AWS services, which its in-process mock does not reach (`aws.emulator`)."""
    _ENVIRONMENT_HOOKS.append(hook)
    try:
        yield
    finally:
        _ENVIRONMENT_HOOKS.remove(hook)


def _child_environment() -> dict[str, str]:
    """The parent's environment, with this package importable however the parent found it (and
    what the hooks add: `child_environment_hook`)."""
    import orchestrator

    environment = dict(os.environ)
    root = str(Path(orchestrator.__file__).resolve().parent.parent)
    paths = environment.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (root, *paths) if p)
    for hook in tuple(_ENVIRONMENT_HOOKS):
        hook(environment)
    return environment


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child and whatever it started (its process group), then reap it."""
    killpg = getattr(os, "killpg", None)
    try:
        if killpg is not None:
            import signal

            killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.wait()


def _read_messages(stdout: bytes, redactor: Redactor) -> dict[str, Any] | None:
    """Learn the secrets the child reported; its reply, or None if it ended without one."""
    reply = None
    for line in stdout.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and isinstance(message.get("secret"), str):
            redactor.add(message["secret"])
        elif isinstance(message, dict) and "ok" in message:
            reply = message
    return reply


def _memory_error(name: str, memory_bytes: int) -> TaskError:
    return TaskError(
        "MemoryLimitExceeded",
        f"task '{name}' exceeded its memory limit of {memory_bytes / 1024**2:g} MB",
    )


def _crash_error(name: str, returncode: int, stderr: str, limits: Limits) -> TaskError:
    """The child ended without a reply."""
    if limits.memory_bytes is not None:
        # Running out of address space can kill the interpreter in C code (abort, segfault,
        # "Cannot allocate memory") before it could raise MemoryError and reply.
        return _memory_error(name, limits.memory_bytes)
    if any(marker in stderr for marker in _FATAL_MEMORY_MARKERS):
        return TaskError("MemoryError", f"task '{name}' ran out of memory: {_tail(stderr)}")
    if returncode < 0:
        import signal

        try:
            how = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with code {returncode}"
    tail = _tail(stderr)
    return TaskError("SandboxError", f"task '{name}' {how} without a result" + (f": {tail}" if tail else ""))


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-STDERR_TAIL_LINES:])


# -- the child's side -----------------------------------------------------------------------------


class _ReportingRedactor(Redactor):
    """A redactor that reports each secret it learns to the parent at once (`_Messages`)."""

    def __init__(self, messages: _Messages, known: list[str]) -> None:
        super().__init__()
        self._messages: _Messages | None = None
        for secret in known:  # the parent's: not reported back
            self.add(secret)
        self._messages = messages

    def _add_text(self, value: str, *, number: bool) -> None:
        new = value not in self.known()
        super()._add_text(value, number=number)
        if new and self._messages is not None:
            self._messages.send({"secret": value})


class _Messages:
    """The child's side of its stdout: one JSON message a line, from any thread."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message) + "\n"
        with self._lock:
            self._stream.write(text)
            self._stream.flush()


def _apply_limits(limits: dict[str, Any]) -> None:
    """Address space and CPU affinity of this process (and anything it starts)."""
    memory = limits.get("memory_bytes")
    if memory is not None:
        try:
            import resource
        except ImportError:  # not on this platform
            pass
        else:
            _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            value = int(memory) if hard == resource.RLIM_INFINITY else min(int(memory), hard)
            resource.setrlimit(resource.RLIMIT_AS, (value, value))
    cpus = limits.get("cpus")
    if cpus is not None and hasattr(os, "sched_getaffinity") and hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        wanted = max(1, math.ceil(float(cpus)))
        if wanted < len(available):
            os.sched_setaffinity(0, available[:wanted])


def _reply_stream() -> IO[str]:
    """A private copy of stdout for the reply; fd 1 itself now goes to stderr, so whatever the task
    prints (or a process it starts writes) cannot corrupt the reply."""
    private = os.dup(1)  # not inherited by processes the task starts
    os.dup2(2, 1)
    return os.fdopen(private, "w", encoding="utf-8")


def _exit_with_parent(parent: int) -> None:
    """End this process if the parent goes away (a child must not outlive the run that started it)."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(_PARENT_POLL_SECONDS)

    threading.stack_size(_WATCHER_STACK_BYTES)  # its stack counts against the address-space limit
    try:
        threading.Thread(target=watch, daemon=True, name="sandbox-parent-watch").start()
    finally:
        threading.stack_size(0)


class _StoreOnUse:
    """One of the child's stores: all of them are opened the first time the script uses one."""

    def __init__(self, opened: Callable[[], Stores], name: str) -> None:
        self._opened = opened
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(getattr(self._opened(), self._name), attribute)


def _stores_on_use(settings: Settings, backend: str) -> Stores:
    """The parent's stores, opened on first use: a script that reads no state, cache or secret
    does not load their clients (boto3 on AWS) under its address-space limit."""
    from orchestrator.stores.base import Stores
    from orchestrator.stores.factory import open_stores

    lock = threading.Lock()
    opened: list[Stores] = []

    def open_once() -> Stores:
        with lock:
            if not opened:
                opened.append(open_stores(settings, backend))
            return opened[0]

    on_use: dict[str, Any] = {
        item.name: _StoreOnUse(open_once, item.name) for item in dataclasses.fields(Stores)
    }
    return Stores(**on_use)


def _serve(request: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """Rebuild the task's world, run it, and describe the outcome."""
    from orchestrator.runtime.budget import Covering, covered
    from orchestrator.runtime.context import RunInfo, StateConflictError
    from orchestrator.runtime.leaf import Services, run_leaf
    from orchestrator.runtime.scope import LoopFrame, Scope
    from orchestrator.runtime.task_streams import task_streams
    from orchestrator.runtime.telemetry import collected_calls
    from orchestrator.settings import lambda_settings
    from orchestrator.spec.models import TASK_TYPES
    from orchestrator.template.jinja import GLOBALS

    try:
        spec = request["task"]
        task = TASK_TYPES[spec["type"]].model_validate(spec)
        settings = lambda_settings()  # its parent's: the state folder in /tmp on Lambda too
        info = request["run"]
        run = RunInfo(
            run_id=info["run_id"],
            pipeline_id=info["pipeline_id"],
            user_id=info["user_id"],
            stores=_stores_on_use(settings, request["backend"]),
            redactor=redactor,
            persistence=info["persistence"],
            state_ttl=info["state_ttl"],
            started_at=info["started_at"],
            child_outputs=info["child_outputs"],
        )
        outer = Scope({}, Scope(dict(GLOBALS)))
        outer.outputs.update(request["outputs"])
        frame = request["loop"]
        scope = Scope(request["values"], outer, loop=LoopFrame(**frame) if frame is not None else None)
        services = Services(settings)
        calls: list[dict[str, Any]] = []
        try:
            # what the script prints becomes `[task] ...` lines, as in process; the parent
            # redacts the rest of this process's stderr with the secrets it was sent, and
            # records them and the LLM calls (`_record_child`) in the attempt's telemetry
            budgets = request["budgets"]
            with (
                task_streams(redactor, descriptors=False),
                collected_calls(redactor, calls),
                covered(None if budgets is None else Covering.from_dict(budgets)),
            ):
                output = run_leaf(task, request["name"], scope, run, services, request["inputs"])
        finally:
            services.close()
        return {"ok": True, "output": output, "llm_calls": calls}
    except StateConflictError as error:
        return {
            "ok": False,
            "type": "StateConflict",
            "conflict": True,
            "message": str(error),
        }
    except TaskError as error:
        return {
            "ok": False,
            "type": error.error_type,
            "message": error.message,
            "retry_after": error.retry_after,  # a provider's Retry-After, for the task's policy
        }
    except MemoryError:
        return {"ok": False, "type": "MemoryError", "message": "out of memory"}
    except BaseException as error:  # SystemExit from a script, a bug: reported, not a silent crash
        if not isinstance(error, SystemExit):  # the script's own exit is its error, not a crash
            traceback.print_exc()
        message = str(error) or type(error).__name__
        return {"ok": False, "type": type(error).__name__, "message": message}


def main() -> None:
    """The child: read the request, apply the limits, run the task, write the reply, exit."""
    request = json.loads(sys.stdin.buffer.read())
    _apply_limits(request["limits"])
    messages = _Messages(_reply_stream())
    _exit_with_parent(int(request["parent"]))
    reply = _serve(request, _ReportingRedactor(messages, request.get("known_secrets") or []))
    try:
        messages.send(reply)
    except (TypeError, ValueError) as error:
        messages.send(
            {
                "ok": False,
                "type": "OutputNotSerializable",
                "message": f"the task's result is not JSON-serialisable: {error}",
            }
        )
    from orchestrator.stores.factory import close_databases

    close_databases()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # threads the task may have left behind must not hold the process open


if __name__ == "__main__":
    main()
