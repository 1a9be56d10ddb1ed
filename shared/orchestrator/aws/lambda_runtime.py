"""Lambda glue: run one task attempt or one dispatch step of a compiled state machine.

The state machine (see `docs/aws.md`) sends each Lambda a small payload: the pipeline id, the
dotted reference of a task in its file (`tasks.1.tasks.0`, `tasks.3.error_handling.fallback`),
the run's inputs and ids, the outputs the task reads (`outputs`, or every record under
`tasks`) and, inside a loop, the iteration (`loop`). This module rebuilds from that payload
the same `Scope` the embedded engine would have built and hands the task to the same runtime
(`run_leaf`, `cache_key`, `evaluate_condition`, `render_value`), so a pipeline means the same
thing on both drivers.

What differs on AWS, and why:

- A failed attempt raises an exception whose *class name* is the task's error type
  (`ValueError`, `TemplateError`, ...): Lambda reports it as `errorType`, which is what the
  state machine's `Retry` and `Catch` rules match. Its message is redacted.
- Every value that goes back into the execution state (outputs, rendered fields, items) is
  redacted with the pipeline's sensitive inputs and the secrets the task read, because the
  execution history keeps it. Sensitive inputs travel sealed (`{"sealed": ..., "by": ...}`,
  see `seal_inputs`) and are opened only inside the Lambda that needs them.
- Retries and `on_failure` belong to the state machine: one invocation is one attempt.

Configuration read here (to move into `orchestrator.settings` with the rest):

| variable | meaning |
|---|---|
| `ORCHESTRATOR_PIPELINES_DIR` | folder of `<pipeline_id>.yaml` (default `pipelines` beside the package) |
| `ORCHESTRATOR_STATE_MACHINES` | JSON map pipeline id -> state machine ARN (used by the triggers) |
| `ORCHESTRATOR_KMS_KEY_ID` | KMS key that seals sensitive inputs in execution input |
| `ORCHESTRATOR_HOME` | unset on Lambda: the state folder becomes `/tmp/.orchestrator` |

boto3 is imported only when a client is first needed.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

import orchestrator
from orchestrator.aws.execution import error_from_catch
from orchestrator.aws.payloads import offload, resolve
from orchestrator.errors import ConfigError, OrchestratorError, PipelineValidationError, TaskError
from orchestrator.plan import Body, Node, Plan, build_plan, dependency_closure, plan_tasks
from orchestrator.runtime.context import RunInfo, StateConflictError
from orchestrator.runtime.generated import plan_generated, validate_spec
from orchestrator.runtime.inputs import resolve_inputs
from orchestrator.runtime.leaf import (
    LEAF_TYPES,
    Services,
    cache_key,
    canonical_hash,
    fallback_output,
    render,
    run_leaf,
)
from orchestrator.runtime.loops import loop_items
from orchestrator.runtime.policy import effective_policy, task_timeout
from orchestrator.runtime.redact import Redactor
from orchestrator.runtime.scope import LoopFrame, Scope
from orchestrator.runtime.task_streams import task_streams
from orchestrator.settings import Settings, load_settings
from orchestrator.spec.loading import read_pipeline
from orchestrator.spec.models import (
    DynamicTaskGroup,
    ForLoop,
    ParallelGroup,
    PipelineGroup,
    TaskBase,
    WhileLoop,
)
from orchestrator.stores.base import Stores, Versioned
from orchestrator.stores.factory import open_stores
from orchestrator.template import jinja

DEFAULT_USER = "aws"
"""`context.get_user_id()` on AWS when the run names nobody (the API passes its caller)."""
CONFLICT_RERUNS = 50
SEALED_KEY = "sealed"
SEALED_BY_KEY = "by"
_PIPELINE_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


# -- errors ------------------------------------------------------------------------------------


class UnknownPipelineError(OrchestratorError):
    """No deployed pipeline has this id."""


class UnknownTaskError(OrchestratorError):
    """A task reference names no task of the pipeline (the payload and the file disagree)."""


class DispatchError(OrchestratorError):
    """A dispatch payload asks for something its task cannot give (a compiler/runtime mismatch)."""


class TaskFailure(Exception):
    """Base of what a task or dispatch Lambda raises; the subclass's name is the error type."""


@functools.lru_cache(maxsize=512)
def error_class(error_type: str) -> type[TaskFailure]:
    """The exception class named `error_type` (one per name and process), for Retry/Catch."""
    return type(error_type, (TaskFailure,), {"__module__": __name__})


def task_failure(error: TaskError, redactor: Redactor) -> TaskFailure:
    """The exception to raise for a failed attempt: class named by its type, message redacted."""
    return error_class(error.error_type)(redactor.text(error.message))


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AwsSettings:
    """What the Lambda glue and the triggers read from the environment."""

    pipelines_dir: Path
    state_machines: dict[str, str]
    kms_key_id: str | None
    on_lambda: bool


