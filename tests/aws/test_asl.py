"""Issue 4: every construct of SPEC sections 3 and 7 compiles to ASL that two validators accept."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PIPELINES, REPO, CliResult, every_state
from orchestrator.aws.asl import LAMBDA_INVOKE
from orchestrator.aws.build import compile_definition
from orchestrator.aws.state_budget import STATE_BUDGET

CORPUS = Path(__file__).parent / "corpus"
SOURCES = sorted(PIPELINES.glob("*.yaml")) + sorted(CORPUS.glob("*.yaml"))


def _states(definition: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every state, nested ones included."""
    for name, state in definition["States"].items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from _states(branch)
        if "ItemProcessor" in state:
            yield from _states(state["ItemProcessor"])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("asl")
    written = {}
    for source in SOURCES:
        target = folder / f"{source.parent.name}__{source.stem}.asl.json"
        target.write_text(json.dumps(compile_definition(source), indent=2), encoding="utf-8")
        written[source.stem] = target
    return written


def _tool(name: str, relative: str) -> str | None:
    local = REPO / relative
    if local.exists():
        return str(local)
    return shutil.which(name)


def test_statelint_accepts_every_definition(compiled: dict[str, Path]) -> None:
    beside_python = Path(sys.executable).parent / "statelint"
    statelint = str(beside_python) if beside_python.exists() else shutil.which("statelint")
    assert statelint, "statelint is a development dependency: pip install -e '.[dev]'"
    for path in compiled.values():
        result = subprocess.run([statelint, str(path)], capture_output=True, text=True, check=False)
        lines = result.stdout.splitlines()  # "N errors:", then one line each
        problems = [line for line in lines[1:] if not STATELINT_OUT_OF_DATE.search(line)]
        assert (result.returncode == 0 and not lines) or (lines and not problems), (
            f"{path.name}: {result.stdout}"
        )


STATELINT_OUT_OF_DATE = re.compile(r'Field "InputType" not allowed in .*\.ItemReader\.ReaderConfig$')
"""statelint (3.1) knows only `MaxItems` in an ItemReader's ReaderConfig, while AWS requires
`InputType` (`JSON` for a JSON array read with `s3:getObject`, as a distributed for_loop's
items are; AWS's own examples write `"InputType": "CSV"`). asl-validator accepts it."""


