"""Differential fuzzing: a drawn pipeline gives the same run document on both engines.

Hypothesis draws a valid pipeline (`strategies.pipelines`), it runs once on the embedded
engine and once as its state machine on the emulated AWS, through the CLI in this process
(as in test_both_engines), each engine with its own ORCHESTRATOR_HOME and working folder, and
the comparable documents (status, tasks, outputs, result, error; times and run ids masked)
and exit statuses must be equal. A failed run may differ in which independent tasks had
already run, as docs/aws.md allows (on AWS, fewer): a task that one engine reports
`cancelled` or `not_run` is left out of that comparison. So is, in any run, a sibling of a
parallel_group child that may fail its group (`GeneratedPipeline.racy`): whether it finished
first depends on timing, on both engines (docs/decisions.md).

Each divergence the engines have (or had) is numbered, has a minimal pipeline in
`divergences/`, run by `test_known_divergence`, and a `Features` flag in the strategies that
turns on the constructs triggering it. While it reproduces, its case is xfail(strict=True)
and its flag is off, so CI fuzzes only what the engines agree on; once it is fixed the case
fails (XPASS): then set `fixed=True` here and the flag's default to True.

CI runs a fixed, derandomized set of examples. `make fuzz EXAMPLES=500` runs more, at random:

- ORCHESTRATOR_FUZZ_EXAMPLES: how many pipelines to draw (default 24: about 40 s on 2 cores);
- ORCHESTRATOR_FUZZ_RANDOM=1: a new random set each run (the falsifying example is printed,
  with `@reproduce_failure` to replay it);
- ORCHESTRATOR_FUZZ_FEATURES: Features flags to turn on (`all`, or names separated by commas).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings

from conformance.strategies import (
    HTTP_400_MARKER,
    MAX_TASKS,
    Features,
    GeneratedPipeline,
    pipelines,
)
from conformance.test_both_engines import comparable
from conftest import CliResult
from fakes.servers import FakeOpenAIServer, FakeResponse, FakeSearchServer, RecordedRequest

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("ORCHESTRATOR_FUZZ_EXAMPLES") or 24)
RANDOM = os.environ.get("ORCHESTRATOR_FUZZ_RANDOM", "") not in {"", "0"}
FEATURES = Features.parse(os.environ.get("ORCHESTRATOR_FUZZ_FEATURES", ""))
# shrinking a failure takes minutes (every step runs both engines): in CI the failing example is
# printed as drawn (it is the same on every run); at random it is shrunk unless told not to
SHRINK = RANDOM and os.environ.get("ORCHESTRATOR_FUZZ_SHRINK", "1") not in {"", "0"}
DIVERGENCES = Path(__file__).parent / "divergences"
NOT_STARTED = {"cancelled", "not_run"}


# -- the fake services: echo, or refuse with HTTP 400 what asks for it ------------------


def _chat_reply(body: Any) -> str | FakeResponse:
    prompt = str((body.get("messages") or [{}])[-1].get("content", "")) if isinstance(body, dict) else ""
    if HTTP_400_MARKER in prompt:
        return FakeResponse(status=400, message="the request was refused")
    return prompt


def _search_results(request: RecordedRequest) -> list[dict[str, Any]] | FakeResponse:
    query = request.query.get("q", [""])[0]
    if HTTP_400_MARKER in query:
        return FakeResponse(status=400, message="bad query")
    return [{"title": f"About {query}", "url": "https://example.com/1", "snippet": f"{query}."}]


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with FakeOpenAIServer(reply=_chat_reply) as llm, FakeSearchServer(results=_search_results) as search:
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("ORCHESTRATOR_SEARCH_URL", search.url)
        yield


# -- running and comparing ---------------------------------------------------------------


@dataclass
class Runs:
    local: CliResult
    remote: CliResult


def validate(cli: Callable[..., CliResult], files: list[Path], allowed_warnings: frozenset[str]) -> None:
    """The files validate; the only warnings are about names the pipeline leaves missing on purpose."""
    result = cli("validate", *files)
    text = result.stdout + result.stderr
    assert result.code == 0, f"the fuzzer made an invalid pipeline:\n{text}"
    warned = set(re.findall(r"warning: '(\w+)' is not a declared input or a task", text))
    assert warned <= allowed_warnings, f"unexpected warnings:\n{text}"
    assert text.count("warning") == len(re.findall(r"warning: '\w+' is not a declared", text)), text


def endless_loops(states: dict[str, Any], where: str = "") -> list[str]:
    """Cycles of `Next`s through no Choice state (a run entering one never ends), in every
    branch and Map too; each as `state -> state -> ...`."""
    found: list[str] = []
    nexts: dict[str, str] = {}
    for name, state in states.items():
        for branch in state.get("Branches", []):
            found += endless_loops(branch["States"], f"{where}{name} > ")
        if "ItemProcessor" in state:
            found += endless_loops(state["ItemProcessor"]["States"], f"{where}{name} > ")
        if state.get("Type") != "Choice" and state.get("Next") in states:
            nexts[name] = state["Next"]
    for start in sorted(nexts):
        cycle = [start]
        while nexts.get(cycle[-1]) in nexts and nexts[cycle[-1]] not in cycle:
            cycle.append(nexts[cycle[-1]])
        if nexts.get(cycle[-1]) == start and start == min(cycle):
            found.append(where + " -> ".join([*cycle, start]))
    return found


def assert_ends(path: Path) -> None:
    """The compiled state machine can end (the emulator would run an endless loop forever)."""
    from orchestrator.aws.build import compile_definition

    loops = endless_loops(compile_definition(path)["States"])
    assert not loops, "the compiled state machine loops forever:\n" + "\n".join(loops)


def run_both(
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
    path: Path,
    folder: Path,
    inputs: dict[str, Any],
) -> Runs:
    """`orchestrator run PATH --json` on each engine, each with its own state folder and cwd."""
    arguments: list[Any] = ["run", path, "--json"]
    if inputs:
        inputs_file = folder / "inputs.json"
        inputs_file.write_text(json.dumps(inputs), encoding="utf-8")
        arguments += ["--inputs-file", inputs_file]
    results: dict[str, CliResult] = {}
    assert_ends(path)
    for engine, extra in (("local", []), ("aws", ["--engine", "stepfunctions"])):
        (folder / engine).mkdir()
        monkeypatch.setenv("ORCHESTRATOR_HOME", str(folder / engine / ".orchestrator"))
        monkeypatch.chdir(folder / engine)
        results[engine] = cli(*arguments, *extra)
        assert results[engine].stdout, f"{engine}: no run document\n{results[engine].stderr[-3000:]}"
    return Runs(results["local"], results["aws"])


def agreeing_views(
    local: dict[str, Any], remote: dict[str, Any], racy: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What both documents must agree on (see the module's docstring)."""
    views = comparable(local), comparable(remote)
    failed = views[0]["status"] == views[1]["status"] == "failed"
    for name in set(views[0]["tasks"]) | set(views[1]["tasks"]):
        statuses = {view["tasks"].get(name, {}).get("status") for view in views}
        if (failed or name in racy) and len(statuses) > 1 and statuses & NOT_STARTED:
            for view in views:
                view["tasks"].pop(name, None)
                view["outputs"].pop(name, None)
    return views


