"""SPEC section 10: memory and CPU limits run a task in a child process; timeouts kill it."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import TaskError
from orchestrator.runtime.context import RunInfo, StateConflictError
from orchestrator.runtime.leaf import canonical_hash
from orchestrator.runtime.redact import MASK, Redactor
from orchestrator.runtime.sandbox import Limits, limits_for, run_sandboxed
from orchestrator.runtime.scope import LoopFrame, Scope
from orchestrator.settings import load_settings
from orchestrator.spec.models import Pipeline, PythonTask
from orchestrator.stores.factory import open_stores
from orchestrator.template import jinja

MB = 1024 * 1024
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux process limits")


def make_run() -> RunInfo:
    return RunInfo(
        run_id="run-1",
        pipeline_id="sandboxed",
        user_id="tester",
        stores=open_stores(load_settings(), "database"),
        redactor=Redactor(),
    )


def top_scope(run: RunInfo, inputs: dict[str, Any]) -> Scope:
    """The scope the engine gives top-level tasks (`_Run.top_scope`)."""
    values: dict[str, Any] = dict(jinja.GLOBALS)
    values.update(inputs)
    values["input_hash"] = canonical_hash(inputs)
    values["run"] = {"id": run.run_id, "pipeline": run.pipeline_id, "started_at": run.started_at}
    return Scope({}, Scope(values)).child()


def python_task(script: str) -> PythonTask:
    return PythonTask(type="python_task", name="work", script=textwrap.dedent(script).strip())


def sandboxed(
    script: str,
    limits: Limits,
    inputs: dict[str, Any] | None = None,
    run: RunInfo | None = None,
    scope: Scope | None = None,
) -> Any:
    inputs = inputs or {}
    run = run or make_run()
    scope = scope or top_scope(run, inputs)
    return run_sandboxed(python_task(script), "work", scope, run, "database", inputs, limits)


def alive(pid: int) -> bool:
    """A process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


CPU_ONLY = Limits(memory_bytes=None, cpus=1, timeout=30)
WITH_MEMORY = Limits(memory_bytes=256 * MB, cpus=None, timeout=30)


@linux_only
def test_script_sees_inputs_outputs_templates_and_loop_and_shares_state() -> None:
    # GIVEN a run whose top scope holds an earlier task's output, inside a for-loop iteration
    run = make_run()
    inputs = {"city": "Oslo", "n": 3}
    top = top_scope(run, inputs)
    top.outputs["fetch"] = {"rows": [1, 2, 3]}
    scope = top.child({"item": "b", "loop_index": 1}, loop=LoopFrame(1, item_variable="item", item="b"))
    # WHEN a script using all of them runs sandboxed
    output = sandboxed(
        """
        import os
        context.set_shared_state("seen", inputs["n"])
        return {
            "city": inputs["city"],
            "rows": context.get_task_output("fetch")["rows"],
            "missing": context.get_task_output("nope", "default"),
            "template": "{{ city | upper }}-{{ run.id }}-{{ range(2) | list | length }}",
            "from_output": {{ fetch.rows | length }},
            "item": context.get_loop_variable("item"),
            "iteration": context.get_loop_iteration(),
            "ids": [context.get_pipeline_id(), context.get_execution_id(), context.get_user_id()],
            "pid": os.getpid(),
        }
        """,
        CPU_ONLY,
        inputs,
        run,
        scope,
    )
    # THEN it ran in another process and saw everything the engine would give it
    assert output.pop("pid") != os.getpid()
    assert output == {
        "city": "Oslo",
        "rows": [1, 2, 3],
        "missing": "default",
        "template": "OSLO-run-1-2",
        "from_output": 3,
        "item": "b",
        "iteration": 1,
        "ids": ["sandboxed", "run-1", "tester"],
    }
    # AND its state write landed in the store the parent reads
    assert run.stores.state.read("shared", "seen").value == 3


@linux_only
def test_allocating_past_the_memory_limit_is_memory_limit_exceeded() -> None:
    # GIVEN a script allocating 600 MB under a 256MB limit
    # WHEN it runs sandboxed
    with pytest.raises(TaskError) as caught:
        sandboxed("data = bytearray(600 * 1024 * 1024)\nreturn len(data)", WITH_MEMORY)
    # THEN the attempt fails with a clear, retryable error
    assert caught.value.error_type == "MemoryLimitExceeded"
    assert caught.value.message == "task 'work' exceeded its memory limit of 256 MB"
    assert caught.value.retryable


@linux_only
def test_small_allocations_fit_under_the_memory_limit() -> None:
    # GIVEN a script allocating 50 MB under a 256MB limit
    # WHEN it runs sandboxed THEN it succeeds
    assert sandboxed("return len(bytearray(50 * 1024 * 1024))", WITH_MEMORY) == 50 * MB


@linux_only
def test_dying_without_a_reply_under_a_memory_limit_counts_as_memory() -> None:
    # GIVEN a memory-limited script whose process dies from a signal (as C code out of memory does)
    # WHEN it runs sandboxed
    with pytest.raises(TaskError) as caught:
        sandboxed("import os, signal\nos.kill(os.getpid(), signal.SIGABRT)", WITH_MEMORY)
    # THEN it is reported as exceeding the memory limit
    assert caught.value.error_type == "MemoryLimitExceeded"


