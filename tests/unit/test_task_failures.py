"""decisions.md "Template failures" and "fallback_value that cannot be rendered": the runtime's
one meaning, which both engines call.

- `render_task_script`: whatever goes wrong while a python_task's placeholders are filled in is
  a `TemplateError` task failure (a `TaskError`, not retried), never another exception;
- `fallback_output`: a fallback_value that cannot give a value gives `null`, and the task's
  own error message says why.

The property tests render hostile values (text a literal cannot hold, deep nesting, huge
numbers, values that are not JSON, Jinja's undefined and lazy objects) into scripts at every
kind of place a placeholder may stand, through the filters templates use on them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.error_types import is_retryable
from orchestrator.errors import TaskError, TemplateError
from orchestrator.runtime import leaf
from orchestrator.runtime.context import RunInfo
from orchestrator.runtime.leaf import (
    FALLBACK_VALUE_PROBLEM,
    Services,
    fallback_output,
    render_task_script,
    run_leaf,
)
from orchestrator.runtime.redact import Redactor
from orchestrator.runtime.scope import Scope
from orchestrator.settings import load_settings
from orchestrator.spec.models import PythonTask
from orchestrator.spec.scripts import compile_script
from orchestrator.stores.factory import open_stores
from orchestrator.template import jinja

# -- helpers -------------------------------------------------------------------------------------


def scope_of(**values: Any) -> Scope:
    """A scope like the engines' top scope: Jinja's globals, then the values."""
    return Scope(values, Scope(dict(jinja.GLOBALS)))


def nested(depth: int, *, mapping: bool = False) -> Any:
    value: Any = {} if mapping else []
    for _ in range(depth):
        value = {"k": value} if mapping else [value]
    return value


class Unprintable:
    """A value whose text cannot be read: str() and repr() raise."""

    def __str__(self) -> str:
        raise KeyError("no text")

    __repr__ = __str__


def generator() -> Iterator[int]:
    yield 1


def expect_template_error(script: str, scope: Scope) -> TaskError:
    with pytest.raises(TaskError) as raised:
        render_task_script(script, scope)
    assert raised.value.error_type == "TemplateError", raised.value
    assert raised.value.retryable is False
    return raised.value


# -- the cases of the issue ----------------------------------------------------------------------


def test_an_attribute_missing_from_a_mapped_item_is_a_template_error() -> None:
    scope = scope_of(rows=[{"a": 1}, {"b": 2}])
    error = expect_template_error("return {{ rows | map(attribute='missing') | list }}", scope)
    assert "'dict object' has no attribute 'missing'" in error.message
    # not the "pass it as an input" hint: an attribute cannot be passed with -i
    assert "-i name=value" not in error.message
    # in text, the same failure with the same message
    in_text = expect_template_error("return 'rows: {{ rows | map(attribute=\"missing\") | list }}'", scope)
    assert "'dict object' has no attribute 'missing'" in in_text.message


def test_text_a_bytes_literal_cannot_hold_is_a_template_error() -> None:
    error = expect_template_error('return b"{{ text }}"', scope_of(text="caf\udce9"))
    assert "cannot be put in a bytes literal" in error.message
    assert error.message.startswith("script line 1:")
    # non-ASCII text that UTF-8 can encode is written as its bytes
    rendered = render_task_script('return b"{{ text }}"', scope_of(text="héllo"))
    assert rendered == 'return b"h\\xc3\\xa9llo"'


@pytest.mark.parametrize(
    "script",
    ["return {{ v }}", "return '{{ v }}'", "return b'{{ v }}'", "return r'{{ v }}'", "# {{ v }}\nreturn 1"],
)
@pytest.mark.parametrize("value", [nested(5000), nested(5000, mapping=True)], ids=["list", "dict"])
def test_a_value_nested_too_deeply_is_a_template_error(script: str, value: Any) -> None:
    error = expect_template_error(script, scope_of(v=value))
    assert "nested too deeply" in error.message or "recursion" in error.message


def test_a_value_with_no_literal_in_code_is_a_template_error() -> None:
    for value in ({1, 2}, b"raw", Unprintable(), range(3), generator()):
        error = expect_template_error("return {{ v }}", scope_of(v=value))
        assert "cannot be written into code" in error.message


def test_a_value_whose_text_cannot_be_read_is_a_template_error() -> None:
    error = expect_template_error("return '{{ v }}'", scope_of(v=Unprintable()))
    assert "cannot be turned into text" in error.message


def test_an_int_too_long_for_text_is_a_template_error_in_text_but_a_literal_in_code() -> None:
    huge = 10**5000
    expect_template_error("return '{{ v }}'", scope_of(v=huge))
    rendered = render_task_script("return {{ v }}", scope_of(v=huge))
    assert rendered.startswith("return 0x")


def test_a_jinja_error_is_a_template_error() -> None:
    scope = scope_of(rows=[1, 2])
    assert "ZeroDivisionError" in expect_template_error("return {{ 1 / 0 }}", scope).message
    assert "'nothing' is undefined" in expect_template_error("return {{ nothing }}", scope).message
    assert "has no element 5" in expect_template_error("return {{ rows[5] }}", scope).message


@pytest.mark.parametrize("raised", [TypeError("bad operand"), RecursionError("too deep"), ValueError("no")])
def test_any_other_exception_raised_while_rendering_is_a_template_error(
    raised: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort: an exception nobody foresaw, raised anywhere in rendering."""

    def broken(script: str, evaluate: Any) -> str:
        raise raised

    monkeypatch.setattr(leaf, "render_script", broken)
    error = expect_template_error("return {{ v }}", scope_of(v=1))
    assert error.message == f"the script cannot be rendered: {type(raised).__name__}: {raised}"


