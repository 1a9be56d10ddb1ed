"""python_task script rendering: every value lands as data, never as code (SPEC section 4)."""

from __future__ import annotations

import ast
import enum
import math
import random
import traceback
from collections.abc import Callable

import pytest

from orchestrator.errors import OrchestratorError, TemplateError
from orchestrator.template.script import (
    check_script_syntax,
    find_script_expressions,
    render_script,
)

# --- helpers ----------------------------------------------------------------------------------


def constant(value: object) -> Callable[[str], object]:
    """An evaluate callback that answers `value` to every expression."""
    return lambda _expression: value


def lookup(values: dict[str, object]) -> Callable[[str], object]:
    return lambda expression: values[expression]


def run(source: str) -> dict[str, object]:
    """Exec rendered source in a fresh namespace; fail if any injected code ran."""
    calls: list[object] = []
    namespace: dict[str, object] = {"hook": lambda *args: calls.append(args)}
    exec(compile(source, "<rendered>", "exec"), namespace)
    assert calls == [], f"injected code ran: {source!r}"
    assert "PWNED" not in namespace, f"injected code set a global: {source!r}"
    return namespace


def render_and_run(script: str, value: object) -> dict[str, object]:
    rendered = render_script(script, constant(value))
    assert rendered.count("\n") == script.count("\n"), "physical lines changed"
    return run(rendered)


HOSTILE = [
    '"; import os; os.system("id") #',
    "'; hook(); '",
    '"; hook(); "',
    "'''; hook(); '''",
    '"""; hook(); """',
    "\\",
    "ends with a backslash\\",
    "\\'",
    '\\"',
    "line one\nline two",
    "\"\nraise SystemExit('pwned')\n#",
    "'\nraise SystemExit('pwned')\n#",
    "'\nPWNED = True\n'",
    '"\nglobals()["PWNED"] = True\n"',
    '"""\nPWNED = True\n"""',
    "'''\nPWNED = True\n'''",
    "carriage\rreturn\r\nand crlf",
    "nul\x00 bell\x07 esc\x1b del\x7f c1\x85\x9b ff\x0c vt\x0b",
    "{{ x }} and {% if x %}{% endif %} and {# c #}",
    "{hook()} {{hook()}} {0} { } }",
    "héllo wörld ✓ 𝄞 日本語 \u2028\u2029 \u202e\u2066 \ufeff",
    "\\N{BULLET} \\x41 \\u0041 \\n \\0",
    "__orch_placeholder_0__ __orch_placeholder_1__",
    "",
    "\t tab and spaces  ",
    "# not a comment",
    "\\\n",
]

# Each script binds `v` to exactly the text of `{{ x }}` when rendering is correct.
STRING_CONTEXTS = {
    "double": 'v = "{{ x }}"',
    "single": "v = '{{ x }}'",
    "triple_double": 'v = """{{ x }}"""',
    "triple_single": "v = '''{{ x }}'''",
    "triple_multiline": 'v = """\n{{ x }}\n"""[1:-1]',
    "unicode_prefix": 'v = u"{{ x }}"',
    "raw_double": 'v = r"{{ x }}"',
    "raw_single": "v = R'{{ x }}'",
    "raw_triple": "v = r'''{{ x }}'''",
    "raw_multiline": 'v = r"""\n{{ x }}\n"""[1:-1]\nw = 2',
    "fstring": 'v = f"{{ x }}"',
    "fstring_single": "v = F'{{ x }}'",
    "fstring_triple": 'v = f"""{{ x }}"""',
    "fstring_with_fields": 'n = 1\nv = f"<{n}>{{ x }}<{n!r:>1}>"[3:-3]',
    "bytes": 'v = b"{{ x }}".decode()',
    "bytes_single": "v = B'{{ x }}'.decode()",
    "bytes_triple": "v = b'''{{ x }}'''.decode()",
    "raw_bytes": 'v = rb"{{ x }}".decode()',
    "raw_bytes_triple": "v = Br'''{{ x }}'''.decode()",
    "surrounded": 'v = "<<{{ x }}>>"[2:-2]',
    "implicit_concatenation": "v = 'a' \"{{ x }}\" '''b'''\nv = v[1:-1]",
    "after_backslash": 'v = "\\{{ x }}"[1:]',
    "in_call": 'v = str("{{ x }}")',
    "in_dict": 'v = {"k": "{{ x }}"}["k"]',
}


