"""Conditions as native `Choice` rules, where a rule provably means what Jinja means.

`decide` compiles a condition into a `Decision`: `rule`, which matches exactly when Jinja
finds the condition true, wherever `undecided` does not match. `undecided` matches the values
a rule cannot judge as Jinja does, which the dispatch function's `condition` action evaluates
instead (with `jinja.evaluate_condition`, as the embedded engine does):

- a comparison that Jinja refuses (`a > 4` where `a` is missing, null, text, an array or an
  object): a TemplateError, which only the function raises;
- the truth of an array or an object (a rule cannot see whether it is empty);
- an attribute that Jinja finds on the Python value rather than as a JSON member
  (`word.count` of a string, `mapping.items`, `flag.real`), an index into a string, and a
  member of a value left in S3 (`{"$payload": ...}`: a task output, a loop item or state, a
  child pipeline's input above its inline limit, see `payloads`);
- the equality of a value with a string literal longer than the smallest reference: the value
  may be in S3 (a shorter one never is, and no scalar but a string is ever that long).

Compiled are: comparisons of a path with a literal (`==`, `!=` with null, booleans, numbers
and strings; `<`, `<=`, `>`, `>=` with numbers), `is defined`, `is undefined`, `is none`, the
truth of a path, literals, and `not`/`and`/`or` of those, with Jinja's short circuits (`x is
defined and x > 4` never asks the function about a missing `x`). A path is an input, a task's
output, a loop variable, then members (`a.b`, `a['b']`) and indexes (`a[0]`, `a.0`; only at
its end). Anything else is evaluated by the function.

Every test on a path is preceded by `IsPresent` in an `And`, so no rule reads a missing path.
A rule is a plain dict, or a Python bool where the answer does not depend on the state.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes

from orchestrator.aws.payloads import REFERENCE_KEY, reference_size, size
from orchestrator.template import jinja

Rule = dict[str, Any]
Judgement = Rule | bool
PathOf = Callable[[str], str | None]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BRACKETED_KEY = re.compile(r"^[A-Za-z0-9_ -]+$")
# attributes Jinja finds on a JSON value's Python type before (or instead of) a member
_DICT_ATTRIBUTES = frozenset(dir(dict))
_LIST_ATTRIBUTES = frozenset(dir(list))
_STRING_ATTRIBUTES = frozenset(dir(str))
_NUMBER_ATTRIBUTES = frozenset(dir(int)) | frozenset(dir(float))
_BOOLEAN_ATTRIBUTES = frozenset(dir(bool))

_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "lteq": operator.le,
    "gt": operator.gt,
    "gteq": operator.ge,
}
_ORDER = {"lt": "LessThan", "lteq": "LessThanEquals", "gt": "GreaterThan", "gteq": "GreaterThanEquals"}
_FLIPPED = {"eq": "eq", "ne": "ne", "lt": "gt", "lteq": "gteq", "gt": "lt", "gteq": "lteq"}
# no value smaller than this ever travels as a reference (a bucket name has 3 characters or more)
_SMALLEST_REFERENCE = reference_size("r", "t", "abc")


@dataclass(frozen=True)
class Decision:
    """A condition for a Choice state: run where `rule` matches, unless `undecided` does
    (then the dispatch function decides). Either may be a bool: true or false everywhere."""

    rule: Judgement
    undecided: Judgement


@dataclass(frozen=True)
class Path:
    """A JSONPath reading what a Jinja name/member/index chain reads, where `undecided` does
    not match; `indexed`: it ends with an index (a member may not follow one)."""

    json_path: str
    undecided: Judgement
    indexed: bool = False


def parse_expression(expression: str) -> nodes.Expr | None:
    try:
        tree = jinja.strict_environment().parse("{{ " + expression + " }}")
    except Exception:  # a syntax error was reported by validation already
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    output = tree.body[0].nodes
    if len(output) != 1 or isinstance(output[0], nodes.TemplateData):
        return None
    return output[0]


def decide(condition: str, path_of: PathOf) -> Decision | None:
    """The Choice form of a condition (`path_of`: the JSONPath of a name in scope), or None
    when it has none: the dispatch function evaluates it."""
    parsed = parse_expression(jinja.condition_expression(condition))
    return None if parsed is None else _decide(parsed, path_of)


# combining rules ---------------------------------------------------------------------------


def _key(rule: Rule) -> str:
    return json.dumps(rule, sort_keys=True)


def _combine(kind: str, neutral: bool, judgements: tuple[Judgement, ...]) -> Judgement:
    parts: dict[str, Rule] = {}
    for judgement in judgements:
        if judgement is neutral:
            continue
        if isinstance(judgement, bool):
            return judgement  # the absorbing element: false for And, true for Or
        for part in judgement[kind] if set(judgement) == {kind} else [judgement]:
            parts.setdefault(_key(part), part)
    if not parts:
        return neutral
    rules = list(parts.values())
    return rules[0] if len(rules) == 1 else {kind: rules}


def _all_of(*judgements: Judgement) -> Judgement:
    return _combine("And", True, judgements)


def _any_of(*judgements: Judgement) -> Judgement:
    return _combine("Or", False, judgements)


def _negation(judgement: Judgement) -> Judgement:
    if isinstance(judgement, bool):
        return not judgement
    if set(judgement) == {"Not"}:
        inner: Rule = judgement["Not"]
        return inner
    return {"Not": judgement}


def _present(path: str) -> Rule:
    return {"Variable": path, "IsPresent": True}


def _is(path: str, kind: str) -> Judgement:
    return _all_of(_present(path), {"Variable": path, kind: True})


def _reference(path: str) -> Rule:
    """A value left in S3 (`{"$payload": ...}`): what is inside it only the function reads."""
    return _present(f"{path}['{REFERENCE_KEY}']")


def _container(path: str) -> Judgement:
    """An array or an object: present and no scalar."""
    scalars = ("IsNull", "IsBoolean", "IsNumeric", "IsString")
    return _all_of(_present(path), *({"Variable": path, kind: False} for kind in scalars))


# paths -------------------------------------------------------------------------------------


def json_path(node: nodes.Expr, path_of: PathOf) -> Path | None:
    """The JSONPath a name/member/index chain reads, or None when it is not one ASL can read."""
    if isinstance(node, nodes.Name):
        found = path_of(node.name)
        return None if found is None else Path(found, False)
    if isinstance(node, nodes.Getattr):
        return _member(node.node, node.attr, path_of, item=False)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        key = node.arg.value
        if isinstance(key, str):
            return _member(node.node, key, path_of, item=True)
        if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
            base = json_path(node.node, path_of)
            if base is None:
                return None
            # Jinja indexes text too ('abc'[0]); JSONPath only arrays
            undecided = _any_of(base.undecided, _reference(base.json_path), _is(base.json_path, "IsString"))
            return Path(f"{base.json_path}[{key}]", undecided, indexed=True)
    return None


def _member(parent: nodes.Expr, key: str, path_of: PathOf, *, item: bool) -> Path | None:
    """`parent.key` (`item`: `parent['key']`). Jinja tries the Python attribute first for
    `.key` and last for `['key']`; a JSON member is all ASL can read."""
    base = json_path(parent, path_of)
    if base is None or base.indexed:
        return None  # (the emulator wraps a member read after an index in a list)
    if _IDENTIFIER.match(key):
        path = f"{base.json_path}.{key}"
    elif _BRACKETED_KEY.match(key):
        path = f"{base.json_path}['{key}']"
    else:
        return None
    guards: list[Judgement] = [base.undecided, _reference(base.json_path)]
    if key in _DICT_ATTRIBUTES and not item:
        guards.append(_container(base.json_path))  # mapping.items: the method, member or not
    elif key in _DICT_ATTRIBUTES | _LIST_ATTRIBUTES:
        # a member when the object has it; else the method (of a mapping or a list)
        guards.append(_all_of(_container(base.json_path), {"Variable": path, "IsPresent": False}))
    if key in _STRING_ATTRIBUTES:
        guards.append(_is(base.json_path, "IsString"))
    if key in _NUMBER_ATTRIBUTES:
        guards.append(_is(base.json_path, "IsNumeric"))
    if key in _BOOLEAN_ATTRIBUTES:
        guards.append(_is(base.json_path, "IsBoolean"))
    return Path(path, _any_of(*guards))


# expressions -------------------------------------------------------------------------------


def _decide(node: nodes.Expr, path_of: PathOf) -> Decision | None:
    if isinstance(node, nodes.Const):
        return Decision(bool(node.value), False)
    if isinstance(node, nodes.Not):
        inner = _decide(node.node, path_of)
        return None if inner is None else Decision(_negation(inner.rule), inner.undecided)
    if isinstance(node, nodes.And | nodes.Or):
        left, right = _decide(node.left, path_of), _decide(node.right, path_of)
        if left is None or right is None:
            return None
        if isinstance(node, nodes.And):
            # Jinja reads the right side only when the left one is true
            reached = _all_of(left.rule, right.undecided)
            return Decision(_all_of(left.rule, right.rule), _any_of(left.undecided, reached))
        reached = _all_of(_negation(left.rule), right.undecided)
        return Decision(_any_of(left.rule, right.rule), _any_of(left.undecided, reached))
    if isinstance(node, nodes.Compare) and len(node.ops) == 1:
        return _comparison(node.expr, node.ops[0].op, node.ops[0].expr, path_of)
    if isinstance(node, nodes.Test) and not node.args and not node.kwargs:
        path = json_path(node.node, path_of)
        if path is None:
            return None
        present = _present(path.json_path)
        tests: dict[str, Judgement] = {
            "defined": present,
            "undefined": _negation(present),
            "none": _is(path.json_path, "IsNull"),
        }
        return Decision(tests[node.name], path.undecided) if node.name in tests else None
    path = json_path(node, path_of)
    return None if path is None else _truth(path)


def _truth(path: Path) -> Decision:
    """Python's truth of the value: scalars by a rule, arrays and objects by the function."""
    at = path.json_path
    rule = _any_of(
        _all_of(_is(at, "IsBoolean"), {"Variable": at, "BooleanEquals": True}),
        _all_of(_is(at, "IsNumeric"), {"Not": {"Variable": at, "NumericEquals": 0}}),
        _all_of(_is(at, "IsString"), {"Not": {"Variable": at, "StringEquals": ""}}),
    )
    return Decision(rule, _any_of(path.undecided, _container(at)))


