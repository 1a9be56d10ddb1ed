"""The embedded engine: schedules a plan's bodies on asyncio, leaf work on daemon threads.

A task starts as soon as every sibling it depends on has finished (a callback per finished
task, so scheduling costs O(1) per task). Leaf tasks run on worker threads; loops and
groups are coroutines that schedule their own bodies the same way. Error policy (retries,
fallback, `on_failure`) wraps every task, leaf or container (SPEC section 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from orchestrator.engine.threads import DaemonThreadPool, shared_pool
from orchestrator.errors import OrchestratorError, PipelineValidationError, StateFolderError, TaskError
from orchestrator.plan import Body, Node, Plan, build_plan, plan_tasks
from orchestrator.runtime.attempt import Attempt
from orchestrator.runtime.context import RunInfo
from orchestrator.runtime.documents import (
    ErrorInfo,
    RunStatus,
    TaskOutcome,
    TaskStatus,
    redacted_document,
    redacted_record,
    run_document,
)
from orchestrator.runtime.generated import expand
from orchestrator.runtime.inputs import resolve_inputs
from orchestrator.runtime.leaf import LEAF_TYPES, Services, run_leaf
from orchestrator.runtime.loops import (
    for_iteration,
    for_loop_items,
    iteration_output,
    while_iteration,
    while_output,
    while_state,
)
from orchestrator.runtime.pipelines import (
    child_failed,
    child_path,
    child_run,
    pipeline_timeout,
    render_outputs,
    run_scope,
)
from orchestrator.runtime.policy import ErrorPolicy, effective_policy, task_timeout
from orchestrator.runtime.python_task import UserInterrupt
from orchestrator.runtime.redact import MASK, Redactor
from orchestrator.runtime.sandbox import SANDBOX_GRACE, Limits, limits_for, run_sandboxed
from orchestrator.runtime.scope import Scope
from orchestrator.runtime.task import PipelineAborted, TaskRun, attempt_leaf, carry_task, timeout_error
from orchestrator.runtime.task_streams import task_streams
from orchestrator.runtime.telemetry import (
    GENERATED,
    TaskPlace,
    carrying,
    now,
    parallel_children,
    pipeline_children,
    record_run_start,
    record_usage,
    task_path,
    with_telemetry,
)
from orchestrator.settings import Settings
from orchestrator.spec.loading import read_pipeline
from orchestrator.spec.models import (
    DynamicTaskGroup,
    ForLoop,
    ParallelGroup,
    Pipeline,
    PipelineGroup,
    TaskBase,
    WhileLoop,
)
from orchestrator.stores.base import Stores


class Observer(Protocol):
    """Hears about top-level tasks as they start and finish (the CLI draws progress from it)."""

    def task_started(self, name: str) -> None: ...

    def task_finished(self, name: str, outcome: TaskOutcome) -> None: ...


@dataclass
class RunOptions:
    """How to run: configuration, stores, clients and who is asking."""

    settings: Settings
    stores: Stores
    services: Services | None = None
    no_cache: bool = False
    user_id: str | None = None
    run_id: str | None = None
    observer: Observer | None = None
    sleep: Callable[[float], Any] = asyncio.sleep


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; it was recorded as `crashed` and can be resumed by its id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


class _Activity:
    """How many nodes of a run, child pipelines included, have started and not finished.

    A leaf that is the only such node besides its own enclosing containers (`depth` of them)
    runs on the event loop's thread instead of a worker thread: nothing else can be waiting
    for the loop meanwhile, and a chain of tasks then costs no thread hand-offs (a sequential
    pipeline or loop runs about twice as fast). Not when a timeout must be able to interrupt
    it: the task's own, the run's (`may_inline`), or that of a loop or group around it
    (`deadlines`: how many such containers are running).
    """

    __slots__ = ("deadlines", "in_flight", "may_inline")

    def __init__(self, may_inline: bool) -> None:
        self.in_flight = 0
        self.deadlines = 0
        self.may_inline = may_inline

    def alone(self, depth: int) -> bool:
        return self.may_inline and not self.deadlines and self.in_flight == depth + 1


@dataclass
class _Shared:
    """What a run and its child pipeline runs share."""

    options: RunOptions
    services: Services
    pool: DaemonThreadPool
    redactor: Redactor
    activity: _Activity
    pipeline_stack: tuple[Path, ...] = ()
    degraded: list[str] = field(default_factory=list)
    child_plans: dict[Path, Plan] = field(default_factory=dict)  # planned once per run
    root_run_id: str = ""  # the top run's id, under which telemetry is recorded
    top: Pipeline | None = None  # the top pipeline, in the runs of its child pipelines


async def _interrupted() -> Any:
    """Ctrl-C arrived in a script running on the loop's thread: raise KeyboardInterrupt from
    the loop itself, as when it arrives while the loop waits, so that `asyncio.run` cancels
    every task of the run (this one included) and re-raises it."""
    loop = asyncio.get_running_loop()
    loop.call_soon(_raise_keyboard_interrupt)
    return await loop.create_future()


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def _let_ctrl_c_interrupt() -> None:
    """Make Ctrl-C raise KeyboardInterrupt wherever the run is, as in a plain program.

    `asyncio.run` installs a handler that only cancels the run at the loop's next turn, which
    a script running on the loop's thread (see `_Activity`) would delay until it returns.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(getattr(getattr(handler, "func", None), "__self__", None), asyncio.Runner):
        signal.signal(signal.SIGINT, _raise_user_interrupt)