# --- finding expressions ----------------------------------------------------------------------


def test_finds_every_expression_in_order() -> None:
    script = 'a = "{{ first }}"\nb = {{second}}  # {{ third | upper }}\n'
    assert find_script_expressions(script) == ["first", "second", "third | upper"]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ('x = {{ x | default("a}b") }}', ['x | default("a}b")']),
        ("x = {{ x | default('}}') }}", ["x | default('}}')"]),
        ('x = {{ "a\\"}}b" ~ y }}', ['"a\\"}}b" ~ y']),
        ("x = {{ {'k': {'n': 1}}['k'] }}", ["{'k': {'n': 1}}['k']"]),
        ("x = {{ [1, 2][0] }}{{ y }}", ["[1, 2][0]", "y"]),
        ("x = {{- trimmed -}}", ["trimmed"]),
        ("x = {{\n  multi\n  | line\n}}", ["multi\n  | line"]),
        ("x = 1  # {% if a %}{# note #}{% endif %}", []),
        ("x = '{ not } a placeholder'", []),
    ],
)
def test_expression_scanning(script: str, expected: list[str]) -> None:
    assert find_script_expressions(script) == expected


def test_unclosed_placeholder_is_an_error_with_its_line() -> None:
    with pytest.raises(TemplateError, match="line 2"):
        find_script_expressions("a = 1\nb = {{ x\nc = 2\n")
    with pytest.raises(TemplateError, match="line 1"):
        find_script_expressions("b = {{ x | default('}}) }}\n")


def test_template_error_is_an_orchestrator_error() -> None:
    assert issubclass(TemplateError, OrchestratorError)


def test_expression_with_filters_and_quotes_is_passed_verbatim() -> None:
    seen: list[str] = []

    def evaluate(expression: str) -> object:
        seen.append(expression)
        return "value"

    rendered = render_script('v = "{{ x | default("a}b") }}"\nw = {{ y | d(\'}}\') }}', evaluate)
    assert seen == ['x | default("a}b")', "y | d('}}')"]
    namespace = run(rendered)
    assert namespace["v"] == "value"
    assert namespace["w"] == "value"


# --- string literals --------------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("context", sorted(STRING_CONTEXTS))
def test_hostile_text_in_string_literal_is_data(context: str, text: str) -> None:
    namespace = render_and_run(STRING_CONTEXTS[context], text)
    assert namespace["v"] == text


@pytest.mark.parametrize("context", sorted(STRING_CONTEXTS))
def test_property_arbitrary_text_round_trips_in_every_literal_kind(context: str) -> None:
    # hypothesis is not installed: a seeded generator over the dangerous alphabet instead.
    alphabet = list("abc xyz019'\"\\{}%#\n\r\t\x00\x01\x1f\x7f\x85\xa0é✓𝄞\u2028\u202e_")
    alphabet += ["'''", '"""', "{{", "}}", "\\x", "\\N{", "__orch_placeholder_0__", "\r\n"]
    generator = random.Random(f"script-{context}")
    for _ in range(60):
        text = "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 24)))
        namespace = render_and_run(STRING_CONTEXTS[context], text)
        assert namespace["v"] == text, (context, text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "None"),
        (True, "True"),
        (False, "False"),
        (42, "42"),
        (1.5, "1.5"),
        ({"a": 1, "b": [True, None]}, '{"a": 1, "b": [true, null]}'),
        (["x", 2], '["x", 2]'),
        ({"é": "✓"}, '{"é": "✓"}'),
    ],
)
def test_non_string_values_in_strings_insert_their_text(value: object, text: str) -> None:
    for script in ('v = "{{ x }}"', "v = r'{{ x }}'", 'v = f"{{ x }}"'):
        assert render_and_run(script, value)["v"] == text
    assert render_and_run('v = b"{{ x }}".decode()', value)["v"] == text


