"""Issue 13: short sensitive values never corrupt a run document, and redaction works on streams.

Redaction applies to user content (outputs, the result, error messages, printed lines); the
document's keys, run id, task names, statuses, attempts and numbers stay as they are whatever
the sensitive values. A value shorter than `MIN_FREE_TEXT` is masked only as a whole string.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import CliResult
from orchestrator.runtime.documents import (
    ErrorInfo,
    RunStatus,
    TaskOutcome,
    TaskStatus,
    redacted_document,
    run_document,
)
from orchestrator.runtime.redact import MASK, MIN_FREE_TEXT, Redactor, StreamRedactor, derived_forms

RUN_ID = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{8}$")

SHORT_VALUES = """
name: short_values
input_variables:
  pin: {type: integer, sensitive: true}
  region: {type: string, sensitive: true}
tasks:
  - name: us_count
    type: python_task
    script: |
      print("status of region", inputs["region"], "with pin", inputs["pin"])
      return {"count": 1, "region": inputs["region"], "status": "ok", "us": 2, "size": 1.5}
  - name: retried_us
    type: python_task
    error_handling: {retry_count: 2, retry_delay: 0}
    script: |
      if context.update_shared_state("tries", lambda n: n + 1, 0) == 1:
          raise RuntimeError("first try fails, status 1")
      return 12
  - name: failing
    type: python_task
    error_handling: {on_failure: continue_with_degraded_service}
    script: |
      raise ValueError("us region " + inputs["region"] + " failed 1 time")
"""


@pytest.mark.slow
@pytest.mark.parametrize(("pin", "region"), [("1", "us"), ("2026", "T"), ("0", "-"), ("25", "s")])
def test_short_sensitive_values_leave_the_document_whole_on_both_engines(
    run_on_both_engines: Callable[..., dict[str, CliResult]],
    cli: Callable[..., CliResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pin: str,
    region: str,
) -> None:
    # GIVEN sensitive inputs that are in every run id, key, status or number
    path = tmp_path / "short_values.yaml"
    path.write_text(SHORT_VALUES, encoding="utf-8")
    # WHEN the pipeline runs on each engine (each must finish: exit 0)
    results = run_on_both_engines(path, "-i", f"pin={pin}", "-i", f"region={region}")
    for engine, result in results.items():
        document = result.document()
        # THEN the structure is intact
        assert RUN_ID.match(document["run_id"]), document["run_id"]
        assert document["pipeline"] == "short_values"
        assert document["status"] == "degraded"
        assert list(document["tasks"]) == ["us_count", "retried_us", "failing"]
        assert [task["status"] for task in document["tasks"].values()] == ["succeeded", "succeeded", "failed"]
        assert [task["attempts"] for task in document["tasks"].values()] == [1, 2, 1]
        assert document["tasks"]["failing"]["error"]["type"] == "ValueError"
        assert document["outputs"]["retried_us"] == 12
        # AND the whole value equal to a sensitive one is masked, the rest of the content kept
        expected = {"count": 1, "region": MASK, "status": "ok", "us": 2, "size": 1.5}
        assert document["outputs"]["us_count"] == expected, engine
        # AND in free text a value shorter than MIN_FREE_TEXT is left as is, a longer one masked
        shown = pin if len(pin) < MIN_FREE_TEXT else MASK
        assert f"[us_count] status of region {region} with pin {shown}" in result.stderr, engine
        # AND the run stored under its id is the finished one
        monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / engine))
        stored = cli("runs", "show", document["run_id"])
        assert stored.code == 0, stored.stderr
        assert stored.document()["status"] == "degraded"
        assert stored.document()["tasks"] == document["tasks"]


# -- the property, on the function both engines use -----------------------------------------

short_values = st.one_of(
    st.text(alphabet='0123456789abcdefrstuT-:._ "{}[],', min_size=1, max_size=MIN_FREE_TEXT - 1),
    st.integers(min_value=-99, max_value=999),
)
names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet="0123456789abcdefrstuT-:._ ", max_size=8),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=12,
)
run_ids = st.builds(
    lambda stamp, tail: f"{stamp:%Y%m%dT%H%M%S}-{tail}",
    st.datetimes(),
    st.from_regex(r"[0-9a-f]{8}", fullmatch=True),
)
outcomes = st.builds(
    TaskOutcome,
    status=st.sampled_from(list(TaskStatus)),
    output=json_values,
    attempts=st.integers(0, 12),
    error=st.none()
    | st.builds(ErrorInfo, st.sampled_from(["ValueError", "TaskTimeout"]), st.text(max_size=20)),
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    tasks = draw(st.dictionaries(names, outcomes, min_size=1, max_size=5))
    error = draw(
        st.none() | st.builds(lambda t, m: {"task": t, "type": "ValueError", "message": m}, names, st.text())
    )
    return run_document(
        run_id=draw(run_ids),
        pipeline=draw(names),
        status=draw(st.sampled_from(list(RunStatus))),
        outcomes=tasks,
        result=draw(json_values),
        error=error,
    )


def numbers_and_keys(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every dictionary key and every number of a JSON value, with where it is."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}/key", key
            yield from numbers_and_keys(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers_and_keys(item, f"{path}/{index}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


def strings(value: Any) -> list[str]:
    """Every string of a JSON value, dictionary keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [key, *strings(item)]]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents(), sensitive=st.lists(short_values, min_size=1, max_size=4))