def _raise_user_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C: `UserInterrupt`, which a script cannot turn into a task failure by raising a
    `KeyboardInterrupt` of its own (see `runtime.python_task`)."""
    raise UserInterrupt


def _dependents(body: Body) -> dict[str, list[str]]:
    cached: dict[str, list[str]] | None = getattr(body, "_dependents", None)
    if cached is None:
        cached = {name: [] for name in body.nodes}
        for node in body.nodes.values():
            for dependency in node.dependencies:
                cached[dependency].append(node.name)
        body._dependents = cached  # type: ignore[attr-defined]
    return cached


def _unwound(
    body: Body, outcomes: dict[str, TaskOutcome], cancelled: set[str], error: BaseException
) -> BaseException:
    """The error that ends a body, with every unfinished node marked cancelled or not run."""
    for name in body.nodes:
        if name not in outcomes:
            status = TaskStatus.CANCELLED if name in cancelled else TaskStatus.NOT_RUN
            outcomes[name] = TaskOutcome(status)
    if isinstance(error, PipelineAborted):
        error.body_outcomes = outcomes
    return error


class _Reporter:
    """Top-level task events: progress for the observer, a checkpoint for `resume`."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.observer = run.shared.options.observer if run.top_level else None
        self.unfinished: set[str] = set()  # started, not finished: cancelled if the run stops

    def task_started(self, name: str) -> None:
        self.unfinished.add(name)
        if self.observer:
            self.observer.task_started(name)

    def task_finished(self, name: str, outcome: TaskOutcome) -> None:
        self.unfinished.discard(name)
        if self.observer:
            self.observer.task_finished(name, outcome)
        if outcome.status in FINISHED and (
            outcome.status is not TaskStatus.FAILED or name in self.run.shared.degraded
        ):
            record = redacted_record({**outcome.record(), "output": outcome.output}, self.run.shared.redactor)
            self.run.shared.options.stores.runs.checkpoint(self.run.info.run_id, name, record)


FINISHED = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.SKIPPED, TaskStatus.CACHED, TaskStatus.FALLBACK, TaskStatus.FAILED}
)


def outcome_from_record(record: dict[str, Any]) -> TaskOutcome:
    """A checkpointed outcome, as `resume` restores it."""
    error = record.get("error")
    return TaskOutcome(
        TaskStatus(record["status"]),
        record.get("output"),
        int(record.get("attempts", 0)),
        ErrorInfo(error["type"], error["message"]) if error else None,
    )


