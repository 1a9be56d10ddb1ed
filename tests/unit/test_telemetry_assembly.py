"""Issue 14: the run document's telemetry fields, assembled from any attempt entries.

Whatever entries a run left (nested paths, attempts still open, a run that ended or not), the
assembled spans are ordered and consistent, containers cover what is inside them, and a run
that has ended shows no attempt as running.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import TaskError
from orchestrator.runtime.redact import Redactor
from orchestrator.runtime.telemetry import TaskPlace, carrying, recorded_attempt, with_telemetry
from orchestrator.stores.memory import MemoryTelemetryLog

NAMES = st.sampled_from(["a", "b", "loop"])
KEYS = st.sampled_from(["0", "1", "2", "gen"])
RUN_START = 1_700_000_000.0


def when(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@st.composite
def entries(draw: st.DrawFn) -> list[dict[str, Any]]:
    found = []
    for number in range(draw(st.integers(0, 12))):
        depth = draw(st.integers(0, 2))
        path = [draw(NAMES)]
        for _ in range(depth):
            path += [draw(KEYS), draw(NAMES)]
        started = RUN_START + draw(st.floats(0, 100))
        open_ = draw(st.booleans())
        ended = None if open_ else started + draw(st.floats(0, 50))
        found.append(
            {
                "id": f"{number:04d}",
                "pipeline_run": "",
                "path": path,
                "fallback": draw(st.booleans()),
                "status": "running" if open_ else draw(st.sampled_from(["succeeded", "failed"])),
                "started_at": started,
                "ended_at": ended,
                "error": None,
                "printed": [],
                "llm_calls": [],
                "inputs": None,
            }
        )
    return found


def check(record: dict[str, Any], finished: bool) -> tuple[float, float | None] | None:
    """Check one record's spans (recursively); its span."""
    if record["started_at"] is None:
        assert record["ended_at"] is None and record["duration"] is None
        return None
    started = when(record["started_at"])
    ended = when(record["ended_at"]) if record["ended_at"] is not None else None
    if finished:
        assert ended is not None
    if ended is not None:
        assert started <= ended
        assert abs(record["duration"] - (ended - started)) < 0.0015
    fallback_seen = False
    for number, attempt in enumerate(record["attempt_log"], start=1):
        assert attempt["attempt"] == number
        assert not (fallback_seen and not attempt["fallback"])  # the fallback's attempts last
        fallback_seen = attempt["fallback"]
        if finished:
            assert attempt["status"] != "running" and attempt["ended_at"] is not None
        assert when(attempt["started_at"]) >= started - 0.001
    for child in record.get("children", []):
        for inner in child["tasks"].values():
            span = check(inner, finished)
            if span is not None:
                assert span[0] >= started - 0.001
                if ended is not None and span[1] is not None:
                    assert span[1] <= ended + 0.001
    return started, ended


@settings(max_examples=150, deadline=None)
@given(entries(), st.booleans())
def test_assembled_spans_are_ordered_and_cover_their_children(
    found: list[dict[str, Any]], finished: bool
) -> None:
    document = {
        "run_id": "r",
        "pipeline": "p",
        "status": "succeeded" if finished else "running",
        "outputs": {},
        "tasks": {name: {"status": "not_run", "attempts": 0, "error": None} for name in ("a", "b", "loop")},
        "result": None,
        "error": None,
    }
    assembled = with_telemetry(document, found, run_started=RUN_START)
    for record in assembled["tasks"].values():
        span = check(record, finished)
        if span is not None:
            assert span[0] >= RUN_START - 0.001
            if finished and assembled["ended_at"] is not None and span[1] is not None:
                assert span[1] <= when(assembled["ended_at"]) + 0.001


def test_an_attempt_is_written_when_it_starts_and_replaced_when_it_ends() -> None:
    log = MemoryTelemetryLog()
    redactor = Redactor()
    redactor.add("hunter2")
    place = TaskPlace(log, "run", "", ("loop", "1", "task"))
    with pytest.raises(asyncio.CancelledError), recorded_attempt(place, redactor, fallback=False):
        assert log.query("run") == []  # waiting for a thread: nothing yet
        raise asyncio.CancelledError
    assert log.query("run") == []  # cancelled before its work started: it never ran
    with pytest.raises(TaskError), recorded_attempt(place, redactor, fallback=False):
        assert carrying(lambda: 1)() == 1  # its work, on whatever thread
        (started,) = log.query("run")
        assert started["status"] == "running" and started["ended_at"] is None
        raise TaskError("ValueError", "bad hunter2")
    (ended,) = log.query("run")
    assert ended["status"] == "failed" and ended["ended_at"] >= ended["started_at"]
    assert ended["error"] == {"type": "ValueError", "message": "bad ***"}
    assert ended["path"] == ["loop", "1", "task"]
