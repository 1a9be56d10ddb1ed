"""Load YAML into plain Python values while remembering where every value and key came from.

The one YAML reader of user files (pipeline files, inputs files, `-i` values), and the limits
it holds them to, so that no document can hang or crash it: at most `MAX_NESTING` levels of
nested lists and mappings, at most `MAX_VALUES` values once aliases are expanded (a "billion
laughs" document is refused before anything is built), no alias inside itself, integers of at
most `MAX_INT_DIGITS` digits. Values are JSON's: a date stays text (`2024-01-01` is a string,
as in YAML 1.2's JSON schema), an escaped surrogate pair (`"\\ud83d\\ude00"`) is the one
character it spells, and tags such as `!!binary` are refused. A merge key (`<<: *base`) gives
the keys of `base`, which the mapping's own keys override.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.errors import Diagnostic, PipelineValidationError

Location = tuple[str | int, ...]
# libyaml's parser when PyYAML was built with it (its wheels are): about 8x faster than the
# pure-Python one on a large pipeline, and its nodes carry the same line and column marks.
# Its error messages are terser ("found undefined alias", without the name), so a document it
# rejects is parsed again by the pure-Python parser, whose message is the one reported.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_NESTING = 100
"""Lists and mappings nested deeper than this are refused (a pipeline's tasks nest two a level)."""
MAX_VALUES = 1_000_000
"""Values (scalars, lists, mappings) a document may hold once its aliases are expanded."""
MAX_INT_DIGITS = 4300
"""Digits of the largest integer read (Python's own limit on turning text into an int)."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class YamlSyntaxError(PipelineValidationError):
    """The text is not YAML at all (as opposed to YAML that this reader refuses)."""


class _TooDeep(Exception):
    """The parser ran out of stack: lists and mappings nested too deeply."""

    def __init__(self, mark: Any) -> None:
        self.mark = mark


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_FAST_LOADER)
    except RecursionError:
        raise _TooDeep(None) from None
    except yaml.YAMLError as fast_error:
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except RecursionError:  # libyaml stopped at its nesting limit; Python's is lower
            raise _TooDeep(getattr(fast_error, "problem_mark", None)) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _beyond_limits(root: yaml.Node) -> tuple[yaml.Node, str] | None:
    """The first node past the reader's limits, and why; None when the document is within them.

    One walk over the distinct nodes (an alias is the very node it names, so the walk is
    linear in the text however far the aliases expand), computing each node's expanded size
    and depth.
    """
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    on_path = {id(root)}
    stack = [(root, iter(_children(root)))]
    while stack:
        node, pending = stack[-1]
        child = next(pending, None)
        if child is None:
            stack.pop()
            on_path.discard(id(node))
            children = _children(node)
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            height[id(node)] = 1 + max((height[id(c)] for c in children), default=0)
            if size[id(node)] > MAX_VALUES:
                return node, (
                    f"its aliases expand to more than {MAX_VALUES:,} values (a 'billion laughs' "
                    "document); write the values out, or alias fewer times"
                )
            if height[id(node)] > MAX_NESTING:
                return node, f"lists and mappings nested deeper than {MAX_NESTING} levels; flatten them"
            continue
        if id(child) in on_path:
            return child, "an alias inside the value it names (a recursive alias); remove it"
        if id(child) in size:
            continue
        if len(stack) >= MAX_NESTING:
            return child, f"lists and mappings nested deeper than {MAX_NESTING} levels; flatten them"
        on_path.add(id(child))
        stack.append((child, iter(_children(child))))
    return None


@dataclass
class SourceMap:
    """Line and column (1-based) of every value, and of every mapping key, by location."""

    file: str
    values: dict[Location, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Location, tuple[int, int]] = field(default_factory=dict)

    def position(self, location: Location, *, key: bool = False) -> tuple[int, int]:
        """Best position for `location`: the key itself if asked, else the value, else a parent."""
        probe = tuple(location)
        while True:
            if key and probe in self.keys:
                return self.keys[probe]
            if probe in self.values:
                return self.values[probe]
            if not probe:
                return (1, 1)
            probe = probe[:-1]

    def diagnostic(
        self, location: Location, message: str, *, key: bool = False, severity: str = "error"
    ) -> Diagnostic:
        line, column = self.position(location, key=key)
        return Diagnostic(self.file, line, column, format_location(location), message, severity)


def format_location(location: Location) -> str:
    """`("tasks", 2, "error_handling")` -> `tasks[2].error_handling`."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Builder:
    def __init__(self, file: str) -> None:
        self.source = SourceMap(file)
        self.loader = yaml.SafeLoader("")
        self.problems: list[Diagnostic] = []

    def build(self, node: yaml.Node, location: Location) -> Any:
        mark = node.start_mark
        self.source.values[location] = (mark.line + 1, mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            own = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
            self.loader.flatten_mapping(node)
            merged = len(node.value) - own  # flatten_mapping puts the merged keys first
            result: dict[Any, Any] = {}
            merged_keys: set[Any] = set()
            for index, (key_node, value_node) in enumerate(node.value):
                key = self.scalar(key_node, location)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    key = str(key)
                child = (*location, key)
                key_mark = key_node.start_mark
                if index < merged:
                    merged_keys.add(key)
                elif key in merged_keys:
                    merged_keys.discard(key)  # the mapping's own key overrides a merged one
                elif key in result:
                    self.problems.append(
                        self.source.diagnostic(location, f"duplicate key '{key}' (line {key_mark.line + 1})")
                    )
                self.source.keys[child] = (key_mark.line + 1, key_mark.column + 1)
                result[key] = self.build(value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*location, index)) for index, item in enumerate(node.value)]
        return self.scalar(node, location)

    def scalar(self, node: yaml.Node, location: Location) -> Any:
        """The value of a scalar node (or, for a complex key, of any node)."""
        if node.tag == _TIMESTAMP_TAG:
            return str(node.value)  # a date is text
        constructor = _SCALAR_CONSTRUCTORS.get(node.tag) if isinstance(node, yaml.ScalarNode) else None
        try:
            value = (
                self.loader.construct_object(node, deep=True)
                if constructor is None
                else constructor(self.loader, node)
            )
        except ValueError:  # int("9" * 5000): past Python's limit
            digits = sum(char.isdigit() for char in str(node.value))
            return self._refuse(
                node,
                location,
                f"an integer of {digits:,} digits (at most {MAX_INT_DIGITS:,}); quote it to keep it as text",
            )
        if isinstance(value, str):
            return self._text(value, node, location)
        if value is not None and not isinstance(value, bool | int | float | list | dict):
            return self._refuse(
                node,
                location,
                f"a {node.tag.replace('tag:yaml.org,2002:', '!!')} value: values are text, numbers, "
                "booleans, null, lists and mappings",
            )
        return value

    def _text(self, value: str, node: yaml.Node, location: Location) -> Any:
        if not _SURROGATE.search(value):
            return value
        try:  # an escaped pair ("\\ud83d\\ude00") spells one character, as in JSON
            return value.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            return self._refuse(
                node,
                location,
                "a \\u escape of half a character (a lone surrogate); write the character itself "
                "or its \\U00XXXXXX escape",
            )

    def _refuse(self, node: yaml.Node, location: Location, message: str) -> None:
        mark = node.start_mark
        self.problems.append(
            Diagnostic(self.source.file, mark.line + 1, mark.column + 1, format_location(location), message)
        )
        return None


