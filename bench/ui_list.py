"""How fast `orchestrator ui` serves the run list of a state folder holding 10,000 runs.

A fresh state folder is filled with 10,000 finished runs (a real run document of
`pipelines/demo.yaml`, saved through the SQLite run store under new ids, spread over 20
pipelines and three statuses), then `orchestrator ui --port 0` is started on it in its own
process and each query of the run list is asked for over HTTP, as the page asks: the first
page, each filter, and a deep page. Each query is timed from request to last byte, 30 times
after 3 untimed ones; medians and 95th percentiles are kept.

`make bench` runs it (`bench/run.py --only ui` for this section alone): section (h) of
bench/RESULTS.md.

    .venv/bin/python bench/ui_list.py                    # print the measurements
    .venv/bin/python bench/ui_list.py --json ui.json     # for bench/run.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = 10_000
PIPELINES = 20
STATUSES = ("succeeded", "succeeded", "succeeded", "degraded", "failed")
TIMED, WARM_UP = 30, 3
QUERIES = {
    "first page (50 newest runs)": "/api/runs",
    "status = failed": "/api/runs?status=failed",
    "pipeline = one of 20": "/api/runs?pipeline=pipeline-07",
    "status and pipeline": "/api/runs?status=degraded&pipeline=pipeline-13",
    "a deep page (offset 9,000)": "/api/runs?offset=9000",
    "crashed (reads every running row)": "/api/runs?status=crashed",
}
TARGET = 0.2  # seconds


def fill(home: Path) -> dict[str, Any]:
    """10,000 finished runs in the state folder `home`; their documents' sizes."""
    from orchestrator.stores.sqlite import Database, SqliteRunStore

    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(ROOT / "pipelines" / "demo.yaml"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    model = json.loads(done.stdout)
    database = Database(home / "state.db")
    runs = SqliteRunStore(database)
    for number in range(RUNS):
        document = dict(
            model,
            run_id=f"bench-{number:05}",
            pipeline=f"pipeline-{number % PIPELINES:02}",
            status=STATUSES[number % len(STATUSES)],
        )
        runs.save(document)
    database.close()
    return {"runs": RUNS + 1, "document_bytes": len(done.stdout)}


def measure(home: Path) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "ui", "--port", "0"],
        env={**os.environ, "ORCHESTRATOR_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        found = re.search(r"http://127\.0\.0\.1:\d+", server.stderr.readline())
        if not found:
            raise RuntimeError("orchestrator ui printed no URL")
        base = found[0]
        timings: dict[str, dict[str, float]] = {}
        for label, path in QUERIES.items():
            seconds = []
            for attempt in range(WARM_UP + TIMED):
                started = time.perf_counter()
                with urllib.request.urlopen(base + path) as response:
                    body = response.read()
                took = time.perf_counter() - started
                if attempt >= WARM_UP:
                    seconds.append(took)
            listed = len(json.loads(body)["runs"])
            ordered = sorted(seconds)
            timings[label] = {
                "median": statistics.median(seconds),
                "p95": ordered[int(len(ordered) * 0.95) - 1],
                "runs_listed": listed,
                "bytes": len(body),
            }
        return timings
    finally:
        server.terminate()
        server.wait(30)
        if server.stderr is not None:
            server.stderr.close()


def render(measured: dict[str, Any]) -> str:
    """The section's table (also what bench/report.py puts in RESULTS.md)."""
    lines = [
        "| query | runs listed | median | 95th percentile | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for label, timing in measured["queries"].items():
        met = "yes" if timing["p95"] < TARGET else "**no**"
        lines.append(
            f"| {label} | {timing['runs_listed']} | {timing['median'] * 1000:.1f} ms | "
            f"{timing['p95'] * 1000:.1f} ms | < {TARGET * 1000:.0f} ms | {met} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write the measurements here")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        started = time.perf_counter()
        filled = fill(home)
        fill_seconds = time.perf_counter() - started
        measured = {**filled, "fill_seconds": fill_seconds, "queries": measure(home)}
        measured["database_bytes"] = (home / "state.db").stat().st_size
    print(render(measured))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(measured, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
