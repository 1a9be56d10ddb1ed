"""The planner decides, once, which scripts read task outputs by computed name, and orders them.

`context.get_task_output(NAME)` with NAME anything but a literal name (an f-string, `"a" + x`,
a variable, `%`-formatting) may read any task. The planner marks such a task
(`Node.computed_reads`), makes it wait for every task before it in its body, and the compiler
only reads that mark: the answer, and so the compiled state machine, must not depend on the
Python that plans (an f-string is one STRING token on 3.11 and a group of tokens on 3.12).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import PIPELINES, REPO, every_state
from orchestrator import plan
from orchestrator.aws.asl import compile_pipeline
from orchestrator.plan import Plan, build_plan, dependency_closure
from orchestrator.spec.loading import read_pipeline

# (script, literal names it reads, whether it also reads a computed name)
SCRIPTS = [
    ('return [context.get_task_output(f"chunk_{i}") for i in range(4)]', [], True),
    ("return context.get_task_output(f'chunk_{1}', None)", [], True),
    ('return context.get_task_output(rf"chunk_{1}")', [], True),
    ('return context.get_task_output(f"chunk")', [], True),  # an f-string is never a fixed name
    ('return context.get_task_output("chunk_" + str(1))', [], True),
    ('name = "a"\nreturn context.get_task_output(name)', [], True),
    ('return context.get_task_output("chunk_%d" % 1)', [], True),
    ('return context.get_task_output("chunk_{}".format(1))', [], True),
    ('return context.get_task_output("a" "b")', [], True),
    ('read = context.get_task_output\nreturn read("a")', [], True),
    ('return context.get_task_output("{{ which }}")', [], True),
    ("return context.get_task_output({{ which }})", [], True),
    ('return f"{context.get_task_output(name)}"', [], True),
    ("return f\"{context.get_task_output('a')}\"", [], True),  # judged by its text
    ('x = f"""{\n  context.get_task_output(name)\n}"""\nreturn x', [], True),
    ('return context.get_task_output("a")', ["a"], False),
    ("return context.get_task_output(\"a\", 0) + context.get_task_output('b')", ["a", "b"], False),
    ('return context.get_task_output(r"a")', ["a"], False),
    ('return context.get_task_output( "a" )', ["a"], False),
    ('return context.get_task_output(\n    "a",\n)', ["a"], False),
    ('return [f"{x!r:>{w}}" for x in context.get_task_output("a")]', ["a"], False),
    ('return f"{x}" + context.get_task_output("a")', ["a"], False),
    ('# context.get_task_output(f"chunk_{i}")\nreturn 1', [], False),
    ("return 1  # context.get_task_output(name)", [], False),
    ('return "context.get_task_output(name)"', [], False),
    ("return '''\ncontext.get_task_output(name)\n'''", [], False),
    ('return f"get_task_output_count"', [], True),  # an f-string's text: a false alarm, harmless
    ("return context.get_task_outputs(name)", [], False),
    ("return 1", [], False),
]


@pytest.mark.parametrize(("script", "names", "computed"), SCRIPTS, ids=[repr(s[0])[:50] for s in SCRIPTS])
def test_the_planner_tells_literal_names_from_computed_ones(
    script: str, names: list[str], computed: bool
) -> None:
    assert plan._task_output_reads(script) == (names, computed)


def test_the_quick_scan_never_answers_for_a_computed_name() -> None:
    chooser = random.Random(12)
    fragments = [script for script, _, _ in SCRIPTS]
    for _ in range(3000):
        script = "\n".join(chooser.choice(fragments) for _ in range(chooser.randint(1, 3)))
        quick = plan._plain_task_output_calls(script)
        if quick is not None:
            assert (quick, False) == plan._tokenized_task_output_reads(script), script


def _plan(write_pipeline: Callable[..., Path], text: str) -> Plan:
    return build_plan(read_pipeline(write_pipeline(text)))


def _python(name: str, script: str, indent: int = 2, **keys: str) -> str:
    lines = [f"- name: {name}", "  type: python_task"]
    lines += [f"  {key}: {value}" for key, value in keys.items()]
    lines += ["  script: |", *(f"    {line}" for line in script.splitlines())]
    return textwrap.indent("\n".join(lines), " " * indent)


def test_a_computed_read_waits_for_every_task_before_it_in_its_body(
    write_pipeline: Callable[..., Path],
) -> None:
    text = "name: p\ntasks:\n" + "\n".join(
        [
            _python("first", "return 1"),
            _python("second", "return 2"),
            _python("third", 'return context.get_task_output("first")'),
            _python("reader", 'return [context.get_task_output(f"t{i}") for i in range(3)]'),
            _python("later", "return 3"),
            _python("fixed", 'return context.get_task_output("second")'),
        ]
    )
    body = _plan(write_pipeline, text).body
    assert body.nodes["reader"].computed_reads
    assert dependency_closure(body, "reader") == {"first", "second", "third"}
    # only the edges that matter: `first` is finished through `third`
    assert body.nodes["reader"].dependencies == {"second", "third"}
    assert not body.nodes["later"].dependencies
    assert body.nodes["fixed"].dependencies == {"second"}
    assert not body.nodes["fixed"].computed_reads
    assert body.nodes["third"].reads == frozenset({"first"})


def test_a_task_before_it_that_waits_for_it_is_left_out(write_pipeline: Callable[..., Path]) -> None:
    text = "name: p\ntasks:\n" + "\n".join(
        [
            _python("early", "return 0", depends_on="[after_it]"),
            _python("other", "return 1"),
            _python("reader", "return context.get_task_output(name)"),
            _python("after_it", "return 2", depends_on="[reader]"),
        ]
    )
    body = _plan(write_pipeline, text).body  # no cycle reported
    assert dependency_closure(body, "reader") == {"other"}


def test_a_loop_or_group_holding_a_computed_read_waits_for_the_tasks_before_it(
    write_pipeline: Callable[..., Path],
) -> None:
    body_tasks = "\n".join(
        [
            _python("one", "return 1", indent=6),
            _python("two", "return 2", indent=6),
            _python("both", 'return [context.get_task_output(n) for n in ["one", "two", "base"]]', indent=6),
        ]
    )
    text = (
        "name: p\ntasks:\n"
        + _python("base", "return 0")
        + "\n  - name: loop\n    type: for_loop\n    iterate_over: [1, 2]\n    tasks:\n"
        + body_tasks
        + "\n  - name: group\n    type: parallel_group\n    tasks:\n"
        + body_tasks.replace("one", "g1").replace("two", "g2").replace("both", "g3")
        + "\n"
        + _python("plain_loop_after", "return 1")
    )
    body = _plan(write_pipeline, text).body
    loop = body.nodes["loop"]
    assert loop.computed_reads and loop.dependencies == {"base"}
    assert loop.body is not None and loop.body.nodes["both"].dependencies == {"one", "two"}
    group = body.nodes["group"]
    assert group.computed_reads and dependency_closure(body, "group") == {"base", "loop"}
    assert group.body is not None and group.body.nodes["g3"].dependencies == {"g1", "g2"}
    assert not group.body.nodes["g1"].dependencies  # children without computed reads start together
    assert not body.nodes["plain_loop_after"].dependencies


def test_a_fallback_that_reads_by_computed_name_marks_its_task(write_pipeline: Callable[..., Path]) -> None:
    text = """
        name: p
        tasks:
          - name: a
            type: python_task
            script: |
              return 1
          - name: b
            type: python_task
            script: |
              raise ValueError("no")
            error_handling:
              fallback:
                type: python_task
                script: |
                  return context.get_task_output("".join(["a"]))
    """
    body = _plan(write_pipeline, text).body
    assert body.nodes["b"].computed_reads and body.nodes["b"].dependencies == {"a"}


def test_the_compiler_passes_a_computed_reader_every_task(write_pipeline: Callable[..., Path]) -> None:
    text = "name: p\ntasks:\n" + "\n".join(
        [
            _python("a", "return 1"),
            _python("reader", 'return context.get_task_output(f"{chr(97)}")'),
            _python("fixed", 'return context.get_task_output("a")'),
        ]
    )
    states = every_state(compile_pipeline(_plan(write_pipeline, text)))
    assert states["reader"]["Parameters"]["Payload"]["tasks"] == {"a.$": "$.tasks.a"}
    assert "outputs" not in states["reader"]["Parameters"]["Payload"]
    assert states["fixed"]["Parameters"]["Payload"]["outputs"] == {"a.$": "$.tasks.a.output"}


# -- the same answer whatever Python plans ------------------------------------------------------

VERSIONS = ("3.11", "3.12", "3.13")
# Compiles each file with the CLI, as `orchestrator compile FILE` does, and prints
# {file: the ASL text}; then the planner's answer for each script given on stdin.
DRIVER = """
import contextlib, io, json, sys
from orchestrator import plan
from orchestrator.cli import main
request = json.load(sys.stdin)
compiled = {}
for path in request["files"]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(["compile", path])
        except SystemExit as stop:
            code = stop.code
    compiled[path] = [code, out.getvalue()]
