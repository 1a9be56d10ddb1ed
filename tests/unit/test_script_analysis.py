"""SPEC section 4: `context.get_task_output("name")` in a script makes `name` a dependency.

Planning finds those calls with a quick scan when it can be sure of the answer and with
Python's tokenizer otherwise; the quick scan must never disagree with the tokenizer.
"""

from __future__ import annotations

import random

import pytest

from orchestrator import plan

FRAGMENTS = [
    'return context.get_task_output("a") + 1',
    'x = context.get_task_output("b")',
    'y = get_task_output("c")',
    "z = context.get_task_output('d')",
    'w = context.get_task_output( "e" )',
    'v = context.get_task_output ("f")',
    'u = context.get_task_output(r"g")',
    's = "context.get_task_output(\\"h\\")"',
    "t = 'get_task_output(\"i\")'",
    '# context.get_task_output("j")',
    'x = 1  # get_task_output("k")',
    'name = "l"; get_task_output("m")',
    'mine.xget_task_output("n")',
    'x = 1get_task_output("o")',
    'é = get_task_output("p")',
    'éget_task_output("q")',
    "get_task_output(name_variable)",
    'get_task_output("r" "s")',
    'get_task_output(\n    "t")',
    "f\"{get_task_output('u')}\"",
    '"""\nget_task_output("v")\n"""',
    "'''get_task_output(\"w\")'''",
    'x = [\\\n get_task_output("x")]',
    'get_task_outputs("y")',
    'get_task_output("1z")',
    'data = {"k": context.get_task_output("aa")}',
    "if True:\n    get_task_output('bb')",
    "\tget_task_output('cc')",
    'x = "unterminated',
    "(",
    "pass",
    "",
]


def _scripts(count: int, seed: int) -> list[str]:
    chooser = random.Random(seed)
    return ["\n".join(chooser.choice(FRAGMENTS) for _ in range(chooser.randint(1, 4))) for _ in range(count)]


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_quick_scan_agrees_with_the_tokenizer_on_each_fragment(fragment: str) -> None:
    quick = plan._plain_task_output_calls(fragment)
    assert quick is None or quick == plan._tokenized_task_output_calls(fragment)


def test_quick_scan_agrees_with_the_tokenizer_on_mixed_scripts() -> None:
    scripts = _scripts(6000, seed=11)
    answered = 0
    for script in scripts:
        quick = plan._plain_task_output_calls(script)
        if quick is not None:
            answered += 1
            assert quick == plan._tokenized_task_output_calls(script), script
    assert answered > 500  # the quick scan does answer the common cases


def test_the_common_cases_are_answered_without_tokenizing() -> None:
    assert plan._plain_task_output_calls('return context.get_task_output("a") + 1') == ["a"]
    assert plan._plain_task_output_calls("x = 1\nreturn x") == []
    assert plan._plain_task_output_calls('# get_task_output("a")') is None


@pytest.mark.parametrize(
    ("script", "names"),
    [
        ('return context.get_task_output("a") + context.get_task_output("b")', ["a", "b"]),
        ('# context.get_task_output("a")\nreturn 1', []),
        ("return \"context.get_task_output('a')\"", []),
        ('return context.get_task_output(r"a")', ["a"]),
        ('return context.get_task_output ( "a" )', ["a"]),
    ],
)
def test_task_output_calls(script: str, names: list[str]) -> None:
    assert plan._task_output_calls(script) == names
