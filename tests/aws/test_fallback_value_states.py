"""How a state machine writes `fallback_value` (divergence 7), and the dispatch `render` action.

A Pass state writes a literal, or one name the execution state always holds when the task
fails; anything else (an attribute, an item, a filter, a template inside a mapping) goes to the
dispatch function, which renders it as the engine does (`runtime.leaf.fallback_output`): a
JSONPath that finds nothing would fail the whole execution (`States.Runtime`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from conftest import PIPELINES, every_state
from orchestrator.aws.build import compile_definition
from orchestrator.aws.dispatch import _with_message
from orchestrator.aws.execution import error_from_catch
from orchestrator.runtime.leaf import FALLBACK_VALUE_PROBLEM

Handler = Callable[[str, dict[str, Any]], Any]
Event = Callable[[str], dict[str, Any]]

PIPELINE = """
name: fallback_states
input_variables:
  level: {type: string, default: low}
  token: {type: string, default: t, sensitive: true}
tasks:
  - name: base
    type: python_task
    script: |
      return {"a": 1}
  - name: fan
    type: parallel_group
    tasks:
      - name: child
        type: python_task
        script: return 1
  - name: literal
    type: python_task
    script: raise ValueError()
    error_handling: {on_failure: skip, fallback_value: {mode: minimal}}
  - name: bare_task
    type: python_task
    script: raise ValueError()
    error_handling: {on_failure: skip, fallback_value: "{{ base }}"}
  - name: bare_input
    type: python_task
    script: raise ValueError()
    error_handling: {on_failure: skip, fallback_value: "{{ level }}"}
  - name: attribute
    type: python_task
    script: raise ValueError()
    error_handling: {on_failure: skip, fallback_value: "{{ base.x }}"}
  - name: undefined
    type: python_task
    script: raise ValueError()
    error_handling: {on_failure: continue_with_degraded_service, fallback_value: "{{ nothing }}"}
  - name: group_child
    type: python_task
    script: raise ValueError()
    error_handling: {on_failure: skip, fallback_value: "{{ child }}"}
  - name: sensitive
    type: python_task
    script: raise ValueError()
    error_handling: {on_failure: skip, fallback_value: "{{ token }}"}
  - name: in_mapping
    type: python_task
    script: raise ValueError()
    error_handling: {on_failure: skip, fallback_value: {source: "{{ base }}"}}
  - name: path_key
    type: python_task
    script: raise ValueError()
    error_handling: {on_failure: skip, fallback_value: {"value.$": "$.inputs"}}
"""


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("fallback") / "fallback_states.yaml"
    path.write_text(PIPELINE, encoding="utf-8")
    compiled: dict[str, Any] = every_state(compile_definition(path))
    return compiled


def test_a_literal_or_an_always_present_name_is_a_pass_state(states: dict[str, Any]) -> None:
    assert states["literal.failed"]["Type"] == "Pass"
    assert states["literal.failed"]["Parameters"]["output"] == {"mode": "minimal"}
    assert states["bare_task.failed"]["Parameters"]["output.$"] == "$.tasks.base.output"
    assert states["bare_input.failed"]["Parameters"]["output.$"] == "$.inputs.level"


@pytest.mark.parametrize(
    "task", ["attribute", "undefined", "group_child", "sensitive", "in_mapping", "path_key"]
)
def test_anything_else_is_rendered_by_the_dispatch_function(states: dict[str, Any], task: str) -> None:
    # on_failure's state: `.failed` for skip, `.degraded` for continue_with_degraded_service
    state = states.get(f"{task}.failed") or states[f"{task}.degraded"]
    assert state["Type"] == "Task"
    payload = state["Parameters"]["Payload"]
    assert state["Parameters"]["FunctionName"] == "${DispatchFunctionArn}"
    assert payload["action"] == "render" and payload["field"] == "fallback_value"
    assert payload["error.$"] == f"$.errors.{task}"
    assert state["ResultSelector"]["error.$"] == "$.Payload.error"


def test_dispatch_render_of_a_missing_value_gives_null_and_notes_why(handler: Handler, event: Event) -> None:
    payload = event("sfn_dispatch_render")
    payload["tasks"] = {}  # `{{ critical_task }}` names nothing
    answer = handler("dispatch", payload)
    assert answer["status"] == "skipped" and answer["output"] is None
    error = error_from_catch(answer["error"])
    assert error is not None and error.type == "LLMRequestError"
    assert error.message.startswith(f"model claude-3 is not available [{FALLBACK_VALUE_PROBLEM}")
    assert "'critical_task' is undefined" in error.message
    assert answer["error"]["Error"] == payload["error"]["Error"]


def test_a_catch_result_gets_a_new_message_and_keeps_its_type() -> None:
    lambda_error = {
        "Error": "ValueError",
        "Cause": json.dumps({"errorMessage": "a", "errorType": "ValueError"}),
    }
    changed = _with_message(lambda_error, "a [b]")
    assert json.loads(changed["Cause"]) == {"errorMessage": "a [b]", "errorType": "ValueError"}
    # a Cause that is plain text (a state's own error) is replaced by the message
    timeout = {"Error": "States.Timeout", "Cause": "the state timed out"}
    noted = error_from_catch(_with_message(timeout, "the state timed out [b]"))
    assert noted is not None and (noted.type, noted.message) == ("TaskTimeout", "the state timed out [b]")
    assert _with_message(None, "x") is None


def test_a_bundled_pipelines_bare_name_fallback_value_stays_a_pass_state() -> None:
    source = PIPELINES / "hierarchical_error_handling.yaml"
    states = every_state(compile_definition(source))
    failed = [state for name, state in states.items() if name.endswith(".failed")]
    assert failed and all(state["Type"] == "Pass" for state in failed)
