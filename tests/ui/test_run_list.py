"""`RunStore.list` as the UI and `runs list` use it: summaries from columns, filters by status
and pipeline, paging, newest first; and a database made before the summary columns."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CliResult
from orchestrator.stores.base import SUMMARY_KEYS
from orchestrator.stores.memory import MemoryRunStore
from orchestrator.stores.sqlite import Database, SqliteRunStore

PIPELINES = ("alpha", "beta", "gamma")
STATUSES = ("succeeded", "failed", "degraded")

saves = st.lists(
    st.tuples(st.integers(0, 7), st.sampled_from(PIPELINES), st.sampled_from(STATUSES)), max_size=25
)
queries = st.tuples(
    st.sampled_from((None, *PIPELINES)),
    st.sampled_from((None, *STATUSES, "running", "crashed")),
    st.integers(1, 10),
    st.integers(0, 12),
)


def _document(number: int, pipeline: str, status: str) -> dict[str, Any]:
    return {
        "run_id": f"run-{number}",
        "pipeline": pipeline,
        "status": status,
        "engine": "local",
        "user": "<b>'me'</b>",
        "started_at": f"2026-11-26T02:{number:02}:00.250Z",
        "ended_at": "2026-11-26T02:00:01.500Z",
        "duration": 1.5,
        "outputs": {},
        "tasks": {},
    }


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(saves=saves, query=queries)
def test_the_list_is_the_newest_first_slice_of_the_matching_runs(
    saves: list[tuple[int, str, str]], query: tuple[str | None, str | None, int, int]
) -> None:
    # GIVEN runs saved (some saved again, as a resume does) in the SQLite and memory stores
    pipeline, status, limit, offset = query
    with tempfile.TemporaryDirectory() as folder:
        database = Database(Path(folder) / "state.db")
        stores = [SqliteRunStore(database), MemoryRunStore()]
        order: list[str] = []  # first-save order, which a later save keeps
        latest: dict[str, dict[str, Any]] = {}
        for number, run_pipeline, run_status in saves:
            document = _document(number, run_pipeline, run_status)
            if document["run_id"] in latest:  # a run keeps its pipeline
                document["pipeline"] = latest[document["run_id"]]["pipeline"]
            for store in stores:
                store.save(document)
            if document["run_id"] not in latest:
                order.append(document["run_id"])
            latest[document["run_id"]] = document

        # WHEN a page is asked for
        listed = [
            store.list(pipeline=pipeline, status=status, limit=limit, offset=offset) for store in stores
        ]
        database.close()

    # THEN it is that page of the matching runs, newest first, as summaries
    matching = [
        latest[run_id]
        for run_id in reversed(order)
        if pipeline in (None, latest[run_id]["pipeline"]) and status in (None, latest[run_id]["status"])
    ]
    expected = [
        {key: document[key] for key in SUMMARY_KEYS} for document in matching[offset : offset + limit]
    ]
    assert listed == [expected, expected]


OLD_SCHEMA = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, status TEXT NOT NULL,
    started_at REAL NOT NULL, updated_at REAL NOT NULL, document TEXT NOT NULL, resume TEXT);
CREATE INDEX runs_by_pipeline ON runs (pipeline, started_at);
CREATE TABLE run_tasks (
    run_id TEXT NOT NULL, task TEXT NOT NULL, outcome TEXT NOT NULL, PRIMARY KEY (run_id, task));
"""


def test_a_database_made_before_the_summaries_keeps_working(
    tmp_path: Path, cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    # GIVEN a state folder whose runs table has no summary columns, holding a finished run
    home = tmp_path / ".orchestrator"
    home.mkdir()
    connection = sqlite3.connect(home / "state.db")
    connection.executescript(OLD_SCHEMA)
    old = {"run_id": "old-run", "pipeline": "quick", "status": "failed", "outputs": {}, "tasks": {}}
    with connection:
        connection.execute(
            "INSERT INTO runs VALUES ('old-run', 'quick', 'failed', 1000.0, 1002.5, ?, NULL)",
            (json.dumps(old),),
        )
    connection.close()

    # WHEN a new run is made and the runs are listed
    path = write_pipeline("name: quick\ntasks:\n  - {name: a, type: python_task, script: 'return 1'}\n")
    new = cli("run", path, "--json").document()
    listed = json.loads(cli("runs", "list", "--json").stdout)
    text = cli("runs", "list", "--status", "failed").stdout

    # THEN both are listed, newest first; the old one's times come from its row
    assert [run["run_id"] for run in listed] == [new["run_id"], "old-run"]
    assert listed[1] == {
        "run_id": "old-run",
        "pipeline": "quick",
        "status": "failed",
        "started_at": "1970-01-01T00:16:40.000Z",
        "ended_at": "1970-01-01T00:16:42.500Z",
        "duration": 2.5,
        "engine": None,
        "user": None,
    }
    assert "old-run" in text and new["run_id"] not in text