reads = [plan._task_output_reads(script) for script in request["scripts"]]
print(json.dumps({"version": list(sys.version_info[:2]), "compiled": compiled, "reads": reads}))
"""


def _interpreters() -> dict[str, list[str]]:
    """An interpreter per version that can import the project's dependencies: from
    ORCHESTRATOR_TEST_PYTHONS (paths separated by os.pathsep), else `pythonX.Y` on PATH (with
    PYENV_VERSION set to the matching pyenv version when pyenv is there), else none."""
    found: dict[str, list[str]] = {f"{sys.version_info[0]}.{sys.version_info[1]}": [sys.executable]}
    candidates = [
        [path] for path in os.environ.get("ORCHESTRATOR_TEST_PYTHONS", "").split(os.pathsep) if path
    ]
    candidates += [[f"python{version}"] for version in VERSIONS]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        environment = _environment(command[0])
        try:
            probe = subprocess.run(
                [*command, "-c", "import sys, pydantic, jinja2, yaml; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=60,
                env=environment,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = probe.stdout.strip()
        if probe.returncode == 0 and version in VERSIONS:
            found.setdefault(version, command)
    return found


def _environment(command: str) -> dict[str, str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "shared")}
    pyenv = shutil.which("pyenv")
    name = Path(command).name
    if pyenv is not None and name.startswith("python3.") and "PYENV_VERSION" not in os.environ:
        listed = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True, check=False)
        matching = [
            line.strip() for line in listed.stdout.splitlines() if line.strip().startswith(name[6:] + ".")
        ]
        if matching:
            environment["PYENV_VERSION"] = matching[-1]
    return environment


@pytest.mark.slow
def test_the_compiled_state_machines_are_the_same_whatever_python_compiles_them(tmp_path: Path) -> None:
    interpreters = _interpreters()
    missing = [version for version in VERSIONS if version not in interpreters]
    if len(interpreters) < 2:
        pytest.skip(
            f"no second Python with the project's dependencies among {', '.join(VERSIONS)} "
            "(name them in ORCHESTRATOR_TEST_PYTHONS)"
        )
    computed = tmp_path / "computed_names.yaml"
    tasks = [_python("a", "return 1"), _python("b", "return 2")]
    tasks += [_python(f"t{index}", script) for index, (script, _, _) in enumerate(SCRIPTS)]
    computed.write_text(
        "name: computed names\ninput_variables:\n  which: {default: a}\ntasks:\n" + "\n".join(tasks) + "\n",
        encoding="utf-8",
    )
    files = [*sorted(PIPELINES.glob("*.yaml")), *sorted((REPO / "tests" / "aws" / "corpus").glob("*.yaml"))]
    request = json.dumps(
        {"files": [str(path) for path in [*files, computed]], "scripts": [s for s, _, _ in SCRIPTS]}
    )
    answers = {}
    for version, command in sorted(interpreters.items()):
        result = subprocess.run(
            [*command, "-c", DRIVER],
            input=request,
            capture_output=True,
            text=True,
            timeout=300,
            env=_environment(command[0]),
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        answers[version] = json.loads(result.stdout)
        assert answers[version]["version"] == [int(part) for part in version.split(".")]
    first, *others = sorted(answers)
    for version in others:
        for path, (code, text) in answers[first]["compiled"].items():
            assert answers[version]["compiled"][path] == [code, text], f"{path}: {first} and {version} differ"
        assert answers[version]["reads"] == answers[first]["reads"]
    assert answers[first]["compiled"][str(computed)][0] == 0
    assert [tuple(pair) for pair in answers[first]["reads"]] == [(n, c) for _, n, c in SCRIPTS]
    if missing:
        pytest.skip(
            f"compared {', '.join(sorted(answers))}; not found with the dependencies: {', '.join(missing)}"
        )