def test_running_out_of_memory_while_rendering_stays_a_memory_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(script: str, evaluate: Any) -> str:
        raise MemoryError

    monkeypatch.setattr(leaf, "render_script", exhausted)
    with pytest.raises(TaskError) as raised:
        render_task_script("return {{ v }}", scope_of(v=1))
    assert raised.value.error_type == "MemoryError" and raised.value.retryable


def test_a_script_without_placeholders_is_returned_as_it_is() -> None:
    script = "x = {'a': 1}\nreturn x  # {% not a placeholder %}"
    assert render_task_script(script, scope_of()) is script


def test_run_leaf_fails_the_attempt_with_a_template_error() -> None:
    """Both engines run an attempt through `run_leaf`: the failure is a `TaskError` there."""
    task = PythonTask(type="python_task", name="t", script='return b"{{ text }}"')
    settings = load_settings()
    run = RunInfo(
        run_id="r", pipeline_id="p", user_id="u", stores=open_stores(settings, "memory"), redactor=Redactor()
    )
    with pytest.raises(TaskError) as raised:
        run_leaf(task, "t", scope_of(text="\ud800"), run, Services(settings), {})
    assert raised.value.error_type == "TemplateError"
    assert not is_retryable("TemplateError")


# -- undefined values inside a rendered value ----------------------------------------------------


def test_an_undefined_value_inside_a_list_is_an_error_in_strict_templates_only() -> None:
    scope = {"rows": [{"a": 1}, {"b": 2}]}
    with pytest.raises(TemplateError, match="has no attribute 'a'"):
        jinja.evaluate_expression("rows | map(attribute='a') | list", scope)
    with pytest.raises(TemplateError, match="has no attribute 'x'"):
        jinja.render_value({"out": "{{ [1, {'k': rows[0].x}] }}"}, scope)
    # a condition is lenient: a list holding an undefined is still a non-empty list
    assert jinja.evaluate_condition("rows | map(attribute='a') | list", scope) is True
    # defined values pass as they are
    assert jinja.evaluate_expression("rows | map(attribute='a', default=0) | list", scope) == [1, 0]


# -- fallback_output -----------------------------------------------------------------------------


def test_a_fallback_value_that_renders_is_the_output_and_the_message_is_unchanged() -> None:
    scope = scope_of(base={"a": 1})
    assert fallback_output("{{ base.a }}", scope, "boom") == (1, "boom")
    assert fallback_output({"source": "{{ base }}", "n": [1, "{{ base.a + 1 }}"]}, scope, "boom") == (
        {"source": {"a": 1}, "n": [1, 2]},
        "boom",
    )
    assert fallback_output(None, scope, "boom") == (None, "boom")
    assert fallback_output([], scope, "boom") == ([], "boom")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("{{ base.x }}", "'dict object' has no attribute 'x' in '{{ base.x }}'"),
        ("{{ missing_task.x }}", "'missing_task' is undefined in '{{ missing_task.x }}'"),
        ("{{ nothing }}", "'nothing' is undefined"),
        ({"keep": "{{ nothing }}"}, "'nothing' is undefined"),
        ("text {{ nothing }}", "'nothing' is undefined"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ range(3) }}", "it gives a value that is not JSON"),
        ("{{ base | map(attribute='x') | list }}", "has no attribute 'x'"),
    ],
)
def test_a_fallback_value_that_cannot_be_rendered_gives_null_and_says_why(value: Any, reason: str) -> None:
    output, message = fallback_output(value, scope_of(base={"a": 1}), "boom (script line 1)")
    assert output is None
    assert message.startswith("boom (script line 1) [" + FALLBACK_VALUE_PROBLEM)
    assert reason in message and message.endswith("]")


# -- properties over hostile values --------------------------------------------------------------

