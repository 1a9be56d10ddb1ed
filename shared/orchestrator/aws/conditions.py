"""Conditions as native `Choice` rules, where a Jinja expression allows it (no Lambda call).

`to_choice_rule` gives an exact rule for comparisons with literals, `is defined`, `is none`,
and `not`/`and`/`or` of those. A bare path (`{{ a.is_text }}`) has Jinja truthiness, which a
rule can only decide for scalars: `truthiness_choices` gives the rules that decide it for
null, booleans, strings and numbers, leaving objects and arrays to a Lambda.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from jinja2 import nodes

from orchestrator.template import jinja

Rule = dict[str, Any]
PathOf = Callable[[str], str | None]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def json_path(node: nodes.Expr, path_of: PathOf) -> str | None:
    """The JSONPath a name/attribute/item chain reads, or None when it is not one."""
    if isinstance(node, nodes.Name):
        return path_of(node.name)
    if isinstance(node, nodes.Getattr):
        base = json_path(node.node, path_of)
        return None if base is None else _child(base, node.attr)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        base = json_path(node.node, path_of)
        key = node.arg.value
        if base is None:
            return None
        if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
            return f"{base}[{key}]"
        if isinstance(key, str):
            return _child(base, key)
    return None


def _child(base: str, key: str) -> str:
    if key.isdigit():
        return f"{base}[{key}]"  # Jinja reads `chunks.0` as an index
    if _IDENTIFIER.match(key):
        return f"{base}.{key}"
    return f"{base}['{key}']"


def _typed(path: str, value: Any) -> tuple[str, str] | None:
    if isinstance(value, bool):
        return "IsBoolean", "BooleanEquals"
    if isinstance(value, int | float):
        return "IsNumeric", "NumericEquals"
    if isinstance(value, str):
        return "IsString", "StringEquals"
    return None


_ORDER = {"lt": "LessThan", "lteq": "LessThanEquals", "gt": "GreaterThan", "gteq": "GreaterThanEquals"}


def _compare(path: str, operator: str, value: Any) -> Rule | None:
    present = {"Variable": path, "IsPresent": True}
    if value is None and operator in {"eq", "ne"}:
        rule: Rule = {"And": [present, {"Variable": path, "IsNull": True}]}
        return rule if operator == "eq" else {"Not": rule}
    kinds = _typed(path, value)
    if kinds is None:
        return None
    is_type, equals = kinds
    if operator in {"eq", "ne"}:
        rule = {"And": [present, {"Variable": path, is_type: True}, {"Variable": path, equals: value}]}
        return rule if operator == "eq" else {"Not": rule}
    if operator in _ORDER and is_type in {"IsNumeric", "IsString"}:
        family = "Numeric" if is_type == "IsNumeric" else "String"
        return {
            "And": [
                present,
                {"Variable": path, is_type: True},
                {"Variable": path, family + _ORDER[operator]: value},
            ]
        }
    return None


_FLIPPED = {"eq": "eq", "ne": "ne", "lt": "gt", "lteq": "gteq", "gt": "lt", "gteq": "lteq"}


def to_choice_rule(node: nodes.Expr, path_of: PathOf) -> Rule | None:
    """An exact Choice rule for the expression, or None when ASL cannot say it exactly."""
    if isinstance(node, nodes.Not):
        inner = to_choice_rule(node.node, path_of)
        return None if inner is None else {"Not": inner}
    if isinstance(node, nodes.And | nodes.Or):
        left, right = to_choice_rule(node.left, path_of), to_choice_rule(node.right, path_of)
        if left is None or right is None:
            return None
        return {"And" if isinstance(node, nodes.And) else "Or": [left, right]}
    if isinstance(node, nodes.Compare) and len(node.ops) == 1:
        operand = node.ops[0]
        if isinstance(operand.expr, nodes.Const):
            path = json_path(node.expr, path_of)
            return None if path is None else _compare(path, operand.op, operand.expr.value)
        if isinstance(node.expr, nodes.Const):
            path = json_path(operand.expr, path_of)
            flipped = _FLIPPED.get(operand.op)
            return None if path is None or flipped is None else _compare(path, flipped, node.expr.value)
        return None
    if isinstance(node, nodes.Test) and not node.args:
        path = json_path(node.node, path_of)
        if path is None:
            return None
        if node.name == "defined":
            return {"Variable": path, "IsPresent": True}
        if node.name == "undefined":
            return {"Variable": path, "IsPresent": False}
        if node.name == "none":
            return {"And": [{"Variable": path, "IsPresent": True}, {"Variable": path, "IsNull": True}]}
    return None


def truthiness_choices(node: nodes.Expr, path_of: PathOf) -> list[tuple[Rule, bool]] | None:
    """For `path` or `not path`: ordered (rule, run?) pairs deciding scalar values.

    Whatever matches none (an object or an array) is left to the caller's default.
    """
    negate = False
    while isinstance(node, nodes.Not):
        negate, node = not negate, node.node
    path = json_path(node, path_of)
    if path is None:
        return None
    falsy: list[Rule] = [
        {"Variable": path, "IsPresent": False},
        {"Variable": path, "IsNull": True},
        {"And": [{"Variable": path, "IsBoolean": True}, {"Variable": path, "BooleanEquals": False}]},
        {"And": [{"Variable": path, "IsString": True}, {"Variable": path, "StringEquals": ""}]},
        {"And": [{"Variable": path, "IsNumeric": True}, {"Variable": path, "NumericEquals": 0}]},
    ]
    truthy: list[Rule] = [
        {"Variable": path, "IsBoolean": True},
        {"Variable": path, "IsString": True},
        {"Variable": path, "IsNumeric": True},
    ]
    return [(rule, negate) for rule in falsy] + [(rule, not negate) for rule in truthy]