def differences(left: Any, right: Any, path: str = "$") -> list[str]:
    """Where two JSON values differ, as short `path: left != right` lines."""
    if isinstance(left, dict) and isinstance(right, dict):
        found: list[str] = []
        for key in [*left, *(key for key in right if key not in left)]:
            if key not in left or key not in right:
                found.append(f"{path}.{key}: only in {'aws' if key not in left else 'local'}")
            else:
                found += differences(left[key], right[key], f"{path}.{key}")
        return found
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        return [
            line
            for index, pair in enumerate(zip(left, right, strict=True))
            for line in differences(*pair, f"{path}[{index}]")
        ]
    if left == right:
        return []
    return [f"{path}: local {_short(left)} != aws {_short(right)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 300 else text[:150] + f"...({len(text)} chars)..." + text[-100:]


def assert_same_meaning(runs: Runs, racy: frozenset[str] = frozenset()) -> None:
    local, remote = agreeing_views(runs.local.document(), runs.remote.document(), racy)
    found = differences(local, remote)
    if runs.local.code != runs.remote.code:
        found.append(f"exit status: local {runs.local.code} != aws {runs.remote.code}")
    assert not found, "the engines disagree:\n" + "\n".join(found[:20])


# -- the fuzzer ------------------------------------------------------------------------------

SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=not RANDOM,
    database=None,
    deadline=None,
    print_blob=RANDOM,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] if SHRINK else [])],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@SETTINGS