SPECIAL_TEXT = st.sampled_from(
    [
        "\ud800",
        "a\udfffb",
        "\x00",
        "\n\r\t",
        "\u2028\u2029",
        "\u202e",
        "'''",
        '"""',
        "\\",
        "\\N{",
        "{{ x }}",
        "{}",
        "__orch_placeholder_0__",
        "caf\xe9",
        "\U0001f600",
        "\x7f\x85",
    ]
)
TEXT = st.one_of(SPECIAL_TEXT, st.text(st.characters(exclude_categories=()), max_size=12))
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([5000, 400, 19]).map(lambda digits: -(10**digits) if digits == 400 else 10**digits),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(TEXT, children, max_size=4),
    ),
    max_leaves=12,
)


def _hostile(kind: str, depth: int) -> Any:
    """Values no JSON output holds, but a Jinja expression can give or a scope can hold."""
    if kind == "deep":
        return nested(depth)
    if kind == "deep_mapping":
        return nested(depth, mapping=True)
    if kind == "cycle":
        cycle: list[Any] = [1]
        cycle.append(cycle)
        return cycle
    return {
        "set": {1, 2},
        "bytes": b"\xff",
        "tuple": (1, "a", None),
        "unprintable": Unprintable(),
        "generator": generator(),
        "complex": 1j,
        "nan_key": {math.nan: 1},
        "int_key": {1: "a", None: "b"},
    }[kind]


HOSTILE = st.builds(
    _hostile,
    st.sampled_from(
        [
            "deep",
            "deep_mapping",
            "cycle",
            "set",
            "bytes",
            "tuple",
            "unprintable",
            "generator",
            "complex",
            "nan_key",
            "int_key",
        ]
    ),
    st.sampled_from([1, 50, 150, 199, 200, 201, 400, 990, 3000]),
)
VALUES = st.one_of(JSON_VALUES, HOSTILE, SPECIAL_TEXT)

EXPRESSIONS = [
    "v",
    "v | list",
    "v | map(attribute='missing') | list",
    "v | map(attribute='missing')",
    "v.missing",
    "v[0]",
    "v | first",
    "v | tojson",
    "v | string",
    "v ~ '!'",
    "v | join(',')",
    "v | int",
    "v | sum",
    "v * 2",
    "v | unique | list",
    "v | dictsort",
    "v | length",
    "[v, v]",
    "{'k': v}",
    "v is defined",
]
# every kind of place a placeholder may stand (each script is valid with its placeholder)
SITES = [
    "return {P}",
    "x = [{P}, 1]\nreturn x",
    "return {{'k': {P}}}",
    "return '{P}'",
    'return "a{P}b"',
    "return '''\n{P}\n'''",
    'return b"{P}"',
    "return rb'{P}'",
    "return r'{P}'",
    "return f'{{1}}{P}'",
    "return '\\{P}'",
    "# a comment: {P}\nreturn None",
    "return ({P},)",
    "return -{P} if False else None",
]


PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(value=VALUES, site=st.sampled_from(SITES))
def test_no_value_written_into_a_script_fails_as_anything_but_a_template_error(value: Any, site: str) -> None:
    assert_renders_or_template_error(site.format(P="{{ v }}"), value)


@PROPERTY
@given(value=VALUES, expression=st.sampled_from(EXPRESSIONS), site=st.sampled_from(SITES))
def test_no_expression_over_a_value_fails_as_anything_but_a_template_error(
    value: Any, expression: str, site: str
) -> None:
    assert_renders_or_template_error(site.format(P="{{ " + expression + " }}"), value)


def assert_renders_or_template_error(script: str, value: Any) -> None:
    try:
        rendered = render_task_script(script, scope_of(v=value))
    except TaskError as error:
        assert error.error_type == "TemplateError", error
        assert error.message
        return
    # what renders is a script that compiles as a task body
    assert isinstance(rendered, str)
    compile_script(rendered, "<property>")


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=VALUES,
    fallback=st.one_of(
        st.sampled_from(EXPRESSIONS).map(lambda e: "{{ " + e + " }}"),
        st.sampled_from(EXPRESSIONS).map(lambda e: {"wrapped": ["{{ " + e + " }}", 1]}),
        st.sampled_from(EXPRESSIONS).map(lambda e: "text: {{ " + e + " }}"),
        JSON_VALUES,
    ),
)
def test_a_fallback_value_always_gives_json_or_null_with_the_reason(value: Any, fallback: Any) -> None:
    output, message = fallback_output(fallback, scope_of(v=value), "the task's error")
    json.dumps(output)  # the output is always JSON: it becomes the task's output
    if message != "the task's error":
        assert output is None
        assert message.startswith("the task's error [" + FALLBACK_VALUE_PROBLEM)
