"""Sandboxed Jinja: render values keeping their type, evaluate conditions, find referenced names.

Every string in a pipeline is a template. A string that is exactly one `{{ expr }}` yields the
value of `expr` itself (a list stays a list); any other string renders to text. Rendering uses
`StrictUndefined`, so a name that does not exist is an error unless guarded by `default(...)`
or `is defined`. Conditions use a lenient undefined instead: a missing key is falsy, so
`not loop_state.quality_met` is true before the first iteration (SPEC section 8).

Templates cannot allocate without bound: nothing a template makes may hold more than
`MAX_TEMPLATE_SIZE` (10 million) characters of text, or items of a list or mapping, more
than the largest value it was made from (a task output may be bigger: `upper` of it is
fine, repeating it is not). Repetition (`'x' * n`, `[0] * n`), powers, `%` and `format`
widths, `ljust`/`center` and the other padding methods, `replace`, `join`, `sum`, `lipsum`,
`batch`, `slice`, `~` and the rendered text itself are checked before they are made;
`range` is Jinja's (at most 100,000 items). A template past the limit fails with a
`TemplateError` saying so (template/bounded.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.errors import TemplateError
from orchestrator.template.bounded import TemplateTooLarge, bounded_join, check_expansion

if TYPE_CHECKING:
    from jinja2 import Undefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

# Jinja itself is imported when a template is first compiled or parsed: a pipeline without
# templates (and every run's start) does not pay for it (about 40 ms).

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)


def _tojson(value: Any) -> str:
    import json

    return json.dumps(value, default=str)


def _make_environment(undefined: type[Undefined]) -> ImmutableSandboxedEnvironment:
    from orchestrator.template.bounded import bounded_environment

    environment = bounded_environment(undefined, _tojson)
    environment.policies["json.dumps_kwargs"] = {"sort_keys": False}
    return environment


@functools.cache
def strict_environment() -> ImmutableSandboxedEnvironment:
    """Renders values: an undefined name is an error."""
    from jinja2 import StrictUndefined

    return _make_environment(StrictUndefined)


@functools.cache
def lenient_environment() -> ImmutableSandboxedEnvironment:
    """Evaluates conditions: a missing name or key is undefined, and falsy."""
    from jinja2 import ChainableUndefined

    return _make_environment(ChainableUndefined)


GLOBAL_NAMES = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace"})
"""The names of Jinja's own globals (a test checks them against Jinja's)."""


class _Globals(Mapping[str, Any]):
    """Jinja's own globals (`range`, `dict`, `namespace`, ...), which a scope must offer itself
    (templates are evaluated against the scope alone); Jinja is imported when one is read."""

    def __getitem__(self, name: str) -> Any:
        if name not in GLOBAL_NAMES:
            raise KeyError(name)
        return strict_environment().globals[name]

    def __contains__(self, name: object) -> bool:
        return name in GLOBAL_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(GLOBAL_NAMES))

    def __len__(self) -> int:
        return len(GLOBAL_NAMES)


GLOBALS: Mapping[str, Any] = _Globals()


def _error(source: str, error: Exception) -> TemplateError:
    from jinja2 import TemplateSyntaxError, UndefinedError
    from jinja2.exceptions import SecurityError

    text = source if len(source) <= 80 else source[:77] + "..."
    if isinstance(error, TemplateSyntaxError):
        return TemplateError(f"template syntax error in {text!r}: {error.message} (line {error.lineno})")
    if isinstance(error, UndefinedError):
        message = str(error.message)
        if message.endswith(" is undefined"):  # a name: it may be an input not given
            return TemplateError(
                f"{message} in {text!r}; pass it as an input (-i name=value), or guard it "
                "with '| default(...)'"
            )
        return TemplateError(f"{message} in {text!r}; guard it with '| default(...)'")
    if isinstance(error, TemplateTooLarge):
        return TemplateError(f"too large: {error} (in {text!r})")
    if isinstance(error, SecurityError):
        return TemplateError(f"not allowed in templates: {error} in {text!r}")
    return TemplateError(f"{type(error).__name__}: {error} in {text!r}")


def single_expression(source: str) -> str | None:
    """The expression of a value that is exactly one `{{ expr }}`, else None."""
    match = _SINGLE_EXPRESSION.match(source)
    if not match:
        return None
    expression = match.group("expr")
    if "{{" in expression or "}}" in expression or "{%" in source:
        return None
    return expression.strip()


def is_template(source: str) -> bool:
    return "{{" in source or "{%" in source


@functools.lru_cache(maxsize=4096)
def _compiled_expression(expression: str, lenient: bool) -> Any:
    environment = lenient_environment() if lenient else strict_environment()
    return environment.compile_expression(expression, undefined_to_none=False)


@functools.lru_cache(maxsize=4096)
def _compiled_template(source: str) -> Any:
    return strict_environment().from_string(source)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _undefined_inside(value: Any, undefined: type[Undefined]) -> Undefined | None:
    """The first undefined value inside lists, tuples and dicts (a strict template must not
    hand one on: it would fail later, far from its template, or be written as text)."""
    pending = [value]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        kind = type(current)
        if kind in _SCALARS:
            continue
        if kind is dict or kind is list or kind is tuple or isinstance(current, (dict, list, tuple)):
            if id(current) not in seen:
                seen.add(id(current))
                pending.extend(current.values() if isinstance(current, dict) else current)
        elif isinstance(current, undefined):
            return current
    return None


def evaluate_expression(expression: str, scope: Mapping[str, Any], *, lenient: bool = False) -> Any:
    """Value of one Jinja expression in `scope` (read in place: the scope is never copied)."""
    from jinja2 import Undefined

    try:
        template = _compiled_expression(expression, lenient)._template
        context = template.new_context(scope, shared=True)
        for _ in template.root_render_func(context):
            pass
        value = context.vars["result"]
        if isinstance(value, Undefined):
            if lenient:
                return None
            str(value)  # raises UndefinedError with Jinja's own message
        elif type(value) not in _SCALARS and not _DOTTED_EXPRESSION.fullmatch(expression):
            # (a name or a dotted path reads a value of the scope as it is: JSON, never undefined)
            check_expansion(value)  # `[big] * 1000`: small here, huge once written as JSON
            inside = None if lenient else _undefined_inside(value, Undefined)
            if inside is not None:
                str(inside)  # `rows | map(attribute='missing') | list`: the same error
        return value
    except TemplateError:
        raise
    except Exception as error:
        raise _error("{{ " + expression + " }}", error) from None


def render_string(source: str, scope: Mapping[str, Any]) -> Any:
    """Render one string: a single expression keeps its type, anything else becomes text."""
    if not is_template(source):
        return source
    expression = single_expression(source)
    if expression is not None:
        return evaluate_expression(expression, scope)
    try:
        template = _compiled_template(source)
        context = template.new_context(scope, shared=True)
        return bounded_join(template.root_render_func(context))
    except Exception as error:
        raise _error(source, error) from None


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render every string inside a value (mappings and lists recursively)."""
    if isinstance(value, str):
        return render_string(value, scope)
    if isinstance(value, dict):
        return {key: render_value(item, scope) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, scope) for item in value]
    return value


