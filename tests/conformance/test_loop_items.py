"""A for_loop iterates the same items on both engines (issue 11, divergence 4).

A list is iterated as it is; a mapping as its `[key, value]` pairs, whether it comes from an
input or from a task's output. Anything but a literal list may be a mapping (or an output kept
in S3), so the runtime's `loop_items` gives the items on AWS as it does locally (the dispatch
function's `items`, which also counts them: issue 12).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult, agreed_tasks

pytestmark = pytest.mark.slow

PIPELINE = """
name: loop_items
input_variables:
  prices: {type: object, default: {apple: 3, pear: 5}}
  names: {type: array, default: [x, y]}
tasks:
  - name: stock
    type: python_task
    script: |
      return {"bolts": 10, "nuts": 20}
  - name: over_output
    type: for_loop
    iterate_over: "{{ stock }}"
    tasks:
      - name: line
        type: python_task
        script: |
          pair = {{ item }}
          return {"kind": type(pair).__name__, "name": pair[0], "twice": pair[1] * 2}
  - name: over_object_input
    type: for_loop
    iterate_over: "{{ prices }}"
    item_variable: price
    tasks:
      - name: label
        type: python_task
        script: return "{{ price[0] }}={{ price[1] }}"
  - name: over_array_input
    type: for_loop
    iterate_over: "{{ names }}"
    tasks:
      - name: upper
        type: python_task
        script: return "{{ item }}".upper()
  - name: over_a_number
    type: for_loop
    iterate_over: "{{ stock.bolts }}"
    error_handling: {on_failure: continue_with_degraded_service}
    tasks:
      - name: never
        type: python_task
        script: return 1
"""


def test_lists_and_mappings_are_iterated_alike_on_both_engines(
    run_on_both_engines: Callable[..., dict[str, CliResult]], tmp_path: Path
) -> None:
    path = tmp_path / "loop_items.yaml"
    path.write_text(PIPELINE, encoding="utf-8")
    results = run_on_both_engines(path)

    local, aws = results["local"].document(), results["stepfunctions"].document()
    assert local["outputs"]["over_output"] == [
        {"line": {"kind": "list", "name": "bolts", "twice": 20}},
        {"line": {"kind": "list", "name": "nuts", "twice": 40}},
    ]
    assert local["outputs"]["over_object_input"] == [{"label": "apple=3"}, {"label": "pear=5"}]
    assert local["outputs"]["over_array_input"] == [{"upper": "X"}, {"upper": "Y"}]
    assert local["status"] == "degraded"
    assert local["tasks"]["over_a_number"]["error"]["type"] == "InvalidLoopItems"
    assert "list or a mapping, got int" in local["tasks"]["over_a_number"]["error"]["message"]
    for key in ("status", "outputs", "error"):
        assert aws[key] == local[key], key
    assert agreed_tasks(aws) == agreed_tasks(local)
