"""SPEC sections 3 and 5 through the CLI: loops, groups, dynamic task groups and pipeline groups."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import CliResult, spec_record

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

# A script body that records when it ran: [start, end, label].
TIMED = """
import time
start = time.time()
time.sleep({seconds})
return [start, time.time(), {label}]
"""


def run_json(cli: Cli, path: Path, *arguments: str) -> tuple[int, dict[str, Any]]:
    result = cli("run", path, "--json", *arguments)
    assert result.stdout.strip(), result.stderr
    return result.code, result.document()


def timed(seconds: float, label: str, indent: int) -> str:
    """A `script: |` block for a task that sleeps and reports its window."""
    return textwrap.indent(TIMED.format(seconds=seconds, label=label).strip(), " " * indent)


def peak(windows: list[list[float]]) -> int:
    """The most windows open at one time."""
    events = sorted([(w[0], 1) for w in windows] + [(w[1], -1) for w in windows])
    running, highest = 0, 0
    for _, change in events:
        running += change
        highest = max(highest, running)
    return highest


# -- for_loop -----------------------------------------------------------------------------------


def test_for_loop_output_is_one_mapping_of_inner_outputs_per_item(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 3: a for_loop's output is a list, one entry per item, each `{inner_task_name: output}`;
    `item_variable` defaults to `item`."""
    # GIVEN a loop of two inner tasks over literal items
    path = write_pipeline(
        """
        name: for_shape
        tasks:
          - name: loop
            type: for_loop
            iterate_over: [1, 2, 3]
            tasks:
              - name: double
                type: python_task
                script: return {{ item }} * 2
              - name: label
                type: python_task
                script: return "item-{{ item }}-" + str(context.get_task_output("double"))
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN each entry maps every inner task to its output for that item
    assert code == 0, document
    assert document["outputs"]["loop"] == [
        {"double": 2, "label": "item-1-2"},
        {"double": 4, "label": "item-2-4"},
        {"double": 6, "label": "item-3-6"},
    ]
    assert spec_record(document["tasks"]["loop"]) == {"status": "succeeded", "attempts": 1, "error": None}


def test_for_loop_iterates_over_a_templated_list_from_an_earlier_task(
    cli: Cli, write_pipeline: Write
) -> None:
    """SPEC 3, 4 and 5: `iterate_over: "{{ task.key }}"` yields the list itself; the loop depends
    on the task it names and waits for it."""
    # GIVEN a loop over a list produced by an earlier task, with a custom item variable
    path = write_pipeline(
        """
        name: for_templated
        tasks:
          - name: loop
            type: for_loop
            iterate_over: "{{ make.rows }}"
            item_variable: row
            tasks:
              - name: total
                type: python_task
                script: return {{ row.a }} + {{ row.b }}
          - name: make
            type: python_task
            script: |
              return {"rows": [{"a": 1, "b": 2}, {"a": 10, "b": 20}]}
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the loop ran after its producer, once per row
    assert code == 0, document
    assert document["outputs"]["loop"] == [{"total": 3}, {"total": 30}]


def test_for_loop_over_an_empty_list_outputs_an_empty_list(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 3: the output has one entry per item, so no items give `[]` (and no error)."""
    # GIVEN an empty list from an earlier task
    path = write_pipeline(
        """
        name: for_empty
        tasks:
          - name: make
            type: python_task
            script: return []
          - name: loop
            type: for_loop
            iterate_over: "{{ make }}"
            tasks:
              - name: never
                type: python_task
                script: raise RuntimeError("must not run")
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the loop succeeded with an empty list
    assert code == 0, document
    assert document["outputs"]["loop"] == []
    assert document["tasks"]["loop"]["status"] == "succeeded"


def test_for_loop_over_a_non_list_is_a_clear_error(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 3: `iterate_over` must give a list; anything else fails the loop with a clear message."""
    # GIVEN a loop over a number
    path = write_pipeline(
        """
        name: for_scalar
        tasks:
          - name: make
            type: python_task
            script: return 5
          - name: loop
            type: for_loop
            iterate_over: "{{ make }}"
            tasks:
              - name: inner
                type: python_task
                script: return 1
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the loop failed saying what it got
    assert code == 1
    assert document["error"]["task"] == "loop"
    assert "list" in document["error"]["message"]
    assert "int" in document["error"]["message"]
    assert document["outputs"]["loop"] is None


# -- while_loop -------------------------------------------------------------------------------


def test_while_loop_stops_when_its_condition_is_false(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 3 and 8: output `{"iterations": n, "state": final loop_state}`; `loop_state` is the
    last body task's output of the previous iteration, visible in templates; a missing key is
    undefined (`default` applies) and falsy in the condition."""
    # GIVEN a loop whose body reads loop_state in a template and sets `done` at the third pass
    path = write_pipeline(
        """
        name: while_stop
        tasks:
          - name: loop
            type: while_loop
            condition: "{{ not loop_state.done }}"
            max_iterations: 10
            tasks:
              - name: read
                type: python_task
                script: return {{ loop_state.count | default(0) }}
              - name: step
                type: python_task
                script: |
                  count = context.get_task_output("read") + 1
                  return {"count": count, "done": count >= 3, "index": {{ loop_index }}}
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN it ran three times and kept the last state
    assert code == 0, document
    assert document["outputs"]["loop"] == {
        "iterations": 3,
        "state": {"count": 3, "done": True, "index": 2},
    }


def test_while_loop_stops_at_max_iterations_without_error(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: the loop stops after `max_iterations` (not an error)."""
    # GIVEN a loop whose condition never turns false
    path = write_pipeline(
        """
        name: while_max
        tasks:
          - name: loop
            type: while_loop
            condition: "true"
            max_iterations: 4
            tasks:
              - name: step
                type: python_task
                script: |
                  return {"n": {{ loop_state.n | default(0) }} + 1}
          - name: after
            type: python_task
            script: return {{ loop.iterations }}
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN it ran exactly max_iterations times and succeeded
    assert code == 0, document
    assert document["status"] == "succeeded"
    assert document["outputs"]["loop"] == {"iterations": 4, "state": {"n": 4}}
    assert document["tasks"]["loop"]["status"] == "succeeded"
    assert document["outputs"]["after"] == 4


def test_while_loop_whose_condition_is_false_at_once_runs_nothing(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8 / decisions: the condition is checked before every iteration; `loop_state` starts `{}`."""
    path = write_pipeline(
        """
        name: while_none
        tasks:
          - name: loop
            type: while_loop
            condition: "loop_state.go"
            max_iterations: 3
            tasks:
              - name: never
                type: python_task
                script: raise RuntimeError("must not run")
        """
    )
    code, document = run_json(cli, path)
    assert code == 0, document
    assert document["outputs"]["loop"] == {"iterations": 0, "state": {}}


# -- parallel_group -------------------------------------------------------------------------------


def test_parallel_group_output_and_children_addressable_by_name(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 3 and 11: output `{child_name: output}`; children are addressable by their own names
    from later tasks, and are in the document's outputs and tasks."""
    # GIVEN a group of two children and later tasks naming the children directly
    path = write_pipeline(
        """
        name: group
        tasks:
          - name: group
            type: parallel_group
            tasks:
              - name: left
                type: python_task
                script: |
                  return {"side": "L"}
              - name: right
                type: python_task
                script: return 2
          - name: by_template
            type: python_task
            script: return ["{{ left.side }}", {{ right }}]
          - name: by_context
            type: python_task
            script: return [context.get_task_output("left"), context.get_task_output("group")]
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the group maps children to outputs, and later tasks see the children
    assert code == 0, document
    outputs = document["outputs"]
    assert outputs["group"] == {"left": {"side": "L"}, "right": 2}
    assert outputs["left"] == {"side": "L"}
    assert outputs["right"] == 2
    assert outputs["by_template"] == ["L", 2]
    assert outputs["by_context"] == [{"side": "L"}, {"left": {"side": "L"}, "right": 2}]
    for name in ("group", "left", "right"):
        assert spec_record(document["tasks"][name]) == {"status": "succeeded", "attempts": 1, "error": None}


def test_parallel_group_children_run_concurrently_up_to_max_concurrency(
    cli: Cli, write_pipeline: Write
) -> None:
    """SPEC 3: a parallel_group runs its children in parallel, at most `max_concurrency` at once."""
    # GIVEN four sleeping children, two at a time
    children = "\n".join(
        f"      - name: c{n}\n        type: python_task\n        script: |\n{timed(0.1, str(n), 10)}"
        for n in range(4)
    )
    path = write_pipeline(
        f"name: limited_group\ntasks:\n  - name: group\n    type: parallel_group\n"
        f"    max_concurrency: 2\n    tasks:\n{children}\n"
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN at most two ran at once, and two did overlap
    assert code == 0, document
    windows = [document["outputs"]["group"][f"c{n}"] for n in range(4)]
    assert peak(windows) == 2


# -- dynamic_task_group -------------------------------------------------------------------------

GENERATOR = """
name: dynamic
tasks:
  - name: gen
    type: python_task
    script: |
      specs = []
      for n in range(3):
          specs.append({{
              "type": "python_task",
              "script": "import time\\nstart = time.time()\\ntime.sleep(0.08)\\n"
                        "return [start, time.time(), %d]" % n,
          }})
      return {{"task_list": specs}}
  - name: group
    type: dynamic_task_group
    tasks: "{{{{ gen.task_list }}}}"
    parallel: {parallel}
"""


def test_dynamic_group_runs_generated_specs_in_list_order_sequentially(
    cli: Cli, write_pipeline: Write
) -> None:
    """SPEC 3 and decisions: `tasks` may be a template yielding a list of task specs; output is
    the list of outputs in list order; `parallel: false` (default) runs them one after another."""
    # GIVEN three generated sleeping specs, sequential
    path = write_pipeline(GENERATOR.format(parallel="false"))
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the outputs are in list order and no two ran at the same time, in order
    assert code == 0, document
    windows = document["outputs"]["group"]
    assert [w[2] for w in windows] == [0, 1, 2]
    assert peak(windows) == 1
    assert windows[0][1] <= windows[1][0] and windows[1][1] <= windows[2][0]


def test_dynamic_group_in_parallel_overlaps_and_keeps_list_order(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 3: `parallel: true` runs the generated specs together; the output stays in list order."""
    path = write_pipeline(GENERATOR.format(parallel="true"))
    code, document = run_json(cli, path)
    assert code == 0, document
    windows = document["outputs"]["group"]
    assert [w[2] for w in windows] == [0, 1, 2]
    assert peak(windows) == 3


def test_dynamic_specs_without_names_are_task_0_task_1(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 3: a generated spec's `name` may be omitted (`task_0`, `task_1`, ...)."""
    # GIVEN unnamed generated specs, the second reading the first by its default name
    path = write_pipeline(
        """
        name: dynamic_names
        tasks:
          - name: group
            type: dynamic_task_group
            parallel: true
            tasks:
              - type: python_task
                script: return 10
              - type: python_task
                script: return context.get_task_output("task_0") + 1
              - name: named
                type: python_task
                script: return context.get_task_output("task_1") * 2
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the default names resolved
    assert code == 0, document
    assert document["outputs"]["group"] == [10, 11, 22]


def test_invalid_generated_spec_fails_the_task_with_the_validation_message(
    cli: Cli, write_pipeline: Write
) -> None:
    """SPEC 3: a dynamic task spec is validated when generated; an invalid spec fails that task
    with the validation message (decisions: not retried)."""
    # GIVEN a generator that forgets a python_task's script
    path = write_pipeline(
        """
        name: dynamic_invalid
        tasks:
          - name: gen
            type: python_task
            script: |
              return [{"name": "fine", "type": "python_task", "script": "return 1"},
                      {"name": "broken", "type": "python_task", "scirpt": "return 2"}]
          - name: group
            type: dynamic_task_group
            tasks: "{{ gen }}"
            error_handling:
              retry_count: 2
              retry_delay: 0
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the group failed once with InvalidTaskSpec, naming the problem
    assert code == 1
    assert document["error"]["task"] == "group"
    assert document["error"]["type"] == "InvalidTaskSpec"
    message = document["error"]["message"]
    assert "script" in message
    assert "1" in message  # the second generated spec
    assert document["tasks"]["group"]["attempts"] == 1


def test_generated_tasks_must_be_a_list(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 3: `tasks` is a template yielding a list of task specs."""
    path = write_pipeline(
        """
        name: dynamic_not_list
        tasks:
          - name: gen
            type: python_task
            script: 'return {"type": "python_task", "script": "return 1"}'
          - name: group
            type: dynamic_task_group
            tasks: "{{ gen }}"
        """
    )
    code, document = run_json(cli, path)
    assert code == 1
    assert document["error"]["type"] == "InvalidTaskSpec"
    assert "list" in document["error"]["message"]


# -- pipeline_group --------------------------------------------------------------------------

CHILD = """
name: {name}
input_variables:
  base: {{type: integer, default: 1}}
tasks:
  - name: work
    type: python_task
    script: |
      import time
      start = time.time()
      time.sleep(0.15)
      return {{"value": {{{{ base }}}} * {factor}, "window": [start, time.time()]}}
"""


def write_children(tmp_path: Path) -> None:
    (tmp_path / "child_a.yaml").write_text(CHILD.format(name="child a", factor=10), encoding="utf-8")
    (tmp_path / "sub").mkdir(exist_ok=True)
    (tmp_path / "sub" / "child_b.yaml").write_text(CHILD.format(name="child b", factor=100), encoding="utf-8")


PARENT = """
name: parent
input_variables:
  start: {{type: integer, default: 2}}
tasks:
  - name: group
    type: pipeline_group
    mode: {mode}
    pipelines:
      - pipeline: child_a.yaml
        inputs:
          base: "{{{{ start }}}}"
      - pipeline: sub/child_b.yaml
        inputs:
          base: 3
  - name: read
    type: python_task
    depends_on: [group]
    script: |
      a = context.get_pipeline_output("child_a.yaml")
      b = context.get_pipeline_output("child_b")
      return [a["work"]["value"], b["work"]["value"]]
"""


def test_pipeline_group_in_parallel(cli: Cli, write_pipeline: Write, tmp_path: Path) -> None:
    """SPEC 3: output `{pipeline_id: that run's outputs}`; paths are relative to the referring
    file; `context.get_pipeline_output(file_or_id)` reads a child's outputs; `mode: parallel`."""
    # GIVEN two child pipeline files and a parent running them in parallel
    write_children(tmp_path)
    path = write_pipeline(PARENT.format(mode="parallel"), name="parent")
    # WHEN the parent runs
    code, document = run_json(cli, path, "-i", "start=4")
    # THEN each child's outputs are under its id, rendered with the parent's inputs
    assert code == 0, document
    group = document["outputs"]["group"]
    assert set(group) == {"child_a", "child_b"}
    assert group["child_a"]["work"]["value"] == 40
    assert group["child_b"]["work"]["value"] == 300
    assert document["outputs"]["read"] == [40, 300]
    # AND the two children ran at the same time
    assert peak([group["child_a"]["work"]["window"], group["child_b"]["work"]["window"]]) == 2


def test_pipeline_group_in_sequence(cli: Cli, write_pipeline: Write, tmp_path: Path) -> None:
    """SPEC 3: `mode: sequential` runs the child pipelines one after another, in order."""
    write_children(tmp_path)
    path = write_pipeline(PARENT.format(mode="sequential"), name="parent")
    code, document = run_json(cli, path)
    assert code == 0, document
    group = document["outputs"]["group"]
    first, second = group["child_a"]["work"]["window"], group["child_b"]["work"]["window"]
    assert first[1] <= second[0]
    assert document["outputs"]["read"] == [20, 300]


def test_failing_child_pipeline_fails_the_group(cli: Cli, write_pipeline: Write, tmp_path: Path) -> None:
    """SPEC 3 / decisions: a child run that fails fails the group task (`ChildPipelineFailed`)."""
    # GIVEN a child that raises
    (tmp_path / "bad_child.yaml").write_text(
        "name: bad\ntasks:\n  - name: explode\n    type: python_task\n"
        "    script: raise ValueError('child broke')\n",
        encoding="utf-8",
    )
    path = write_pipeline(
        """
        name: parent
        tasks:
          - name: group
            type: pipeline_group
            pipelines:
              - pipeline: bad_child.yaml
          - name: after
            type: python_task
            depends_on: [group]
            script: return 1
        """,
        name="parent",
    )
    # WHEN the parent runs
    code, document = run_json(cli, path)
    # THEN the group failed naming the child, its task and its error
    assert code == 1
    assert document["error"]["task"] == "group"
    assert document["error"]["type"] == "ChildPipelineFailed"
    message = document["error"]["message"]
    assert "bad_child.yaml" in message
    assert "explode" in message
    assert "child broke" in message
    assert document["tasks"]["after"]["status"] == "not_run"


def test_pipeline_cycle_is_a_validation_error(cli: Cli, write_pipeline: Write, tmp_path: Path) -> None:
    """SPEC 3 and 11: a cycle of pipelines is an error: `validate` exits 1 naming the chain,
    `run` exits 2 before anything runs."""
    # GIVEN a.yaml including b.yaml including a.yaml
    a = write_pipeline(
        """
        name: a
        tasks:
          - name: include_b
            type: pipeline_group
            pipelines:
              - pipeline: b.yaml
        """,
        name="a",
    )
    write_pipeline(
        """
        name: b
        tasks:
          - name: include_a
            type: pipeline_group
            pipelines:
              - pipeline: a.yaml
        """,
        name="b",
    )
    # WHEN it is validated and run
    validated = cli("validate", a)
    ran = cli("run", a, "--json")
    # THEN both refuse it, naming the cycle
    assert validated.code == 1
    assert "a.yaml -> b.yaml -> a.yaml" in validated.stderr
    assert ran.code == 2
    assert ran.stdout == ""


def test_missing_child_pipeline_warns_then_fails_at_run_time(
    cli: Cli, write_pipeline: Write, tmp_path: Path
) -> None:
    """Decisions: a missing child file is a validation warning and a run-time error."""
    path = write_pipeline(
        """
        name: parent
        tasks:
          - name: group
            type: pipeline_group
            pipelines:
              - pipeline: not_there.yaml
        """
    )
    validated = cli("validate", path)
    assert validated.code == 0
    assert "not_there.yaml" in validated.stderr
    code, document = run_json(cli, path)
    assert code == 1
    assert document["error"]["task"] == "group"
    assert "not_there.yaml" in document["error"]["message"]


# -- a container's own error handling ----------------------------------------------------------


def test_failing_inner_task_with_the_containers_on_failure_skip(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 6 and 7 / decisions 'Containers have error handling too': an inner task failing with
    `abort_pipeline` fails its container with that task's error type and message; the
    container's own `on_failure: skip` then applies and the run goes on."""
    # GIVEN a loop and a group with on_failure skip whose inner tasks fail
    path = write_pipeline(
        """
        name: container_skip
        tasks:
          - name: loop
            type: for_loop
            iterate_over: [1, 2]
            error_handling:
              on_failure: skip
              fallback_value: {"skipped": true}
            tasks:
              - name: inner
                type: python_task
                script: |
                  if {{ item }} == 2:
                      raise ValueError("bad item 2")
                  return {{ item }}
          - name: group
            type: parallel_group
            error_handling:
              on_failure: skip
            tasks:
              - name: child_ok
                type: python_task
                script: return 1
              - name: child_bad
                type: python_task
                script: raise KeyError("missing")
          - name: after
            type: python_task
            script: return [{{ loop }}, {{ group | default(None) }}]
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN both containers were skipped with the inner error, and the run succeeded
    assert code == 0, document
    assert document["status"] == "succeeded"
    loop = document["tasks"]["loop"]
    assert loop["status"] == "skipped"
    assert loop["error"]["type"] == "ValueError"
    assert loop["error"]["message"].startswith("bad item 2")
    assert document["outputs"]["loop"] == {"skipped": True}
    group = document["tasks"]["group"]
    assert group["status"] == "skipped"
    assert group["error"]["type"] == "KeyError"
    assert group["error"]["message"] == "'missing' (script line 1)"
    assert document["outputs"]["group"] is None
    assert document["outputs"]["after"] == [{"skipped": True}, None]


def test_failing_inner_task_aborts_the_run_by_default(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 7 / decisions: with the default policy, a container whose inner task fails fails the run."""
    path = write_pipeline(
        """
        name: container_abort
        tasks:
          - name: loop
            type: for_loop
            iterate_over: [1]
            tasks:
              - name: inner
                type: python_task
                script: raise ValueError("inner down")
        """
    )
    code, document = run_json(cli, path)
    assert code == 1
    assert document["error"]["task"] == "loop"
    assert document["error"]["type"] == "ValueError"
    assert "inner down" in document["error"]["message"]


def test_failing_inner_task_that_continues_leaves_null_and_degrades_the_run(
    cli: Cli, write_pipeline: Write
) -> None:
    """SPEC 6 and 7: an inner task with `continue_with_degraded_service` is `failed` with output
    `null`, the loop goes on, and the run ends `degraded` (exit 0)."""
    path = write_pipeline(
        """
        name: inner_degraded
        tasks:
          - name: loop
            type: for_loop
            iterate_over: [1, 2, 3]
            tasks:
              - name: inner
                type: python_task
                error_handling:
                  on_failure: continue_with_degraded_service
                script: |
                  if {{ item }} == 2:
                      raise ValueError("two is bad")
                  return {{ item }}
        """
    )
    code, document = run_json(cli, path)
    assert code == 0, document
    assert document["status"] == "degraded"
    assert document["outputs"]["loop"] == [{"inner": 1}, {"inner": None}, {"inner": 3}]
    assert document["tasks"]["loop"]["status"] == "succeeded"


def test_for_loop_over_a_mapping_iterates_key_value_pairs(cli: Cli, write_pipeline: Write) -> None:
    """Decisions 'for_loop over a mapping': a templated mapping iterates its `[key, value]` pairs."""
    path = write_pipeline(
        """
        name: for_mapping
        tasks:
          - name: make
            type: python_task
            script: |
              return {"a": 1, "b": 2}
          - name: loop
            type: for_loop
            iterate_over: "{{ make }}"
            item_variable: pair
            tasks:
              - name: show
                type: python_task
                script: return "{{ pair[0] }}={{ pair[1] }}"
        """
    )
    code, document = run_json(cli, path)
    assert code == 0, document
    assert document["outputs"]["loop"] == [{"show": "a=1"}, {"show": "b=2"}]


def test_while_loop_state_is_empty_when_the_last_output_is_not_a_mapping(
    cli: Cli, write_pipeline: Write
) -> None:
    """SPEC 8 / decisions: `loop_state` is the last body task's output only if it is a mapping,
    else `{}`; `loop_index` is in scope."""
    path = write_pipeline(
        """
        name: while_scalar
        tasks:
          - name: loop
            type: while_loop
            condition: "loop_index < 3"
            max_iterations: 10
            tasks:
              - name: step
                type: python_task
                script: return [{{ loop_index }}, {{ loop_state }}]
        """
    )
    code, document = run_json(cli, path)
    assert code == 0, document
    assert document["outputs"]["loop"] == {"iterations": 3, "state": {}}


def test_degraded_child_pipeline_makes_the_parent_degraded(
    cli: Cli, write_pipeline: Write, tmp_path: Path
) -> None:
    """Decisions 'pipeline_group output': a degraded child makes the parent degraded; the group
    output holds the child's outputs (fallback values included)."""
    (tmp_path / "soft_child.yaml").write_text(
        textwrap.dedent(
            """
            name: soft
            tasks:
              - name: soft
                type: python_task
                error_handling:
                  on_failure: continue_with_degraded_service
                  fallback_value: minimal
                script: raise ValueError("soft failure")
            """
        ),
        encoding="utf-8",
    )
    path = write_pipeline(
        """
        name: parent
        tasks:
          - name: group
            type: pipeline_group
            pipelines:
              - pipeline: soft_child.yaml
        """,
        name="parent",
    )
    code, document = run_json(cli, path)
    assert code == 0, document
    assert document["status"] == "degraded"
    assert document["outputs"]["group"] == {"soft_child": {"soft": "minimal"}}
    assert document["tasks"]["group"]["status"] == "succeeded"


# -- regressions: engine bugs these tests found (fixed since) -------------------------------------


def test_sequential_dynamic_group_with_a_backward_reference_is_an_invalid_spec(
    cli: Cli, write_pipeline: Write
) -> None:
    """SPEC 3 and 5: generated specs are validated like any tasks; with `parallel: false` each
    waits for the previous one, so a spec reading a later one is a dependency cycle: an invalid
    spec (InvalidTaskSpec with the validation message), never a hang."""
    # GIVEN a sequential group whose first spec reads the second (the run is bounded at 0.5 s)
    path = write_pipeline(
        """
        name: dynamic_cycle
        resource_limits:
          timeout: 0.5
        tasks:
          - name: group
            type: dynamic_task_group
            tasks:
              - name: first
                type: python_task
                script: return context.get_task_output("second")
              - name: second
                type: python_task
                script: return 2
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN the group failed with the validation message naming the cycle
    assert code == 1
    assert document["error"]["task"] == "group"
    assert document["error"]["type"] == "InvalidTaskSpec"
    assert "cycle" in document["error"]["message"]


def test_sensitive_inputs_of_a_child_pipeline_are_redacted(
    cli: Cli, write_pipeline: Write, tmp_path: Path
) -> None:
    """SPEC 2: sensitive inputs (`sensitive: true`) are never printed, logged or stored in run
    records in plain text; that holds for a child pipeline of a `pipeline_group` too."""
    # GIVEN a child whose input is sensitive and a parent passing it a value
    (tmp_path / "vault.yaml").write_text(
        textwrap.dedent(
            """
            name: vault
            input_variables:
              token: {type: string, sensitive: true}
            tasks:
              - name: use
                type: python_task
                script: |
                  print("using", inputs["token"])
                  return "token={{ token }}"
            """
        ),
        encoding="utf-8",
    )
    path = write_pipeline(
        """
        name: parent
        input_variables:
          raw: {type: string}
        tasks:
          - name: group
            type: pipeline_group
            pipelines:
              - pipeline: vault.yaml
                inputs:
                  token: "{{ raw }}"
        """,
        name="parent",
    )
    # WHEN the parent runs
    result = cli("run", path, "--json", "-i", "raw=sk-CHILD-SENSITIVE-1")
    # THEN the child's sensitive value is masked everywhere
    assert result.code == 0, result.stderr
    assert "sk-CHILD-SENSITIVE-1" not in result.stdout + result.stderr
    assert result.document()["outputs"]["group"] == {"vault": {"use": "token=***"}}


def test_children_of_a_skipped_group_read_the_same_in_document_and_templates(
    cli: Cli, write_pipeline: Write
) -> None:
    """SPEC 3 and 11: children of a parallel_group are addressable by their own names from later
    tasks, and the document's `outputs` holds them; both must show the same value."""
    # GIVEN a group (on_failure: skip) whose first child finishes before the second fails
    path = write_pipeline(
        """
        name: skipped_group
        tasks:
          - name: group
            type: parallel_group
            error_handling:
              on_failure: skip
            tasks:
              - name: child_ok
                type: python_task
                script: return 1
              - name: child_bad
                type: python_task
                depends_on: [child_ok]
                script: raise KeyError("missing")
          - name: after
            type: python_task
            depends_on: [group]
            script: |
              return ["{{ child_ok | default('undefined') }}", context.get_task_output("child_ok", "none")]
        """
    )
    # WHEN it runs
    code, document = run_json(cli, path)
    # THEN what later tasks saw of child_ok is what the document reports
    assert code == 0, document
    assert document["tasks"]["child_ok"]["status"] == "succeeded"
    reported = document["outputs"]["child_ok"]
    assert document["outputs"]["after"] == [str(reported), reported]
