"""A python_task's script as Python code: the body of a function, compiled once.

Planning compiles each script as a quick syntax check (`compiles_cleanly`) and keeps the code
object; running the task (`runtime.python_task`) takes it from there (`compile_script`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
import threading
import tokenize
import types
import warnings
from collections.abc import Iterator
from typing import Any

from orchestrator.errors import TaskError

FUNCTION_NAME = "__orchestrator_task__"


def _rows_inside_strings(script: str) -> set[int]:
    """1-based rows that begin inside a multi-line string: indenting them would change it."""
    if not may_have_multiline_strings(script):
        return set()
    rows: set[int] = set()
    start: tuple[int, int] | None = None
    string_kinds = {tokenize.STRING}
    fstring_start = getattr(tokenize, "FSTRING_START", None)
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    try:
        for token in tokenize.generate_tokens(io.StringIO(script).readline):
            if token.type == fstring_start:
                start = token.start
            elif token.type == fstring_end and start is not None:
                rows.update(range(start[0] + 1, token.end[0] + 1))
                start = None
            elif token.type in string_kinds and token.end[0] > token.start[0]:
                rows.update(range(token.start[0] + 1, token.end[0] + 1))
    except (tokenize.TokenError, SyntaxError):
        pass  # compile() reports the real problem with its line
    return rows


def may_have_multiline_strings(script: str) -> bool:
    """False when no string literal can span lines: no triple quotes, no backslash (line
    continuation) and, from Python 3.12 on, no `{` (an f-string replacement field may)."""
    return (
        '"""' in script
        or "'''" in script
        or "\\" in script
        or (sys.version_info >= (3, 12) and "{" in script)
    )


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    """The same code object, nested functions included, reporting `filename`."""
    consts = tuple(
        _with_filename(const, filename) if isinstance(const, types.CodeType) else const
        for const in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


_COMPILED: dict[str, types.CodeType] = {}
_COMPILED_LOCK = threading.Lock()
_COMPILED_MAX = 2048


def _function_source(script: str) -> str:
    """The script as the body of `__orchestrator_task__(context, inputs, storage)`."""
    inside = _rows_inside_strings(script)
    lines = script.splitlines()
    body = [
        line if (row in inside or not line.strip()) else "    " + line
        for row, line in enumerate(lines, start=1)
    ]
    if not any(line.strip() for line in lines):
        body = ["    pass"]
    return f"def {FUNCTION_NAME}(context, inputs, storage):\n" + "\n".join(body) + "\n"


def _compile_body(script: str, filename: str) -> types.CodeType:
    try:
        return compile(_function_source(script), filename, "exec")
    except SyntaxError as error:
        line = (error.lineno or 2) - 1
        raise TaskError("ScriptSyntaxError", f"line {line}: {error.msg}") from None


def _remember(script: str, code: types.CodeType) -> None:
    with _COMPILED_LOCK:
        if len(_COMPILED) >= _COMPILED_MAX:
            del _COMPILED[next(iter(_COMPILED))]
        _COMPILED[script] = code


_recorded_warnings: list[warnings.WarningMessage] | None = None


@contextlib.contextmanager
def recording_compile_warnings() -> Iterator[None]:
    """Record warnings once around many `compiles_cleanly` calls (planning a whole pipeline):
    setting up `warnings.catch_warnings` costs about a third of compiling a short script."""
    global _recorded_warnings
    if _recorded_warnings is not None:  # already recording
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _recorded_warnings = caught
        try:
            yield
        finally:
            _recorded_warnings = None


def compiles_cleanly(script: str, filename: str) -> bool:
    """Whether the script compiles as a task: quietly, and False on any warning.

    Planning uses this as a quick syntax check. The code object is kept (only when compiling
    it warned about nothing), so running the task does not compile it again.
    """
    with _COMPILED_LOCK:
        if script in _COMPILED:
            return True
    if _recorded_warnings is None:
        with recording_compile_warnings():
            return compiles_cleanly(script, filename)
    seen = len(_recorded_warnings)
    try:
        code = compile(_function_source(script), filename, "exec")
    except Exception:
        return False
    if len(_recorded_warnings) > seen:
        return False
    _remember(script, code)
    return True


@functools.lru_cache(maxsize=2048)
def compile_script(script: str, filename: str) -> Any:
    """Code object of a function whose body is the script; line numbers are kept.

    A script is compiled once, by the first task that runs it; other tasks running the same
    text get a copy of that code object naming their own filename.
    """
    with _COMPILED_LOCK:
        code = _COMPILED.get(script)
    if code is not None:
        return code if code.co_filename == filename else _with_filename(code, filename)
    code = _compile_body(script, filename)
    _remember(script, code)
    return code
