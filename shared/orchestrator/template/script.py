"""Render `{{ expr }}` placeholders in a python_task script so no value can change its code.

The script is never handed to Jinja as text. Each placeholder is first replaced by a unique
identifier; the result is tokenized and every placeholder is classified by where it sits:

* inside a string literal, the value's text is inserted escaped for that literal (a raw string
  is replaced as a whole by the `repr()` of its final value);
* inside a comment, the text is inserted with line breaks and control characters escaped;
* anywhere else, a Python literal of the value is inserted (`None`, numbers, strings, lists,
  tuples and dicts of those); any other type is an error.

Physical line numbers are kept. As a last line of defence the rendered script is parsed and
its syntax tree compared with the template's: apart from string contents, the only difference
allowed is a placeholder name having become a literal. Jinja expressions are evaluated by the
caller's `evaluate` callback; this module only finds them and inserts what they return.
"""

from __future__ import annotations

import ast
import bisect
import contextlib
import functools
import io
import itertools
import json
import math
import re
import tokenize
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import AnyStr

from orchestrator.errors import TemplateError

__all__ = ["check_script_syntax", "find_script_expressions", "render_script"]

_STEM = "__orch_placeholder_"
_FILENAME = "<python_task script>"

# Characters never written raw into a string literal or a comment: C0 and C1 controls (line
# breaks among them), the Unicode line and paragraph separators, bidirectional overrides (which
# make source read differently from how it parses) and lone surrogates (not encodable).
_SPECIAL = (
    "\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200e\\u200f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069\\ud800-\\udfff"
)
_COMMENT_SPECIAL = re.compile(f"[{_SPECIAL}]")
_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

_GROUP_STARTS = frozenset(
    getattr(tokenize, name) for name in ("FSTRING_START", "TSTRING_START") if hasattr(tokenize, name)
)
_GROUP_ENDS = frozenset(
    getattr(tokenize, name) for name in ("FSTRING_END", "TSTRING_END") if hasattr(tokenize, name)
)
_INTERPOLATED: tuple[type[ast.AST], ...] = tuple(
    getattr(ast, name) for name in ("JoinedStr", "TemplateStr") if hasattr(ast, name)
)


class _LocatedError(Exception):
    """A problem at an offset of the (newline-normalized) original script."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


class _CompileError(Exception):
    """A syntax error at an offset of the script with placeholders as identifiers."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


class _Unrepresentable(Exception):
    """A value has no Python literal; the message says what it is."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the warnings (invalid escape sequences...) that parsing the script may emit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _normalize(script: str) -> str:
    """Use `\\n` line breaks only; Python reads `\\r\\n` and a lone `\\r` the same way."""
    return script.replace("\r\n", "\n").replace("\r", "\n")


def _line_starts(text: str) -> list[int]:
    starts = [0]
    position = text.find("\n")
    while position >= 0:
        starts.append(position + 1)
        position = text.find("\n", position + 1)
    return starts


def _location(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of an offset."""
    starts = _line_starts(text)
    line = bisect.bisect_right(starts, offset)
    return line, offset - starts[line - 1] + 1


# --- finding placeholders ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Placeholder:
    start: int  # offset of "{{" in the normalized script
    end: int  # offset just past "}}"
    expression: str


def _skip_jinja_string(source: str, start: int, opening: int) -> int:
    """Offset just past the Jinja string literal starting at `start`."""
    quote = source[start]
    position = start + 1
    while position < len(source):
        char = source[position]
        if char == "\\":
            position += 2
        elif char == quote:
            return position + 1
        else:
            position += 1
    raise _LocatedError(opening, "'{{' is never closed by '}}' (a quote inside it is not closed)")


def _scan_placeholder(source: str, opening: int) -> _Placeholder:
    """Read one `{{ ... }}` like Jinja's lexer: strings are skipped and brackets balanced."""
    position = opening + 2
    if source.startswith(("-", "+"), position):  # whitespace control, ignored here
        position += 1
    expression_start = position
    brackets: list[str] = []
    while position < len(source):
        if not brackets:
            for closing in ("-}}", "}}"):
                if source.startswith(closing, position):
                    expression = source[expression_start:position].strip()
                    return _Placeholder(opening, position + len(closing), expression)
        char = source[position]
        if char in "'\"":
            position = _skip_jinja_string(source, position, opening)
            continue
        if char in "([{":
            brackets.append(char)
        elif char in ")]}" and brackets:
            brackets.pop()
        position += 1
    raise _LocatedError(opening, "'{{' is never closed by '}}'")