def _literal(value: Any) -> bool:
    """A literal a rule can hold and compare as Python does."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int | str)


def _comparison(left: nodes.Expr, op: str, right: nodes.Expr, path_of: PathOf) -> Decision | None:
    compare = _COMPARISONS.get(op)
    if compare is None:
        return None
    if isinstance(left, nodes.Const) and isinstance(right, nodes.Const):
        try:
            return Decision(bool(compare(left.value, right.value)), False)
        except TypeError:
            return None  # the function raises Jinja's error
    if isinstance(right, nodes.Const):
        path, value = json_path(left, path_of), right.value
    elif isinstance(left, nodes.Const):
        path, value, op = json_path(right, path_of), left.value, _FLIPPED[op]
    else:
        return None
    if path is None or not _literal(value):
        return None
    if op in {"eq", "ne"}:
        equal = _equals(path.json_path, value)
        undecided = path.undecided
        if isinstance(value, str) and size(value) > _SMALLEST_REFERENCE:
            # a value that long may be in S3, where the rule sees its reference
            undecided = _any_of(undecided, _reference(path.json_path))
        return Decision(equal if op == "eq" else _negation(equal), undecided)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # text orders differently in ASL (UTF-16); null and booleans are rare
    at = path.json_path
    booleans = [flag for flag in (False, True) if _COMPARISONS[op](flag, value)]
    rule = _any_of(
        _all_of(_is(at, "IsNumeric"), {"Variable": at, "Numeric" + _ORDER[op]: value}),
        *(_all_of(_is(at, "IsBoolean"), {"Variable": at, "BooleanEquals": flag}) for flag in booleans),
    )
    comparable = _any_of(_is(at, "IsNumeric"), _is(at, "IsBoolean"))
    return Decision(rule, _any_of(path.undecided, _negation(comparable)))


def _equals(at: str, value: Any) -> Judgement:
    """`value == literal` as Python means it (`True == 1 == 1.0`; a missing value equals nothing)."""
    if value is None:
        return _is(at, "IsNull")
    if isinstance(value, str):
        return _all_of(_is(at, "IsString"), {"Variable": at, "StringEquals": value})
    number = int(value) if isinstance(value, bool) else value
    rules = [_all_of(_is(at, "IsNumeric"), {"Variable": at, "NumericEquals": number})]
    if number in (0, 1):
        rules.append(_all_of(_is(at, "IsBoolean"), {"Variable": at, "BooleanEquals": bool(number)}))
    return _any_of(*rules)