def test_short_sensitive_values_never_change_keys_ids_statuses_or_numbers(
    document: dict[str, Any], sensitive: list[Any]
) -> None:
    redactor = Redactor()
    for value in sensitive:
        redactor.add(value)

    redacted = redacted_document(document, redactor)

    json.dumps(redacted)
    for field in ("run_id", "pipeline", "status"):
        assert redacted[field] == document[field]
    assert list(redacted) == list(document)
    assert list(redacted["tasks"]) == list(document["tasks"])
    assert list(redacted["outputs"]) == list(document["outputs"])
    for name, task in document["tasks"].items():
        assert redacted["tasks"][name]["status"] == task["status"]
        assert redacted["tasks"][name]["attempts"] == task["attempts"]
        if task["error"]:
            assert redacted["tasks"][name]["error"]["type"] == task["error"]["type"]
            assert redacted["tasks"][name]["error"]["message"] == task["error"]["message"]  # free text
    for section in ("outputs", "result"):
        assert list(numbers_and_keys(redacted[section])) == list(numbers_and_keys(document[section]))


@settings(max_examples=200, deadline=None)
@given(document=documents(), secret=st.text(min_size=MIN_FREE_TEXT, max_size=30))
def test_long_secrets_are_masked_in_content_never_in_structure(document: dict[str, Any], secret: str) -> None:
    redactor = Redactor()
    redactor.add(secret)

    redacted = redacted_document(document, redactor)

    for field in ("run_id", "pipeline", "status"):
        assert redacted[field] == document[field]
    assert list(redacted["tasks"]) == list(document["tasks"])
    assert [t["attempts"] for t in redacted["tasks"].values()] == [
        t["attempts"] for t in document["tasks"].values()
    ]
    for text in strings(redacted["outputs"]) + strings(redacted["result"]) + strings(redacted["error"]):
        assert secret not in text


# -- streams ----------------------------------------------------------------------------------

secrets_with_lines = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789+/=-", min_size=8, max_size=24),
    min_size=1,
    max_size=4,
).map("\n".join)


@settings(max_examples=400, deadline=None)
@given(
    secret=secrets_with_lines,
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    line_by_line=st.booleans(),
    cuts=st.lists(st.integers(0, 200), max_size=8),
)
def test_a_stream_written_in_any_pieces_never_shows_a_secret(
    secret: str, before: str, after: str, line_by_line: bool, cuts: list[int]
) -> None:
    # GIVEN a secret written amid other text, whole or line by line, cut into any pieces
    redactor = Redactor()
    redactor.add(secret)
    shown = "\n".join(f"line: {line}" for line in secret.splitlines()) if line_by_line else secret
    text = f"{before} {shown} {json.dumps(secret)} {after}"
    points = sorted({min(cut, len(text)) for cut in cuts} | {0, len(text)})
    pieces = [text[start:end] for start, end in itertools.pairwise(points)]
    # WHEN it goes through a stream redactor
    stream = StreamRedactor([redactor])
    out = "".join(stream.feed(piece) for piece in pieces) + stream.flush()
    # THEN no form of it is seen, and what was around it is kept
    for form in derived_forms(secret):
        if len(form) >= MIN_FREE_TEXT:
            assert form not in out
    assert MASK in out


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="-BEGIN PRVATKY\nMIE0=", max_size=60), cuts=st.lists(st.integers(0, 60), max_size=6)
)
def test_a_stream_without_secrets_is_unchanged(text: str, cuts: list[int]) -> None:
    # GIVEN text made of a secret's characters (so that parts of it look like its start)
    redactor = Redactor()
    redactor.add("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----")
    assume(redactor.text(text) == text)
    # WHEN it goes through a stream redactor in any pieces THEN all of it comes out, unchanged
    points = sorted({min(cut, len(text)) for cut in cuts} | {0, len(text)})
    stream = StreamRedactor([redactor])
    out = "".join(stream.feed(text[s:e]) for s, e in itertools.pairwise(points)) + stream.flush()
    assert out == text
