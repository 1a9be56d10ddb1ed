"""One attempt of a leaf task (python, LLM, web search): render, execute, check the output."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.errors import TaskError, TemplateError
from orchestrator.runtime.budget import metering
from orchestrator.runtime.context import Context, RunInfo, stored_key
from orchestrator.runtime.exchanges import acting_for
from orchestrator.runtime.policy import task_timeout
from orchestrator.runtime.python_task import run_script
from orchestrator.runtime.redact import Redactor
from orchestrator.runtime.scope import Scope
from orchestrator.runtime.task_streams import TaskLog, writing_as
from orchestrator.runtime.telemetry import Recording, current_recording
from orchestrator.settings import Settings
from orchestrator.spec.models import LLMTask, Pipeline, PythonTask, TaskBase, WebSearchTask
from orchestrator.template import jinja
from orchestrator.template.script import render_script

if TYPE_CHECKING:
    from orchestrator.runtime.llm import LLMClient
    from orchestrator.runtime.search import SearchClient

LEAF_TYPES = (PythonTask, LLMTask, WebSearchTask)


@dataclass
class Services:
    """Clients for the outside world, built on first use so a python-only run never imports them."""

    settings: Settings
    llm: LLMClient | None = None
    search: SearchClient | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def llm_client(self) -> LLMClient:
        with self._lock:
            if self.llm is None:
                from orchestrator.runtime.exchanges import RecordingLLMClient, book_for
                from orchestrator.runtime.llm import ChatCompletionsClient
                from orchestrator.runtime.rate_limit import rate_limited

                def real() -> LLMClient:  # a replayed call takes no rate-limit slot
                    return rate_limited(ChatCompletionsClient(self.settings), self.settings)

                book = book_for(self.settings)
                self.llm = real() if book is None else RecordingLLMClient(book, real)
            return self.llm

    def close(self) -> None:
        """Release the clients' connections (the run that built them calls this at its end)."""
        with self._lock:
            close = getattr(self.llm, "close", None)
            if close is not None:
                close()
            self.llm = None

    def search_client(self) -> SearchClient:
        with self._lock:
            if self.search is None:
                from orchestrator.runtime.exchanges import RecordingSearchClient, book_for
                from orchestrator.runtime.search import HttpJsonSearchClient

                book = book_for(self.settings)
                if book is None:
                    self.search = HttpJsonSearchClient(self.settings)
                else:
                    self.search = RecordingSearchClient(book, lambda: HttpJsonSearchClient(self.settings))
            return self.search


def render(value: Any, scope: Scope) -> Any:
    """Render a task field; template problems are task errors that retrying cannot fix."""
    try:
        return jinja.render_value(value, scope)
    except TemplateError as error:
        raise TaskError("TemplateError", str(error)) from None


_ALWAYS_JSON = frozenset({str, float, bool, type(None)})


def _check_json(value: Any, task_name: str) -> Any:
    if type(value) in _ALWAYS_JSON or (type(value) is int and -(2**63) <= value < 2**63):
        return value  # json.dumps never fails on these (a huge int can: int-to-str limit)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as error:
        raise TaskError(
            "OutputNotSerializable",
            f"task '{task_name}' returned a value that is not JSON-serialisable: {error}",
        ) from None
    return value


def _evaluate_in_script(scope: Scope) -> Any:
    def evaluate(expression: str) -> Any:
        try:
            return jinja.evaluate_expression(expression, scope)
        except TemplateError as error:
            raise TaskError("TemplateError", str(error)) from None

    return evaluate


def render_task_script(script: str, scope: Scope) -> str:
    """A python_task's script with its `{{ }}` placeholders filled in, for both engines.

    Whatever goes wrong while rendering it is a `TemplateError` task failure (never retried,
    then the task's `error_handling` applies), never an exception that escapes the task:
    a Jinja error or an undefined value, a value that has no literal where it is written
    (a set, a value nested too deeply, text a bytes literal cannot hold), or any other
    exception (TypeError, RecursionError...) raised on the way. Running out of memory
    stays `MemoryError`, as it is for a script that does.
    """
    if "{{" not in script:
        return script  # render_script would return it as it is
    try:
        return render_script(script, _evaluate_in_script(scope))
    except TaskError:
        raise
    except TemplateError as error:
        raise TaskError("TemplateError", str(error)) from None
    except MemoryError:
        raise TaskError("MemoryError", "rendering the script ran out of memory") from None
    except Exception as error:
        message = f"the script cannot be rendered: {type(error).__name__}: {error}"
        raise TaskError("TemplateError", message) from None


def fallback_output(value: Any, scope: Scope, message: str) -> tuple[Any, str]:
    """The output of a task that failed under `on_failure: skip` or
    `continue_with_degraded_service`, and its error message, for both engines.

    The output is the task's `fallback_value` rendered. A fallback_value that cannot give a
    value (it names something undefined, or gives something that is not JSON) gives `null`:
    on_failure still applies and the run goes on, and the task keeps its own error, whose
    message says why the fallback_value was not used.
    """
    try:
        output = render(value, scope)
        json.dumps(output)
    except TaskError as error:
        problem = error.message
    except (TypeError, ValueError, RecursionError) as error:
        problem = f"it gives a value that is not JSON ({type(error).__name__}: {error})"
    except Exception as error:  # whatever else rendering raised: still a value that is not there
        problem = f"{type(error).__name__}: {error}"
    else:
        return output, message
    return None, f"{message} [{FALLBACK_VALUE_PROBLEM}{problem}]"