# What `construct_object` would call for a scalar's tag, called directly: it skips the
# bookkeeping meant for recursive collections, which a scalar never is.
_SCALAR_CONSTRUCTORS: dict[Any, Any] = yaml.SafeLoader.yaml_constructors


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document within the reader's limits; a document that is not YAML is a
    `YamlSyntaxError`, one past the limits or with values JSON has not a
    `PipelineValidationError`, each with a line."""
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = error.problem or "invalid YAML"
        context = f" {error.context}" if error.context else ""
        message = f"YAML syntax error: {problem}{context}"
        raise YamlSyntaxError([Diagnostic(file, line, column, "", message)]) from None
    except yaml.YAMLError as error:
        raise YamlSyntaxError([Diagnostic(file, 1, 1, "", f"YAML error: {error}")]) from None
    except _TooDeep as error:
        line, column = (error.mark.line + 1, error.mark.column + 1) if error.mark else (1, 1)
        message = f"lists and mappings nested deeper than {MAX_NESTING} levels; flatten them"
        raise PipelineValidationError([Diagnostic(file, line, column, "", message)]) from None
    builder = _Builder(file)
    if node is None:
        return None, builder.source
    beyond = _beyond_limits(node)
    if beyond is not None:
        mark = beyond[0].start_mark
        raise PipelineValidationError([Diagnostic(file, mark.line + 1, mark.column + 1, "", beyond[1])])
    try:
        data = builder.build(node, ())
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise PipelineValidationError(
            [Diagnostic(file, line, column, "", f"YAML error: {error.problem}")]
        ) from None
    if builder.problems:
        raise PipelineValidationError(builder.problems)
    return data, builder.source