def default_pipelines_dir() -> Path:
    """`pipelines` beside the package (the layer's `/opt/python/pipelines`), else the repository's."""
    beside = Path(orchestrator.__file__).resolve().parent.parent / "pipelines"
    if beside.is_dir():
        return beside
    return beside.parent.parent / "pipelines"


def aws_settings(env: Mapping[str, str] | None = None) -> AwsSettings:
    """Read the AWS-side configuration (default `os.environ`)."""
    env = os.environ if env is None else env
    folder = env.get("ORCHESTRATOR_PIPELINES_DIR")
    machines_text = env.get("ORCHESTRATOR_STATE_MACHINES") or "{}"
    try:
        machines = json.loads(machines_text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"ORCHESTRATOR_STATE_MACHINES is not JSON: {error}") from None
    if not isinstance(machines, dict) or not all(isinstance(v, str) for v in machines.values()):
        raise ConfigError("ORCHESTRATOR_STATE_MACHINES must map pipeline ids to state machine ARNs")
    return AwsSettings(
        pipelines_dir=Path(folder) if folder else default_pipelines_dir(),
        state_machines={str(key): value for key, value in machines.items()},
        kms_key_id=env.get("ORCHESTRATOR_KMS_KEY_ID") or None,
        on_lambda=bool(env.get("AWS_LAMBDA_FUNCTION_NAME")),
    )


def lambda_settings(env: Mapping[str, str] | None = None) -> Settings:
    """`load_settings`, with the state folder in /tmp on Lambda (the only writable place there)."""
    values = dict(os.environ if env is None else env)
    if values.get("AWS_LAMBDA_FUNCTION_NAME") and not values.get("ORCHESTRATOR_HOME"):
        values["ORCHESTRATOR_HOME"] = str(Path(tempfile.gettempdir()) / ".orchestrator")
    return load_settings(values)


@functools.cache
def aws_client(service: str) -> Any:
    """A boto3 client, one per service and process (Lambda reuses it across invocations)."""
    import boto3  # type: ignore[import-untyped, unused-ignore]

    return boto3.client(service)


_SERVICES: list[tuple[Settings, Services]] = []
_SERVICES_LOCK = threading.Lock()


def default_services(settings: Settings) -> Services:
    """LLM and search clients kept for the life of the container (rebuilt if settings change)."""
    with _SERVICES_LOCK:
        if _SERVICES and _SERVICES[0][0] == settings:
            return _SERVICES[0][1]
        if _SERVICES:
            _SERVICES.pop()[1].close()
        services = Services(settings)
        _SERVICES.append((settings, services))
        return services


# -- payloads ----------------------------------------------------------------------------------


class RunModel(BaseModel):
    """`$.run`: which run this is. `user_id` and `no_cache` are set by the trigger when known."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    id: str
    pipeline: str
    started_at: str
    user_id: str | None = None
    no_cache: bool = False


class LoopModel(BaseModel):
    """`$.loop` inside a loop body: the item (for_loop) or the state (while_loop) and the index."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    item: Any = None
    index: int = 0
    state: dict[str, Any] | None = None
    item_variable: str | None = None


class _EventBase(BaseModel):
    # each function validates one kind of event: only its validator is built, at the first one
    model_config = ConfigDict(extra="forbid", defer_build=True)

    pipeline: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    run: RunModel
    outputs: dict[str, Any] = Field(default_factory=dict)
    tasks: dict[str, Any] = Field(default_factory=dict)
    loop: LoopModel | None = None
    spec: dict[str, Any] | None = None
    name: str | None = None


class TaskEvent(_EventBase):
    """Payload of a task function: one attempt of the task at `task` (or of the inline `spec`).

    `outputs` maps the names the task reads to their outputs; `tasks` may instead carry whole
    records (`{"status", "output", "children"?}`) from which outputs are taken. With
    `condition: true` the task's condition is evaluated first and a false one returns a skip.
    `spec` is a generated task (a `dynamic_task_group`'s), given inline; `task` then names the
    group and `name` (or the spec's own name) the generated task.
    """

    task: str
    condition: bool = False


class DispatchEvent(_EventBase):
    """Payload of the dispatch function: evaluate what ASL cannot (see `dispatch`)."""

    action: Literal["condition", "items", "render", "while", "expand", "child_inputs", "outputs"]
    task: str | None = None
    field: str | None = None  # render
    child: int | None = None  # child_inputs
    last: Any = None  # while: the last body task's output (absent before the first iteration)
    error: Any = None  # render: the Catch result, passed through
    status: str | None = None  # render: the status to report, passed through


# -- pipelines and task references ----------------------------------------------------------------


@dataclass(frozen=True)
class _Loaded:
    plan: Plan
    nodes: dict[tuple[str | int, ...], Node]


@dataclass(frozen=True)
class TaskLocation:
    """A task found by reference, with what running it needs from its surroundings."""

    plan: Plan
    task: TaskBase
    name: str
    reads: frozenset[str]
    loop: TaskBase | None  # the innermost for/while loop around the task
    fallback: bool  # an `error_handling.fallback`: no condition, no cache (as on the engine)
    node: Node | None
    # a task that reads by computed name: the names it may see (None: what it is passed)
    visible: frozenset[str] | None = None


