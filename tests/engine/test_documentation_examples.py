"""Every ```yaml block of docs/*.md and README.md is an example, and every example works.

A block is classified by its top-level keys:

- `tasks:` -> a pipeline. It is written to `<doc>_<line>.yaml` in a temporary folder (so
  its pipeline id is, for example, `language_120`), must pass `orchestrator validate` with no
  warning (a validate-only example may name a child pipeline file that does not exist), and
  is then run with `orchestrator run --json`: the run must exit 0 and end `succeeded` or
  `degraded`.
- `llm:` or `search:` -> a config file. It must load through `load_settings` (as the file
  named by `ORCHESTRATOR_CONFIG`; the loader refuses unknown keys) and configure what it
  says (default model, endpoint, model routes and prices, search URL).
  A comment above it (`<!-- example: local-llm-config -->`) is a label other tests find it
  by; this test ignores it.
- anything else fails, so no example goes unchecked. Write other snippets as ```text,
  ```json or ```sh.

HTML comments on the lines just above a ```yaml fence (one per line, nothing in between)
change how a pipeline example is checked:

    <!-- example: validate-only -->          validate, do not run (network, an LLM, a web
                                             search, a child pipeline file, Redis)
    <!-- example: inputs {"name": "value"} --> run with these inputs (a JSON object)
    <!-- example: env {"VARIABLE": "value"} --> run with these environment variables
    <!-- example: status failed -->           expect this run status (succeeded, degraded or
                                             failed; failed expects exit status 1)

Required inputs without a default that `inputs` does not give get their first `options`
entry, else an empty value of their type ("", 0, false, [], {}).

A ```json block just below an example, marked `<!-- example: run-document -->` on the line
above its fence, is what the run printed: each key it shows must be in the run document with
an equal value (mappings are compared on the keys shown, lists item by item), the string
"..." matches any value and a string ending in "..." any string that starts with the rest.
It belongs to the closest ```yaml pipeline block above it in the same file, which must run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from orchestrator.settings import ModelPrice, load_settings


class CliResult(Protocol):
    """What the `cli` fixture of conftest.py returns."""

    code: int
    stdout: str
    stderr: str

    def document(self) -> dict[str, Any]: ...


Cli = Callable[..., CliResult]
Write = Callable[..., Path]

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
YAML_LANGUAGES = frozenset({"yaml", "yml"})
RUN_STATUSES = frozenset({"succeeded", "degraded", "failed"})
EMPTY_VALUES: dict[str, Any] = {
    "string": "",
    "integer": 0,
    "float": 0.0,
    "number": 0,
    "boolean": False,
    "array": [],
    "object": {},
}
# Only a validate-only example may name a child pipeline file that is not there.
MISSING_CHILD_WARNING = "does not exist (yet)"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*example:\s*(?P<body>.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    document: str  # path relative to the repository, like docs/language.md
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    directives: list[str]

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"


@dataclass
class Example:
    """A ```yaml block, with the run documents shown below it."""

    block: Block
    expected_documents: list[Block] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.block.id


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with the directives just above it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and not _closes(lines[index], fence):
            line = lines[index]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            index += 1
        index += 1  # past the closing fence
        directives: list[str] = []
        above = start - 1
        while above >= 0 and (found := _DIRECTIVE.match(lines[above])):
            directives.insert(0, found["body"])
            above -= 1
        blocks.append(
            Block(
                document=path.relative_to(REPO).as_posix(),
                line=start + 1,
                language=opening["info"].lower(),
                text="\n".join(body) + "\n",
                directives=directives,
            )
        )
    return blocks


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(fence) and set(stripped) == {fence[0]}


def _is_pipeline_text(text: str) -> bool:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "tasks" in data


def collect_examples() -> tuple[list[Example], list[str]]:
    """Every ```yaml block as an example; and the problems of ```json run-document blocks
    that belong to no example (reported by a test of their own)."""
    examples: list[Example] = []
    orphans: list[str] = []
    for path in DOCUMENTS:
        if not path.is_file():
            continue
        last_pipeline: Example | None = None
        for block in fenced_blocks(path):
            if block.language in YAML_LANGUAGES:
                example = Example(block)
                examples.append(example)
                if _is_pipeline_text(block.text):
                    last_pipeline = example
            elif "run-document" in block.directives:
                if last_pipeline is None or "validate-only" in last_pipeline.block.directives:
                    orphans.append(f"{block.id}: a run document needs a runnable ```yaml pipeline above it")
                else:
                    last_pipeline.expected_documents.append(block)
    return examples, orphans


