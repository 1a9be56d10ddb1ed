"""A condition's Choice rule means what Jinja means, for every JSON value (divergences 11, 15, 16, 27).

`conditions.decide` gives a rule and the cases it leaves `undecided` (the dispatch function
evaluates those). Hypothesis draws conditions and values; wherever the rule decides, Jinja
(`evaluate_condition`, the engine's and the function's) must give the same answer and no error.
Rules are read as AWS reads them: moto's JSONPath, And/Or short-circuited, and any test but
`IsPresent` on a missing path an error (States.Runtime). Some values travel as S3 references
(`{"$payload": ...}`) in the state, as big outputs do, while Jinja sees the value.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from moto.stepfunctions.parser.asl.utils.json_path import NoSuchJsonPathError, extract_json

from conftest import every_state
from orchestrator.aws.build import compile_definition
from orchestrator.aws.conditions import Decision, Judgement, decide
from orchestrator.errors import TemplateError
from orchestrator.template import jinja

NAMES = ("a", "b")  # in the state (b may be missing); any other name is unknown to the compiler
MISSING = object()
_NUMERIC = {
    "NumericEquals": operator.eq,
    "NumericLessThan": operator.lt,
    "NumericLessThanEquals": operator.le,
    "NumericGreaterThan": operator.gt,
    "NumericGreaterThanEquals": operator.ge,
}


def path_of(name: str) -> str | None:
    return f"$.scope.{name}" if name in NAMES else None


# -- Choice rules, read as AWS reads them ------------------------------------------------


def _read(path: str, state: dict[str, Any]) -> Any:
    try:
        return extract_json(path, state)
    except NoSuchJsonPathError:
        return MISSING


def holds(judgement: Judgement, state: dict[str, Any]) -> bool:
    if isinstance(judgement, bool):
        return judgement
    if "And" in judgement:
        return all(holds(rule, state) for rule in judgement["And"])
    if "Or" in judgement:
        return any(holds(rule, state) for rule in judgement["Or"])
    if "Not" in judgement:
        return not holds(judgement["Not"], state)
    value = _read(judgement["Variable"], state)
    ((test, expected),) = [(key, item) for key, item in judgement.items() if key != "Variable"]
    if test == "IsPresent":
        return (value is not MISSING) is expected
    assert value is not MISSING, f"{test} reads the missing {judgement['Variable']}: States.Runtime"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    kinds = {
        "IsNull": value is None,
        "IsBoolean": isinstance(value, bool),
        "IsNumeric": number,
        "IsString": isinstance(value, str),
    }
    if test in kinds:
        return kinds[test] is expected
    if test == "BooleanEquals":
        return isinstance(value, bool) and value == expected
    if test == "StringEquals":
        return isinstance(value, str) and value == expected
    return number and bool(_NUMERIC[test](value, expected))


# -- what is drawn -----------------------------------------------------------------------

KEYS = ["k", "count", "items", "real", "0", "pop"]
LITERALS = ["none", "true", "false", "0", "1", "1.0", "0.5", "-2", "''", "'a'", "'k'"]
STEPS = [".k", ".count", ".items", ".real", ".upper", ".pop", "['k']", "['items']", "['0']", "[0]", ".1"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, -0.0, 0.5, 1.0]),
    st.sampled_from(["", "a", "k", "ab", "0"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def paths(draw: Callable[[st.SearchStrategy[Any]], Any]) -> str:
    name = draw(st.sampled_from(["a", "a", "b", "other"]))
    steps = draw(st.sampled_from([0, 0, 1, 1, 2]))
    return name + "".join(draw(st.lists(st.sampled_from(STEPS), min_size=steps, max_size=steps)))


@st.composite
def atoms(draw: Callable[[st.SearchStrategy[Any]], Any]) -> str:
    path = draw(paths())
    literal = draw(st.sampled_from(LITERALS))
    operator_text = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))
    return str(
        draw(
            st.sampled_from(
                [
                    path,
                    literal,
                    f"{path} is {draw(st.sampled_from(['defined', 'undefined', 'none']))}",
                    f"{path} {operator_text} {literal}",
                    f"{literal} {operator_text} {path}",
                    f"{path} | length > 0",
                ]
            )
        )
    )


expressions = st.recursive(
    atoms(),
    lambda inner: st.one_of(
        inner.map(lambda text: f"not ({text})"),
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
    ),
    max_leaves=4,
)


def travelling(value: Any, offload: Callable[[], bool]) -> Any:
    """`value` as it may be in the state: a big output (here: a non-empty string, array or
    object that no literal equals) may be a reference to S3, at the top or inside another."""
    big = isinstance(value, str | list | dict) and len(value) >= (2 if isinstance(value, str) else 1)
    if big and offload():
        return {"$payload": "s3://bucket/payloads/run/task.json"}
    if isinstance(value, list):
        return [travelling(item, offload) for item in value]
    if isinstance(value, dict):
        return {key: travelling(item, offload) for key, item in value.items()}
    return value


# -- the property ------------------------------------------------------------------------


def _jinja(expression: str, scope: dict[str, Any]) -> bool | None:
    """Jinja's answer, or None for an error (the task fails with TemplateError)."""
    try:
        return jinja.evaluate_condition(expression, scope)
    except TemplateError:
        return None


def _state(scope: dict[str, Any], offload: Callable[[], bool]) -> dict[str, Any]:
    return {"scope": {name: travelling(value, offload) for name, value in scope.items()}}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression=expressions, a=values, b=st.one_of(st.just(MISSING), values), data=st.data())