FALLBACK_VALUE_PROBLEM = "fallback_value not rendered, the output is null: "
"""What a task's error message says (before the reason) when its fallback_value gave nothing."""


def llm_request_fields(task: LLMTask, scope: Scope, default_model: str) -> dict[str, Any]:
    """The rendered request of an LLM task (also what `prompt_hash` caching hashes; its
    `output_schema` only when it has one, so the keys of other tasks stay as they were)."""
    fields: dict[str, Any] = {
        "model": str(render(task.model, scope)) if task.model else default_model,
        "prompt": str(render(task.prompt, scope)),
        "system": str(render(task.system, scope)) if task.system is not None else None,
        "temperature": task.temperature,
        "max_tokens": task.max_tokens,
        "output_type": task.output_type,
    }
    if task.output_schema is not None:
        fields["output_schema"] = task.output_schema
    return fields


def _llm_output(task: LLMTask, scope: Scope, services: Services, recording: Recording | None) -> object:
    """One attempt of an LLM task: its reply as its output_type, or the repair loop's value
    matching its output_schema (up to 1 + schema_retries calls); its rendered request is the
    attempt's inputs in the run's telemetry."""
    from orchestrator.runtime.llm import LLMRequest, complete_with_schema, metered_call, parse_llm_output

    fields = llm_request_fields(task, scope, services.settings.default_model)
    if recording is not None:
        recording.inputs(fields)
    output_type = fields.pop("output_type")
    schema = fields.pop("output_schema", None)
    request = LLMRequest(**fields)
    client = services.llm_client()
    if schema is None:
        return parse_llm_output(metered_call(client, request).text, output_type)
    if not isinstance(schema, dict):  # a file path is read in when the pipeline is loaded
        raise TaskError("InvalidTaskSpec", f"output_schema must be a JSON Schema here, got {schema!r}")
    structured = services.settings.route_for(request.model).structured_output
    return complete_with_schema(client, request, schema, retries=task.schema_retries, structured=structured)


def run_leaf(
    task: TaskBase,
    name: str,
    scope: Scope,
    run: RunInfo,
    services: Services,
    inputs: dict[str, Any],
) -> Any:
    """Run one attempt of a leaf task and return its output, redacted: what later tasks read,
    on either engine, is what the run document shows (a secret the task read, or a sensitive
    input, as `***`), since on AWS an output travels in the execution's state."""
    recording = current_recording()
    if isinstance(task, PythonTask):
        script = render_task_script(task.script, scope)
        if recording is not None:
            recording.inputs({"script": script})
        context = Context(run, scope, name)
        log = TaskLog(name, run)
        try:
            with writing_as(log.write):
                try:
                    output = run_script(script, name, context, inputs, context.storage())
                except TaskError:  # its state writes are kept (SPEC 8), all together
                    context.commit()
                    raise
                context.commit()
        finally:
            log.close()
        return run.redactor.value(_check_json(output, name))
    if isinstance(task, LLMTask):
        from orchestrator.runtime.rate_limit import within

        # the run's budgets meter every call; no rate-limit slot is taken past the timeout
        with (
            acting_for(name, run.redactor),
            metering(run.stores.state, services.settings.prices),
            within(task_timeout(task)),
        ):
            return run.redactor.value(_llm_output(task, scope, services, recording))
    if isinstance(task, WebSearchTask):
        from orchestrator.runtime.search import search_output

        query = str(render(task.query, scope))
        if recording is not None:
            recording.inputs({"query": query, "max_results": task.max_results})
        with acting_for(name, run.redactor):
            results = services.search_client().search(query, task.max_results)
        return run.redactor.value(search_output(query, results))
    raise TypeError(f"not a leaf task: {type(task).__name__}")


def canonical_hash(value: Any) -> str:
    """sha256 of the canonical JSON of a value."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(
    task: TaskBase,
    name: str,
    scope: Scope,
    pipeline: Pipeline,
    pipeline_id: str,
    reads: frozenset[str],
    default_model: str,
    redactor: Redactor,
) -> tuple[str, float | None] | None:
    """The cache entry a task reads and writes, and its TTL; None when the task is not cached.
    A rendered `cache_key` holding a sensitive value is stored digested (`stored_key`)."""
    config = pipeline.cache_config
    ttl = task.cache_ttl if task.cache_ttl is not None else config.ttl
    prefix = f"task:{pipeline_id}:{name}:"
    if task.cache_key is not None:
        return prefix + "key:" + stored_key(str(render(task.cache_key, scope)), redactor), ttl
    strategy = task.cache_strategy or (config.strategy if config.enabled else None)
    if strategy is None or strategy == "custom" or not isinstance(task, LEAF_TYPES):
        return None
    if strategy == "prompt_hash" and isinstance(task, LLMTask):
        return prefix + "prompt:" + canonical_hash(llm_request_fields(task, scope, default_model)), ttl
    if strategy == "input_hash":
        return prefix + "input:" + str(scope["input_hash"]), ttl
    definition = task.model_dump(mode="json", exclude_none=True)
    values = {ref: scope.get(ref) for ref in sorted(reads) if ref in scope}
    return prefix + "content:" + canonical_hash([definition, values]), ttl
