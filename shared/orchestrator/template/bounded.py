"""The sandbox's size limit: what a template makes stays under `MAX_TEMPLATE_SIZE`.

Jinja's sandbox keeps templates away from Python's internals but lets them allocate at will
(`'x' * 300000000`, `'%999999999s' % x`, `'a' | center(10**9)`, `[big] * 100000 | join`).
The environment built here checks every operation that can make something much larger than
what it was made from, before making it: a result may hold at most `MAX_TEMPLATE_SIZE`
characters or items more than its largest operand (so transforming a big task output is
fine, repeating it is not). Shared references count each time they are written
out (`[big] * 1000` is 1,000 `big`s once it is text or JSON). `check_expansion` and
`bounded_join` apply the same rule to a value an expression gives and to rendered text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2 import Undefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_SIZE = 10_000_000
"""Characters of text, or items of a list or mapping, a template may make (about 10 MB)."""

_MAX_INT_BITS = 14_300  # about 4,300 decimal digits, Python's limit on printing an int
_NUMBER = re.compile(r"\d+")
_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
_COUNT_FILTERS = frozenset({"center", "indent", "batch", "slice"})
_EXPANDING_FILTERS = frozenset({"join", "sum", "tojson", "string", "pprint", "list", "unique", "sort"})


class TemplateTooLarge(Exception):
    """A template would make something past `MAX_TEMPLATE_SIZE`."""


def _too_large(what: str) -> TemplateTooLarge:
    return TemplateTooLarge(
        f"{what} would make more than {MAX_TEMPLATE_SIZE:,} characters or items, the most a "
        "template may make; make it smaller, or do it in a python_task"
    )


def _size(value: Any) -> int:
    """Shallow size: characters of text, items of a container, 0 for anything else."""
    if isinstance(value, str | list | tuple | dict | bytes):
        return len(value)
    return 0


_ATOMS = frozenset({int, float, bool, type(None)})
_SHORT_TEXT = 64  # texts up to this long count as their own, even when Python shares them


def _sizes(value: Any) -> tuple[int, int]:
    """(expanded, distinct): the size of `value` written out (every text's characters, every
    container's items, a shared part each time it appears), and counting each part once.
    One walk over the distinct parts; a part inside itself counts once."""
    done: dict[int, int] = {}
    distinct = 0
    on_path: set[int] = set()
    stack: list[tuple[Any, list[Any]]] = []

    def enter(current: Any) -> int | None:
        """The size of an atom or a known part; None after pushing a new container."""
        nonlocal distinct
        if type(current) in _ATOMS:  # (a mapping's key or value: a list counts its own)
            distinct += 1
            return 1
        if isinstance(current, str):
            if len(current) <= _SHORT_TEXT or id(current) not in done:  # (short texts are interned)
                done[id(current)] = len(current)
                distinct += len(current)
            return len(current)
        if id(current) in done or id(current) in on_path:
            return done.get(id(current), 0)
        if isinstance(current, list | tuple):
            children = [item for item in current if type(item) not in _ATOMS]
            own = len(current)
        elif isinstance(current, Mapping):
            children = [*current.keys(), *current.values()]
            own = len(current)
        else:
            return 1
        distinct += own
        on_path.add(id(current))
        stack.append((current, children))
        done_children[id(current)] = own
        return None

    done_children: dict[int, int] = {}
    root = enter(value)
    if root is not None:
        return root, distinct
    while stack:
        current, children = stack[-1]
        if children:
            child = children.pop()
            size = enter(child)
            if size is not None:
                done_children[id(current)] += size
            continue
        stack.pop()
        on_path.discard(id(current))
        total = done_children.pop(id(current))
        done[id(current)] = total
        if stack:
            done_children[id(stack[-1][0])] += total
    return done[id(value)], distinct


def check_expansion(value: Any, *, allowed: int = 0) -> None:
    """Refuse a value larger than the limit (or `allowed`) once written out because of its
    shared parts (`[big] * 1000`); a value that is large by itself (a task output) is not."""
    if type(value) in _ATOMS or isinstance(value, str):
        return
    expanded, distinct = _sizes(value)
    if expanded > MAX_TEMPLATE_SIZE + allowed and expanded > distinct:
        raise _too_large("writing this value out")


def bounded_join(pieces: Iterable[Any]) -> str:
    """Rendered text from its pieces, stopping once it passes the limit plus twice its
    largest piece (a big task output in a prompt is fine, a loop repeating it is not)."""
    parts: list[str] = []
    total = largest = 0
    for piece in pieces:
        text = str(piece)
        total += len(text)
        largest = max(largest, len(text))
        if total > MAX_TEMPLATE_SIZE + 2 * largest:
            raise _too_large("the rendered text")
        parts.append(text)
    return "".join(parts)


def _check_numbers(what: str, values: Iterable[Any], limit: int = MAX_TEMPLATE_SIZE) -> None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise _too_large(f"{what} with {value:,}")
        if isinstance(value, str):
            for number in _NUMBER.findall(value):
                if len(number) > 9 or int(number) > limit:
                    raise _too_large(f"{what} with a width of {number}")


def _check_printf(what: str, template: str, arguments: Iterable[Any]) -> None:
    """Widths and precisions of a `%` format (`%*d` takes its width from the arguments)."""
    specs = re.findall(r"%[^a-zA-Z%]*", template)
    _check_numbers(what, specs)
    if any("*" in spec for spec in specs):
        _check_numbers(what, [a for a in arguments if isinstance(a, int)])


def _check_format(what: str, template: str, arguments: Iterable[Any]) -> None:
    """Widths and precisions of a `str.format` template (`{:{w}}` takes one from the arguments)."""
    _check_numbers(what, re.findall(r"\{[^{}]*\}", template))
    if re.search(r"\{[^{}]*\{", template):
        _check_numbers(what, [a for a in arguments if isinstance(a, int)])


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for sequence, count in ((left, right), (right, left)):
            if (
                isinstance(sequence, str | list | tuple)
                and isinstance(count, int)
                and len(sequence) * count > MAX_TEMPLATE_SIZE + len(sequence)
            ):
                raise _too_large(f"repeating {type(sequence).__name__} {count:,} times")
    elif operator == "**":
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and abs(left).bit_length() * right > _MAX_INT_BITS
        ):
            raise TemplateTooLarge(
                f"a power with exponent {right:,} would have more than 4,300 digits; make it smaller"
            )
    elif operator == "%" and isinstance(left, str):
        _check_printf("'%' formatting", left, right if isinstance(right, tuple) else (right,))
    elif operator == "+" and _size(left) + _size(right) > MAX_TEMPLATE_SIZE + max(_size(left), _size(right)):
        raise _too_large("'+'")


def _checked_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    counts, expanding = name in _COUNT_FILTERS, name in _EXPANDING_FILTERS

    def checked(*args: Any, **kwargs: Any) -> Any:
        if counts or expanding or name == "format":
            values = _operands(args)
            if name == "format" and values and isinstance(values[0], str):
                _check_printf("the 'format' filter", values[0], [*values[1:], *kwargs.values()])
            elif counts:
                _check_numbers(f"the '{name}' filter", [*values[1:], *kwargs.values()])
            if expanding and values:
                check_expansion(values[0], allowed=_size(values[0]))
            # the separator of `join`, written once between every two items
            if name == "join" and len(values) > 1 and _size(values[1]) * _size(values[0]) > MAX_TEMPLATE_SIZE:
                raise _too_large("the 'join' filter's separator")
        result = function(*args, **kwargs)
        if _size(result) > MAX_TEMPLATE_SIZE and not expanding:
            # (what `tojson` or `join` makes is as large as its checked input, written out)
            _check_result(result, f"the '{name}' filter", [*_operands(args), *kwargs.values()])
        return result

    if hasattr(function, "jinja_pass_arg"):  # pass_context / pass_environment / pass_eval_context
        checked.jinja_pass_arg = function.jinja_pass_arg  # type: ignore[attr-defined]
    return checked


@functools.cache
def _context_types() -> tuple[type, ...]:
    from jinja2.environment import Environment
    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context

    return (Context, EvalContext, Environment)


def _operands(args: tuple[Any, ...]) -> list[Any]:
    """A filter's arguments without the context Jinja passes to some."""
    return [a for a in args if not isinstance(a, _context_types())]


def _check_result(result: Any, what: str, operands: Iterable[Any]) -> None:
    """A result may be the limit larger than its largest operand, no more."""
    if _size(result) > MAX_TEMPLATE_SIZE + max([0, *(_size(o) for o in operands)]):
        raise _too_large(what)


def _checked_lipsum(function: Callable[..., Any]) -> Callable[..., Any]:
    def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:
        if isinstance(n, int) and isinstance(max, int) and n * max * 12 > MAX_TEMPLATE_SIZE:
            raise _too_large(f"lipsum({n:,} paragraphs of up to {max:,} words)")
        return function(n, html, min, max)

    return lipsum


def bounded_environment(
    undefined: type[Undefined], tojson: Callable[[Any], str]
) -> ImmutableSandboxedEnvironment:
    """Jinja's immutable sandbox with the size limit (see the module docstring)."""
    from jinja2.compiler import CodeGenerator, Frame
    from jinja2.nodes import Concat
    from jinja2.runtime import Context
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generator(CodeGenerator):
        def visit_Concat(self, node: Concat, frame: Frame) -> None:  # `a ~ b`, checked
            self.write("environment.bounded_concat((")
            for argument in node.nodes:
                self.visit(argument, frame)
                self.write(", ")
            self.write("))")

    class Bounded(ImmutableSandboxedEnvironment):
        code_generator_class = Generator
        intercepted_binops = frozenset({"*", "**", "%", "+"})

        def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
            _check_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)  # str.format is wrapped
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, str):
                if name in _WIDTH_METHODS:
                    _check_numbers(
                        f"str.{name}", [a for a in [*args, *kwargs.values()] if isinstance(a, int)]
                    )
                elif name in {"format", "format_map"}:
                    _check_format(f"str.{name}", owner, [*args, *kwargs.values()])
                elif name == "replace" and len(args) >= 2 and isinstance(args[0], str):
                    made = len(owner) + (owner.count(args[0]) + 1) * _size(args[1])
                    if made > MAX_TEMPLATE_SIZE + len(owner):
                        raise _too_large("str.replace")
                elif name == "join" and args:
                    check_expansion(args[0], allowed=_size(args[0]))
            result = super().call(__context, __obj, *args, **kwargs)
            if _size(result) > MAX_TEMPLATE_SIZE:
                _check_result(result, f"calling {name or 'a function'}", [owner, *args, *kwargs.values()])
            return result

        def bounded_concat(self, parts: tuple[Any, ...]) -> str:
            for part in parts:
                check_expansion(part)
            texts = [str(part) for part in parts]
            if sum(map(len, texts)) > MAX_TEMPLATE_SIZE + max(map(len, texts), default=0):
                raise _too_large("'~'")
            return "".join(texts)

    environment = Bounded(
        undefined=undefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize
    )
    environment.filters["tojson"] = tojson
    environment.filters = {name: _checked_filter(name, f) for name, f in environment.filters.items()}
    environment.globals["lipsum"] = _checked_lipsum(environment.globals["lipsum"])  # type: ignore[arg-type]
    return environment


def _finalize(value: Any) -> Any:
    """Every `{{ }}` of rendered text, before it becomes text."""
    if not isinstance(value, str | int | float | bool) and value is not None:
        check_expansion(value)
    return value