def _scan(source: str) -> list[_Placeholder]:
    found: list[_Placeholder] = []
    position = source.find("{{")
    while position >= 0:
        placeholder = _scan_placeholder(source, position)
        found.append(placeholder)
        position = source.find("{{", placeholder.end)
    return found


def find_script_expressions(script: str) -> list[str]:
    """The source text of every `{{ expr }}` in the script, in order (stripped, without braces).

    `{%` and `{#` are not special in a script. A `-` or `+` whitespace-control mark right inside
    the braces is dropped. An unclosed `{{` raises `TemplateError`.
    """
    source = _normalize(script)
    try:
        return [placeholder.expression for placeholder in _scan(source)]
    except _LocatedError as error:
        raise TemplateError(_message(source, error)) from None


def _message(source: str, error: _LocatedError) -> str:
    return f"script line {_location(source, error.offset)[0]}: {error.message}"


# --- placeholders as identifiers --------------------------------------------------------------


class _Substituted:
    """The script with every placeholder replaced by a unique identifier."""

    def __init__(self, source: str, placeholders: list[_Placeholder], stem: str) -> None:
        self.source = source
        self.placeholders = placeholders
        self.stem = stem
        self.starts: list[int] = []  # offset of each identifier in `text`
        pieces: list[str] = []
        last = 0
        length = 0
        for index, placeholder in enumerate(placeholders):
            pieces.append(source[last : placeholder.start])
            length += placeholder.start - last
            self.starts.append(length)
            pieces.append(self.name(index))
            length += len(self.name(index))
            last = placeholder.end
        pieces.append(source[last:])
        self.text = "".join(pieces)
        self.pattern = re.compile(re.escape(stem) + r"(\d+)__")
        self.bytes_pattern = re.compile(re.escape(stem.encode()) + rb"(\d+)__")
        self.names = frozenset(self.name(index) for index in range(len(placeholders)))

    def name(self, index: int) -> str:
        return f"{self.stem}{index}__"

    def index(self, name: str) -> int:
        return int(name[len(self.stem) : -2])

    def to_original(self, offset: int) -> int:
        index = bisect.bisect_right(self.starts, offset) - 1
        if index < 0:
            return offset
        name_end = self.starts[index] + len(self.name(index))
        if offset < name_end:
            return self.placeholders[index].start
        return self.placeholders[index].end + offset - name_end

    def error(self, offset: int, message: str) -> _LocatedError:
        return _LocatedError(self.to_original(offset), message)

    def line(self, index: int) -> int:
        return _location(self.source, self.placeholders[index].start)[0]

    def lost_lines(self, index: int) -> int:
        """Line breaks inside the placeholder, which its identifier does not have."""
        placeholder = self.placeholders[index]
        return self.source.count("\n", placeholder.start, placeholder.end)

    def describe(self, index: int) -> str:
        return f"script line {self.line(index)}: {{{{ {self.placeholders[index].expression} }}}}"


def _substitute(source: str) -> _Substituted:
    stem = _STEM
    while stem in source:
        stem += "x_"
    return _Substituted(source, _scan(source), stem)


def _syntax_error_offset(text: str, error: SyntaxError) -> int:
    """Offset in `text` of a SyntaxError raised while compiling `text`."""
    if error.lineno is None:
        return max(text.find("\0"), 0)
    starts = _line_starts(text)
    line = min(max(error.lineno, 1), len(starts))
    line_end = starts[line] - 1 if line < len(starts) else len(text)
    column = max((error.offset or 1) - 1, 0)
    return min(starts[line - 1] + column, line_end)


# --- classifying placeholders -----------------------------------------------------------------


@dataclass(frozen=True)
class _Site:
    """A token holding placeholders: "code" (exactly one identifier), "comment" or "string"."""

    kind: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class _Literal:
    """The shape of a string literal token."""

    prefix: str  # lower-case
    quote: str

    @property
    def raw(self) -> bool:
        return "r" in self.prefix

    @property
    def is_bytes(self) -> bool:
        return "b" in self.prefix

    @property
    def interpolated(self) -> bool:
        return "f" in self.prefix or "t" in self.prefix