@given(generated=pipelines(FEATURES))
def test_both_engines_agree_on_drawn_pipelines(
    generated: GeneratedPipeline,
    cli: Callable[..., CliResult],
    services: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A drawn pipeline gives the same run document, and exit status, on both engines."""
    note(generated.describe())
    note(f"# Features flags it uses: {', '.join(sorted(generated.flags)) or 'none'}")
    for use in sorted(generated.uses):
        event(use)
    folder = Path(tempfile.mkdtemp(dir=tmp_path, prefix="example-"))
    # GIVEN a drawn pipeline, which validates
    path = generated.write(folder)
    validate(
        cli, [path, *(folder / f"{child}.yaml" for child in generated.children)], generated.expected_warnings
    )
    # WHEN it runs on both engines
    runs = run_both(cli, monkeypatch, path, folder, generated.inputs)
    note(f"local: {runs.local.stdout[:4000]}\naws: {runs.remote.stdout[:4000]}")
    # THEN the run documents mean the same
    assert_same_meaning(runs, generated.racy)


@settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(generated=pipelines(Features.everything()))
def test_every_drawn_pipeline_validates(
    generated: GeneratedPipeline, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """The strategies' own check, every feature on: a pipeline `validate` refuses, or a warning
    nobody meant, is a fuzzer bug (not a divergence); so is a pipeline over the task budget."""
    note(generated.describe())
    folder = Path(tempfile.mkdtemp(dir=tmp_path, prefix="drawn-"))
    path = generated.write(folder)
    validate(
        cli, [path, *(folder / f"{child}.yaml" for child in generated.children)], generated.expected_warnings
    )
    assert 1 <= generated.task_count() <= MAX_TASKS, generated.describe()


# -- the known divergences ---------------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    file: str
    reason: str  # how the engines disagree (or disagreed)
    fixed: bool = False  # they agree now: a regression test; otherwise xfail(strict=True)
    children: tuple[str, ...] = ()  # child pipeline files it needs beside it
    # AWS cannot do it: compiling refuses the file with this message, located (and it runs locally)
    refused_on_aws: str | None = None

    @property
    def path(self) -> Path:
        return DIVERGENCES / self.file


KNOWN_DIVERGENCES = [
    # the nine known before the fuzzer: all reproduced at 85d8474 but (5), and are fixed since
    Divergence(
        "1_group_child_computed_reads.yaml",
        "(1) get_task_output(f'step_{i}') of parallel_group children: the values locally, None on AWS",
        fixed=True,
    ),
    Divergence(
        "2_computed_reads_without_depends_on.yaml",
        "(2) get_task_output with a computed name and no depends_on: the value locally, None on AWS",
        fixed=True,
    ),
    Divergence(
        "3_http_400_retries.yaml",
        "(3) an HTTP 400 (LLMRequestError, SearchRequestError): attempts 1 locally, retried on AWS (2)",
        fixed=True,
    ),
    Divergence(
        "4_for_loop_over_mapping.yaml",
        "(4) a for_loop over a mapping iterates its pairs locally; on AWS the Map state fails the run "
        "(States.QueryEvaluationError)",
        fixed=True,
    ),
    Divergence(
        "5_while_loop_state_names.yaml",
        "(5) tasks named check/start/advance/done in a while_loop collided with the compiler's states "
        "(fixed by 85d8474 before the fuzzer ran: the loop's states are .start/.check/...)",
        fixed=True,
    ),
    Divergence(
        "6_unrepresentable_placeholder.yaml",
        "(6) a script placeholder that is no Python literal ({{ range(3) }}) ended the whole local run "
        "(exit 1, no run document); on AWS it is the task's TemplateError",
        fixed=True,
    ),
    Divergence(
        "7_fallback_value_missing_key.yaml",
        "(7) a fallback_value naming a missing key: null locally; on AWS its JSONPath failed the run",
        fixed=True,
    ),
    Divergence(
        "8_sensitive_input_condition.yaml",
        "(8) a condition on a sensitive input matched locally, never on AWS (it saw the sealed value)",
        fixed=True,
    ),
    Divergence(
        "9_secret_bearing_output_downstream.yaml",
        "(9) a task reading an output that holds a sensitive input saw it in clear locally (len 14), "
        "*** on AWS (len 7)",
        fixed=True,
    ),
    # found by the fuzzer
    Divergence(
        "10_generated_task_error_handling.yaml",
        "(10) a failing generated task follows its own (or the pipeline's) error_handling locally; "
        "on AWS generated tasks had no Retry/Catch: the failure failed the dynamic_task_group "
        "(fixed: the task function carries a generated task's whole policy with runtime.task)",
        fixed=True,
    ),
    Divergence(
        "11_skipped_group_child_reads.yaml",
        "(11) a child of a skipped parallel_group is undefined locally (a condition reads it as "
        "false); on AWS a read of it (condition, placeholder, depends_on) is a JSONPath "
        "$.tasks.<group>.children.<child> that is missing: States.Runtime fails the run",
        fixed=True,
    ),
    Divergence(
        "12_long_state_names.yaml",
        "(12) a state name over 80 characters (long task name, long group child, long name + role): "
        "the compiler shortens it with a hash, and the AWS document looks tasks up by the full name: "
        "attempts 0, and a run error naming '<first 71 characters>~<hash>'",
        fixed=True,
    ),
    Divergence(
        "13_hidden_degraded_tasks.yaml",
        "(13) a task failing with continue_with_degraded_service in a loop body or a child pipeline "
        "makes the run degraded locally; on AWS it ended succeeded (only visible tasks counted; "
        "fixed: such a failure goes through a `.degraded` state, which the document looks for)",
        children=("child_of_13.yaml",),
        fixed=True,
    ),
    Divergence(
        "14_outputs_render_error.yaml",
        "(14) an outputs section that cannot be rendered: error.task null and 'outputs: ' before the "
        "message locally; task '' and no prefix on AWS (fixed: runtime.pipelines.render_outputs "
        "gives the message on both, and the document names no task for the pipeline's own states)",
        fixed=True,
    ),
    Divergence(
        "15_condition_type_error.yaml",
        "(15) a condition ordering a value of another type (null > 4) is a TemplateError locally "
        "(on_failure applies: the run fails); on AWS the Choice rule does not match: skipped, no error",
        fixed=True,
    ),
    Divergence(
        "16_condition_error_attempts.yaml",
        "(16) a condition that cannot be evaluated: attempts 0 locally; on AWS the leaf's Lambda "
        "evaluates it and counts as an attempt (attempts 1)",
        fixed=True,
    ),
    Divergence(
        "17_containers_in_parallel_group.yaml",
        "(17) a loop or group as a child of a parallel_group: the compiled child's '.result' Pass "
        "state has Next = itself: a nested group never ends on AWS, a for_loop child fails the run",
        fixed=True,
    ),
    Divergence(
        "18_failed_child_pipeline.yaml",
        "(18) a failing child pipeline fails its pipeline_group with ChildPipelineFailed naming the "
        "child's task locally; on AWS with the child task's own error type and message (fixed: each "
        "top-level state of a child that can fail goes to a dispatch call giving the group's error, "
        "runtime.pipelines.child_failed)",
        children=("child_of_18.yaml",),
        fixed=True,
    ),
    Divergence(
        "19_container_retries.yaml",
        "(19) a loop or group retried by its retry_count: attempts 1 + retries locally, 1 on AWS",
        fixed=True,
    ),
    Divergence(
        "20_aborting_group_child.yaml",
        "(20) a parallel_group child failing with abort_pipeline: listed failed with its error "
        "locally; on AWS every child of the failed group is not_run",
        fixed=True,
    ),
    Divergence(
        "21_child_id_starting_with_digit.yaml",
        "(21) a child pipeline whose id starts with a digit: its JSONPaths ($.child_inputs.21_child) "
        "are invalid on AWS, and the pipeline_group fails with States.Runtime",
        fixed=True,
        children=("21_child.yaml",),
    ),
    # (22) is not used: the shortened name in a run's error, found apart, is (12)
    Divergence(
        "23_big_output_in_failed_run.yaml",
        "(23) in a failed run, an output offloaded to S3 (over 200 KB) is its {'$payload': 's3://...'} "
        "pointer in the AWS document, its value locally (fixed: a failed execution's last known "
        "records are read back from S3 too)",
        fixed=True,
    ),
    Divergence(
        "24_big_rendered_values.yaml",
        "(24) a fallback_value or outputs section rendered over 256 KB is not offloaded on AWS: "
        "States.DataLimitExceeded fails the run; locally it runs (fixed: the dispatch function "
        "offloads what it renders, as a task function offloads an output)",
        fixed=True,
    ),
    Divergence(
        "25_mapping_order_in_text.yaml",
        "(25) a for_loop iteration's (or parallel_group's) mapping listed the tasks in the order they "
        "finished locally, in file order on AWS: rendered as text, the documents differed "
        "(fixed: file order on both)",
        fixed=True,
    ),
    Divergence(
        "26_state_size_limit.yaml",
        "(26) outputs each under the 200 KB offload threshold stay in the execution state and add up "
        "past 256 KB: States.DataLimitExceeded fails the run on AWS; locally it succeeds (fixed: "
        "every value goes to S3 above its share of a state budget, loop iterations included)",
        fixed=True,
    ),
    Divergence(
        "27_method_attributes.yaml",
        "(27) a condition on an attribute that is a Python method of the value (text.count, "
        "mapping.items): defined and truthy locally; the AWS Choice rule finds no such JSON member",
        fixed=True,
    ),
    # found by hand (the fuzzer draws no timeouts: its scripts never sleep, so neither has a flag)
    Divergence(
        "28_container_timeout.yaml",
        "(28) a for_loop's own timeout stops it locally (TaskTimeout); on AWS a Map or Parallel "
        "state has no TimeoutSeconds: the loop ran to its end and succeeded (fixed: compiling "
        "refuses a loop's or group's own timeout, at its line)",
        fixed=True,
        refused_on_aws="task 'each': on AWS a for_loop's own timeout cannot stop it",
    ),
    Divergence(
        "29_pipeline_timeout.yaml",
        "(29) the pipeline's timeout: PipelineTimeout and every top-level task cancelled locally; "
        "on AWS 'ExecutionTimed_Out' / 'timed_out' (fixed: a TIMED_OUT execution's document "
        "gives the engine's error and statuses)",
        fixed=True,
    ),
    # found by the fuzzer again
    Divergence(
        "30_negative_integer_literal.yaml",
        "(30) a fallback_value literal -1: the int locally, the float -1.0 on AWS (moto reads a "
        "negative number in Parameters as a float; fixed: the dispatch function renders it)",
        fixed=True,
    ),
    Divergence(
        "31_nested_loop_variables.yaml",
        "(31) an outer loop's variable in a nested for_loop's or while_loop's body: the value "
        "locally, undefined on AWS (fixed: an iteration is given the loops around it)",
        fixed=True,
    ),
]


def _case(divergence: Divergence) -> Any:
    marks = [] if divergence.fixed else [pytest.mark.xfail(strict=True, reason=divergence.reason)]
    return pytest.param(divergence, marks=marks, id=divergence.path.stem)


@pytest.mark.parametrize("divergence", [_case(divergence) for divergence in KNOWN_DIVERGENCES])
def test_known_divergence(
    divergence: Divergence,
    cli: Callable[..., CliResult],
    services: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The minimal pipeline of a divergence gives the same document on both engines (xfail,
    strictly, while the divergence is there: fixing it makes this fail until the mark goes)."""
    files = [tmp_path / name for name in (divergence.file, *divergence.children)]
    for file in files:
        file.write_text((DIVERGENCES / file.name).read_text(encoding="utf-8"), encoding="utf-8")
    validate(cli, files, frozenset())
    if divergence.refused_on_aws is not None:
        # AWS cannot mean what the engine means: the file is refused there, at its line
        compiled = cli("compile", files[0])
        assert compiled.code == 1 and divergence.refused_on_aws in compiled.stderr, compiled.stderr
        assert compiled.stderr.startswith(f"{files[0]}:"), compiled.stderr
        assert cli("run", files[0], "--json").code == 0
        return
    assert_same_meaning(run_both(cli, monkeypatch, files[0], tmp_path, {}))


def test_every_divergence_file_is_listed() -> None:
    listed = [name for divergence in KNOWN_DIVERGENCES for name in (divergence.file, *divergence.children)]
    assert sorted(path.name for path in DIVERGENCES.glob("*.yaml")) == sorted(listed)
