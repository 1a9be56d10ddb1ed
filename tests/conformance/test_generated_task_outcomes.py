"""A generated task's outcome means the same on both engines. On AWS its task function carries
the generated task's whole error policy and answers its record, and the Map iteration keeps only
the output, so a generated task that failed under `continue_with_degraded_service` is read in
the execution's history (its function answered `failed`): the run is degraded, as locally."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult

GENERATED = """
name: generated outcomes
tasks:
  - name: plan
    type: python_task
    script: |
      return [
          {{"name": "fine", "type": "python_task", "script": "return 1"}},
          {{"name": "broken", "type": "python_task", "script": "raise ValueError('boom')",
            "error_handling": {{"on_failure": "{on_failure}", "fallback_value": "spare"}}}},
      ]
  - name: run_them
    type: dynamic_task_group
    tasks: "{{{{ plan }}}}"
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("on_failure", "status"), [("continue_with_degraded_service", "degraded"), ("skip", "succeeded")]
)
def test_a_failed_generated_task_ends_the_run_alike_on_both_engines(
    run_on_both_engines: Callable[..., dict[str, CliResult]],
    write_pipeline: Callable[..., Path],
    on_failure: str,
    status: str,
) -> None:
    # GIVEN a dynamic group whose second generated task fails under its own policy
    path = write_pipeline(GENERATED.format(on_failure=on_failure))
    # WHEN it runs on each engine
    documents = {engine: json.loads(result.stdout) for engine, result in run_on_both_engines(path).items()}
    # THEN the run ends alike: degraded only when the failure degrades the service
    assert {engine: document["status"] for engine, document in documents.items()} == {
        "local": status,
        "stepfunctions": status,
    }
    assert documents["local"]["outputs"]["run_them"] == documents["stepfunctions"]["outputs"]["run_them"]
    assert documents["local"]["outputs"]["run_them"] == [1, "spare"]