def _literal_shape(text: str) -> _Literal:
    quote_at = min(position for position in (text.find("'"), text.find('"')) if position >= 0)
    quote = text[quote_at] * 3 if text.startswith(text[quote_at] * 3, quote_at) else text[quote_at]
    return _Literal(text[:quote_at].lower(), quote)


def _tokens(sub: _Substituted) -> list[tokenize.TokenInfo]:
    starts = _line_starts(sub.text)
    try:
        return list(tokenize.generate_tokens(io.StringIO(sub.text).readline))
    except tokenize.TokenError as error:
        message, (row, column) = error.args
        row = min(max(row, 1), len(starts))
        offset = min(starts[row - 1] + column, len(sub.text))
        raise sub.error(offset, f"the script cannot be tokenized: {message}") from None
    except SyntaxError as error:
        offset = _syntax_error_offset(sub.text, error)
        raise sub.error(offset, f"the script cannot be tokenized: {error.msg}") from None


def _parse_interpolated(text: str) -> ast.expr:
    with _quiet():
        node = ast.parse(text, mode="eval").body
    if not isinstance(node, _INTERPOLATED):
        raise SyntaxError("not an f-string")
    return node


def _interpolation_constants(text: str) -> str:
    """The literal text parts of one f-string (or t-string) token, joined."""
    values: list[ast.expr] = getattr(_parse_interpolated(text), "values", [])
    return "".join(
        value.value for value in values if isinstance(value, ast.Constant) and isinstance(value.value, str)
    )


def _load_names(tree: ast.AST, names: frozenset[str]) -> set[str]:
    """The placeholder identifiers used as values (read names) in a tree."""
    return {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and node.id in names and isinstance(node.ctx, ast.Load)
    }


def _check_string_site(sub: _Substituted, site: _Site) -> None:
    literal = _literal_shape(site.text)
    if not literal.interpolated:
        return
    first = sub.pattern.search(site.text)
    assert first is not None
    if literal.raw:
        raise sub.error(
            site.start + first.start(),
            "placeholders in raw f-strings are not supported (drop the 'r' or use a plain raw string)",
        )
    try:
        constants = _interpolation_constants(site.text)
        in_code = _load_names(_parse_interpolated(site.text), sub.names)
    except SyntaxError:
        raise sub.error(site.start, "this f-string cannot be parsed") from None
    in_text = {match[1] for match in sub.pattern.finditer(constants)}
    for match in sub.pattern.finditer(site.text):
        if match[1] not in in_text or match[0] in in_code:
            raise sub.error(
                site.start + match.start(),
                "a placeholder inside an f-string replacement field ({...}) is not supported; "
                "assign the value to a variable and use that",
            )


def _classify(sub: _Substituted, token: tokenize.TokenInfo, start: int, end: int) -> _Site | None:
    found = sub.pattern.search(token.string)
    if token.type == tokenize.ERRORTOKEN and token.string.strip():
        raise sub.error(start, f"the script cannot be tokenized at {token.string!r}")
    if found is None:
        return None
    if token.type == tokenize.STRING:
        return _Site("string", start, end, token.string)
    if token.type == tokenize.COMMENT:
        return _Site("comment", start, end, token.string)
    if token.type == tokenize.NAME and token.string in sub.names:
        return _Site("code", start, end, token.string)
    if token.type == tokenize.NAME:
        raise sub.error(
            start + found.start(),
            "a placeholder in code must stand alone, not be glued to a name or keyword",
        )
    raise sub.error(start + found.start(), "a placeholder cannot go here")