def _index_nodes(body: Body, found: dict[tuple[str | int, ...], Node]) -> None:
    for node in body.nodes.values():
        found[tuple(node.location)] = node
        if node.body is not None:
            _index_nodes(node.body, found)


@functools.lru_cache(maxsize=64)
def _load(path: Path) -> _Loaded:
    plan = build_plan(read_pipeline(path))
    nodes: dict[tuple[str | int, ...], Node] = {}
    _index_nodes(plan.body, nodes)
    return _Loaded(plan, nodes)


def pipeline_path(pipeline_id: str, settings: AwsSettings | None = None) -> Path:
    """`<pipelines_dir>/<pipeline_id>.yaml`; an id that is not a plain file stem is unknown."""
    folder = (settings or aws_settings()).pipelines_dir
    if (
        not pipeline_id
        or pipeline_id.startswith(".")
        or not set(pipeline_id) <= _PIPELINE_ID_CHARACTERS
        or len(pipeline_id) > 128
    ):
        raise UnknownPipelineError(f"'{pipeline_id}' is not a pipeline id")
    path = folder / f"{pipeline_id}.yaml"
    if not path.is_file():
        raise UnknownPipelineError(f"no pipeline '{pipeline_id}' (looked for {path.name} in {folder})")
    return path


def load_plan(pipeline_id: str, settings: AwsSettings | None = None) -> Plan:
    """The validated plan of a deployed pipeline, parsed once per process."""
    return _load(pipeline_path(pipeline_id, settings)).plan


def _parse_reference(reference: str) -> list[str | int]:
    parts: list[str | int] = [int(part) if part.isdigit() else part for part in reference.split(".")]
    if not parts or parts[0] != "tasks":
        raise UnknownTaskError(f"task reference '{reference}' must start with 'tasks.'")
    return parts


def _walk(root: Any, parts: list[str | int], reference: str) -> list[Any]:
    """The chain of values from the pipeline to the referenced task."""
    chain = [root]
    current = root
    for part in parts:
        if isinstance(part, int) and isinstance(current, list) and 0 <= part < len(current):
            current = current[part]
        elif isinstance(part, str) and isinstance(current, BaseModel) and part in type(current).model_fields:
            current = getattr(current, part)
        else:
            raise UnknownTaskError(f"task reference '{reference}' does not name a task (at '{part}')")
        chain.append(current)
    if not isinstance(current, TaskBase):
        raise UnknownTaskError(f"task reference '{reference}' does not name a task")
    return chain


def locate_task(pipeline_id: str, reference: str, settings: AwsSettings | None = None) -> TaskLocation:
    """Find a task by its dotted reference, with its name, what it reads and its loop."""
    loaded = _load(pipeline_path(pipeline_id, settings))
    parts = _parse_reference(reference)
    chain = _walk(loaded.plan.pipeline, parts, reference)
    task: TaskBase = chain[-1]
    fallback = parts[-2:] == ["error_handling", "fallback"]
    owner_parts = parts[:-2] if fallback else parts
    node = loaded.nodes.get(tuple(owner_parts))
    owner: TaskBase = chain[-3] if fallback else task
    name = node.name if node is not None else (owner.name or f"task_{owner_parts[-1]}")
    enclosing = [item for item in chain[1:-1] if isinstance(item, ForLoop | WhileLoop) and item is not owner]
    return TaskLocation(
        plan=loaded.plan,
        task=task,
        name=name,
        reads=node.reads if node is not None and not fallback else frozenset(),
        loop=enclosing[-1] if enclosing else None,
        fallback=fallback,
        node=None if fallback else node,
        visible=_waited_for(loaded, owner_parts) if node is not None and node.computed_reads else None,
    )


def _waited_for(loaded: _Loaded, parts: list[str | int]) -> frozenset[str]:
    """What a task that reads by computed name sees: every task it waits for (directly or not)
    in its body and, through the loops and groups around it, in theirs, parallel_group children
    included. They have all finished, so the embedded engine sees them too; the planner made
    the task wait for every task before it (plan.py), so these are the tasks before it. Others
    in `$.tasks` (a child pipeline's parent, a while loop's previous iteration, a task that
    only happened to run first) are not shown: on the engine they are absent or not certain."""
    names: set[str] = set()
    body: Body | None = loaded.plan.body
    for end in range(2, len(parts) + 1, 2):
        node = loaded.nodes.get(tuple(parts[:end]))
        if node is None or body is None or node.name not in body.nodes:
            break
        waited = dependency_closure(body, node.name)
        names.update(name for name, target in body.exposed.items() if target in waited)
        body = node.body
    return frozenset(names)


def find_task(pipeline_id: str, reference: str) -> tuple[Plan, TaskBase, str]:
    """The plan, the task model and the task's name for a dotted reference like `tasks.1.tasks.0`."""
    location = locate_task(pipeline_id, reference)
    return location.plan, location.task, location.name