def test_asl_validator_accepts_every_definition(compiled: dict[str, Path]) -> None:
    validator = _tool("asl-validator", "node_modules/.bin/asl-validator")
    if validator is None:
        if os.environ.get("CI"):
            pytest.fail("asl-validator is missing: .ci/run must run 'npm ci'")
        pytest.skip("asl-validator is not installed (npm ci)")
    arguments = [validator]
    for path in compiled.values():
        arguments += ["--json-path", str(path)]
    result = subprocess.run(arguments, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("is valid") == len(compiled)


def test_compile_command_writes_sorted_json(cli: Any, tmp_path: Path) -> None:
    target = tmp_path / "demo.asl.json"
    result: CliResult = cli("compile", PIPELINES / "demo.yaml", "-o", target)
    assert result.code == 0
    text = target.read_text()
    # demo: `countdown` runs beside everything else, so the machine starts with a parallel step
    assert json.loads(text)["StartAt"] == ".parallel1"
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    printed: CliResult = cli("compile", PIPELINES / "demo.yaml")
    assert printed.stdout == text


def test_leaf_tasks_carry_a_reference_and_only_what_they_read() -> None:
    definition = compile_definition(CORPUS / "leaf_policies.yaml")
    state = every_state(definition)["with_fallback"]
    assert state["Resource"] == LAMBDA_INVOKE
    payload = state["Parameters"]["Payload"]
    # (its timeout of 600 s runs it on a function sized for it: 605 s, issue 12)
    assert state["Parameters"]["FunctionName"] == "${LlmTaskFunction605sArn}"
    assert payload == {
        "pipeline": "leaf_policies",
        "task": "tasks.2",
        "inputs.$": "$.inputs",
        "run.$": "$.run",
        # (it runs in a branch of more than one task: the Parallel's Parameters give the
        # branch the records before it at `$.prior`, its own ones alone in `$.tasks`)
        "outputs": {"plain.$": "$.prior.plain.output"},
        "state_budget": STATE_BUDGET,  # it keeps its output under its share of the state (issue 12)
        # a retried llm_task is told its attempt, to wait out a Retry-After (issue 15)
        "retries.$": "$$.State.RetryCount",
    }
    states = every_state(definition)
    assert "retries.$" not in states["no_retry"]["Parameters"]["Payload"]  # a search never retried
    assert "retries.$" not in states["plain"]["Parameters"]["Payload"]  # a script has no Retry-After
    assert "retries.$" not in states["with_fallback.fallback"]["Parameters"]["Payload"]
    assert state["ResultPath"] == "$.tasks.with_fallback"
    # a script naming what it reads at run time is given every finished task's record
    reader = every_state(definition)["computed_reads"]["Parameters"]["Payload"]
    assert reader["tasks"] and all(
        path.startswith(("$.tasks.", "$.prior.")) for path in reader["tasks"].values()
    )


def test_retry_comes_from_error_handling() -> None:
    states = every_state(compile_definition(CORPUS / "leaf_policies.yaml"))
    # pipeline defaults: 2 retries, 3 s, rate 1.5; errors that cannot change are never retried
    plain = states["plain"]["Retry"]
    assert plain[1] == {"ErrorEquals": plain[1]["ErrorEquals"], "MaxAttempts": 0}
    assert "TemplateError" in plain[1]["ErrorEquals"]
    assert plain[2] == {
        "ErrorEquals": ["States.ALL"],
        "IntervalSeconds": 3,
        "MaxAttempts": 2,
        "BackoffRate": 1.5,
    }
    assert states["plain"]["TimeoutSeconds"] == 30 + 5  # the function's own limit fires first
    assert [r["ErrorEquals"] for r in states["no_retry"]["Retry"]] == [plain[0]["ErrorEquals"]]
    assert states["with_fallback"]["Retry"][2]["MaxAttempts"] == 5
    assert states["with_fallback"]["Retry"][2]["BackoffRate"] == 2.0


def test_catch_routes_to_fallback_skip_degraded_and_abort() -> None:
    definition = compile_definition(CORPUS / "leaf_policies.yaml")
    states = every_state(definition)
    assert definition["TimeoutSeconds"] == 600
    # fallback, then abort with the original error
    assert states["with_fallback"]["Catch"] == [
        {
            "ErrorEquals": ["States.ALL"],
            "ResultPath": "$.errors.with_fallback",
            "Next": "with_fallback.fallback",
        }
    ]
    fallback = states["with_fallback.fallback"]
    assert fallback["Parameters"]["Payload"]["task"] == "tasks.2.error_handling.fallback"
    assert fallback["ResultSelector"]["status"] == "fallback"
    assert states["with_fallback.abort"] == {
        "Type": "Fail",
        "ErrorPath": "$.errors.with_fallback.Error",
        "CausePath": "$.errors.with_fallback.Cause",
    }
    # the pipeline's default on_failure is abort: no Catch at all, the task's own error ends the run
    assert "Catch" not in states["plain"]
    # skip with a literal, skip with a path, degraded with a template (rendered by the dispatch function)
    assert states["skip_literal.failed"]["Parameters"] == {
        "status": "skipped",
        "error.$": "$.errors.skip_literal",
        "output": {"mode": "minimal"},
    }
    assert states["skip_path.failed"]["Parameters"]["output.$"] == "$.tasks.with_fallback.output"
    # a degraded task's state has its own role: entering it degrades the run (execution.py)
    degraded = states["degraded_template.degraded"]
    assert degraded["Parameters"]["FunctionName"] == "${DispatchFunctionArn}"
    assert degraded["ResultSelector"]["status"] == "failed"


def test_native_conditions_skip_without_a_lambda_call() -> None:
    states = every_state(compile_definition(CORPUS / "conditions.yaml"))
    choice = states["compare_string.if"]
    assert choice["Type"] == "Choice"
    assert choice["Choices"][0]["And"][2] == {"Variable": "$.inputs.mode", "StringEquals": "fast"}
    assert choice["Default"] == "compare_string.skip"
    skip = states["compare_string.skip"]
    assert skip["Type"] == "Pass" and skip["ResultPath"] == "$.tasks.compare_string"
    assert skip["Result"] == {"status": "skipped", "output": None}
    assert "defined.if" in states and "group_native.if" in states
    # a literal false condition leaves only the skip
    assert "literal_false" not in states and "literal_false.skip" in states
    # a bare path decides scalars natively and leaves objects and arrays to the dispatch function
    truthy = states["truthy_leaf.if"]
    assert [choice["Next"] for choice in truthy["Choices"]] == ["truthy_leaf.condition", "truthy_leaf"]
    assert truthy["Default"] == "truthy_leaf.skip"
    assert "condition" not in states["truthy_leaf"]["Parameters"]["Payload"]
    # a filter cannot be a Choice rule: the dispatch function evaluates it, for leaves and containers
    assert "filtered_leaf.if" not in states
    assert states["filtered_leaf.condition"]["Parameters"]["Payload"]["action"] == "condition"
    assert states["loop_filtered.condition"]["Parameters"]["Payload"]["action"] == "condition"


def test_loops_compile_to_map_and_a_choice_back_edge() -> None:
    states = every_state(compile_definition(CORPUS / "loops.yaml"))
    # even an array input's items come from the dispatch function, which counts them and gives
    # the iterations' run, whose inline limit is divided by their number (issue 12)
    assert states["over_input"]["Parameters"]["Payload"]["action"] == "items"
    over_input = states["over_input.run"]
    assert over_input["Type"] == "Map"
    assert over_input["ItemsPath"] == "$.items.over_input.value"
    assert over_input["ItemSelector"]["run.$"] == "$.items.over_input.run"
    assert over_input["MaxConcurrency"] == 5
    assert over_input["ItemSelector"]["loop"]["item_variable"] == "number"
    inner = dict(_states(over_input["ItemProcessor"]))
    # a literal item list is put in place first; the loop has no error handling of its own, so
    # its states run in the body, with no one-branch Parallel around them: the Map, its
    # attempt, has the task's name
    assert inner["over_input/inner_loop.items"]["Next"] == "over_input/inner_loop"
    assert inner["over_input/inner_loop"]["Type"] == "Map"
    assert inner["over_input/inner_loop"]["ResultPath"] == "$.tasks.inner_loop"
    # (the dispatch call giving the items is the attempt here)
    assert states["over_filter"]["Parameters"]["Payload"]["action"] == "items"
    assert states["over_filter"]["Next"] == "over_filter.route"
    s3 = states["over_s3"]
    assert s3["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert s3["ItemReader"]["Parameters"] == {"Bucket": "my-bucket", "Key": "items/list.json"}
    loop = states["improve"]["Branches"][0]["States"]
    # its condition reads only loop_state: the first test is known when compiling, so the
    # Parallel's Parameters give the branch its first loop state and no state starts the loop
    first = {"index": 0, "state": {}, "continue": True}
    assert states["improve"]["Parameters"]["loops"] == {"improve": first}
    assert states["improve"]["Branches"][0]["StartAt"] == "improve/step"
    assert "improve/.start" not in loop
    assert loop["improve/.check"]["Choices"][0]["Next"] == "improve/step"
    # the body's one task takes the loop's step in its own call (no dispatch call for it), and
    # the state machine goes straight back to the check
    assert loop["improve/step"]["Next"] == "improve/.check"
    assert loop["improve/step"]["ResultPath"] == "$.loops.improve"
    assert loop["improve/step"]["Parameters"]["Payload"]["advance"]["task"] == "tasks.3"
    assert states["improve"]["Catch"][0]["Next"] == "improve.failed"


def test_a_loop_body_ending_with_a_leaf_has_it_collect_the_iteration_s_outputs() -> None:
    # GIVEN batch_processing: an iteration runs validate_item, process_item, store_result
    states = every_state(compile_definition(PIPELINES / "batch_processing.yaml"))
    last = states["process_batch/store_result"]
    # THEN the last task's call is given the others' outputs and its state ends the iteration
    # with `{task: output}`, with no Pass after it
    assert last["Parameters"]["Payload"]["collect"] == {
        "validate_item.$": "$.tasks.validate_item.output",
        "process_item.$": "$.tasks.process_item.output",
    }
    assert last["ResultSelector"] == {
        "validate_item.$": "$.Payload.collected.validate_item",
        "process_item.$": "$.Payload.collected.process_item",
        "store_result.$": "$.Payload.output",
    }
    assert last["ResultPath"] == "$" and last["End"] is True
    assert not any(name.endswith("/.result") for name in states)


def test_child_inputs_that_copy_parent_inputs_are_built_by_parameters() -> None:
    # GIVEN pipeline_parallelism: each child's one input is `{{ <a parent input> }}` of its type
    states = every_state(compile_definition(PIPELINES / "pipeline_parallelism.yaml"))
    # THEN no dispatch call builds them: the child's Lambdas are given them by Parameters
    assert not any(name.endswith("/.inputs") for name in states)
    describe = states["launch_parallel_pipelines.data_analysis_pipeline/describe_dataset"]
    assert describe["Parameters"]["Payload"]["inputs"] == {"dataset.$": "$.inputs.dataset_a"}


@pytest.mark.parametrize(
    ("given", "also_declared", "built"),
    [
        ("{value: '{{ number }}'}", "", True),
        ("{value: 3}", "", False),  # a constant the child's condition reads: a Choice cannot test it
        ("{value: '{{ text }}'}", "", False),  # another type: the child would refuse it
        ("{value: '{{ seed }}'}", "", False),  # a task's output: it may be in S3
        ("{value: '{{ number + 1 }}'}", "", False),  # not a plain reference
        ("{value: '{{ number }}'}", "  key: {type: string, sensitive: true}\n", False),  # redacted
    ],
)
def test_child_inputs_are_built_by_parameters_only_when_nothing_is_checked(
    tmp_path: Path, given: str, also_declared: str, built: bool
) -> None:
    (tmp_path / "child.yaml").write_text((CORPUS / "2nd-child.v1.yaml").read_text())
    parent = tmp_path / "parent.yaml"
    parent.write_text(
        "name: parent\ninput_variables:\n  number: {type: integer, default: 2}\n"
        + also_declared
        + "  text: {type: string, default: a}\ntasks:\n"
        "  - {name: seed, type: python_task, script: return 1}\n"
        f"  - {{name: children, type: pipeline_group, depends_on: [seed], pipelines: "
        f"[{{pipeline: child.yaml, inputs: {given}}}]}}\n"
    )
    states = every_state(compile_definition(parent))
    assert any(name.endswith("/.inputs") for name in states) is not built


LOOP_WITH_POLICY = """name: held
tasks:
  - name: words
    type: python_task
    script: return ["a", "b"]
  - name: each
    type: for_loop
    iterate_over: "{{{{ words }}}}"
    depends_on: [words]
{policy}    tasks:
      - name: one
        type: python_task
        script: return 1
      - name: two
        type: python_task
        depends_on: [one]
        script: return 2
"""


@pytest.mark.parametrize(
    "policy",
    [
        "",
        "    error_handling: {on_failure: skip}\n",
        "    error_handling: {retry_count: 2}\n",
        "    error_handling: {on_failure: continue_with_degraded_service, fallback_value: 0}\n",
        "    error_handling:\n      fallback: {type: python_task, script: return 0}\n",
    ],
    ids=["none", "skip", "retry", "degraded", "fallback"],
)
def test_a_loop_s_own_states_are_held_in_a_parallel_only_for_its_error_handling(
    tmp_path: Path, policy: str
) -> None:
    # GIVEN a for_loop whose items come from a dispatch call (two states of its own)
    path = tmp_path / "held.yaml"
    path.write_text(LOOP_WITH_POLICY.format(policy=policy))
    states = compile_definition(path)["States"]
    if not policy:
        # THEN without error handling they run in the body: the Map writes the loop's record
        # (the dispatch call giving the items, the loop's attempt, has the task's name)
        assert states["words"]["Next"] == "each"
        assert states["each"]["Parameters"]["Payload"]["action"] == "items"
        assert states["each"]["Next"] == "each.route"  # (inline or distributed, at run time)
        assert states["each.run"]["ResultPath"] == "$.tasks.each"
        assert "OutputPath" not in states["each.run"]
    else:
        # THEN with it, a one-branch Parallel holds them, its Retry and Catch covering both
        assert states["each"]["Type"] == "Parallel" and "each.route" not in states
        assert states["each"]["Retry"] and (policy.count("retry") or states["each"]["Catch"])


def test_groups_dynamic_groups_and_child_pipelines() -> None:
    states = every_state(compile_definition(CORPUS / "groups.yaml"))
    independent = states["independent"]
    assert independent["Type"] == "Parallel" and len(independent["Branches"]) == 2
    # the group's record is made from its branches' results, with no state of its own
    assert independent["ResultSelector"] == {
        "status": "succeeded",
        "children": {"one.$": "$[0]", "two.$": "$[1]"},
        "output": {"one.$": "$[0].output", "two.$": "$[1].output"},
    }
    assert len(states["chained"]["Branches"]) == 1
    # children it reads come in their groups' records: a child of a skipped group has none
    after = states["after_children"]["Parameters"]["Payload"]
    assert "outputs" not in after
    # (`after_children` runs after `independent` in a branch of a parallel step, whose
    # Parameters give it the records before the step at `$.prior`: `chained`'s, which lies
    # under the key of an earlier step)
    assert after["tasks"] == {
        "independent.$": "$.tasks.independent",
        "chained.$": "$.prior.chained",
    }
    # (no error handling of its own: the group's own states run in the body, the expansion
    # first, as its attempt)
    assert states["generated"]["Parameters"]["Payload"]["action"] == "expand"
    assert states["generated.run"]["MaxConcurrency"] == 2
    # each spec comes with its type's function, and the Map calls it with no state to route it
    assert states["generated"]["Parameters"]["Payload"]["functions"] == {
        "python_task": "${PythonTaskFunctionArn}",
        "llm_task": "${LlmTaskFunctionArn}",
        "web_search_task": "${WebSearchTaskFunctionArn}",
    }
    iteration = states["generated.run"]["ItemProcessor"]
    assert list(iteration["States"]) == [iteration["StartAt"]] == ["generated/.generated"]
    assert iteration["States"]["generated/.generated"]["Parameters"]["FunctionName.$"] == "$.function"
    assert states["generated.run"]["ItemSelector"]["function.$"] == "$$.Map.Item.Value.function"
    in_order = states["generated_in_order.run"]
    assert in_order["MaxConcurrency"] == 1
    children = states["children_parallel"]
    assert children["ResultSelector"]["output"] == {"left_child.$": "$[0]", "right_child.$": "$[1]"}
    left = children["Branches"][0]["States"]
    assert left["children_parallel.left_child/.inputs"]["Parameters"]["Payload"] == {
        "pipeline": "groups",
        "task": "tasks.7",
        "inputs.$": "$.inputs",
        "run.$": "$.run",
        "tasks": {"seed.$": "$.prior.seed", "chained.$": "$.prior.chained"},  # (in a branch)
        "action": "child_inputs",
        "child": 0,
        "state_budget": STATE_BUDGET,
    }
    load = left["children_parallel.left_child/load"]["Parameters"]["Payload"]
    assert load["inputs.$"] == "$.child_inputs.left_child.value"
    sequential = states["children_sequential"]
    assert len(sequential["Branches"]) == 1
    assert sequential["ResultSelector"] == {"status": "succeeded", "output.$": "$[0]"}


def test_no_state_without_work_in_a_plain_chain() -> None:
    """Cost: a chain of tasks with default policies is exactly one state per task."""
    states = every_state(compile_definition(PIPELINES / "shared_state.yaml"))
    assert all(state["Type"] == "Task" for state in states.values())


def test_a_loop_over_the_pipelines_array_input_reads_it_in_place_and_counts_it() -> None:
    # GIVEN batch_processing: a for_loop of leaf tasks over its `items` input
    states = every_state(compile_definition(PIPELINES / "batch_processing.yaml"))
    # (the inline Map, behind a Choice that takes a Distributed Map for too many items: issue 12)
    loop = states["process_batch.run"]
    # THEN no dispatch call gives the items: the Map reads the input, and each iteration is
    # told their number, by which its functions divide their share of the state
    assert loop["Type"] == "Map" and loop["ItemsPath"] == "$.inputs.items"
    assert loop["ItemSelector"]["loop"]["count.$"] == "States.ArrayLength($.inputs.items)"
    assert "process_batch.items" not in states


def test_a_branch_of_more_than_one_task_outputs_its_own_records_with_no_gathering_state() -> None:
    # GIVEN the demo: `prepare` then a parallel step, beside `countdown`
    states = compile_definition(PIPELINES / "demo.yaml")["States"]
    outer = states[".parallel1"]
    branch = outer["Branches"][0]["States"]
    # THEN the Parallel gives its branches the records before it at `$.prior` and an empty
    # `$.tasks` for their own: the branch's last state outputs `$.tasks`, no Pass gathers them
    assert outer["Parameters"]["prior"] == {} and outer["Parameters"]["tasks"] == {}
    assert list(branch) == ["prepare", ".parallel2"]
    inner = branch[".parallel2"]
    assert inner["OutputPath"] == "$.tasks" and inner["End"] is True
    assert inner["Parameters"]["prior"] == {"prepare.$": "$.tasks.prepare"}
    # and each record is picked where it lies in that branch's output
    assert outer["ResultSelector"]["prepare.$"] == "$[0].prepare"
    assert outer["ResultSelector"]["summaries.$"] == "$[0].parallel2.summaries"
    assert inner["ResultSelector"]["summaries.$"] == "$[0].summaries"
    passes = {name for name, state in every_state({"States": states}).items() if state["Type"] == "Pass"}
    assert not {name for name in passes if name.startswith(".parallel")}  # (its other Passes write records)