def _plan(sub: _Substituted, tree: ast.AST) -> list[_Site]:
    """Every token that holds a placeholder; raises `_LocatedError` for unsupported places.

    `tree` is the parsed script (with identifiers): a placeholder in code must be a value
    there, not a name being bound, imported, an attribute or a keyword.
    """
    starts = _line_starts(sub.text)

    def at(position: tuple[int, int]) -> int:
        row = min(max(position[0], 1), len(starts))
        return min(starts[row - 1] + position[1], len(sub.text))

    sites: list[_Site] = []
    depth = 0
    group_start = 0
    for token in _tokens(sub):
        if token.type in _GROUP_STARTS:  # Python 3.12+: an f-string is many tokens
            if depth == 0:
                group_start = at(token.start)
            depth += 1
            continue
        if token.type in _GROUP_ENDS:
            depth -= 1
            if depth == 0:
                end = at(token.end)
                text = sub.text[group_start:end]
                if sub.pattern.search(text):
                    sites.append(_Site("string", group_start, end, text))
            continue
        if depth or token.type in (tokenize.ENDMARKER, tokenize.NEWLINE, tokenize.DEDENT):
            continue
        site = _classify(sub, token, at(token.start), at(token.end))
        if site is not None:
            sites.append(site)
    covered: set[int] = set()
    values = _load_names(tree, sub.names)
    for site in sites:
        if site.kind == "string":
            _check_string_site(sub, site)
        if site.kind == "code" and site.text not in values:
            raise sub.error(
                site.start,
                "a placeholder in code must stand where a value goes (not as a name being "
                "defined, assigned or imported, an attribute, a keyword or a match capture)",
            )
        covered.update(int(match[1]) for match in sub.pattern.finditer(site.text))
    for index, identifier_start in enumerate(sub.starts):
        if index not in covered:
            raise sub.error(identifier_start, "a placeholder cannot go here")
    return sites


def check_script_syntax(script: str) -> tuple[int, int, str] | None:
    """Replace placeholders by identifiers and compile; return (line, column, message) of a
    SyntaxError (1-based line and column, in the ORIGINAL script's coordinates), or None.

    The script is compiled as a function body, the way python_task runs it.

    Also reported, at the placeholder: an unclosed `{{`, and a placeholder where
    `render_script` would refuse it (in a raw f-string, inside an f-string replacement field,
    glued to a name).
    """
    source = _normalize(script)
    try:
        sub = _substitute(source)
        for placeholder in sub.placeholders:
            if not placeholder.expression:
                raise _LocatedError(placeholder.start, "the placeholder is empty")
        tree = _compile(sub.text)
        _plan(sub, tree)
    except _LocatedError as error:
        return (*_location(source, error.offset), error.message)
    except _CompileError as error:
        return (*_location(source, sub.to_original(error.offset)), error.message)
    return None


def _parse_text(text: str) -> ast.Module:
    """Parse `text`; raise `_CompileError` at the offset of a syntax error."""
    try:
        with _quiet():
            return ast.parse(text, _FILENAME)
    except SyntaxError as error:  # the parser counts columns in characters
        raise _CompileError(_syntax_error_offset(text, error), error.msg) from None
    except ValueError as error:  # NUL characters, lone surrogates
        raise _CompileError(max(text.find("\0"), 0), str(error)) from None


def _compile(text: str) -> ast.Module:
    """Parse `text` and compile it as the body of a function, as python_task runs it (so a
    top-level `return` is fine); raise `_CompileError` at the offset of a syntax error."""
    tree = _parse_text(text)
    with _quiet():
        wrapper = ast.parse("def __orchestrator_task__(context, inputs, storage):\n    pass\n")
    function = wrapper.body[0]
    assert isinstance(function, ast.FunctionDef)
    function.body = list(tree.body) or function.body
    try:
        with _quiet():
            compile(ast.fix_missing_locations(wrapper), _FILENAME, "exec", dont_inherit=True)
    except SyntaxError as error:  # the compiler counts columns in UTF-8 bytes
        if error.lineno is not None and error.offset is not None:
            line = text.split("\n")[min(max(error.lineno, 1), text.count("\n") + 1) - 1]
            prefix = line.encode("utf-8", "surrogatepass")[: max(error.offset - 1, 0)]
            error.offset = len(prefix.decode("utf-8", "ignore")) + 1
        raise _CompileError(_syntax_error_offset(text, error), error.msg) from None
    return tree


# --- values as text and as literals -----------------------------------------------------------