def test_author_backslash_before_placeholder_stays_a_backslash() -> None:
    script = 'v = "C:\\{{ d }}"\nw = b"C:\\{{ d }}"\nu = f"C:\\{{ d }}"'
    namespace = run(render_script(script, constant('dir"; hook(); "')))
    assert namespace["v"] == 'C:\\dir"; hook(); "'
    assert namespace["w"] == b'C:\\dir"; hook(); "'
    assert namespace["u"] == 'C:\\dir"; hook(); "'


def test_escaped_backslash_before_placeholder_is_kept() -> None:
    namespace = run(render_script('v = "a\\\\{{ x }}"', constant('"; hook(); "')))
    assert namespace["v"] == 'a\\"; hook(); "'


def test_raw_string_becomes_repr_of_its_final_value() -> None:
    rendered = render_script("v = r'\\d+{{ x }}\\s'", constant("'\\"))
    assert rendered == "v = " + repr("\\d+'\\\\s")
    assert run(rendered)["v"] == "\\d+'\\\\s"


def test_multiline_raw_string_keeps_its_lines() -> None:
    script = 'v = r"""one\n{{ x }}\nthree"""\nraise ValueError("line 4")\n'
    rendered = render_script(script, constant("two\\"))
    assert rendered.count("\n") == script.count("\n")
    with pytest.raises(ValueError, match="line 4") as caught:
        exec(compile(rendered, "<rendered>", "exec"), {})
    assert traceback.extract_tb(caught.value.__traceback__)[-1].lineno == 4
    assert run(rendered.replace('raise ValueError("line 4")', "pass"))["v"] == "one\ntwo\\\nthree"


def test_multiple_placeholders_in_one_literal_and_one_line() -> None:
    values = {"a": "'A'", "b": '"B"\n', "n": 3}
    with pytest.raises(TemplateError, match="replacement field"):
        render_script('w = f"{{ b }}{ {{ n }} if False else 1}"', lookup(values))
    script = "v = '{{ a }}-{{ b }}'; w = f\"{{ b }}{1}{{ a }}\"; z = [{{ n }}, '{{ a }}']"
    namespace = run(render_script(script, lookup(values)))
    assert namespace["v"] == "'A'-\"B\"\n"
    assert namespace["w"] == "\"B\"\n1'A'"
    assert namespace["z"] == [3, "'A'"]


def test_evaluate_is_called_once_per_placeholder_in_order() -> None:
    seen: list[str] = []

    def evaluate(expression: str) -> object:
        seen.append(expression)
        return len(seen)

    script = "a = {{ x }}\nb = '{{ y }}'  # {{ x }}\nc = {{ z }}\n"
    namespace = run(render_script(script, evaluate))
    assert seen == ["x", "y", "x", "z"]
    assert (namespace["a"], namespace["b"], namespace["c"]) == (1, "2", 4)


def test_lone_surrogates_are_escaped_in_str_and_refused_in_bytes() -> None:
    text = "a\ud800b"
    assert render_and_run('v = "{{ x }}"', text)["v"] == text
    assert render_and_run("v = r'{{ x }}'", text)["v"] == text
    assert render_and_run("v = {{ x }}", text)["v"] == text
    with pytest.raises(TemplateError, match="bytes"):
        render_script('v = b"{{ x }}"', constant(text))
    with pytest.raises(TemplateError, match="bytes"):
        render_script('v = rb"{{ x }}"', constant(text))


def test_non_ascii_in_bytes_is_utf8() -> None:
    rendered = render_script('v = b"{{ x }}"', constant("é✓"))
    assert rendered.isascii()
    assert run(rendered)["v"] == "é✓".encode()


