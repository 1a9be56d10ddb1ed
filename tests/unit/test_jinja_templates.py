"""SPEC section 4: sandboxed Jinja templates, typed single expressions, conditions, referenced names."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import TemplateError
from orchestrator.runtime.scope import Scope
from orchestrator.template import jinja


def scope_of(**values: Any) -> Scope:
    """A scope like the engine's: Jinja's globals below, the given values on top."""
    return Scope(dict(values), Scope(dict(jinja.GLOBALS)))


class Secretive:
    """An object with a private attribute and a dunder path to the interpreter."""

    def __init__(self) -> None:
        self._private = "hidden"
        self.public = "shown"


# -- a single {{ expr }} keeps its type ---------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ items }}", [1, "two", {"three": 3}]),
        ("{{ config }}", {"depth": 2, "tags": ["a"]}),
        ("{{ count }}", 7),
        ("{{ count + 1 }}", 8),
        ("{{ ratio }}", 0.5),
        ("{{ flag }}", False),
        ("{{ nothing }}", None),
        ("{{ items[2].three }}", 3),
        ("{{ items | length }}", 3),
        ("{{ config.tags }}", ["a"]),
    ],
)
def test_single_expression_yields_the_value_itself(source: str, expected: Any) -> None:
    """SPEC 4: a value that is exactly one `{{ expr }}` yields the value itself, not its text."""
    # GIVEN a scope holding values of every JSON type
    scope = scope_of(
        items=[1, "two", {"three": 3}],
        config={"depth": 2, "tags": ["a"]},
        count=7,
        ratio=0.5,
        flag=False,
        nothing=None,
    )
    # WHEN the single expression is rendered
    rendered = jinja.render_string(source, scope)
    # THEN the value keeps its Python type
    assert rendered == expected
    assert type(rendered) is type(expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("count={{ count }}", "count=7"),
        ("{{ count }}{{ count }}", "77"),
        ("{{ flag }} and more", "False and more"),
        ("{% if flag %}yes{% else %}no{% endif %}", "no"),
        ("{% for i in items %}{{ i }},{% endfor %}", "1,2,"),
        ("plain text", "plain text"),
    ],
)
def test_mixed_text_renders_to_a_string(source: str, expected: str) -> None:
    """SPEC 4: any string that is not exactly one `{{ expr }}` renders to text."""
    # GIVEN values that are not strings
    scope = scope_of(count=7, flag=False, items=[1, 2])
    # WHEN a template mixing text and expressions is rendered
    rendered = jinja.render_string(source, scope)
    # THEN the result is its text
    assert rendered == expected
    assert isinstance(rendered, str)


def test_render_value_renders_nested_mappings_and_lists_keeping_types() -> None:
    """SPEC 4: every string value (also inside mappings and lists) is a template."""
    # GIVEN a nested value with typed and textual templates and non-string leaves
    value = {"list": "{{ items }}", "text": "n={{ n }}", "nested": ["{{ n }}", 3, True, None]}
    # WHEN it is rendered
    rendered = jinja.render_value(value, scope_of(items=[1, 2], n=4))
    # THEN each string is rendered in place and the rest is untouched
    assert rendered == {"list": [1, 2], "text": "n=4", "nested": [4, 3, True, None]}


# -- conditions are expressions evaluated to truthiness -----------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("False", False),
        ("0", False),
        ("[]", False),
        ("{{ False }}", False),
        ("{{ 0 }}", False),
        ("{{ empty }}", False),
        ("empty", False),
        ("flag", False),
        ("{{ flag }}", False),
        ("zero", False),
        ("none_value", False),
        ("True", True),
        ("{{ items }}", True),
        ("items | length > 1", True),
        ("{{ items | length > 1 }}", True),
        ("count >= 7 and not flag", True),
        ("'text'", True),
    ],
)
def test_condition_is_an_expression_evaluated_to_truthiness(condition: str, expected: bool) -> None:
    """SPEC 4: `condition` is a Jinja expression, with or without `{{ }}`, evaluated to a value
    and then to its truthiness; it is never rendered to text first (`"False"` is not true)."""
    # GIVEN a scope with falsy and truthy values
    scope = scope_of(empty=[], flag=False, zero=0, none_value=None, items=[1, 2], count=7)
    # WHEN the condition is evaluated
    result = jinja.evaluate_condition(condition, scope)
    # THEN it is the truthiness of the value
    assert result is expected


def test_boolean_and_absent_conditions() -> None:
    """SPEC 4: a YAML boolean condition is its own value; no condition means the task runs."""
    assert jinja.evaluate_condition(False, scope_of()) is False
    assert jinja.evaluate_condition(True, scope_of()) is True
    assert jinja.evaluate_condition(None, scope_of()) is True


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("loop_state.done", False),
        ("not loop_state.done", True),
        ("{{ not loop_state.quality_met }}", True),
        ("loop_state.deep.deeper", False),
        ("never_declared", False),
        ("not never_declared", True),
    ],
)
def test_missing_key_in_a_condition_is_falsy(condition: str, expected: bool) -> None:
    """SPEC 8 / decisions 'Conditions': a missing key is falsy in a condition, not an error."""
    # GIVEN an empty loop_state (the first iteration of a while_loop)
    scope = scope_of(loop_state={})
    # WHEN a condition reads keys that do not exist
    result = jinja.evaluate_condition(condition, scope)
    # THEN they are falsy instead of raising
    assert result is expected


# -- undefined names in ordinary rendering -------------------------------------------------


@pytest.mark.parametrize(
    "source",
    ["{{ missing }}", "value: {{ missing }}", "{{ present.missing }}", "{{ missing.attribute }}"],
)
def test_undefined_names_are_an_error_when_rendered(source: str) -> None:
    """SPEC 4: undefined names are an error when rendered."""
    # GIVEN a scope without `missing` (and a mapping without the key `missing`)
    scope = scope_of(present={"here": 1})
    # WHEN / THEN rendering the template raises a TemplateError naming the problem
    with pytest.raises(TemplateError, match="missing"):
        jinja.render_string(source, scope)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ missing | default('fallback') }}", "fallback"),
        ("{{ missing | default([1, 2]) }}", [1, 2]),
        ("{{ present.missing | default(0) }}", 0),
        ("{{ missing is defined }}", False),
        ("{{ present is defined }}", True),
        ("{% if missing is defined %}yes{% else %}no{% endif %}", "no"),
        ("{{ nothing | default('none', true) }}", "none"),
    ],
)
def test_default_and_is_defined_guard_undefined_names(source: str, expected: Any) -> None:
    """SPEC 4: undefined names are an error except through `default(...)` / `is defined`."""
    # GIVEN a scope without `missing`
    scope = scope_of(present={"here": 1}, nothing=None)
    # WHEN a guarded template is rendered
    rendered = jinja.render_string(source, scope)
    # THEN the guard applies and nothing is raised
    assert rendered == expected


def test_syntax_errors_are_template_errors() -> None:
    """SPEC 4: a template that cannot be compiled is a TemplateError, not a crash."""
    with pytest.raises(TemplateError, match="syntax"):
        jinja.render_string("{{ a + }}", scope_of(a=1))
    with pytest.raises(TemplateError, match="syntax"):
        jinja.render_string("{% if a %}no end", scope_of(a=1))


# -- the sandbox -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ joiner.__init__.__globals__['os'] }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ lipsum.__globals__ }}",
        "{{ range.__self__ }}",
        "{{ obj._private }}",
        "{{ obj.__dict__ }}",
        "{{ obj['__class__'] }}",
        "{{ (obj|attr('_private')) }}",
        "{{ '{0.__class__}'.format(obj) }}",
        "text {{ ''.__class__.__mro__ }} text",
        "{% import 'os' as os %}{{ os }}",
        "{% include '/etc/passwd' %}",
        "{% from 'os' import system %}{{ system('id') }}",
    ],
)
def test_sandbox_blocks_private_attributes_and_imports(source: str) -> None:
    """SPEC 4: templates are sandboxed: no attribute access to `_`-names, no imports."""
    # GIVEN a scope with Jinja's globals and an object with a private attribute
    scope = scope_of(obj=Secretive())
    # WHEN / THEN every escape attempt is refused with a TemplateError
    with pytest.raises(TemplateError):
        jinja.render_string(source, scope)


def test_sandbox_still_allows_public_attributes() -> None:
    """SPEC 4: the sandbox only blocks `_`-names; public attributes and methods work."""
    scope = scope_of(obj=Secretive(), text="a,b")
    assert jinja.render_string("{{ obj.public }}", scope) == "shown"
    assert jinja.render_string("{{ text.split(',') }}", scope) == ["a", "b"]
    assert jinja.render_string("{{ text.upper() }}", scope) == "A,B"


@pytest.mark.parametrize(
    "condition",
    ["''.__class__.__mro__", "cycler.__init__.__globals__.os", "obj._private"],
)
def test_conditions_cannot_escape_the_sandbox(condition: str) -> None:
    """SPEC 4: conditions are evaluated in the same sandbox: a private path never yields a value."""
    # GIVEN an escape attempt written as a condition
    scope = scope_of(obj=Secretive())
    # WHEN it is evaluated
    try:
        result = jinja.evaluate_condition(condition, scope)
    except TemplateError:
        return  # refused outright: fine
    # THEN it is at most falsy (it never reaches the object behind the private name)
    assert result is False


def test_sandbox_is_immutable() -> None:
    """SPEC 4: templates cannot change the values they read (an immutable sandbox)."""
    # GIVEN a list in scope
    items = [1, 2]
    # WHEN a template tries to mutate it THEN it is refused and the list is unchanged
    with pytest.raises(TemplateError):
        jinja.render_string("{{ items.append(3) }}", scope_of(items=items))
    assert items == [1, 2]


# -- referenced names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ analyze_input.is_text }}", {"analyze_input"}),
        ("{{ a }} and {{ b.c | default(d) }}", {"a", "b", "d"}),
        ("{% if flag %}{{ x }}{% endif %}", {"flag", "x"}),
        ("{% set local = 1 %}{{ local }} {{ outer }}", {"outer"}),
        ("{% for row in rows %}{{ row.v }}{{ loop.index }}{% endfor %}", {"rows"}),
        ("{% for k, v in data.items() %}{{ k }}={{ v }}{% endfor %}", {"data"}),
        ("{% set total = namespace(n=0) %}{{ total.n }}{{ other }}", {"other"}),  # globals too
        ("no template at all", set()),
    ],
)
def test_referenced_names_are_top_level_names_only(source: str, expected: set[str]) -> None:
    """SPEC 5: a task depends on every task named in its templates; names bound by the template
    itself (`{% set %}`, loop variables) are not references."""
    assert jinja.referenced_names(source) == frozenset(expected)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("not loop_state.done", {"loop_state"}),
        ("score > threshold and check.ok", {"score", "threshold", "check"}),
        ("items | selectattr('x') | list", {"items"}),
    ],
)
def test_referenced_names_of_bare_expressions(expression: str, expected: set[str]) -> None:
    """SPEC 4/5: conditions are expressions without braces; their names are found too."""
    assert jinja.referenced_names(expression, expression=True) == frozenset(expected)


def test_referenced_names_reports_bad_syntax() -> None:
    """SPEC 1/5: a template that does not parse is reported, not silently ignored."""
    with pytest.raises(TemplateError):
        jinja.referenced_names("{{ a + }}")


def test_global_names_are_jinjas_own() -> None:
    """Planning knows Jinja's globals by name without importing Jinja; scopes offer their values."""
    import jinja2

    assert set(jinja2.Environment().globals) == jinja.GLOBAL_NAMES
    assert dict(jinja.GLOBALS)["range"] is jinja.strict_environment().globals["range"]  # the sandbox's
    assert jinja.evaluate_expression("range(3) | list", {"range": jinja.GLOBALS["range"]}) == [0, 1, 2]