def _value_text(value: object) -> str:
    """What a value reads as inside a string or a comment (dicts and lists read like JSON)."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (dict, list, tuple)):
        with contextlib.suppress(TypeError, ValueError, RecursionError):
            return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _int_literal(value: int) -> str:
    try:
        text = int.__repr__(value)
    except ValueError:  # more digits than int/str conversion allows; hex has no limit
        text = hex(value)
    return f"({text})" if text.startswith("-") else text


def _float_literal(value: float) -> str:
    if math.isnan(value):
        return "float('nan')"
    if math.isinf(value):
        return "float('inf')" if value > 0 else "float('-inf')"
    text = float.__repr__(value)
    return f"({text})" if text.startswith("-") else text


def _container_literal(
    value: list[object] | tuple[object, ...] | dict[object, object], active: set[int]
) -> str:
    if isinstance(value, dict):
        items = ", ".join(f"{_literal(key, active)}: {_literal(item, active)}" for key, item in value.items())
        return "{" + items + "}"
    items = ", ".join(_literal(item, active) for item in value)
    if isinstance(value, list):
        return "[" + items + "]"
    return "(" + items + ("," if len(value) == 1 else "") + ")"


def _literal(value: object, active: set[int]) -> str:
    """A Python literal (an atom) whose value equals `value`."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return _int_literal(value)
    if isinstance(value, float):
        return _float_literal(value)
    if isinstance(value, str):
        return str.__repr__(value)
    if isinstance(value, (list, tuple, dict)):
        if id(value) in active:
            raise _Unrepresentable("a container that contains itself")
        active.add(id(value))
        try:
            return _container_literal(value, active)
        finally:
            active.discard(id(value))
    raise _Unrepresentable(f"a value of type {type(value).__name__!r}")


def _python_literal(value: object) -> str:
    try:
        return _literal(value, set())
    except RecursionError:
        raise _Unrepresentable("a value nested too deeply") from None


# --- escaping ---------------------------------------------------------------------------------