def test_raw_fstring_placeholder_is_refused() -> None:
    for script in ('v = rf"{{ x }}"', "v = fR'''{{ x }}'''"):
        with pytest.raises(TemplateError, match="raw f-strings"):
            render_script(script, constant("a"))


@pytest.mark.parametrize(
    "script",
    [
        'v = f"{ {{ x }} }"',
        'v = f"{x:{{ w }}}"',
        "v = f\"{ '{{ x }}' }\"",
        'v = f"{ {{ x }}= }"',
    ],
)
def test_placeholder_inside_fstring_field_is_refused(script: str) -> None:
    with pytest.raises(TemplateError, match="line 1"):
        render_script(script, constant("hook()"))


# --- comments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_in_comment_stays_in_the_comment(text: str) -> None:
    script = "# {{ x }}\nv = 1  # and {{ x }} again\n"
    rendered = render_script(script, constant(text))
    assert rendered.count("\n") == 2
    assert ast.dump(ast.parse(rendered)) == ast.dump(ast.parse("v = 1\n"))
    assert run(rendered)["v"] == 1


def test_comment_text_is_escaped_readably() -> None:
    rendered = render_script("# value: {{ x }}\n", constant("a\nb\r\x00'\"c"))
    assert rendered == "# value: a\\nb\\r\\x00'\"c\n"


# --- code -------------------------------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        7,
        -3,
        10**5000,
        -(10**5000),
        1.5,
        -2.25,
        1e300,
        5e-324,
        "text",
        "",
        [],
        {},
        (),
        (1,),
        (1, "two", None),
        [1, "a", None, [2.5, [True]]],
        {"id": 1, "content": "x"},
        {"nested": {"list": [1, 2.5, {"deep": [True, None]}]}, "t": (1, "t")},
        {1: "int key", (1, 2): "tuple key", None: "none key", 2.5: "float key"},
    ],
    ids=lambda value: type(value).__name__,
)
def test_code_position_inserts_an_equal_literal(value: object) -> None:
    namespace = render_and_run("v = {{ x }}", value)
    assert namespace["v"] == value
    assert type(namespace["v"]) is type(value)


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_in_code_becomes_a_string(text: str) -> None:
    assert render_and_run("v = {{ x }}", text)["v"] == text


def test_dict_in_code_reads_as_a_dict_literal() -> None:
    rendered = render_script("item = {{ current_item }}", constant({"id": 1, "content": "x"}))
    assert rendered == "item = {'id': 1, 'content': 'x'}"