def condition_expression(condition: str) -> str:
    """The expression of a condition, written with or without `{{ }}`."""
    expression = single_expression(condition)
    return expression if expression is not None else condition.strip()


def evaluate_condition(condition: str | bool | None, scope: Mapping[str, Any]) -> bool:
    """Truthiness of a condition's value (never of its text: `"False"` is not true)."""
    if condition is None:
        return True
    if isinstance(condition, bool):
        return condition
    return bool(evaluate_expression(condition_expression(condition), scope, lenient=True))


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED_EXPRESSION = re.compile(rf"\s*(?P<name>{_NAME})(?:\.{_NAME})*\s*")
_DOTTED_TEMPLATE = re.compile(rf"[^{{}}%#]*\{{\{{\s*(?P<name>{_NAME})(?:\.{_NAME})*\s*\}}\}}[^{{}}%#]*")
_NOT_PLAIN_NAMES = frozenset(
    {"true", "false", "none", "True", "False", "None", "not", "and", "or", "in", "is", "if", "else"}
)


def _plain_reference(source: str, expression: bool) -> str | None:
    """The name read by `a` or `a.b.c` (as an expression, or alone in `{{ }}` in text); None
    for anything else, which Jinja's parser then reads."""
    match = (_DOTTED_EXPRESSION if expression else _DOTTED_TEMPLATE).fullmatch(source)
    if match is None:
        return None
    name = match.group("name")
    # constants and keywords parse differently; `self` and Jinja's globals are not undeclared
    if name in _NOT_PLAIN_NAMES or name == "self" or name in GLOBAL_NAMES:
        return None
    return name


@functools.lru_cache(maxsize=4096)
def referenced_names(source: str, *, expression: bool = False) -> frozenset[str]:
    """Top-level names a template (or a bare expression) reads; raises `TemplateError` on bad syntax."""
    plain = _plain_reference(source, expression)
    if plain is not None:
        return frozenset({plain})
    from jinja2 import TemplateSyntaxError, meta

    text = "{{ " + source + " }}" if expression else source
    try:
        tree = strict_environment().parse(text)
    except TemplateSyntaxError as error:
        raise _error(source, error) from None
    return frozenset(meta.find_undeclared_variables(tree))


def check_template(source: str, *, expression: bool = False) -> str | None:
    """A syntax problem in a template, or None."""
    try:
        referenced_names(source, expression=expression)
    except TemplateError as error:
        return str(error)
    return None


def attribute_paths(expression: str) -> list[tuple[str, ...]]:
    """Dotted paths an expression reads (`a.b.c` -> ("a", "b", "c")), for the ASL compiler."""
    from jinja2 import nodes

    tree = strict_environment().parse("{{ " + expression + " }}")
    paths: list[tuple[str, ...]] = []
    for node in tree.find_all((nodes.Getattr, nodes.Name)):
        parts: list[str] = []
        current: nodes.Node = node
        while isinstance(current, nodes.Getattr):
            parts.append(current.attr)
            current = current.node
        if isinstance(current, nodes.Name):
            paths.append((current.name, *reversed(parts)))
    return paths