EXAMPLES, ORPHANS = collect_examples()


# -- directives ----------------------------------------------------------------------------------


@dataclass
class Directives:
    validate_only: bool = False
    inputs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    status: str | None = None


def parse_directives(block: Block) -> Directives:
    parsed = Directives()
    for directive in block.directives:
        word, _, rest = directive.partition(" ")
        rest = rest.strip()
        if word == "validate-only" and not rest:
            parsed.validate_only = True
        elif word == "inputs":
            parsed.inputs = _json_object(block, directive, rest)
        elif word == "env":
            parsed.env = {str(k): str(v) for k, v in _json_object(block, directive, rest).items()}
        elif word == "status" and rest in RUN_STATUSES:
            parsed.status = rest
        else:
            pytest.fail(f"{block.id}: unknown directive '<!-- example: {directive} -->'", pytrace=False)
    return parsed


def _json_object(block: Block, directive: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        pytest.fail(f"{block.id}: '{directive}' needs a JSON object: {error}", pytrace=False)
    if not isinstance(value, dict):
        pytest.fail(f"{block.id}: '{directive}' needs a JSON object", pytrace=False)
    return value


def filled_inputs(pipeline: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given`, plus a stand-in for every required input that has no default."""
    inputs = dict(given)
    for name, spec in (pipeline.get("input_variables") or {}).items():
        spec = spec or {}
        if name in inputs or spec.get("default") is not None or spec.get("required", True) is False:
            continue
        options = spec.get("options")
        inputs[name] = options[0] if options else EMPTY_VALUES[spec.get("type", "string")]
    return inputs


# -- comparing run documents -----------------------------------------------------------------------


def mismatches(expected: Any, actual: Any, where: str = "$") -> list[str]:
    """Where `actual` differs from what `expected` shows (see the module docstring)."""
    if expected == "...":
        return []
    if isinstance(expected, str) and expected.endswith("...") and isinstance(actual, str):
        prefix = expected[:-3]
        return [] if actual.startswith(prefix) else [f"{where}: {actual!r} does not start with {prefix!r}"]
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected a mapping, got {actual!r}"]
        found: list[str] = []
        for key, value in expected.items():
            if key not in actual:
                found.append(f"{where}.{key}: missing")
            else:
                found += mismatches(value, actual[key], f"{where}.{key}")
        return found
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: expected {expected!r}, got {actual!r}"]
        return [
            m
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for m in mismatches(e, a, f"{where}[{i}]")
        ]
    if type(expected) is not type(actual) and not (
        isinstance(expected, int | float) and isinstance(actual, int | float) and not isinstance(actual, bool)
    ):
        return [f"{where}: expected {expected!r}, got {actual!r}"]
    return [] if expected == actual else [f"{where}: expected {expected!r}, got {actual!r}"]


# -- the checks ------------------------------------------------------------------------------------


def check_pipeline(
    example: Example,
    data: dict[str, Any],
    cli: Cli,
    write_pipeline: Write,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    block = example.block
    directives = parse_directives(block)
    stem = re.sub(r"\W", "_", Path(block.document).stem.lower()) + f"_{block.line}"
    path = write_pipeline(block.text, name=stem)

    validated = cli("validate", path)
    assert validated.code == 0, f"{block.id} does not validate:\n{validated.stderr}"
    warnings = [
        line
        for line in validated.stderr.splitlines()
        if "warning:" in line and not (directives.validate_only and MISSING_CHILD_WARNING in line)
    ]
    assert not warnings, f"{block.id} validates with warnings:\n" + "\n".join(warnings)
    if directives.validate_only:
        return

    for name, value in directives.env.items():
        monkeypatch.setenv(name, value)
    arguments: list[str | Path] = ["run", path, "--json"]
    inputs = filled_inputs(data, directives.inputs)
    if inputs:
        inputs_file = tmp_path / f"{stem}.inputs.json"
        inputs_file.write_text(json.dumps(inputs), encoding="utf-8")
        arguments += ["--inputs-file", inputs_file]
    result = cli(*arguments)
    assert result.stdout.strip(), f"{block.id} printed no run document (exit {result.code}):\n{result.stderr}"
    document = result.document()
    if directives.status is None:
        assert document["status"] in {"succeeded", "degraded"}, (
            f"{block.id} ended {document['status']}: {document['error']}"
        )
    else:
        assert document["status"] == directives.status, (
            f"{block.id} ended {document['status']}, not {directives.status}: {document['error']}"
        )
    expected_code = 1 if document["status"] == "failed" else 0
    assert result.code == expected_code, f"{block.id}: exit status {result.code}\n{result.stderr}"

    for shown in example.expected_documents:
        try:
            expected = json.loads(shown.text)
        except json.JSONDecodeError as error:
            pytest.fail(f"{shown.id}: the run document shown is not valid JSON: {error}", pytrace=False)
        problems = mismatches(expected, document)
        assert not problems, (
            f"{shown.id} does not match the run of {block.id}:\n"
            + "\n".join(problems)
            + f"\nthe run document was:\n{json.dumps(document, indent=2)}"
        )


def check_config(
    example: Example, data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = example.block  # its directives, if any, are labels other tests find it by
    path = tmp_path / "config.yaml"
    path.write_text(block.text, encoding="utf-8")
    for variable in ("ORCHESTRATOR_DEFAULT_MODEL", "ORCHESTRATOR_SEARCH_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(path))

    settings = load_settings()

    llm = data.get("llm") or {}
    search = data.get("search") or {}
    assert settings.default_model == llm.get("default_model", "gpt-4o-mini")
    assert settings.openai_base_url == llm.get("base_url")
    assert set(settings.model_routes) == {str(name) for name in llm.get("models") or {}}
    for name, route in (llm.get("models") or {}).items():
        assert settings.model_routes[str(name)].base_url == (route or {}).get("base_url")
        price = (route or {}).get("price")
        assert settings.model_routes[str(name)].price == (ModelPrice(**price) if price else None)
    assert settings.search_url == search.get("url")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.id)
def test_documentation_example(
    example: Example,
    cli: Cli,
    write_pipeline: Write,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ```yaml block is a pipeline that validates and runs, or a config file that loads."""
    block = example.block
    try:
        data = yaml.safe_load(block.text)
    except yaml.YAMLError as error:
        pytest.fail(f"{block.id}: not valid YAML: {error}", pytrace=False)
    if isinstance(data, dict) and "tasks" in data:
        check_pipeline(example, data, cli, write_pipeline, tmp_path, monkeypatch)
    elif isinstance(data, dict) and {"llm", "search"} & set(data):
        check_config(example, data, tmp_path, monkeypatch)
    else:
        pytest.fail(
            f"{block.id}: a ```yaml block must be a pipeline (with 'tasks:') or a config file "
            "(with 'llm:' or 'search:'); use ```text for anything else",
            pytrace=False,
        )


def test_every_run_document_belongs_to_a_runnable_example() -> None:
    """A ```json block marked `run-document` follows the pipeline example it shows the run of."""
    assert not ORPHANS, "\n".join(ORPHANS)


def test_the_examples_are_found() -> None:
    """The collector finds the README's examples and the language reference's (a guard against
    a parser change that silently checks nothing)."""
    documents = {example.block.document for example in EXAMPLES}
    assert {"README.md", "docs/language.md", "docs/context.md"} <= documents
    assert any(example.expected_documents for example in EXAMPLES)