def _inline_location(around: TaskLocation, spec: dict[str, Any], name: str | None) -> TaskLocation:
    """A generated task given inline, located in the group that generated it."""
    task = validate_spec(spec, 0)
    try:
        body = plan_tasks([task], around.plan.source.source)
    except PipelineValidationError as error:
        message = "; ".join(d.message for d in error.diagnostics)
        raise TaskError("InvalidTaskSpec", message) from None
    (node,) = body.nodes.values()
    loop = around.task if isinstance(around.task, ForLoop | WhileLoop) else around.loop
    return TaskLocation(
        plan=around.plan,
        task=task,
        name=name or task.name or node.name,
        reads=node.reads,
        loop=loop,
        fallback=False,
        node=node,
    )


# -- sealed inputs -----------------------------------------------------------------------------


class Sealer(Protocol):
    """Encrypts one sensitive input for the execution input; only a Lambda opens it again."""

    scheme: str

    def seal(self, pipeline_id: str, name: str, value: Any) -> str: ...

    def unseal(self, pipeline_id: str, name: str, token: str) -> Any: ...


class LocalSealer:
    """Fernet with the state folder's key: for the in-process stepfunctions engine and tests.

    On Lambda every container has its own `/tmp`, so a value sealed by one function cannot be
    opened by another: deployments set `ORCHESTRATOR_KMS_KEY_ID` and get `KmsSealer`.
    """

    scheme = "local"

    def __init__(self, home: Path) -> None:
        self._home = home

    def seal(self, pipeline_id: str, name: str, value: Any) -> str:
        from orchestrator.runtime.sealing import seal

        return seal({"pipeline": pipeline_id, "input": name, "value": value}, self._home)

    def unseal(self, pipeline_id: str, name: str, token: str) -> Any:
        from orchestrator.runtime.sealing import unseal

        opened = unseal(token, self._home)
        if opened.get("pipeline") != pipeline_id or opened.get("input") != name:
            raise ConfigError(f"sealed input '{name}' was sealed for another pipeline or input")
        return opened.get("value")


class KmsSealer:
    """Envelope encryption: a KMS data key per value, bound to the pipeline and input by the
    encryption context, and the value encrypted with it (Fernet) so any size fits.

    The token is `<base64 encrypted data key>.<Fernet token>`. Opening needs `kms:Decrypt`
    only (the key id travels inside the encrypted data key); sealing needs
    `kms:GenerateDataKey` on `ORCHESTRATOR_KMS_KEY_ID`.
    """

    scheme = "kms"

    def __init__(self, key_id: str | None, client: Any = None) -> None:
        self._key_id = key_id
        self._client = client
        self._keys: dict[tuple[str, str, str], bytes] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws_client("kms")
        return self._client

    @staticmethod
    def _context(pipeline_id: str, name: str) -> dict[str, str]:
        return {"orchestrator:pipeline": pipeline_id, "orchestrator:input": name}

    def seal(self, pipeline_id: str, name: str, value: Any) -> str:
        from cryptography.fernet import Fernet

        if not self._key_id:
            raise ConfigError("sealing sensitive inputs needs ORCHESTRATOR_KMS_KEY_ID (a KMS key id or ARN)")
        response = self.client.generate_data_key(
            KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=self._context(pipeline_id, name)
        )
        fernet = Fernet(base64.urlsafe_b64encode(response["Plaintext"]))
        data = fernet.encrypt(json.dumps(value).encode()).decode()
        return base64.b64encode(response["CiphertextBlob"]).decode() + "." + data

    def unseal(self, pipeline_id: str, name: str, token: str) -> Any:
        from cryptography.fernet import Fernet, InvalidToken

        blob, _, data = token.partition(".")
        cache = (blob, pipeline_id, name)
        key = self._keys.get(cache)
        if key is None:
            response = self.client.decrypt(
                CiphertextBlob=base64.b64decode(blob), EncryptionContext=self._context(pipeline_id, name)
            )
            key = self._keys[cache] = base64.urlsafe_b64encode(response["Plaintext"])
        try:
            return json.loads(Fernet(key).decrypt(data.encode()))
        except InvalidToken:
            raise ConfigError(f"sealed input '{name}' is damaged") from None


def sealer_for(scheme: str, settings: Settings | None = None, aws: AwsSettings | None = None) -> Sealer:
    """The sealer of a scheme: `kms` (deployments) or `local` (the in-process engine, tests)."""
    if scheme == KmsSealer.scheme:
        return KmsSealer((aws or aws_settings()).kms_key_id)
    if scheme == LocalSealer.scheme:
        return LocalSealer((settings or lambda_settings()).home)
    raise ConfigError(f"unknown sealing scheme '{scheme}'")


def default_sealer(settings: Settings | None = None, aws: AwsSettings | None = None) -> Sealer:
    """KMS when `ORCHESTRATOR_KMS_KEY_ID` is set or on Lambda (which then insists on it), else local."""
    aws = aws or aws_settings()
    if aws.kms_key_id or aws.on_lambda:
        return KmsSealer(aws.kms_key_id)
    return LocalSealer((settings or lambda_settings()).home)


