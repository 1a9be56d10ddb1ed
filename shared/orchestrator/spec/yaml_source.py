"""Load YAML into plain Python values while remembering where every value and key came from."""

from __future__ import annotations

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


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_FAST_LOADER)
    except yaml.YAMLError:
        return yaml.compose(text, Loader=yaml.SafeLoader)


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
            self.loader.flatten_mapping(node)
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.scalar(key_node)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    key = str(key)
                child = (*location, key)
                key_mark = key_node.start_mark
                if key in result:
                    self.problems.append(
                        self.source.diagnostic(location, f"duplicate key '{key}' (line {key_mark.line + 1})")
                    )
                self.source.keys[child] = (key_mark.line + 1, key_mark.column + 1)
                result[key] = self.build(value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*location, index)) for index, item in enumerate(node.value)]
        return self.scalar(node)

    def scalar(self, node: yaml.Node) -> Any:
        """The value of a scalar node (or, for a complex key, of any node)."""
        constructor = _SCALAR_CONSTRUCTORS.get(node.tag) if isinstance(node, yaml.ScalarNode) else None
        if constructor is None:
            return self.loader.construct_object(node, deep=True)
        return constructor(self.loader, node)


# What `construct_object` would call for a scalar's tag, called directly: it skips the
# bookkeeping meant for recursive collections, which a scalar never is.
_SCALAR_CONSTRUCTORS: dict[Any, Any] = yaml.SafeLoader.yaml_constructors


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document; syntax errors become a `PipelineValidationError` with a line."""
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = error.problem or "invalid YAML"
        context = f" {error.context}" if error.context else ""
        message = f"YAML syntax error: {problem}{context}"
        raise PipelineValidationError([Diagnostic(file, line, column, "", message)]) from None
    except yaml.YAMLError as error:
        raise PipelineValidationError([Diagnostic(file, 1, 1, "", f"YAML error: {error}")]) from None
    builder = _Builder(file)
    if node is None:
        return None, builder.source
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