def _escape_char(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _escape_comment(text: str) -> str:
    return _COMMENT_SPECIAL.sub(lambda match: _escape_char(match[0]), text)


@functools.lru_cache(maxsize=8)
def _str_special(quote: str, interpolated: bool) -> re.Pattern[str]:
    braces = "{}" if interpolated else ""
    return re.compile(f"[\\\\{re.escape(quote)}{braces}{_SPECIAL}]")


def _escape_str(text: str, quote: str, interpolated: bool) -> str:
    """`text` written so it reads back exactly inside a non-raw str literal quoted by `quote`."""

    def replace(match: re.Match[str]) -> str:
        char = match[0]
        if char == quote[0]:
            return "\\" + char
        if char in "{}":
            return char * 2
        return _escape_char(char)

    return _str_special(quote[0], interpolated).sub(replace, text)


def _escape_bytes(data: bytes, quote: str) -> str:
    """`data` written so it reads back exactly inside a non-raw bytes literal."""
    pieces: list[str] = []
    for byte in data:
        char = chr(byte)
        if char in _SHORT_ESCAPES:
            pieces.append(_SHORT_ESCAPES[char])
        elif char == quote[0]:
            pieces.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            pieces.append(char)
        else:
            pieces.append(f"\\x{byte:02x}")
    return "".join(pieces)


# --- rendering --------------------------------------------------------------------------------


class _Renderer:
    def __init__(self, sub: _Substituted, values: list[object]) -> None:
        self.sub = sub
        self.values = values
        self._texts: dict[int, str] = {}

    def text(self, index: int) -> str:
        if index not in self._texts:
            try:
                self._texts[index] = _value_text(self.values[index])
            except Exception as error:
                message = f"{self.sub.describe(index)} cannot be turned into text: {error}"
                raise TemplateError(message) from error
        return self._texts[index]

    def encoded(self, index: int) -> bytes:
        try:
            return self.text(index).encode("utf-8")
        except UnicodeEncodeError:
            raise TemplateError(
                f"{self.sub.describe(index)} has text that cannot be put in a bytes literal"
            ) from None

    def substitute(self, value: str | bytes) -> str | bytes:
        """A literal's value with every identifier replaced by its placeholder's text."""
        if isinstance(value, bytes):
            return self.sub.bytes_pattern.sub(lambda match: self.encoded(int(match[1])), value)
        return self.sub.pattern.sub(lambda match: self.text(int(match[1])), value)

    def render(self, site: _Site) -> str:
        if site.kind == "code":
            return self.code(site)
        if site.kind == "comment":
            return self.comment(site)
        literal = _literal_shape(site.text)
        rendered = self.raw(site, literal) if literal.raw else self.escaped(site, literal)
        self.verify_string(site, literal, rendered)
        return rendered

    def code(self, site: _Site) -> str:
        index = self.sub.index(site.text)
        try:
            literal = _python_literal(self.values[index])
        except _Unrepresentable as error:
            raise TemplateError(
                f"{self.sub.describe(index)} is {error}, which cannot be written into code as "
                "a Python literal (use it inside a string, or pass None, a bool, a number, a "
                "string, or a list, tuple or dict of those)"
            ) from None
        lost = self.sub.lost_lines(index)
        if lost or (literal[0].isdigit() and self.sub.text.startswith(".", site.end)):
            return f"({literal}{chr(10) * lost})"  # `(3).real`, or room for the line breaks
        return literal

    def comment(self, site: _Site) -> str:
        lost = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal lost
            lost += self.sub.lost_lines(int(match[1]))
            return _escape_comment(self.text(int(match[1])))

        return self.sub.pattern.sub(replace, site.text) + "\n" * lost

    def escaped(self, site: _Site, literal: _Literal) -> str:
        body_start = len(literal.prefix) + len(literal.quote)
        pieces: list[str] = []
        last = 0
        for match in self.sub.pattern.finditer(site.text):
            index = int(match[1])
            start = match.start()
            backslashes = start
            while backslashes > body_start and site.text[backslashes - 1] == "\\":
                backslashes -= 1
            lead = ""
            if (start - backslashes) % 2:
                # The author's backslash escapes nothing real (it precedes "_"): Python keeps
                # it as a backslash, so it becomes an escaped one before the inserted text.
                start -= 1
                lead = "\\\\"
            if literal.is_bytes:
                escaped = _escape_bytes(self.encoded(index), literal.quote)
            else:
                escaped = _escape_str(self.text(index), literal.quote, literal.interpolated)
            pieces += [site.text[last:start], lead, escaped, "\\\n" * self.sub.lost_lines(index)]
            last = match.end()
        pieces.append(site.text[last:])
        return "".join(pieces)

    def raw(self, site: _Site, literal: _Literal) -> str:
        """A raw string cannot escape anything: it becomes the repr() of its final value,
        split over as many physical lines as it had."""
        final = self.substitute(_literal_value(site.text))
        count = 1 + site.text.count("\n")
        count += sum(self.sub.lost_lines(int(m[1])) for m in self.sub.pattern.finditer(site.text))
        if isinstance(final, bytes):
            segments: list[str] = [repr(part) for part in _split_lines(final, b"\n", count)]
        else:
            segments = [repr(part) for part in _split_lines(final, "\n", count)]
        return " \\\n".join(segments)

    def verify_string(self, site: _Site, literal: _Literal, rendered: str) -> None:
        try:
            if literal.interpolated:
                expected: str | bytes = self.substitute(_interpolation_constants(site.text))
                actual: str | bytes = _interpolation_constants(rendered)
            else:
                expected = self.substitute(_literal_value(site.text))
                actual = _literal_value(rendered)
        except (SyntaxError, ValueError):
            actual, expected = "", "?"
        if actual != expected:
            first = self.sub.pattern.search(site.text)
            index = int(first[1]) if first else 0
            raise TemplateError(
                f"{self.sub.describe(index)}: the value cannot be inserted safely into this "
                "string literal (is an escape sequence open right before the placeholder?)"
            )


def _literal_value(text: str) -> str | bytes:
    with _quiet():
        value = ast.literal_eval(text)
    if not isinstance(value, (str, bytes)):
        raise ValueError("not a string literal")
    return value


def _split_lines(value: AnyStr, newline: AnyStr, count: int) -> list[AnyStr]:
    """`value` cut into exactly `count` pieces, after line breaks where it has them."""
    cuts = [0]
    for _ in range(count - 1):
        position = value.find(newline, cuts[-1])
        cuts.append(len(value) if position < 0 else position + 1)
    cuts.append(len(value))
    return [value[start:end] for start, end in itertools.pairwise(cuts)]


# --- the last line of defence -----------------------------------------------------------------


def _is_literal(node: ast.AST) -> bool:
    """Whether a node is one of the literals `_python_literal` writes."""
    pending = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, ast.Constant):
            continue
        if isinstance(current, ast.UnaryOp) and isinstance(current.op, ast.USub):
            if not isinstance(current.operand, ast.Constant):
                return False
        elif isinstance(current, (ast.List, ast.Tuple)):
            pending.extend(current.elts)
        elif isinstance(current, ast.Dict):
            if any(key is None for key in current.keys):
                return False
            pending.extend(key for key in current.keys if key is not None)
            pending.extend(current.values)
        elif not (
            isinstance(current, ast.Call)
            and isinstance(current.func, ast.Name)
            and current.func.id == "float"
            and len(current.args) == 1
            and isinstance(current.args[0], ast.Constant)
            and not current.keywords
        ):
            return False
    return True