def is_sealed(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {SEALED_KEY, SEALED_BY_KEY}
        and isinstance(value[SEALED_KEY], str)
        and isinstance(value[SEALED_BY_KEY], str)
    )


def seal_inputs(
    pipeline_id: str, inputs: Mapping[str, Any], names: set[str], sealer: Sealer
) -> dict[str, Any]:
    """Inputs with each of `names` replaced by `{"sealed": token, "by": scheme}`.

    Empty values (None, "") stay as they are: they hide nothing, and a pipeline whose
    sensitive inputs default to "" keeps running where no key is configured.
    """
    sealed: dict[str, Any] = {}
    for name, value in inputs.items():
        if name in names and value not in (None, "") and not is_sealed(value):
            sealed[name] = {SEALED_KEY: sealer.seal(pipeline_id, name, value), SEALED_BY_KEY: sealer.scheme}
        else:
            sealed[name] = value
    return sealed


def open_inputs(
    pipeline_id: str, inputs: Mapping[str, Any], sealer: Sealer | None = None
) -> tuple[dict[str, Any], set[str]]:
    """Inputs with sealed values opened, and the names that were sealed."""
    opened: dict[str, Any] = {}
    names: set[str] = set()
    sealers: dict[str, Sealer] = {sealer.scheme: sealer} if sealer is not None else {}
    for name, value in inputs.items():
        if not is_sealed(value):
            opened[name] = value
            continue
        scheme = value[SEALED_BY_KEY]
        if scheme not in sealers:
            sealers[scheme] = sealer_for(scheme)
        opened[name] = sealers[scheme].unseal(pipeline_id, name, value[SEALED_KEY])
        names.add(name)
    return opened, names


# -- scope -------------------------------------------------------------------------------------


def visible_outputs(
    tasks: Mapping[str, Any], outputs: Mapping[str, Any], only: frozenset[str] | None = None
) -> dict[str, Any]:
    """Task outputs by name from `$.tasks` records (parallel-group children included) and
    `outputs`; with `only`, just those names."""
    found: dict[str, Any] = {}
    for name, record in tasks.items():
        if not isinstance(record, dict):
            continue
        found[name] = record.get("output")
        for child, child_record in (record.get("children") or {}).items():
            if isinstance(child_record, dict):
                found.setdefault(child, child_record.get("output"))
    found.update(outputs)
    return {name: resolve(value) for name, value in found.items() if only is None or name in only}


def _declared_names(tasks: list[Any]) -> set[str]:
    names: set[str] = set()
    for task in tasks:
        if task.name:
            names.add(task.name)
        if isinstance(task, ForLoop | WhileLoop | ParallelGroup):
            names |= _declared_names(task.tasks)
    return names


@dataclass
class _Prepared:
    """What every action needs: the located task, opened inputs, run info and scope."""

    location: TaskLocation
    inputs: dict[str, Any]
    run: RunInfo
    scope: Scope
    top: Scope


def _run_id(event: _EventBase) -> str:
    """The run id the engine would use: a child pipeline's tasks run as `<run id>.<child id>`."""
    if event.run.pipeline == event.pipeline:
        return event.run.id
    return f"{event.run.id}.{event.pipeline}"


def _redactor(plan: Plan, inputs: Mapping[str, Any], sealed: set[str]) -> Redactor:
    redactor = Redactor()
    for name in plan.pipeline.sensitive_inputs() | sealed:
        if name in inputs:
            redactor.add(inputs[name])
    return redactor


