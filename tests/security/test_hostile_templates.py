"""Issue 13, templates: no template can allocate without bound (a `TemplateError` naming the
limit instead), a value given as an input is never rendered a second time inside generated
task specs (on either engine), and `outputs` that are not JSON fail the run with a message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult
from orchestrator.errors import TemplateError
from orchestrator.runtime.scope import Scope
from orchestrator.template.bounded import MAX_TEMPLATE_SIZE
from orchestrator.template.jinja import GLOBALS, render_string

Cli = Callable[..., CliResult]

ALLOCATING = [
    "{{ ('x' * 300000000) | length }}",
    "{{ (300000000 * 'x') | length }}",
    "{{ ([0] * 300000000) | length }}",
    "{{ 2 ** 100000000 }}",
    "{{ '%999999999s' % 'x' }}",
    "{{ '%.999999999f' % 1 }}",
    "{{ '%*d' % (999999999, 1) }}",
    "{{ '%999999999d' | format(1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:{w}}'.format(1, w=999999999) }}",
    "{{ 'x' | center(999999999) }}",
    "{{ 'x'.ljust(999999999) }}",
    "{{ 'x'.zfill(999999999) }}",
    "{{ 'a\nb' | indent(999999999) }}",
    "{{ [1] | batch(999999999, 'x') | list | length }}",
    "{{ [1] | slice(999999999) | list | length }}",
    "{{ lipsum(100000) }}",
    "{{ ([('x' * 1000000)] * 1000) | join }}",
    "{{ ('x' * 1000000).join(['a'] * 1000) }}",
    "{{ ('xxxxxxxxxx' * 1000000).replace('x', 'yyyyyyyyyy') | length }}",
    "{{ ([[1] * 1000000] * 100) | sum(start=[]) | length }}",
    "{{ [[1] * 100000] * 1000 }}",
    "{{ ([[1] * 100000] * 1000) | tojson }}",
    "{{ ([[1] * 100000] * 1000) | string }}",
    "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}{% endfor %}",
    "{% for i in range(1000000000) %}{% endfor %}",
]


@pytest.mark.parametrize("template", ALLOCATING)
def test_a_template_cannot_allocate_without_bound(template: str) -> None:
    scope = Scope({}, Scope(GLOBALS))
    with pytest.raises(TemplateError) as raised:
        render_string(template, scope)
    assert "too large" in str(raised.value) or "range too big" in str(raised.value).lower()


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ ('ab' * 1000) | length }}", 2000),
        ("{{ big | upper | length }}", 12_000_000),  # a big task output may be transformed
        ("{{ (big ~ '!') | length }}", 12_000_001),
        ("{{ '%5s|%d' % ('a', 10 ** 12) }}", "    a|1000000000000"),
        ("{{ '{}-{:>4}'.format(123456789012, 'x') }}", "123456789012-   x"),
        ("{{ 2 ** 64 }}", 2**64),
        ("{{ [[1] * 3] * 3 }}", [[1, 1, 1]] * 3),
    ],
)
def test_ordinary_templates_are_not_limited(template: str, expected: object) -> None:
    scope = Scope({"big": "y" * (MAX_TEMPLATE_SIZE + 2_000_000)}, Scope(GLOBALS))
    assert render_string(template, scope) == expected


def test_a_template_that_allocates_fails_its_task_with_a_template_error(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(
        "name: big\ntasks:\n  - name: a\n    type: python_task\n"
        "    script: return {{ ('x' * 300000000) | length }}\n",
        encoding="utf-8",
    )
    result = cli("run", path, "--json")
    assert result.code == 1
    error = result.document()["tasks"]["a"]["error"]
    assert error["type"] == "TemplateError" and "10,000,000" in error["message"]


GENERATED = """
name: generated
input_variables:
  topic: {type: string}
tasks:
  - name: plan
    type: python_task
    script: |
      return [
          {"name": "script", "type": "python_task", "script": "return " + repr("{{ topic }}")},
          {"name": "nested", "type": "python_task", "script": "return {'k': [%r]}" % "{{ topic }}"},
          {"name": "gated", "type": "python_task", "script": "return 1", "condition": "{{ 1 == 1 }}"},
      ]
  - name: run_them
    type: dynamic_task_group
    tasks: "{{ plan }}"
"""

HOSTILE_TEXTS = [
    "{{ run.id }}",
    "{% if true %}x{% endif %} {# note #}",
    "{{ ('x' * 300000000) | length }}",
    "}} {{{{ '{{' }}}} {%raw%}",
]


@pytest.mark.slow
@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_an_input_is_not_rendered_again_in_generated_specs(
    run_on_both_engines: Callable[..., dict[str, CliResult]], tmp_path: Path, text: str
) -> None:
    # GIVEN a generator that writes an input's value into the specs it generates
    path = tmp_path / "generated.yaml"
    path.write_text(GENERATED, encoding="utf-8")
    # WHEN the input's value is template text, on either engine
    for engine, result in run_on_both_engines(path, "-i", f"topic={text}").items():
        # THEN the generated tasks see that text, as it is
        outputs = result.document()["outputs"]["run_them"]
        assert outputs == [text, {"k": [text]}, 1], engine


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("{{ range(3) }}", "OutputNotSerializable"),
        ("{{ namespace(a=1) }}", "OutputNotSerializable"),
        ("{{ lipsum }}", "OutputNotSerializable"),
        ("{{ [1, nope] }}", "TemplateError"),
        ("{{ {'a': [1, nope]} }}", "TemplateError"),
        ("{{ [[1] * 100000] * 1000 }}", "TemplateError"),
    ],
)
def test_outputs_that_are_not_json_fail_the_run_with_a_message(
    cli: Cli, tmp_path: Path, value: str, kind: str
) -> None:
    path = tmp_path / "outputs.yaml"
    path.write_text(
        f'name: o\ntasks:\n  - {{name: a, type: python_task, script: return 1}}\noutputs:\n  x: "{value}"\n',
        encoding="utf-8",
    )
    result = cli("run", path, "--json")
    assert "Traceback" not in result.stderr
    assert result.code == 1
    error = result.document()["error"]
    assert error["type"] == kind and error["message"].startswith("outputs: ")


def test_the_limit_tells_big_values_from_repeated_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the limit, a value read from the scope (JSON: its keys are shared texts) is written
    out; one made of a part repeated (`[[1] * 100] * 100`) is refused."""
    import json

    from orchestrator.template import bounded

    monkeypatch.setattr(bounded, "MAX_TEMPLATE_SIZE", 1_000)
    rows = json.loads(json.dumps([{"name": "x" * 70, "value": n} for n in range(300)]))
    scope = Scope({"rows": rows}, Scope(GLOBALS))
    assert len(render_string("{{ rows | tojson }}", scope)) > 1_000
    assert render_string("{{ rows | map(attribute='value') | list | length }}", scope) == 300
    with pytest.raises(TemplateError, match="too large"):
        render_string("{{ [[1] * 100] * 100 }}", scope)
    with pytest.raises(TemplateError, match="too large"):
        render_string("{{ ([rows[0].name] * 100) | join }}", scope)
    with pytest.raises(TemplateError, match="separator"):
        render_string("{{ rows | join('x' * 100) }}", scope)