class _BodySchedule:
    """One run of one body: starts each node when its last dependency finishes."""

    def __init__(
        self,
        run: _Run,
        body: Body,
        scope: Scope,
        max_concurrency: int | None,
        observer: Observer | None,
        completed: dict[str, TaskOutcome] | None = None,
        depth: int = 0,
    ) -> None:
        self.completed = completed or {}
        self.depth = depth
        self.activity = run.shared.activity
        self.run_ = run
        self.body = body
        self.scope = scope
        self.observer = observer
        self.loop = asyncio.get_running_loop()
        self.outcomes: dict[str, TaskOutcome] = {}
        self.waiting = {name: len(node.dependencies) for name, node in body.nodes.items()}
        self.dependents = _dependents(body)
        self.running: dict[str, asyncio.Task[None]] = {}
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.failures: list[BaseException] = []
        self.limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def run(self) -> dict[str, TaskOutcome]:
        for name, outcome in self.completed.items():
            self.outcomes[name] = outcome
            self.scope.outputs[name] = outcome.output
            for dependent in self.dependents[name]:
                self.waiting[dependent] -= 1
        if len(self.outcomes) == len(self.body.nodes):
            return self.outcomes
        for name, count in self.waiting.items():
            if count == 0 and name not in self.completed:
                self.start(name)
        try:
            await self.finished
        finally:
            cancelled = set(self.running)
            for task in list(self.running.values()):
                task.cancel()
        if self.failures:
            raise _unwound(self.body, self.outcomes, cancelled, self.failures[0])
        return self.outcomes

    def start(self, name: str) -> None:
        self.enter(name)
        self.running[name] = self.loop.create_task(self.run_node(name))

    def enter(self, name: str) -> None:
        if self.observer:
            self.observer.task_started(name)
        self.activity.in_flight += 1

    async def run_node(self, name: str) -> None:
        """Run a node, then record it and start what it unblocks, in the same turn of the loop.
        The first node it unblocks runs next in this same asyncio task: a chain of nodes costs
        no task creation and no extra turn of the loop per node."""
        this_task = self.running[name]
        current: str | None = name
        while current is not None:
            node = self.body.nodes[current]
            try:
                outcome = await self.run_.run_node(
                    node, self.scope, self.limit, self.observer is not None, self.depth
                )
            except asyncio.CancelledError:
                self.left(current)
                raise
            except Exception as error:
                self.left(current)
                if not self.finished.done():
                    self.fail(current, error)
                return
            self.left(current)
            if self.finished.done():
                return
            current = self.done(current, outcome)
            if current is not None:
                self.running[current] = this_task

    def left(self, name: str) -> None:
        self.running.pop(name, None)
        self.activity.in_flight -= 1

    def done(self, name: str, outcome: TaskOutcome) -> str | None:
        """Record a finished node and start the nodes it unblocks; the first of them is not
        started but returned, for the caller's asyncio task to run next."""
        self.outcomes[name] = outcome
        self.scope.outputs[name] = outcome.output
        if self.observer:
            self.observer.task_finished(name, outcome)
        ready: list[str] = []
        for dependent in self.dependents[name]:
            self.waiting[dependent] -= 1
            if self.waiting[dependent] == 0:
                ready.append(dependent)
        if len(self.outcomes) == len(self.body.nodes):
            self.finished.set_result(None)
        if not ready:
            return None
        for other in ready[1:]:
            self.start(other)
        self.enter(ready[0])
        return ready[0]

    def fail(self, name: str, error: BaseException) -> None:
        if isinstance(error, PipelineAborted):
            self.outcomes[name] = error.outcome
            if self.observer:
                self.observer.task_finished(name, error.outcome)
        self.failures.append(error)
        self.finished.set_result(None)