@linux_only
@pytest.mark.slow
def test_timeout_kills_the_child_and_what_it_started(tmp_path: Path) -> None:
    # GIVEN a script that starts a process, records the pids and sleeps 10 s, under a 1 s timeout
    pids = tmp_path / "pids"
    script = f"""
    import os, subprocess, time
    helper = subprocess.Popen(["sleep", "30"])
    open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{helper.pid}}")
    time.sleep(10)
    """
    started = time.monotonic()
    # WHEN it runs sandboxed
    with pytest.raises(TaskError) as caught:
        sandboxed(script, Limits(memory_bytes=None, cpus=1, timeout=1))
    # THEN it fails with TaskTimeout soon after the second
    assert time.monotonic() - started < 2.5
    assert caught.value.error_type == "TaskTimeout"
    assert caught.value.message == "task 'work' exceeded its timeout of 1s"
    # AND neither the child nor the process it started is left behind
    child, helper = (int(pid) for pid in pids.read_text().split())
    deadline = time.monotonic() + 2
    while (alive(child) or alive(helper)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
    assert not alive(helper)


@linux_only
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_cpu_limit_pins_the_child_to_that_many_cpus() -> None:
    # GIVEN cpu_limit 1 WHEN a script reports its CPUs THEN it has exactly one
    assert sandboxed("import os\nreturn len(os.sched_getaffinity(0))", CPU_ONLY) == 1


@linux_only
def test_a_raised_exception_comes_back_with_its_type_and_message() -> None:
    # GIVEN a script raising ValueError
    # WHEN it runs sandboxed
    with pytest.raises(TaskError) as caught:
        sandboxed('raise ValueError("bad value")', CPU_ONLY)
    # THEN the error keeps its type and message
    assert caught.value.error_type == "ValueError"
    assert "bad value" in caught.value.message


@linux_only
def test_a_crash_without_a_reply_is_a_sandbox_error() -> None:
    # GIVEN a script (without memory limit) that writes to stderr and exits hard
    # WHEN it runs sandboxed
    with pytest.raises(TaskError) as caught:
        sandboxed(
            """
            import os, sys
            sys.stderr.write("going down\\n")
            sys.stderr.flush()
            os._exit(3)
            """,
            CPU_ONLY,
        )
    # THEN the error says how it ended, with the last lines it wrote
    assert caught.value.error_type == "SandboxError"
    assert "exited with code 3" in caught.value.message
    assert "going down" in caught.value.message


@linux_only
def test_printing_cannot_corrupt_the_reply() -> None:
    # GIVEN a script that prints to stdout, also from a process it starts
    script = 'import subprocess\nprint("noise")\nsubprocess.run(["echo", "more noise"])\nreturn "clean"'
    # WHEN it runs sandboxed THEN its output is intact
    assert sandboxed(script, CPU_ONLY) == "clean"


@linux_only
def test_secrets_read_in_the_child_are_redacted_by_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a secret in the environment the child inherits
    monkeypatch.setenv("ORCHESTRATOR_SECRET_X", "hunter2-very-secret")
    run = make_run()
    # WHEN a sandboxed script reads it
    output = sandboxed('return "key=" + context.get_secret("x")', CPU_ONLY, run=run)
    # THEN the output comes back redacted, and the parent's redactor has learned the secret
    # (for what the task printed, its errors and everything the run records afterwards)
    assert output == f"key={MASK}"
    assert run.redactor.text("hunter2-very-secret in a later line") == f"{MASK} in a later line"


@linux_only
def test_secrets_known_to_the_parent_are_redacted_in_child_audit_entries() -> None:
    # GIVEN a run that already redacts a sensitive input
    run = make_run()
    run.redactor.add("s3cret-input")
    # WHEN a sandboxed script logs it to the audit log
    sandboxed('context.log_audit_event({"token": inputs["token"]})', CPU_ONLY, {"token": "s3cret-input"}, run)
    # THEN the stored entry is redacted
    entries = run.stores.audit.query(run="run-1")
    assert [entry["token"] for entry in entries] == [MASK]


@linux_only
def test_a_state_conflict_in_the_child_is_a_state_conflict_in_the_parent() -> None:
    # GIVEN a script whose compare-and-set loses to another writer between its read and its write
    script = """
    from orchestrator.settings import load_settings
    from orchestrator.stores.factory import open_stores
    context.get_shared_state("counter", 0)
    open_stores(load_settings()).state.write("shared", "counter", 99)
    context.set_shared_state("counter", 1)
    """
    # WHEN it runs sandboxed THEN the parent sees StateConflictError (the engine re-runs the attempt)
    with pytest.raises(StateConflictError):
        sandboxed(script, CPU_ONLY)


def pipeline(**resource_limits: Any) -> Pipeline:
    tasks = [{"type": "python_task", "script": "pass"}]
    return Pipeline.model_validate({"name": "p", "tasks": tasks, "resource_limits": resource_limits})


def task(**fields: Any) -> PythonTask:
    return PythonTask.model_validate({"type": "python_task", "script": "pass", **fields})


def test_limits_for_prefers_the_task_over_the_pipeline() -> None:
    # GIVEN pipeline limits and a task overriding the memory limit, with its own timeout
    shared = pipeline(memory_limit="512MB", cpu_limit=2, timeout=600)
    own = task(resource_limits={"memory_limit": "256MB"}, timeout=5)
    # WHEN limits are resolved THEN the task wins where it says something; the pipeline timeout is not used
    assert limits_for(own, shared) == Limits(memory_bytes=256 * MB, cpus=2, timeout=5)
    assert limits_for(task(resource_limits={"cpu_limit": 0.5, "timeout": 7}), shared) == Limits(
        memory_bytes=512 * MB, cpus=0.5, timeout=7
    )
    assert limits_for(task(), shared) == Limits(memory_bytes=512 * MB, cpus=2, timeout=None)


def test_limits_for_is_none_without_memory_or_cpu_limit() -> None:
    # GIVEN no memory or cpu limit anywhere (only timeouts)
    # WHEN limits are resolved THEN the task stays in process
    assert limits_for(task(), pipeline()) is None
    assert limits_for(task(timeout=3, resource_limits={"timeout": 4}), pipeline(timeout=60)) is None