def _child_outputs(plan: Plan, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """What `context.get_pipeline_output` reads: the outputs of the pipeline groups passed in."""
    children: dict[str, Any] = {}
    for node in plan.body.nodes.values():
        if isinstance(node.task, PipelineGroup) and isinstance(outputs.get(node.name), dict):
            children.update(outputs[node.name])
    return children


def _loop_scope(top: Scope, loop: LoopModel, container: TaskBase | None) -> Scope:
    item_variable = container.item_variable if isinstance(container, ForLoop) else loop.item_variable
    if isinstance(container, WhileLoop) or item_variable is None:
        state = dict(loop.state or {})
        frame = LoopFrame(loop.index, state=state)
        return top.child({"loop_state": state, "loop_index": loop.index}, loop=frame)
    frame = LoopFrame(loop.index, item_variable=item_variable, item=loop.item)
    return top.child({item_variable: loop.item, "loop_index": loop.index}, loop=frame)


def _prepare(
    event: _EventBase,
    location: TaskLocation,
    stores: Stores,
    sealer: Sealer | None,
    *,
    loop_container: TaskBase | None = None,
    drop_loop_outputs: bool = False,
) -> _Prepared:
    """Build the scope exactly as the engine's `top_scope` and loop iterations do."""
    plan = location.plan
    inputs, sealed = open_inputs(event.pipeline, event.inputs, sealer)
    redactor = _redactor(plan, inputs, sealed)
    # a leaf that reads by computed name is passed every task: it sees those it waits for
    only = location.visible if isinstance(event, TaskEvent) and event.spec is None else None
    outputs = visible_outputs(event.tasks, event.outputs, only)
    run = RunInfo(
        run_id=_run_id(event),
        pipeline_id=plan.pipeline_id,
        user_id=event.run.user_id or DEFAULT_USER,
        stores=stores,
        redactor=redactor,
        persistence=plan.pipeline.state_management.persistence,
        state_ttl=plan.pipeline.state_management.ttl,
        started_at=event.run.started_at,
        child_outputs=_child_outputs(plan, outputs),
    )
    values: dict[str, Any] = dict(jinja.GLOBALS)
    values.update(inputs)
    values["input_hash"] = canonical_hash(inputs)
    values["run"] = {"id": run.run_id, "pipeline": run.pipeline_id, "started_at": run.started_at}
    top = Scope({}, Scope(values)).child()
    container = loop_container or location.loop
    scope = top
    inner: set[str] = set()
    if event.loop is not None:
        scope = _loop_scope(top, event.loop, container)
        inner = _declared_names(getattr(container, "tasks", []))
    for name, value in outputs.items():
        if name not in inner:
            top.outputs[name] = value
        elif not drop_loop_outputs:
            scope.outputs[name] = value
    return _Prepared(location, inputs, run, scope, top)


# -- one attempt of a leaf task ----------------------------------------------------------------------


def _with_timeout(work: Callable[[], Any], timeout: float | None, name: str) -> Any:
    """Run `work`, raising `TaskTimeout` (as the engine does) if it outlives the task's timeout."""
    if timeout is None:
        return work()
    result: list[Any] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(work())
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=target, name=f"task-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TaskError("TaskTimeout", f"task '{name}' exceeded its timeout of {timeout:g}s")
    if failure:
        raise failure[0]
    return result[0]


def _attempt(prepared: _Prepared, services: Services) -> Any:
    """One attempt; state conflicts re-run it without counting as a retry (as on the engine)."""
    location = prepared.location
    if not isinstance(location.task, LEAF_TYPES):
        raise DispatchError(f"task '{location.name}' is a {type(location.task).__name__}, not a leaf task")

    def work() -> Any:
        return run_leaf(location.task, location.name, prepared.scope, prepared.run, services, prepared.inputs)

    for rerun in range(CONFLICT_RERUNS):
        try:
            with task_streams():
                return _with_timeout(work, task_timeout(location.task), location.name)
        except StateConflictError:
            time.sleep(random.uniform(0, 0.005 * (rerun + 1)))
    raise TaskError("StateConflict", f"task '{location.name}' kept conflicting with concurrent writers")


def _event_location(event: _EventBase, reference: str | None) -> TaskLocation:
    """The task a payload names; an invalid inline spec fails as `InvalidTaskSpec`."""
    if reference is None:
        raise DispatchError("this payload needs 'task', the dotted reference of a task")
    location = locate_task(event.pipeline, reference)
    if event.spec is None:
        return location
    try:
        return _inline_location(location, event.spec, event.name)
    except TaskError as error:
        raise task_failure(error, Redactor()) from None


def run_task_event(
    event: TaskEvent,
    services: Services | None = None,
    stores: Stores | None = None,
    *,
    sealer: Sealer | None = None,
) -> dict[str, Any]:
    """Run one attempt of a leaf task: `{"status": "succeeded"|"skipped"|"cached", "output": ...}`.

    A failed attempt raises a `TaskFailure` subclass named after the error type.
    """
    location = _event_location(event, event.task)
    settings = lambda_settings()
    pipeline = location.plan.pipeline
    stores = stores or open_stores(settings, pipeline.state_management.storage_backend)
    prepared = _prepare(event, location, stores, sealer)
    redactor = prepared.run.redactor
    task = location.task
    if event.spec is not None:
        # a generated task sees the outputs of the tasks generated before it, as on the engine
        prepared.scope.outputs.update(generated_outputs(stores, prepared.run.run_id, event.task).value or {})
    entry: tuple[str, float | None] | None = None
    try:
        if event.condition and not location.fallback and task.condition is not None:
            try:
                should_run = jinja.evaluate_condition(task.condition, prepared.scope)
            except OrchestratorError as error:
                raise TaskError("TemplateError", str(error)) from None
            if not should_run:
                return {"status": "skipped", "output": None}
        services = services or default_services(settings)
        if not location.fallback:
            entry = cache_key(
                task,
                location.name,
                prepared.scope,
                pipeline,
                location.plan.pipeline_id,
                location.reads,
                services.settings.default_model,
            )
        if entry is not None and not event.run.no_cache:
            hit, value = stores.cache.get(entry[0])
            if hit:
                return {"status": "cached", "output": value}
        output = _attempt(prepared, services)
    except TaskError as error:
        raise task_failure(error, redactor) from None
    if entry is not None:
        stores.cache.put(entry[0], output, entry[1])
    if event.spec is not None:
        record_generated_output(stores, prepared.run.run_id, event.task, location.name, output)
    return {"status": "succeeded", "output": offload(output, prepared.run.run_id, location.name)}


GENERATED_TTL = 7 * 24 * 3600


def generated_outputs(stores: Stores, run_id: str, group: str) -> Versioned:
    """Outputs of the tasks a dynamic_task_group generated so far in this run, by name.

    A Map iteration cannot see another's result, so generated tasks leave theirs in the
    state store (run-scoped) for the ones after them, which is what `parallel: false` promises.
    """
    return stores.state.read(f"run:{run_id}:generated", group)


def record_generated_output(stores: Stores, run_id: str, group: str, name: str, output: Any) -> None:
    for _ in range(50):
        current = generated_outputs(stores, run_id, group)
        merged = {**(current.value or {}), name: output}
        written = stores.state.compare_and_set(
            f"run:{run_id}:generated", group, merged, current.version, ttl=GENERATED_TTL
        )
        if written is not None:
            return
        time.sleep(random.uniform(0, 0.01))
    raise TaskError("StateConflict", f"could not record the output of generated task '{name}'")


# -- dispatch ----------------------------------------------------------------------------------


def _rendered(value: Any, scope: Scope) -> Any:
    return render(value, scope)


def _condition(prepared: _Prepared, event: DispatchEvent) -> dict[str, Any]:
    task = prepared.location.task
    if isinstance(task, WhileLoop):
        raise DispatchError("a while_loop's condition is evaluated by the 'while' action")
    try:
        value = jinja.evaluate_condition(task.condition, prepared.scope)
    except OrchestratorError as error:
        raise TaskError("TemplateError", str(error)) from None
    return {"value": value}


def _items(prepared: _Prepared, event: DispatchEvent) -> list[Any]:
    task = prepared.location.task
    if not isinstance(task, ForLoop):
        raise DispatchError(f"'items' needs a for_loop, not {type(task).__name__}")
    items = loop_items(
        _rendered(task.iterate_over, prepared.scope)
        if isinstance(task.iterate_over, str)
        else task.iterate_over
    )
    return list(prepared.run.redactor.value(items))


def _with_message(caught: Any, message: str) -> Any:
    """A Catch result (`{"Error", "Cause"}`) whose error now reads `message`, its type kept."""
    if not isinstance(caught, dict):
        return caught
    cause = caught.get("Cause")
    try:
        payload = json.loads(cause) if isinstance(cause, str) else None
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        return {**caught, "Cause": json.dumps({**payload, "errorMessage": message})}
    return {**caught, "Cause": message}


def _render(prepared: _Prepared, event: DispatchEvent) -> dict[str, Any]:
    """A task's field rendered: `fallback_value` exactly as the engine's `on_failure` does
    (`fallback_output`: a fallback_value that cannot be rendered gives None and the reason is
    added to the task's error message), any other dotted field strictly."""
    location = prepared.location
    if event.field is None:
        raise DispatchError("'render' needs 'field'")
    error = event.error
    if event.field == "fallback_value":
        policy = effective_policy(location.task, location.plan.pipeline)
        caught = error_from_catch(error if isinstance(error, dict) else None)
        original = caught.message if caught is not None else ""
        value, message = fallback_output(policy.fallback_value, prepared.scope, original)
        if caught is not None and message != original:
            error = _with_message(error, prepared.run.redactor.text(message))
    else:
        source: Any = location.task
        for part in event.field.split("."):
            if not isinstance(source, BaseModel) or part not in type(source).model_fields:
                raise DispatchError(f"task '{location.name}' has no field '{event.field}'")
            source = getattr(source, part)
        value = _rendered(
            source.model_dump(mode="json") if isinstance(source, BaseModel) else source, prepared.scope
        )
    return {"status": event.status, "output": prepared.run.redactor.value(value), "error": error}


def _while(prepared: _Prepared, event: DispatchEvent) -> dict[str, Any]:
    """Advance a while loop; see `dispatch` for the exact rule."""
    task = prepared.location.task
    if not isinstance(task, WhileLoop):
        raise DispatchError(f"'while' needs a while_loop, not {type(task).__name__}")
    loop = event.loop or LoopModel()
    after_iteration = "last" in event.model_fields_set
    index = loop.index + 1 if after_iteration else loop.index
    if after_iteration:
        state = event.last if isinstance(event.last, dict) else {}
    else:
        state = dict(loop.state or {})
    keep_going = False
    if index < task.max_iterations:
        frame = LoopFrame(index, state=state)
        iteration = prepared.top.child({"loop_state": state, "loop_index": index}, loop=frame)
        try:
            keep_going = jinja.evaluate_condition(task.condition, iteration)
        except OrchestratorError as error:
            raise TaskError("TemplateError", str(error)) from None
    return {"index": index, "state": prepared.run.redactor.value(state), "continue": keep_going}


def _expand(prepared: _Prepared, event: DispatchEvent) -> list[dict[str, Any]]:
    """A dynamic_task_group's generated specs, validated and planned exactly as the engine does."""
    location = prepared.location
    task = location.task
    if not isinstance(task, DynamicTaskGroup):
        raise DispatchError(f"'expand' needs a dynamic_task_group, not {type(task).__name__}")
    specs = _rendered(task.tasks, prepared.scope) if isinstance(task.tasks, str) else task.tasks
    body = plan_generated(specs, task, location.plan.source.source)
    names = list(body.nodes)
    expanded = []
    for index, name in enumerate(names):
        dumped = body.nodes[name].task.model_dump(mode="json", exclude_none=True)
        dumped.setdefault("name", name)
        expanded.append({"index": index, "spec": dumped, "type": dumped["type"], "name": name})
    return list(prepared.run.redactor.value(expanded))


def _child_inputs(prepared: _Prepared, event: DispatchEvent, sealer: Sealer | None) -> dict[str, Any]:
    """Inputs of child pipeline `child`, resolved against its input_variables and sealed where
    they are sensitive in the child or carry a sensitive value of the parent."""
    location = prepared.location
    task = location.task
    if not isinstance(task, PipelineGroup):
        raise DispatchError(f"'child_inputs' needs a pipeline_group, not {type(task).__name__}")
    if event.child is None or not 0 <= event.child < len(task.pipelines):
        raise DispatchError(f"'child_inputs' needs 'child', an index below {len(task.pipelines)}")
    child = task.pipelines[event.child]
    path = (location.plan.path.parent / child.pipeline).resolve()
    try:
        child_plan = _load(path).plan
        inputs = resolve_inputs(child_plan.pipeline, _rendered(child.inputs, prepared.scope))
    except OrchestratorError as error:
        raise TaskError("ChildPipelineInvalid", f"{child.pipeline}: {error}") from None
    redactor = prepared.run.redactor
    secret = {name for name, value in inputs.items() if redactor.value(value) != value}
    names = child_plan.pipeline.sensitive_inputs() | secret
    return seal_inputs(child_plan.pipeline_id, inputs, names, sealer or default_sealer())


def _outputs(prepared: _Prepared, event: DispatchEvent) -> Any:
    outputs = prepared.location.plan.pipeline.outputs
    if outputs is None:
        return None
    return prepared.run.redactor.value(_rendered(outputs, prepared.scope))


_ACTIONS: dict[str, Callable[[_Prepared, DispatchEvent], Any]] = {
    "condition": _condition,
    "items": _items,
    "render": _render,
    "while": _while,
    "expand": _expand,
    "outputs": _outputs,
}


def _pipeline_location(pipeline_id: str) -> TaskLocation:
    plan = load_plan(pipeline_id)
    root = TaskBase()
    return TaskLocation(plan, root, "outputs", frozenset(), None, False, None)


def dispatch(event: DispatchEvent, stores: Stores | None = None, *, sealer: Sealer | None = None) -> Any:
    """Evaluate what ASL cannot, for the task at `event.task`. By `action`:

    - `condition`: `{"value": bool}`, the task's condition.
    - `items`: the for_loop's rendered `iterate_over` as a list (a mapping gives
      `[key, value]` pairs); anything else fails with `InvalidLoopItems`.
    - `render`: `{"status", "output", "error"}`: `field` rendered (`fallback_value` as the
      engine's `on_failure` does, or a dotted field of the task); `status` and `error` are
      passed through, so the result is the task's record.
    - `while`: `{"index", "state", "continue"}` (below).
    - `expand`: `[{"index", "spec", "type", "name"}]`, the dynamic_task_group's specs
      validated and planned (`InvalidTaskSpec`), each spec with its `name` filled in.
    - `child_inputs`: the inputs of pipeline_group child number `child`, resolved against
      the child's `input_variables` and sealed where sensitive.
    - `outputs`: the pipeline's rendered `outputs` section (no `task` needed).

    `while` is called once before the first iteration, without `last`, with `loop` =
    `{"index": 0, "state": {}}`; then after every iteration with `loop` = its previous
    answer and `last` = the output of the body's last task (which may be null). It answers
    `index` = iterations done (`loop.index + 1` when `last` is given, else `loop.index`),
    `state` = `last` if it is a mapping, `{}` if `last` is given but is not, else
    `loop.state`; and `continue` = `index < max_iterations` and the loop condition is true
    with `loop_state` = state and `loop_index` = index. When `continue` is false the loop's
    output is `{"iterations": index, "state": state}`, as on the engine.

    Every value returned is redacted; a failure raises a `TaskFailure` named by its type.
    """
    settings = lambda_settings()
    if event.action == "outputs":
        location = _pipeline_location(event.pipeline)
    else:
        location = _event_location(event, event.task)
    stores = stores or open_stores(settings, location.plan.pipeline.state_management.storage_backend)
    is_while = event.action == "while"
    prepared = _prepare(
        event,
        location,
        stores,
        sealer,
        loop_container=location.task if is_while else None,
        drop_loop_outputs=is_while,
    )
    try:
        if event.action == "child_inputs":
            return _child_inputs(prepared, event, sealer)
        return _ACTIONS[event.action](prepared, event)
    except TaskError as error:
        raise task_failure(error, prepared.run.redactor) from None