class _Run:
    def __init__(
        self, plan: Plan, inputs: dict[str, Any], shared: _Shared, run_id: str, *, top_level: bool = True
    ) -> None:
        self.top_level = top_level
        self.plan = plan
        self.pipeline = plan.pipeline
        self.inputs = inputs
        self.shared = shared
        options = shared.options
        self.info = RunInfo(
            run_id=run_id,
            pipeline_id=plan.pipeline_id,
            user_id=options.user_id or getpass.getuser(),
            stores=options.stores,
            redactor=shared.redactor,
            persistence=self.pipeline.state_management.persistence,
            state_ttl=self.pipeline.state_management.ttl,
        )
        self.group_children: dict[str, dict[str, TaskOutcome]] = {}
        self.reporter = _Reporter(self)
        self.started = now()
        self._task_settings: dict[int, tuple[TaskBase, ErrorPolicy, float | None, Limits | None]] = {}

    def task_settings(self, task: TaskBase) -> tuple[ErrorPolicy, float | None, Limits | None]:
        """A task's error policy, timeout and sandbox limits, worked out once per run (a loop
        body runs once per item). The entry holds the task, so its id stays its own."""
        found = self._task_settings.get(id(task))
        if found is None or found[0] is not task:
            limits = limits_for(task, self.pipeline) if isinstance(task, LEAF_TYPES) else None
            found = (task, effective_policy(task, self.pipeline), task_timeout(task), limits)
            self._task_settings[id(task)] = found
        return found[1], found[2], found[3]

    # scheduling -------------------------------------------------------------------------
    async def run_body(
        self,
        body: Body,
        scope: Scope,
        *,
        max_concurrency: int | None = None,
        report: bool = False,
        completed: dict[str, TaskOutcome] | None = None,
        depth: int = 0,
    ) -> dict[str, TaskOutcome]:
        """Run every node of a body as soon as its dependencies are done (`depth`: how many
        containers enclose the body)."""
        if not body.nodes:
            return {}
        observer = self.reporter if report else None
        return await _BodySchedule(self, body, scope, max_concurrency, observer, completed, depth).run()

    async def run_node(
        self, node: Node, scope: Scope, limit: asyncio.Semaphore | None, report: bool, depth: int
    ) -> TaskOutcome:
        if limit is None:
            return await self.run_task(node.task, node.name, scope, node, report, depth)
        async with limit:
            return await self.run_task(node.task, node.name, scope, node, report, depth)

    # one task, with its policy ------------------------------------------------------------
    async def run_task(
        self, task: TaskBase, name: str, scope: Scope, node: Node | None, report: bool, depth: int = 0
    ) -> TaskOutcome:
        """Carry a ready task to its outcome (`runtime.task`); this engine runs its attempts."""
        run = TaskRun(
            task,
            name,
            scope,
            pipeline=self.pipeline,
            pipeline_id=self.info.pipeline_id,
            policy=self.task_settings(task)[0],
            reads=node.reads if node else frozenset(),
            cache=self.shared.options.stores.cache,
            no_cache=self.shared.options.no_cache,
            default_model=self.shared.services.settings.default_model,
            redactor=self.shared.redactor,
            place=TaskPlace(
                self.shared.options.stores.telemetry,
                self.shared.root_run_id,
                "" if self.top_level else self.info.pipeline_id,
                task_path(scope.place, name),
            ),
            top=self.shared.top,
        )

        async def attempt(which: TaskBase) -> Any:
            if which is task:
                return await self.attempt(task, name, scope, node, report, depth)
            return await self.attempt(which, name, scope, None, False, depth)  # the fallback task

        outcome = await carry_task(run, attempt, self.shared.options.sleep)
        if outcome.status is TaskStatus.FAILED:
            self.shared.degraded.append(name)
        return outcome

    async def attempt(
        self, task: TaskBase, name: str, scope: Scope, node: Node | None, report: bool, depth: int
    ) -> Any:
        """One attempt, within the task's timeout."""
        _, timeout, limits = self.task_settings(task)
        work = self.execute(task, name, scope, node, report, depth, limits, timeout)
        if timeout is None:
            return await work
        container = not isinstance(task, LEAF_TYPES)
        if container:  # the tasks inside must leave the loop free for this deadline
            self.shared.activity.deadlines += 1
        # a sandboxed child is killed at its own deadline; the wait here is only a backstop
        try:
            return await asyncio.wait_for(work, timeout + (SANDBOX_GRACE if limits else 0.0))
        except TimeoutError:
            raise timeout_error(name, timeout) from None
        finally:
            if container:
                self.shared.activity.deadlines -= 1

    async def on_thread(self, leaf: Callable[[], Any]) -> Any:
        """A leaf attempt on a worker thread, stopped (`runtime.attempt`) when the wait for it
        ends early: its timeout passed, or the run is being cancelled."""
        attempt = Attempt()
        try:
            return await self.shared.pool.run_in_loop(attempt.run, leaf)
        except asyncio.CancelledError:
            attempt.stop()
            raise

    async def execute(
        self,
        task: TaskBase,
        name: str,
        scope: Scope,
        node: Node | None,
        report: bool,
        depth: int,
        limits: Limits | None,
        timeout: float | None,
    ) -> Any:
        if isinstance(task, LEAF_TYPES):
            inputs = dict(self.inputs)
            if limits is not None:
                backend = self.pipeline.state_management.storage_backend
                leaf = carrying(
                    functools.partial(run_sandboxed, task, name, scope, self.info, backend, inputs, limits)
                )
            else:
                leaf = carrying(
                    functools.partial(run_leaf, task, name, scope, self.info, self.shared.services, inputs)
                )
                if timeout is None and self.shared.activity.alone(depth):
                    try:
                        return attempt_leaf(leaf, name)
                    except KeyboardInterrupt:
                        return await _interrupted()
            return await self.on_thread(functools.partial(attempt_leaf, leaf, name))
        body = node.body if node is not None else None
        inner = depth + 1
        try:
            if isinstance(task, ForLoop):
                return await self.for_loop(task, name, body or self.plan_inline(task.tasks), scope, inner)
            if isinstance(task, WhileLoop):
                return await self.while_loop(task, name, body or self.plan_inline(task.tasks), scope, inner)
            if isinstance(task, ParallelGroup):
                return await self.parallel_group(
                    task, name, body or self.plan_inline(task.tasks), scope, report, inner
                )
            if isinstance(task, DynamicTaskGroup):
                return await self.dynamic_group(task, name, scope, inner)
            if isinstance(task, PipelineGroup):
                return await self.pipeline_group(task, scope, inner)
        except PipelineAborted as abort:
            error = abort.outcome.error or ErrorInfo("TaskFailed", "failed")
            raise TaskError(error.type, error.message) from None
        raise TypeError(f"unknown task type {type(task).__name__}")

    def plan_inline(self, tasks: list[Any]) -> Body:
        return plan_tasks(tasks, self.plan.source.source)

    # containers ---------------------------------------------------------------------------
    async def for_loop(self, task: ForLoop, name: str, body: Body, scope: Scope, depth: int) -> list[Any]:
        items = for_loop_items(task, scope)
        results: list[Any] = [None] * len(items)
        positions = iter(range(len(items)))

        async def worker() -> None:
            for index in positions:
                iteration = for_iteration(scope, task.item_variable, index, items[index], name)
                outcomes = await self.run_body(body, iteration, depth=depth)
                outputs = {name: outcome.output for name, outcome in outcomes.items()}
                results[index] = iteration_output(body.nodes, outputs)  # in file order

        workers = [asyncio.ensure_future(worker()) for _ in range(min(task.max_concurrency, len(items)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for pending in workers:
                pending.cancel()
        return results

    async def while_loop(
        self, task: WhileLoop, name: str, body: Body, scope: Scope, depth: int
    ) -> dict[str, Any]:
        state: dict[str, Any] = {}
        last = list(body.nodes)[-1] if body.nodes else None
        iterations = 0
        while (iteration := while_iteration(task, scope, iterations, state, name)) is not None:
            outcomes = await self.run_body(body, iteration, depth=depth)
            iterations += 1
            state = while_state(outcomes[last].output if last else None)
        return while_output(iterations, state)

    async def parallel_group(
        self, task: ParallelGroup, name: str, body: Body, scope: Scope, report: bool, depth: int
    ) -> dict[str, Any]:
        inner = scope.child()
        outcomes: dict[str, TaskOutcome] = {}
        try:
            outcomes = await self.run_body(
                body, inner, max_concurrency=task.max_concurrency, report=report, depth=depth
            )
        except PipelineAborted as abort:
            outcomes = abort.body_outcomes
            raise
        finally:
            # the document and later templates see the same children, whether the group failed or not
            self.group_children[name] = outcomes
            for child, outcome in outcomes.items():
                scope.outputs[child] = outcome.output
        return {child: outcomes[child].output for child in body.nodes}  # in file order, as on AWS

    async def dynamic_group(self, task: DynamicTaskGroup, name: str, scope: Scope, depth: int) -> list[Any]:
        body = expand(task, scope, self.plan.source.source)
        names = list(body.nodes)
        inner = scope.child(place=(*scope.place, name, GENERATED))
        outcomes = await self.run_body(body, inner, max_concurrency=task.max_concurrency, depth=depth)
        return [outcomes[name].output for name in names]

    def child_plan(self, path: Path) -> Plan:
        """A child pipeline's plan: from the files read with the pipeline (`spec.loading`), not
        read again, and planned once per run (a pipeline_group in a loop runs it many times)."""
        plans = self.shared.child_plans
        if path not in plans:
            found = self.plan.source.children.get(path)
            if isinstance(found, PipelineValidationError):
                raise found
            plans[path] = build_plan(found if found is not None else read_pipeline(path))
        return plans[path]

    async def pipeline_group(self, task: PipelineGroup, scope: Scope, depth: int) -> dict[str, Any]:
        async def run_child(index: int) -> tuple[str, dict[str, Any]]:
            stack = self.shared.pipeline_stack
            parent = self.plan.path
            child_plan, inputs = child_run(task, index, scope, parent, self.child_plan, including=stack)
            for sensitive in child_plan.pipeline.sensitive_inputs() & set(inputs):
                self.shared.redactor.add(inputs[sensitive])
            shared = _Shared(
                self.shared.options,
                self.shared.services,
                self.shared.pool,
                self.shared.redactor,
                self.shared.activity,
                (*stack, child_path(task, index, self.plan.path)),
                self.shared.degraded,
                self.shared.child_plans,
                self.shared.root_run_id,
                self.shared.top or self.pipeline,
            )
            run = _Run(
                child_plan, inputs, shared, f"{self.info.run_id}.{child_plan.pipeline_id}", top_level=False
            )
            document = await run.run(depth=depth)
            if document["status"] == RunStatus.FAILED:
                raise child_failed(task, index, document["error"] or {})
            return child_plan.pipeline_id, document["outputs"]

        if task.mode == "sequential":
            results = [await run_child(index) for index in range(len(task.pipelines))]
        else:
            results = list(await asyncio.gather(*(run_child(i) for i in range(len(task.pipelines)))))
        outputs = dict(results)
        self.info.child_outputs.update(outputs)
        return outputs

    # the whole run ------------------------------------------------------------------------
    def with_telemetry(self, document: dict[str, Any], ended: float | None = None) -> dict[str, Any]:
        """The run's document with its telemetry fields (`runtime.telemetry`): those of a
        `running` one when `ended` is None."""
        started = self.started
        entries = [] if ended is None else self.shared.options.stores.telemetry.query(self.info.run_id)
        fields = {
            "engine": "local",
            "user": self.info.user_id,
            "pipeline_file": str(self.plan.path.resolve()),
        }
        return with_telemetry(
            {**document, **fields},
            entries,
            run_started=started,
            run_ended=ended,
            pipeline_groups=pipeline_children(self.plan),
            groups=parallel_children(self.pipeline.tasks),
            prices=self.shared.options.settings.prices,
        )

    def top_scope(self) -> Scope:
        return run_scope(self.inputs, self.info.run_id, self.info.pipeline_id, self.info.started_at)

    async def run(self, completed: dict[str, dict[str, Any]] | None = None, depth: int = 0) -> dict[str, Any]:
        """Run the pipeline; `completed` are checkpoints of top-level tasks a resumed run keeps
        (`depth`: how many containers enclose it, for a child pipeline)."""
        scope = self.top_scope()
        finished = self.restore(completed or {})
        for children in self.group_children.values():
            for child, outcome in children.items():
                scope.outputs[child] = outcome.output
        outcomes: dict[str, TaskOutcome] = {}
        error: dict[str, Any] | None = None
        status = RunStatus.SUCCEEDED
        if self.top_level:
            _let_ctrl_c_interrupt()
        timeout = self.pipeline.resource_limits.timeout
        if timeout:
            self.shared.activity.may_inline = False  # the run's deadline must be able to fire
        try:
            work = self.run_body(self.plan.body, scope, report=True, completed=finished, depth=depth)
            outcomes = await (asyncio.wait_for(work, timeout) if timeout else work)
        except PipelineAborted as abort:
            outcomes = abort.body_outcomes
            failed = abort.outcome.error or ErrorInfo("TaskFailed", "failed")
            error = failed.as_dict(abort.task)
            status = RunStatus.FAILED
        except TimeoutError:
            error = pipeline_timeout(timeout or 0)
            status = RunStatus.FAILED
            outcomes = {name: TaskOutcome(TaskStatus.CANCELLED) for name in self.plan.body.nodes}
        result = None
        if status is RunStatus.SUCCEEDED and self.pipeline.outputs is not None:
            try:
                result = render_outputs(self.pipeline.outputs, scope)
            except TaskError as failure:
                error = {"task": None, "type": failure.error_type, "message": failure.message}
                status = RunStatus.FAILED
        if status is RunStatus.SUCCEEDED and self.shared.degraded:
            status = RunStatus.DEGRADED
        document = run_document(
            run_id=self.info.run_id,
            pipeline=self.info.pipeline_id,
            status=status,
            outcomes=self.flatten(outcomes),
            result=result,
            error=error,
        )
        return redacted_document(document, self.shared.redactor)

    def restore(self, completed: dict[str, dict[str, Any]]) -> dict[str, TaskOutcome]:
        """Outcomes of the top-level tasks a resumed run does not run again."""
        finished: dict[str, TaskOutcome] = {}
        for name, node in self.plan.body.nodes.items():
            if name not in completed:
                continue
            finished[name] = outcome = outcome_from_record(completed[name])
            if outcome.status is TaskStatus.FAILED:
                self.shared.degraded.append(name)
            if isinstance(node.task, ParallelGroup):
                self.group_children[name] = {
                    child: outcome_from_record(completed[child])
                    for child in (c.name for c in node.task.tasks)
                    if child and child in completed
                }
        return finished

    def flatten(self, outcomes: dict[str, TaskOutcome]) -> dict[str, TaskOutcome]:
        """Top-level outcomes in file order, with parallel-group children after their group."""
        flat: dict[str, TaskOutcome] = {}
        for name, node in self.plan.body.nodes.items():
            flat[name] = outcomes.get(name, TaskOutcome(TaskStatus.NOT_RUN))
            if isinstance(node.task, ParallelGroup):
                children = self.group_children.get(name, {})
                for child in node.task.tasks:
                    if child.name:
                        flat[child.name] = children.get(child.name, TaskOutcome(TaskStatus.NOT_RUN))
        return flat


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def run_plan(
    plan: Plan,
    inputs: dict[str, Any],
    options: RunOptions,
    *,
    completed: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run a plan with resolved inputs and return its run document.

    The run is recorded as `running` before it starts, with what `resume` needs, and every
    top-level task that finishes is checkpointed; `completed` holds the checkpoints a resumed
    run keeps. A run that stops before it finishes (Ctrl-C: RunInterrupted, or an internal
    error) is recorded as `crashed`, never left `running`.
    """
    redactor = Redactor()
    for name in plan.pipeline.sensitive_inputs():
        if name in inputs:
            redactor.add(inputs[name])
    own_services = options.services is None
    services = options.services or Services(options.settings)
    shared = _Shared(
        options,
        services,
        shared_pool(options.settings.max_threads),
        redactor,
        _Activity(may_inline=True),
        (plan.path.resolve(),),
    )
    run = _Run(plan, inputs, shared, options.run_id or new_run_id())
    shared.root_run_id = run.info.run_id
    running = run.with_telemetry(
        run_document(
            run_id=run.info.run_id,
            pipeline=plan.pipeline_id,
            status=RunStatus.RUNNING,
            outcomes={},
            result=None,
            error=None,
        )
    )
    # a resumed run keeps its resume record; a run another live process holds is refused here
    resume = _resume_record(plan, inputs, run.info.user_id, options) if completed is None else None
    try:
        options.stores.runs.save(running, resume=resume)
        record_run_start(
            options.stores.telemetry,
            run.info.run_id,
            list(run.flatten({})),
            parallel_children(plan.pipeline.tasks),
        )
        try:
            with task_streams(redactor):
                document = run.with_telemetry(asyncio.run(run.run(completed)), now())
            try:
                record_usage(options.stores.audit, document)
                options.stores.runs.save(document)
            except StateFolderError as unwritable:
                document = _record_unsaved(run, document, unwritable)
        except BaseException as stopped:
            document = _record_stopped(run, stopped)
            if isinstance(stopped, KeyboardInterrupt):
                raise RunInterrupted(run.info.run_id) from None
            if not isinstance(stopped, StateFolderError):
                raise
    finally:
        if own_services:
            services.close()
    return document


def _record_unsaved(run: _Run, document: dict[str, Any], unwritable: StateFolderError) -> dict[str, Any]:
    """A run whose end could not be saved (a full disk, a folder made read-only meanwhile) has
    failed for that reason. It is saved again without its outputs, which a full disk may still
    take (the checkpoints `resume` keeps are stored apart); if that fails too, its lock is let go
    all the same, so it reads as `crashed`, never `running`. The document returned keeps its
    outputs, for the command to print."""
    failed = {**document, "status": RunStatus.FAILED, "error": _folder_failure(run, unwritable)}
    with contextlib.suppress(StateFolderError):
        run.shared.options.stores.runs.save(
            {**failed, "outputs": dict.fromkeys(document["outputs"]), "result": None}
        )
    return failed


def _folder_failure(run: _Run, unusable: StateFolderError) -> dict[str, Any]:
    """The error of a run the state folder failed (full, damaged or made read-only meanwhile)."""
    fix = f"once that is fixed, finish the run with 'orchestrator resume {run.info.run_id}'"
    return {"task": None, "type": "StateFolderError", "message": f"{unusable}; {fix}"}


def _record_stopped(run: _Run, stopped: BaseException) -> dict[str, Any]:
    """Save a run that stopped before it finished, with the top-level tasks it finished (what
    `resume` keeps), the ones it was running `cancelled`, and return its document: `failed`
    when the state folder stopped it (the reason is the run's error), else `crashed`. Best
    effort: the error that stopped the run is the one to report. Ctrl-C is ignored meanwhile."""
    status = RunStatus.CRASHED
    if isinstance(stopped, KeyboardInterrupt):
        error = {
            "task": None,
            "type": "Interrupted",
            "message": "stopped by Ctrl-C before it finished; it can be resumed",
        }
    elif isinstance(stopped, StateFolderError):
        status, error = RunStatus.FAILED, _folder_failure(run, stopped)
    else:
        error = {"task": None, "type": type(stopped).__name__, "message": str(stopped)}
    runs = run.shared.options.stores.runs
    with _ctrl_c_ignored():
        outcomes = {name: TaskOutcome(TaskStatus.CANCELLED) for name in run.reporter.unfinished}
        with contextlib.suppress(Exception):  # the checkpoints may be what cannot be read
            point = runs.resume_point(run.info.run_id)
            outcomes.update(run.restore(point[1] if point else {}))
        document = run_document(
            run_id=run.info.run_id,
            pipeline=run.info.pipeline_id,
            status=status,
            outcomes=run.flatten(outcomes),
            result=None,
            error=error,
        )
        document = redacted_document(document, run.shared.redactor)
        bare = document
        with contextlib.suppress(Exception):
            document = run.with_telemetry(document, now())
            record_usage(run.shared.options.stores.audit, document)
        try:
            runs.save(document)
        except Exception:  # a full disk may still take it without its telemetry (`runs show` has it)
            with contextlib.suppress(Exception):
                runs.save(bare)
    return document


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Ignore Ctrl-C for the moment a stopped run takes to record itself (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _resume_record(plan: Plan, inputs: dict[str, Any], user_id: str, options: RunOptions) -> dict[str, Any]:
    """What `resume` needs: the file, the inputs (sensitive ones sealed or left out), the user."""
    sensitive = plan.pipeline.sensitive_inputs()
    record: dict[str, Any] = {
        "pipeline_path": str(plan.path.resolve()),
        "inputs": {name: value for name, value in inputs.items() if name not in sensitive},
        "sealed_inputs": None,
        "user_id": user_id,
        "no_cache": options.no_cache,
    }
    secret_inputs = {name: value for name, value in inputs.items() if name in sensitive}
    if secret_inputs and plan.pipeline.security.encrypt_variables:
        from orchestrator.sealing.local import seal

        record["sealed_inputs"] = seal(secret_inputs, options.settings.home)
    return record


def resume_run(
    run_id: str, options: RunOptions, given: dict[str, Any], text_keys: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Finish a run that was killed or failed: tasks it finished are not run again."""
    point = options.stores.runs.resume_point(run_id)
    if point is None:
        raise OrchestratorError(f"no run '{run_id}' to resume: see 'orchestrator runs list'")
    record, completed = point
    previous = options.stores.runs.load(run_id) or {}
    if previous.get("status") in {RunStatus.SUCCEEDED, RunStatus.DEGRADED}:
        raise OrchestratorError(f"run '{run_id}' already finished ({previous['status']}); nothing to resume")
    plan = build_plan(read_pipeline(Path(record["pipeline_path"])))
    inputs = dict(record["inputs"])
    if record.get("sealed_inputs"):
        from orchestrator.sealing.local import unseal

        inputs.update(unseal(record["sealed_inputs"], options.settings.home))
    inputs.update(given)
    resolved = resolve_inputs(plan.pipeline, inputs, text_keys=text_keys)
    options.run_id = run_id
    options.user_id = options.user_id or record.get("user_id")
    options.no_cache = options.no_cache or bool(record.get("no_cache"))
    return run_plan(plan, resolved, options, completed=completed)


def masked_inputs(plan: Plan, inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs as they may be shown or stored: sensitive values replaced by `***`."""
    sensitive = plan.pipeline.sensitive_inputs()
    return {name: (MASK if name in sensitive else value) for name, value in inputs.items()}
