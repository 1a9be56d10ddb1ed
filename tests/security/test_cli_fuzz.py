"""Issue 13, the fuzz target: drawn pipeline files, inputs files and `-i` values fed to
`orchestrator validate` and `orchestrator run` must end with an exit code the CLI documents
(0, 1 or 2), never a traceback, and each case within a time limit (a hang fails the case).

CI runs a fixed budget (ORCHESTRATOR_FUZZ_EXAMPLES, default 40 per target, derandomized);
`make fuzz` runs more, at random. Most cases run the CLI in process (fast); a few run it as
a subprocess, as a user does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, CliResult
from orchestrator.stores.factory import close_databases

Cli = Callable[..., CliResult]
EXAMPLES = int(os.environ.get("ORCHESTRATOR_FUZZ_EXAMPLES") or 40)
RANDOM = bool(os.environ.get("ORCHESTRATOR_FUZZ_RANDOM"))
CASE_SECONDS = 30  # a case still running after this has hung
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Hang(Exception):
    """A case ran past CASE_SECONDS."""


@contextmanager
def time_limit() -> Iterator[None]:
    """One case: a hang fails it; afterwards the state folder's database is closed (each run's
    worker threads leave a connection open, and hundreds of cases in one process would run
    out of file descriptors)."""

    def stop(signum: int, frame: Any) -> None:
        raise Hang(f"the case ran past {CASE_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        close_databases()


def _ends_cleanly(result: CliResult) -> None:
    assert result.code in (0, 1, 2), result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]


# -- drawn values ------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["{{ run.id }}", "{{ nope }}", "{{ 'x' * 10 }}", "2024-01-01", ".inf", "{%", "}}"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)
HOSTILE_TEXT = st.sampled_from(
    [
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
        "x: &a [*a]\n",
        "x: &a {<<: *a}\n",
        "x: " + "[" * 2000 + "]" * 2000 + "\n",
        "x: " + "9" * 5000 + "\n",
        "x: !!binary aGVsbG8=\n",
        "x: !!python/object:os.system ls\n",
        'x: "\\ud83d"\n',
        "x: !!set {a, b}\n",
        "? [a, b]\n: c\n",
        "x: 1\nx: 2\n",
        "\t\x00\ufeff",
    ]
)
TOKENS = st.sampled_from(
    [
        "name",
        "tasks",
        "type",
        "python_task",
        "script",
        ":",
        "-",
        " ",
        "\n",
        "  ",
        "[",
        "]",
        "{",
        "}",
        "&a",
        "*a",
        "<<",
        "!!str",
        "'",
        '"',
        "|",
        ">",
        "#",
        ",",
        "?",
        "1",
        "return 1",
        "{{",
        "}}",
    ]
)
RANDOM_TEXT = st.lists(TOKENS, max_size=40).map("".join)

TASK_TYPES = [
    "python_task",
    "llm_task",
    "web_search_task",
    "for_loop",
    "while_loop",
    "parallel_group",
    "dynamic_task_group",
    "pipeline_group",
    "nope",
]
TASK_KEYS = [
    "depends_on",
    "condition",
    "timeout",
    "cache_key",
    "cache_ttl",
    "error_handling",
    "resource_limits",
    "iterate_over",
    "max_iterations",
    "tasks",
    "pipelines",
    "prompt",
    "query",
    "max_results",
    "item_variable",
    "max_concurrency",
    "parallel",
    "retry_count",
]


@st.composite
def pipeline_documents(draw: st.DrawFn) -> Any:
    """A pipeline mapping, mostly well formed, with drawn values in drawn places."""
    task: dict[str, Any] = {
        "name": draw(st.sampled_from(["a", "b", "bad name", "x" * 300])),
        "type": draw(st.sampled_from(TASK_TYPES)),
        "script": "return 1",
    }
    for key in draw(st.lists(st.sampled_from(TASK_KEYS), max_size=3, unique=True)):
        task[key] = draw(VALUES)
    if draw(st.booleans()):
        task["error_handling"] = {
            "retry_count": draw(st.integers(min_value=-1, max_value=3000)),
            "retry_delay": 0,
            "retry_backoff": draw(st.sampled_from(["exponential", "fixed", 1e300, 0.5, -1])),
        }
    if task["type"] == "pipeline_group":
        child = draw(st.sampled_from(["/dev/zero", "/dev/null", ".", "x" * 5000, "missing.yaml", "/"]))
        task["pipelines"] = [{"pipeline": child}]
    document: dict[str, Any] = {"name": draw(st.text(max_size=10)), "tasks": [task]}
    if draw(st.booleans()):
        document["input_variables"] = {
            "v": {
                "type": draw(st.sampled_from(["string", "integer", "array", "object", "nope"])),
                "default": draw(VALUES),
            }
        }
    if draw(st.booleans()):
        document["outputs"] = {"o": draw(VALUES)}
    return document


def _dump(document: Any) -> str:
    try:
        return yaml.safe_dump(document, allow_unicode=True)
    except yaml.YAMLError:
        return str(document)


PIPELINE_TEXTS = st.one_of(
    pipeline_documents().map(_dump),
    st.tuples(pipeline_documents().map(_dump), HOSTILE_TEXT).map(lambda parts: parts[0] + parts[1]),
    RANDOM_TEXT,
    st.text(max_size=200),
)

ECHO = (
    "name: echo\ninput_variables:\n  n: {type: integer, required: false}\n"
    "  s: {type: string, required: false, sensitive: true}\n"
    "tasks:\n  - {name: a, type: python_task, script: 'return {{ given | default(none) }}'}\n"
)


# -- the targets -------------------------------------------------------------------------------


@FUZZ
@given(text=PIPELINE_TEXTS)
def test_drawn_pipeline_files_never_crash_validate_or_run(cli: Cli, tmp_path: Path, text: str) -> None:
    path = tmp_path / "drawn.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with time_limit():
        _ends_cleanly(cli("validate", path))
        _ends_cleanly(cli("run", path, "--json"))


INPUT_TEXTS = st.one_of(
    st.dictionaries(st.sampled_from(["n", "s", "given", "x"]), VALUES, max_size=3).map(_dump),
    HOSTILE_TEXT,
    RANDOM_TEXT,
    st.text(max_size=100),
)
I_VALUES = st.tuples(
    st.sampled_from(["n", "s", "given", "", "a=b"]),
    st.one_of(st.text(max_size=30), HOSTILE_TEXT, RANDOM_TEXT, VALUES.map(str)),
)


@FUZZ
@given(inputs_text=INPUT_TEXTS, assignments=st.lists(I_VALUES, max_size=3))
def test_drawn_inputs_never_crash_run(
    cli: Cli, tmp_path: Path, inputs_text: str, assignments: list[tuple[str, str]]
) -> None:
    pipeline = tmp_path / "echo.yaml"
    pipeline.write_text(ECHO, encoding="utf-8")
    inputs = tmp_path / "inputs.json"
    inputs.write_text(inputs_text, encoding="utf-8", errors="surrogatepass")
    arguments = [part for name, value in assignments for part in ("-i", f"{name}={value}")]
    with time_limit():
        _ends_cleanly(cli("run", pipeline, "--json", "--inputs-file", inputs))
        _ends_cleanly(cli("run", pipeline, "--json", *arguments))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pipeline", "extra"),
    [
        ("name: x\ntasks: &a [*a]\n", []),
        ("name: x\ntasks:\n  - {name: g, type: pipeline_group, pipelines: [{pipeline: /dev/zero}]}\n", []),
        (ECHO, ["-i", "given={1: a, b: c}", "-i", "n=" + "9" * 5000]),
        (ECHO, ["-i", "given=" + "[" * 3000 + "]" * 3000]),
    ],
)
def test_the_installed_command_ends_cleanly(tmp_path: Path, pipeline: str, extra: list[str]) -> None:
    """A few cases through a real process: the same answers as in process."""
    path = tmp_path / "p.yaml"
    path.write_text(pipeline, encoding="utf-8")
    environment = {
        **os.environ,
        "ORCHESTRATOR_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO / "shared"),
    }
    for command in (["validate", str(path)], ["run", str(path), "--json", *extra]):
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", *command],
            capture_output=True,
            text=True,
            timeout=CASE_SECONDS * 2,
            env=environment,
            check=False,
        )
        assert done.returncode in (0, 1, 2), done.stderr
        assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