def test_special_floats_and_negative_zero() -> None:
    namespace = run(
        render_script(
            "a = {{ nan }}\nb = {{ inf }}\nc = {{ ninf }}\nd = {{ nzero }}\ne = [{{ nan }}]",
            lookup({"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "nzero": -0.0}),
        )
    )
    assert math.isnan(namespace["a"])  # type: ignore[arg-type]
    assert namespace["b"] == math.inf
    assert namespace["c"] == -math.inf
    assert math.copysign(1.0, namespace["d"]) == -1.0  # type: ignore[arg-type]
    assert math.isnan(namespace["e"][0])  # type: ignore[index]


def test_int_subclass_becomes_a_plain_int() -> None:
    namespace = render_and_run("v = {{ x }}", Color.RED)
    assert namespace["v"] == 1
    assert type(namespace["v"]) is int


@pytest.mark.parametrize(
    ("script", "value", "expected"),
    [
        ("v = {{ x }} ** 2", -2, 4),
        ("v = -{{ x }}", -5, 5),
        ("v = 2 ** {{ x }}", -1, 0.5),
        ("v = {{ x }}.bit_length()", 5, 3),
        ("v = {{ x }}[1]", [1, 2], 2),
        ("v = {{ x }}['k']", {"k": "v"}, "v"),
        ("v = len({{ x }})", (1, 2, 3), 3),
        ("v = not {{ x }}", None, True),
        ("v = {{ x }}.upper()", "abc", "ABC"),
    ],
)
def test_literal_keeps_its_precedence(script: str, value: object, expected: object) -> None:
    assert render_and_run(script, value)["v"] == expected


@pytest.mark.parametrize(
    "value",
    [{1, 2}, object(), b"bytes", 1j, [1, {2}], {"k": object()}],
    ids=["set", "object", "bytes", "complex", "nested_set", "nested_object"],
)
def test_value_without_literal_is_refused_naming_the_expression(value: object) -> None:
    with pytest.raises(TemplateError, match=r"current_item.*line 1|line 1.*current_item"):
        render_script("item = {{ current_item }}", constant(value))


def test_self_containing_value_is_refused() -> None:
    looped: list[object] = [1]
    looped.append(looped)
    with pytest.raises(TemplateError, match="contains itself"):
        render_script("v = {{ x }}", constant(looped))
    assert render_and_run("v = '{{ x }}'", looped)["v"] == "[1, [...]]"


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("v = f{{ x }}", "glued"),
        ("v = r{{ x }}", "glued"),
        ("v = {{ x }}{{ y }}", "glued"),
        ("def {{ x }}():\n    pass", "where a value goes"),
        ("{{ x }} = 1", "where a value goes"),
        ("import {{ x }}", "where a value goes"),
        ("v = obj.{{ x }}", "where a value goes"),
        ("v = dict({{ x }}=1)", "where a value goes"),
    ],
)
def test_placeholder_that_would_be_a_name_is_refused(script: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_script(script, constant("os"))
    location = check_script_syntax(script)
    assert location is not None
    assert location[0] == 1
    assert message in location[2]


# --- lines and errors -------------------------------------------------------------------------


def test_line_numbers_are_preserved_with_multiline_placeholders() -> None:
    script = (
        "a = {{ x\n   | default(1) }}\n"  # lines 1-2, code
        "b = '{{ x\n }}'\n"  # lines 3-4, string
        "# {{ x\n }} import os\n"  # lines 5-6, comment
        'c = r"{{ x\n }}"\n'  # lines 7-8, raw string
        "d = [\n  {{ x\n }},\n]\n"  # lines 9-12, code in brackets
        "raise ValueError('line 13')\n"
    )
    rendered = render_script(script, constant("v"))
    assert rendered.count("\n") == script.count("\n")
    with pytest.raises(ValueError, match="line 13") as caught:
        run(rendered)
    assert traceback.extract_tb(caught.value.__traceback__)[-1].lineno == 13
    namespace = run(rendered.replace("raise ValueError('line 13')", "pass"))
    assert [namespace[name] for name in "abcd"] == ["v", "v", "v", ["v"]]
    assert "os" not in namespace


def test_windows_line_endings() -> None:
    namespace = run(render_script("v = '{{ x }}'\r\nw = {{ x }}\r\n", constant("a\r\nb")))
    assert namespace["v"] == namespace["w"] == "a\r\nb"


def test_untokenizable_script_is_an_error_with_its_line() -> None:
    with pytest.raises(TemplateError, match="line 3"):
        render_script('a = 1\nb = {{ x }}\nc = """never closed\n', constant(1))
    with pytest.raises(TemplateError, match="line 2"):
        render_script("a = {{ x }}\nb = 'open\n", constant(1))


def test_script_that_does_not_parse_is_an_error_with_its_line() -> None:
    with pytest.raises(TemplateError, match="line 3"):
        render_script("a = {{ x\n }}\nif a\n    pass\n", constant(1))


def test_empty_placeholder_is_an_error() -> None:
    with pytest.raises(TemplateError, match="empty"):
        render_script("v = {{ }}", constant(1))


def test_evaluate_errors_propagate() -> None:
    def evaluate(_expression: str) -> object:
        raise TemplateError("undefined name 'x'")

    with pytest.raises(TemplateError, match="undefined name"):
        render_script("v = {{ x }}", evaluate)


def test_script_without_placeholders_is_returned_unchanged() -> None:
    script = "v = '{% raw %}{# c #}'\r\nnot python at all {\n"
    assert render_script(script, constant(1)) == script


def test_rendered_script_contains_no_placeholder_identifiers() -> None:
    script = 'a = {{ x }}\nb = "{{ x }}"\n# {{ x }}\nc = r"{{ x }}"\nd = f"{{ x }}{a}"\n'
    rendered = render_script(script, constant("v"))
    assert "__orch_placeholder" not in rendered
    assert "{{" not in rendered


def test_script_already_using_the_identifier_stem() -> None:
    script = "__orch_placeholder_0__ = 5\nv = {{ x }}\nw = '{{ x }}'\n"
    namespace = run(render_script(script, constant("__orch_placeholder_0__")))
    assert namespace["__orch_placeholder_0__"] == 5
    assert namespace["v"] == namespace["w"] == "__orch_placeholder_0__"


# --- check_script_syntax ----------------------------------------------------------------------


def test_check_valid_script_returns_none() -> None:
    script = "x = {{ a }}\ny = '{{ b }}'  # {{ c }}\nz = f'{x}{{ d }}'\n"
    assert check_script_syntax(script) is None


def test_check_reports_original_line_after_multiline_placeholder() -> None:
    script = "x = {{ a\n  | default(1)\n}}\nif x\n    pass\n"
    location = check_script_syntax(script)
    assert location is not None
    assert location[0] == 4
    assert "expected ':'" in location[2]


def test_check_reports_original_column_after_placeholder() -> None:
    script = "y = 1\nz = {{ a_rather_long | expression }} + * 2\n"
    location = check_script_syntax(script)
    assert location is not None
    line, column, _message = location
    assert (line, column) == (2, script.split("\n")[1].index("*") + 1)


def test_check_reports_column_of_placeholder_itself() -> None:
    location = check_script_syntax("abc = 1 {{ x }}\n")
    assert location is not None
    assert location[:2] == (1, 9)


def test_check_reports_unclosed_placeholder() -> None:
    assert check_script_syntax("a = 1\nb = {{ x\n") == (2, 5, "'{{' is never closed by '}}'")


def test_check_reports_placeholder_position_errors() -> None:
    location = check_script_syntax('a = 1\nb = rf"{{ x }}"\n')
    assert location is not None
    assert location[:2] == (2, 8)
    assert "raw f-strings" in location[2]


def test_check_compiles_as_a_function_body() -> None:
    assert check_script_syntax("x = {{ a }}\nreturn x\n") is None
    assert check_script_syntax("# nothing but a comment {{ a }}\n") is None
    location = check_script_syntax("for i in []:\n    pass\nbreak\n")
    assert location is not None
    assert location[:2] == (3, 1)
    assert "outside loop" in location[2]


def test_check_counts_columns_in_characters() -> None:
    script = "x = 'éé'; {{ a }}; break\n"
    location = check_script_syntax(script)
    assert location is not None
    assert location[:2] == (1, script.index("break") + 1)
    script = "x = 'é✓' {{ a }} )\n"
    location = check_script_syntax(script)
    assert location is not None
    assert location[:2] == (1, script.index(")") + 1)


def test_check_reports_empty_placeholder() -> None:
    assert check_script_syntax("x = 1\ny = {{ }}\n") == (2, 5, "the placeholder is empty")


def test_a_script_rendered_again_gets_its_new_values() -> None:
    """What depends on the script's text alone is worked out once; each render uses its values."""
    script = "x = {{ a }}\n# {{ a }}\ny = '{{ a }}'\n"
    first = render_script(script, lambda expression: 1)
    second = render_script(script, lambda expression: "two")
    assert first == "x = 1\n# 1\ny = '1'\n"
    assert second == "x = 'two'\n# two\ny = 'two'\n"
    with pytest.raises(TemplateError):
        render_script("x = {{ }}\n", lambda expression: 1)
    with pytest.raises(TemplateError):  # an error is raised again, not remembered as a result
        render_script("x = {{ }}\n", lambda expression: 1)
