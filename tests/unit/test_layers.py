"""The package's layers stay in order (docs/architecture.md): checked on the source, statically.

- `spec` (the language) and `plan` (validation, dependencies) import no runtime, engine or
  driver: a pipeline means something before anything runs it.
- `spec`, `plan` and the compilers do no file I/O: reading a pipeline with its child
  pipelines is `spec.loading.read_pipeline`, and they work on what it gives them.
- Configuration (environment variables) is read in `settings.py` only.
- The Lambda handlers never import the moto emulator (or moto): it is not in the layer.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "orchestrator"
FUNCTIONS = PACKAGE.parents[1] / "functions"

LANGUAGE = [*sorted((PACKAGE / "spec").glob("*.py")), PACKAGE / "plan.py"]
COMPILERS = [PACKAGE / "aws" / "asl.py", PACKAGE / "aws" / "conditions.py", PACKAGE / "aws" / "sam.py"]
COMPILERS += [PACKAGE / "aws" / "functions.py"]
COMPILERS += [PACKAGE / "aws" / "history.py", PACKAGE / "graph.py"]
COMPILERS += [PACKAGE / f"graph_{part}.py" for part in ("layout", "svg", "png")]

# what each layer may import from the package (prefixes of module names)
LANGUAGE_IMPORTS = ("orchestrator.errors", "orchestrator.spec", "orchestrator.template", "orchestrator.plan")
COMPILER_IMPORTS = (
    *LANGUAGE_IMPORTS,
    "orchestrator.error_types",
    "orchestrator.runtime.policy",
    # a while_loop's first step, decided when compiling where it can be (`asl.first_iteration_runs`):
    # by the runtime's own step, never a second meaning
    "orchestrator.runtime.loops",
    "orchestrator.runtime.scope",
    "orchestrator.aws.",
    "orchestrator.graph_",  # the SVG and PNG pictures share one layout
)

FILE_CALLS = frozenset(
    {"open", "read_text", "read_bytes", "write_text", "write_bytes", "is_file", "exists", "mkdir", "iterdir"}
    | {"read_pipeline"}
)
READS_FILES = {
    PACKAGE / "spec" / "loading.py": {"_read_file", "read_pipeline"},
    PACKAGE / "spec" / "files.py": {"read_text"},
}
"""The functions of these layers that may touch files: the one reader of pipeline files, and
the one reader of a user's files (with its limits), which it calls."""

ENVIRONMENT_READERS = {
    PACKAGE / "settings.py": "configuration: every variable, in one place",
    PACKAGE / "aws" / "emulator.py": "sets the emulated Lambda functions' environment, as AWS does",
    PACKAGE / "runtime" / "sandbox.py": "passes the environment on to a sandboxed task's process",
    PACKAGE / "stores" / "secrets_local.py": "the `env` secrets provider: secrets, not configuration",
}


HANDLER_MODULES = {
    "api": "orchestrator.aws.triggers",
    "schedule_trigger": "orchestrator.aws.triggers",
    "upload_trigger": "orchestrator.aws.triggers",
    "dispatch": "orchestrator.aws.dispatch",
    "python_task": "orchestrator.aws.task_function",
    "llm_task": "orchestrator.aws.task_function",
    "web_search_task": "orchestrator.aws.task_function",
}


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "orchestrator":
            yield from ((node.lineno, f"orchestrator.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module


def _package_imports(path: Path) -> list[tuple[int, str]]:
    return [(line, name) for line, name in _imports(path) if name.startswith("orchestrator")]


@pytest.mark.parametrize("path", LANGUAGE, ids=lambda p: p.name)
def test_the_language_layer_imports_no_runtime(path: Path) -> None:
    wrong = [(line, name) for line, name in _package_imports(path) if not name.startswith(LANGUAGE_IMPORTS)]
    assert wrong == [], f"{path.name} imports beyond spec/plan/template/errors: {wrong}"


@pytest.mark.parametrize("path", COMPILERS, ids=lambda p: p.name)
def test_compilers_import_no_engine_or_runtime_execution(path: Path) -> None:
    imports = _package_imports(path)
    wrong = [(line, name) for line, name in imports if not name.startswith(COMPILER_IMPORTS)]
    wrong += [(line, name) for line, name in imports if name.endswith(("emulator", "engine.local"))]
    assert wrong == [], f"{path.name} imports what a compiler must not: {wrong}"


def _file_calls(path: Path) -> list[tuple[int, str, str]]:
    """(line, call, enclosing function) of every call that touches a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.Call):
                called = child.func
                label = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
                if label in FILE_CALLS:
                    found.append((child.lineno, label, function))
            visit(child, name)

    visit(tree, "<module>")
    return found


@pytest.mark.parametrize("path", LANGUAGE + COMPILERS, ids=lambda p: p.name)
def test_language_and_compilers_do_no_file_io(path: Path) -> None:
    allowed = READS_FILES.get(path, set())
    calls = [call for call in _file_calls(path) if call[2] not in allowed]
    assert calls == [], f"{path.name} touches files: {calls}"


def test_the_file_io_check_sees_file_io(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def load(path):\n    return path.read_text()\n\nopen('x')\n", encoding="utf-8")
    assert _file_calls(sample) == [(2, "read_text", "load"), (4, "open", "<module>")]


def _reads_environment(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in {"environ", "getenv"}
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            return True
    return False


def test_configuration_is_read_in_settings_only() -> None:
    readers = {path for path in PACKAGE.rglob("*.py") if _reads_environment(path)}
    assert readers == set(ENVIRONMENT_READERS), sorted(str(p.relative_to(PACKAGE)) for p in readers)


@pytest.mark.parametrize("function", sorted(p.name for p in FUNCTIONS.iterdir() if (p / "app.py").is_file()))
def test_handlers_do_not_import_the_emulator(function: str) -> None:
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('app', {str(FUNCTIONS / function / 'app.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('moto', 'orchestrator')))))\n"
    )
    environment = {"PYTHONPATH": str(PACKAGE.parent), "POWERTOOLS_TRACE_DISABLED": "1", "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True
    )
    modules = json.loads(result.stdout)
    assert HANDLER_MODULES[function] in modules  # the check sees what the handler imports
    assert [m for m in modules if m.startswith("moto") or m.endswith(("emulator", "engine.local"))] == []
