"""Issue 3 / SPEC sections 2, 8, 9: state and cache that outlive a run, safely under concurrency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO, CliResult, spec_record

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

COUNTER = """
name: counter
state_management:
  persistence: true
  storage_backend: {backend}
tasks:
  - name: read_modify_write
    type: python_task
    script: |
      import time
      metrics = context.get_shared_state("global_metrics", {{"total_processed": 0}})
      time.sleep(0.02)
      metrics["total_processed"] += 1
      context.set_shared_state("global_metrics", metrics)
      return metrics["total_processed"]
  - name: one_call
    type: python_task
    script: |
      return context.update_shared_state("one_call", lambda n: n + 1, 0)
"""


def _spawn(path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["database", "redis"])
def test_twenty_concurrent_processes_lose_no_update(
    request: pytest.FixtureRequest,
    write_pipeline: Write,
    cli: Cli,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SPEC 8: a set after a get in the same attempt is a compare-and-set; conflicts re-run."""
    # GIVEN the guide's read-modify-write of shared state, and a fresh redis db when asked
    env = dict(os.environ)
    if backend == "redis":
        url = request.getfixturevalue("redis_server")
        import redis

        redis.Redis.from_url(url).flushdb()
        env["ORCHESTRATOR_REDIS_URL"] = url
        monkeypatch.setenv("ORCHESTRATOR_REDIS_URL", url)
    path = write_pipeline(COUNTER.format(backend=backend))
    # WHEN twenty processes run it at once
    processes = [_spawn(path, env) for _ in range(20)]
    results = [process.communicate(timeout=120) for process in processes]
    # THEN every run succeeded and the counters say exactly 20
    for process, (_stdout, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr
        assert "database is locked" not in stderr
    returned = sorted(json.loads(stdout)["outputs"]["read_modify_write"] for stdout, _ in results)
    assert returned == list(range(1, 21))
    check = write_pipeline(
        f"""
        name: check
        state_management: {{storage_backend: {backend}}}
        tasks:
          - name: read
            type: python_task
            script: |
              return [context.get_shared_state("global_metrics")["total_processed"],
                      context.get_shared_state("one_call")]
        """,
        name="check",
    )
    document = cli("run", check, "--json").document()
    assert document["outputs"]["read"] == [20, 20]


def test_persistent_state_outlives_a_run_and_expires_by_ttl(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 8: persistence true keeps state across runs until state_management.ttl."""
    path = write_pipeline(
        """
        name: remembers
        state_management: {persistence: true, ttl: 0.5}
        tasks:
          - name: count
            type: python_task
            script: |
              runs = context.get_persistent_state("runs", 0) + 1
              context.set_persistent_state("runs", runs)
              return runs
        """
    )
    assert cli("run", path, "--json").document()["outputs"]["count"] == 1
    assert cli("run", path, "--json").document()["outputs"]["count"] == 2
    time.sleep(0.6)
    assert cli("run", path, "--json").document()["outputs"]["count"] == 1


def test_without_persistence_state_is_run_scoped(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: forgets
        tasks:
          - name: count
            type: python_task
            script: |
              runs = context.get_persistent_state("runs", 0) + 1
              context.set_persistent_state("runs", runs)
              return runs
          - name: again
            type: python_task
            depends_on: [count]
            script: return context.get_persistent_state("runs")
        """
    )
    for _ in range(2):
        assert cli("run", path, "--json").document()["outputs"] == {"count": 1, "again": 1}


def test_redis_backend_keeps_state_in_redis(
    redis_server: str, cli: Cli, write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    monkeypatch.setenv("ORCHESTRATOR_REDIS_URL", redis_server)
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    path = write_pipeline(
        """
        name: on_redis
        state_management: {persistence: true, storage_backend: redis, ttl: 60}
        tasks:
          - name: count
            type: python_task
            script: |
              return context.update_persistent_state("runs", lambda n: n + 1, 0)
        """
    )
    assert cli("run", path, "--json").document()["outputs"]["count"] == 1
    assert cli("run", path, "--json").document()["outputs"]["count"] == 2
    stored = client.hgetall("orchestrator:state:pipeline:pipeline:runs")
    assert json.loads(stored[b"value"]) == 2
    assert 0 < client.pttl("orchestrator:state:pipeline:pipeline:runs") <= 60_000


def test_redis_backend_unreachable_is_a_clear_error(
    cli: Cli, write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_REDIS_URL", "redis://127.0.0.1:1/0")
    path = write_pipeline(
        "name: r\nstate_management: {storage_backend: redis}\ntasks:\n"
        "  - name: a\n    type: python_task\n    script: return 1\n"
    )
    result = cli("run", path)
    assert result.code == 2
    assert "cannot reach redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr


CACHED = """
name: cached
input_variables:
  text: {type: string, default: hello}
tasks:
  - name: expensive
    type: python_task
    cache_key: "computation_{{ input_hash }}"
    cache_ttl: 0.6
    script: |
      n = context.get_shared_state("executions", 0) + 1
      context.set_shared_state("executions", n)
      return {"length": len("{{ text }}"), "execution": n}
"""


def test_cache_key_hit_reports_cached_and_expires(cli: Cli, write_pipeline: Write) -> None:
    """SPEC 9: a hit returns the stored output with status cached; expired entries are never served."""
    path = write_pipeline(CACHED)
    first = cli("run", path, "--json").document()
    second = cli("run", path, "--json").document()
    assert first["tasks"]["expensive"]["status"] == "succeeded"
    assert spec_record(second["tasks"]["expensive"]) == {"status": "cached", "attempts": 0, "error": None}
    assert second["outputs"]["expensive"] == first["outputs"]["expensive"] == {"length": 5, "execution": 1}
    other = cli("run", path, "--json", "-i", "text=other").document()
    assert other["outputs"]["expensive"]["execution"] == 2
    time.sleep(0.7)
    expired = cli("run", path, "--json").document()
    assert expired["tasks"]["expensive"]["status"] == "succeeded"
    assert expired["outputs"]["expensive"]["execution"] == 3


def test_no_cache_bypasses_reads_but_still_writes(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(CACHED)
    cli("run", path, "--json")
    fresh = cli("run", path, "--json", "--no-cache").document()
    assert fresh["tasks"]["expensive"]["status"] == "succeeded"
    assert fresh["outputs"]["expensive"]["execution"] == 2
    after = cli("run", path, "--json").document()
    assert after["tasks"]["expensive"]["status"] == "cached"
    assert after["outputs"]["expensive"]["execution"] == 2


def test_failures_are_never_cached(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: fails_once
        cache_config: {enabled: true, ttl: 60, strategy: input_hash}
        tasks:
          - name: flaky
            type: python_task
            script: |
              n = context.get_shared_state("n", 0) + 1
              context.set_shared_state("n", n)
              if n == 1:
                  raise RuntimeError("first run fails")
              return n
        """
    )
    assert cli("run", path, "--json").document()["status"] == "failed"
    second = cli("run", path, "--json").document()
    assert second["tasks"]["flaky"]["status"] == "succeeded"
    assert cli("run", path, "--json").document()["tasks"]["flaky"]["status"] == "cached"


def test_content_hash_strategy_misses_when_what_the_task_reads_changes(
    cli: Cli, write_pipeline: Write
) -> None:
    path = write_pipeline(
        """
        name: content
        cache_config: {enabled: true, ttl: 60}
        input_variables:
          word: {type: string}
          unrelated: {type: string, default: a}
        tasks:
          - name: shout
            type: python_task
            script: return "{{ word }}".upper()
        """
    )
    assert cli("run", path, "--json", "-i", "word=hi").document()["tasks"]["shout"]["status"] == "succeeded"
    hit = cli("run", path, "--json", "-i", "word=hi", "-i", "unrelated=b").document()
    assert hit["tasks"]["shout"]["status"] == "cached"
    miss = cli("run", path, "--json", "-i", "word=ho").document()
    assert miss["tasks"]["shout"]["status"] == "succeeded"
    assert miss["outputs"]["shout"] == "HO"


def test_runs_are_recorded_and_listed(cli: Cli, write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: recorded
        tasks:
          - name: audit
            type: python_task
            script: |
              context.log_audit_event({"action": "export", "rows": 3})
              return 1
        """,
        name="recorded",
    )
    document = cli("run", path, "--json").document()
    shown = cli("runs", "show", document["run_id"])
    assert shown.code == 0
    assert json.loads(shown.stdout) == document
    listed = cli("runs", "list")
    assert document["run_id"] in listed.stdout and "succeeded" in listed.stdout
    entries = [json.loads(line) for line in cli("audit", "--run", document["run_id"]).stdout.splitlines()]
    assert len(entries) == 1
    assert entries[0]["action"] == "export" and entries[0]["pipeline_id"] == "recorded"
    assert cli("audit", "--pipeline", "other").stdout == ""
    missing = cli("runs", "show", "nope")
    assert missing.code == 1 and "no run 'nope'" in missing.stderr


@pytest.mark.slow
def test_resume_after_sigkill_does_not_rerun_finished_tasks(write_pipeline: Write, tmp_path: Path) -> None:
    """Issue 3: a run killed mid-way is finished by `orchestrator resume RUN_ID`."""
    # GIVEN a run whose first task counts its executions and whose second is slow
    path = write_pipeline(
        """
        name: killed
        tasks:
          - name: counted
            type: python_task
            script: |
              return context.update_shared_state("counted_runs", lambda n: n + 1, 0)
          - name: slow
            type: python_task
            depends_on: [counted]
            script: |
              import time
              time.sleep(float(context.get_shared_state("sleep", 30)))
              return "slow done"
        """
    )
    process = _spawn(path, dict(os.environ))
    database = Path(os.environ["ORCHESTRATOR_HOME"]) / "state.db"
    deadline = time.monotonic() + 30
    import sqlite3

    while time.monotonic() < deadline:
        time.sleep(0.1)
        if database.exists():
            with sqlite3.connect(database) as connection:
                try:
                    if connection.execute("SELECT count(*) FROM run_tasks").fetchone()[0]:
                        break
                except sqlite3.OperationalError:  # the file exists, its tables not yet
                    continue
    # WHEN it is killed with SIGKILL while the slow task runs
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)
    with sqlite3.connect(database) as connection:
        connection.execute(
            "INSERT INTO state (namespace, key, value, version) VALUES ('shared', 'sleep', '0', 1)"
        )
        run_id = connection.execute("SELECT run_id FROM runs").fetchone()[0]
        status = connection.execute("SELECT status FROM runs").fetchone()[0]
    assert status == "running"
    # THEN resume finishes it without running the counted task again
    resumed = subprocess.run(
        [sys.executable, "-m", "orchestrator", "resume", run_id, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    document = json.loads(resumed.stdout)
    assert document["run_id"] == run_id
    assert document["outputs"] == {"counted": 1, "slow": "slow done"}
    assert document["status"] == "succeeded"
    again = subprocess.run(
        [sys.executable, "-m", "orchestrator", "resume", run_id],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert again.returncode == 1 and "already finished" in again.stderr


def test_checkpoints_written_behind_the_run_are_all_there_for_resume(tmp_path: Path) -> None:
    """Checkpoints queued from many threads are committed before a resume point is read."""
    import sqlite3
    import threading

    from orchestrator.stores.sqlite import Database, SqliteRunStore

    database = Database(tmp_path / "state.db")
    runs = SqliteRunStore(database)
    runs.save({"run_id": "r1", "pipeline": "p", "status": "running"}, resume={"file": "p.yaml"})
    output = {"values": [1, 2]}

    def finish(first: int) -> None:
        for index in range(first, first + 250):
            runs.checkpoint("r1", f"t{index}", {"status": "succeeded", "output": output})

    threads = [threading.Thread(target=finish, args=(start,)) for start in (0, 250, 500, 750)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    output["values"].append(3)  # changed after its checkpoint was queued: not recorded
    point = runs.resume_point("r1")
    assert point is not None
    resume, finished = point
    assert resume == {"file": "p.yaml"}
    assert len(finished) == 1000
    assert finished["t999"] == {"status": "succeeded", "output": {"values": [1, 2]}}
    runs.checkpoint("r1", "last", {"status": "skipped"})
    runs.save({"run_id": "r1", "pipeline": "p", "status": "succeeded"})
    with sqlite3.connect(tmp_path / "state.db") as other_process:
        count = other_process.execute("SELECT count(*) FROM run_tasks WHERE run_id = 'r1'").fetchone()[0]
    assert count == 1001


def test_missing_dependencies_stop_the_run_with_the_pip_line(
    cli: Cli, write_pipeline: Write, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    path = write_pipeline(
        f"""
        name: needs
        dependencies: ["surely-not-installed-package>=1", "pyyaml>=1"]
        tasks:
          - name: a
            type: python_task
            script: open({str(marker)!r}, "w").close()
        """
    )
    result = cli("run", path)
    assert result.code == 2
    assert "surely-not-installed-package is not installed" in result.stderr
    assert "pip install 'surely-not-installed-package>=1'" in result.stderr
    assert "pyyaml" not in result.stderr.split("install them with:")[1]
    assert not marker.exists()