def test_a_choice_rule_decides_only_what_jinja_decides_the_same_way(
    expression: str, a: Any, b: Any, data: st.DataObject
) -> None:
    scope = {"a": a} if b is MISSING else {"a": a, "b": b}
    decision = decide(expression, path_of)
    if decision is None:
        event("no rule: the function decides")
        return
    state = _state(scope, lambda: data.draw(st.booleans()))
    if holds(decision.undecided, state):
        event("undecided: the function decides")
        return
    expected = _jinja(expression, scope)
    assert expected is not None, f"{expression!r} fails in Jinja over {scope}, the rule decides"
    assert holds(decision.rule, state) is expected, (expression, scope, state, decision)
    event("decided by the rule")


# -- the cases the fuzzer found ------------------------------------------------------------


def _decided(expression: str, scope: dict[str, Any]) -> bool | str:
    """The rule's answer, or "function" where the dispatch function decides."""
    decision = decide(expression, path_of)
    assert isinstance(decision, Decision)
    state = _state(scope, lambda: False)
    if holds(decision.undecided, state):
        return "function"
    return holds(decision.rule, state)


@pytest.mark.parametrize(
    ("expression", "scope", "expected"),
    [
        # (15) ordering what Jinja refuses to order: the function raises its TemplateError
        ("a > 4", {"a": None}, "function"),
        ("a > 4", {"a": "text"}, "function"),
        ("a > 4", {}, "function"),
        ("a > 4", {"a": 5}, True),
        ("a > 0", {"a": True}, True),  # a boolean is a number to Python
        # Jinja's short circuit: the right side is never evaluated for a missing `a`
        ("a is defined and a > 4", {}, False),
        ("a is undefined or a > 4", {}, True),
        # Python's equality: true == 1 == 1.0
        ("a == 1", {"a": True}, True),
        ("a == true", {"a": 1.0}, True),
        # (27) attributes Jinja finds on the Python value
        ("a.count is undefined", {"a": "text"}, "function"),
        ("a.items", {"a": {"k": 1}}, "function"),
        ("a.count >= 2", {"a": {"count": 2}}, True),  # a member, the object has it
        ("a.real", {"a": 3}, "function"),
        ("a.k is defined", {"a": "text"}, False),
        # (11) a group's child that did not run is undefined, as a missing path is
        ("a != 1", {}, True),
        # truth: scalars by the rule, arrays and objects by the function
        ("not a", {"a": ""}, True),
        ("a", {"a": []}, "function"),
        ("a[0] is defined", {"a": "text"}, "function"),
        ("a.k == 1", {"a": {"$payload": "s3://bucket/key"}}, "function"),
    ],
)
def test_found_cases(expression: str, scope: dict[str, Any], expected: bool | str) -> None:
    assert _decided(expression, scope) == expected
    if expected != "function":
        assert _jinja(expression, scope) is expected


def test_literal_conditions_need_no_state() -> None:
    assert decide("1 > 2", path_of) == Decision(False, False)
    assert decide("'yes'", path_of) == Decision(True, False)
    assert decide("'a' < 1", path_of) is None  # the function raises Jinja's TypeError
    assert decide("other > 1", path_of) is None  # a name the state does not hold
    assert decide("a | length > 0", path_of) is None


# -- the compiled states ---------------------------------------------------------------------


def _compiled(tmp_path: Path, text: str) -> dict[str, Any]:
    path = tmp_path / "conditions.yaml"
    path.write_text(text, encoding="utf-8")
    states: dict[str, Any] = every_state(compile_definition(path))
    return states


PIPELINE = """
name: conditions
tasks:
  - name: a
    type: python_task
    script: return None
  - name: ordered
    type: python_task
    condition: "a > 4"
    script: return 1
    error_handling:
      on_failure: skip
  - name: filtered
    type: python_task
    condition: "a | length > 0"
    script: return 1
  - name: group
    type: parallel_group
    condition: "a is none"
    tasks:
      - name: child
        type: python_task
        script: return 1
  - name: reader
    type: python_task
    condition: "child == 1"
    script: return {{ a }}
"""


def test_a_condition_the_rule_cannot_decide_goes_to_the_function_before_the_task(tmp_path: Path) -> None:
    states = _compiled(tmp_path, PIPELINE)
    # (15) the rule decides numbers and booleans; anything else asks the function
    choice = states["ordered.if"]
    assert choice["Choices"][0]["Next"] == "ordered.condition"
    assert choice["Choices"][1]["Next"] == "ordered"
    assert choice["Default"] == "ordered.skip"
    # (16) the function's answer, not the task's Lambda, decides: its call is no attempt, and
    # its error goes to on_failure's state (never to a fallback), as on the engine
    ask = states["ordered.condition"]
    assert ask["Parameters"]["Payload"]["action"] == "condition"
    assert ask["Catch"] == [
        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.errors.ordered", "Next": "ordered.failed"}
    ]
    assert states["ordered.decided"]["Choices"][0]["Next"] == "ordered"
    assert "condition" not in states["ordered"]["Parameters"]["Payload"]
    # no rule at all: straight to the function; no on_failure: its error fails the run
    assert "filtered.if" not in states
    assert "Catch" not in states["filtered.condition"]
    assert states["filtered.decided"]["Default"] == "filtered.skip"


def test_a_read_of_a_group_child_passes_the_group_record(tmp_path: Path) -> None:
    # (11) the child has no record when its group was skipped: $.tasks.group always has one
    payload = _compiled(tmp_path, PIPELINE)["reader"]["Parameters"]["Payload"]
    assert payload["tasks"] == {"group.$": "$.tasks.group"}
    # (`reader` runs after `group` in a branch of a parallel step: `a`, finished before the
    # step, is given to the branch at `$.prior`)
    assert payload["outputs"] == {"a.$": "$.prior.a.output"}