def _children(template: ast.AST, rendered: ast.AST) -> list[tuple[object, object]] | None:
    """Pairs of child fields to compare, or None if the two nodes differ here."""
    if isinstance(template, _INTERPOLATED):
        left = [v for v in getattr(template, "values", []) if not isinstance(v, ast.Constant)]
        right = [v for v in getattr(rendered, "values", []) if not isinstance(v, ast.Constant)]
        return list(zip(left, right, strict=False)) if len(left) == len(right) else None
    pairs: list[tuple[object, object]] = []
    for name in template._fields:
        left_value = getattr(template, name, None)
        right_value = getattr(rendered, name, None)
        if isinstance(left_value, list) and isinstance(right_value, list):
            if len(left_value) != len(right_value):
                return None
            pairs.extend(zip(left_value, right_value, strict=False))
        else:
            pairs.append((left_value, right_value))
    return pairs


def _same_shape(template: ast.AST, rendered: ast.AST, names: frozenset[str]) -> bool:
    """Whether two trees are equal except for string contents and placeholders -> literals."""
    pending: list[tuple[object, object]] = [(template, rendered)]
    while pending:
        left, right = pending.pop()
        if isinstance(left, ast.Name) and left.id in names:
            if not isinstance(right, ast.AST) or not _is_literal(right):
                return False
            continue
        if type(left) is not type(right):
            return False
        if isinstance(left, ast.Constant) and isinstance(right, ast.Constant):
            if type(left.value) is not type(right.value):
                return False
            continue
        if not isinstance(left, ast.AST) or not isinstance(right, ast.AST):
            if left != right:
                return False
            continue
        pairs = _children(left, right)
        if pairs is None:
            return False
        pending.extend(pairs)
    return True


def _parse_rendered(rendered: str) -> ast.Module:
    try:
        with _quiet():
            return ast.parse(rendered, _FILENAME)
    except (SyntaxError, ValueError) as error:
        line = f"script line {error.lineno}: " if isinstance(error, SyntaxError) else ""
        raise TemplateError(
            f"{line}a placeholder is where a value cannot go: the rendered script is not valid "
            f"Python ({error})"
        ) from None


def render_script(script: str, evaluate: Callable[[str], object]) -> str:
    """Return Python source where each placeholder has been replaced by the value
    `evaluate(expr_source)` returns, safely.

    `evaluate` is called once per placeholder, in order, with the expression's source text.
    Raises `TemplateError` (with the script line) when the script does not tokenize or parse
    with its placeholders as names, when a placeholder sits where no value can go (glued to a
    name, in a raw f-string, inside an f-string replacement field), or when a value placed in
    code has no Python literal. Exceptions raised by `evaluate` propagate unchanged.
    """
    prepared = _prepared(script)
    if prepared is None:
        return script
    sub, template_tree, sites = prepared
    renderer = _Renderer(sub, [evaluate(p.expression) for p in sub.placeholders])
    pieces: list[str] = []
    last = 0
    for site in sites:
        pieces += [sub.text[last : site.start], renderer.render(site)]
        last = site.end
    pieces.append(sub.text[last:])
    rendered = "".join(pieces)
    if not _same_shape(template_tree, _parse_rendered(rendered), sub.names):
        raise TemplateError("a placeholder value would change the script's code; refused")
    return rendered


@functools.lru_cache(maxsize=1024)
def _prepared(script: str) -> tuple[_Substituted, ast.Module, tuple[_Site, ...]] | None:
    """What rendering needs from the script's text alone (None: it has no placeholder),
    worked out once per text: a task in a loop renders the same script for every item.
    Raises `TemplateError` (not cached: it is raised again each time)."""
    source = _normalize(script)
    try:
        sub = _substitute(source)
    except _LocatedError as error:
        raise TemplateError(_message(source, error)) from None
    if not sub.placeholders:
        return None
    for index, placeholder in enumerate(sub.placeholders):
        if not placeholder.expression:
            raise TemplateError(f"{sub.describe(index)}: the placeholder is empty")
    try:
        template_tree = _parse_text(sub.text)
        sites = _plan(sub, template_tree)
    except _CompileError as error:
        located = sub.error(error.offset, f"the script is not valid Python: {error.message}")
        raise TemplateError(_message(source, located)) from None
    except _LocatedError as error:
        raise TemplateError(_message(source, error)) from None
    return sub, template_tree, tuple(sites)
