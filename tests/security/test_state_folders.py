"""Issue 13, "Bad pipeline files", last paragraph: a damaged state folder never gives a traceback.

Every command `orchestrator --help` lists is run, in a child process with its own
`ORCHESTRATOR_HOME`, against every kind of damage a state folder meets: a database that is
garbage, truncated, empty, damaged inside, a folder, read-only or unreadable; WAL and
shared-memory files that are garbage or folders; a `locks` entry that is a file or read-only;
a state folder that is a file, read-only or unreadable; a config file there that cannot be
read. A command either works as it does on a healthy folder, or stops with exit 2 and a message
that names the damaged entry and the fix; the damaged entry is left exactly as it was.

A full disk is simulated two ways: SQLite's `max_page_count` (set on every connection by a
wrapper around the real CLI, so SQLite answers `SQLITE_FULL` as on a full disk) and
`RLIMIT_FSIZE` (writes fail with EFBIG). A run that meets it ends `failed` with the reason
(never `running`), says so, and `resume` finishes it once there is space.

Permissions are real: as root, the child drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from
its bounding set, so file modes apply to it as to any user.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, CliResult
from orchestrator.stores.factory import close_databases

Cli = Callable[..., CliResult]

OK = """
name: ok
tasks:
  - name: count
    type: python_task
    cache_key: "count"
    script: |
      context.update_persistent_state("count", lambda n: n + 1, 0)
      context.log_audit_event({"event": "counted"})
      return 1
"""
BAD = """
name: bad
tasks:
  - name: boom
    type: python_task
    script: |
      raise ValueError("boom")
"""
# Fails on a full disk in the middle of the run: `fill` writes more than the disk has left.
FILLING = """
name: filling
tasks:
  - name: first
    type: python_task
    script: return 1
  - name: fill
    type: python_task
    depends_on: [first]
    script: |
      context.set_persistent_state("big", "x" * 400000)
      return 2
"""
# Its end cannot be saved on a full disk: its one output is larger than what is left.
LARGE_OUTPUT = """
name: large_output
tasks:
  - name: large
    type: python_task
    script: return "y" * 400000
"""

# The commands of `orchestrator --help` (and of `orchestrator runs --help`), one way to call
# each; `run` also on the emulated Step Functions, which keeps its tables in the state folder.
COMMANDS: dict[str, list[str]] = {
    "validate": ["validate", "{ok}"],
    "run": ["run", "{ok}", "--json"],
    "run --engine stepfunctions": ["run", "{ok}", "--json", "--engine", "stepfunctions"],
    "resume": ["resume", "{failed_run}", "--json"],
    "runs list": ["runs", "list"],
    "runs show": ["runs", "show", "{failed_run}"],
    "audit": ["audit"],
    "compile": ["compile", "{ok}"],
    "build": ["build", "--check", "--root", "{project}"],
    "graph": ["graph", "{ok}"],
    "schema": ["schema"],
}
READERS = {"runs list", "runs show", "audit"}
WRITERS = {"run", "run --engine stepfunctions", "resume"}
STATEFUL = READERS | WRITERS


def _write_garbage(path: Path, size: int) -> None:
    path.write_bytes(bytes((index * 7919 + 13) % 251 for index in range(size)))


def _damage_pages(home: Path) -> None:
    """Rows enough for the runs and audit tables to span many pages, then the second half of
    the file overwritten here and there (the schema on page 1 stays readable)."""
    database = home / "state.db"
    connection = sqlite3.connect(database)
    with connection:
        for index in range(300):
            document = {"run_id": f"filler-{index:04}", "pipeline": "filler", "status": "succeeded"}
            row = (
                f"filler-{index:04}",
                "filler",
                "succeeded",
                index,
                index,
                json.dumps(document) + " " * 500,
            )
            connection.execute(
                "INSERT INTO runs (run_id, pipeline, status, started_at, updated_at, document) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
            connection.execute(
                "INSERT INTO audit (pipeline_id, execution_id, logged_at, entry) VALUES (?, ?, ?, ?)",
                ("filler", f"filler-{index:04}", index, json.dumps({"filler": "a" * 300})),
            )
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    size = database.stat().st_size
    with database.open("r+b") as file:
        for offset in range(size // 2, size, 3 * 4096):
            file.seek(offset)
            file.write(b"\xa5" * 2000)


def _truncate(path: Path, keep: Callable[[int], int]) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])


def _replace_with_folder(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.mkdir()


# damage -> (what it does to a healthy state folder, the entry it damages)
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "state folder is a file": (lambda home: (shutil.rmtree(home), home.write_text("x")), ""),
    "state folder unreadable": (lambda home: home.chmod(0o000), ""),
    "state folder read-only": (lambda home: home.chmod(0o500), ""),
    "database is garbage": (lambda home: _write_garbage(home / "state.db", 8192), "state.db"),
    "database truncated to half": (lambda home: _truncate(home / "state.db", lambda n: n // 2), "state.db"),
    "database truncated in its header": (lambda home: _truncate(home / "state.db", lambda n: 50), "state.db"),
    "database damaged inside": (_damage_pages, "state.db"),
    "database is zero bytes": (lambda home: _truncate(home / "state.db", lambda n: 0), "state.db"),
    "database is a folder": (lambda home: _replace_with_folder(home / "state.db"), "state.db"),
    "database read-only": (lambda home: (home / "state.db").chmod(0o400), "state.db"),
    "database unreadable": (lambda home: (home / "state.db").chmod(0o000), "state.db"),
    "WAL file is garbage": (lambda home: _write_garbage(home / "state.db-wal", 5000), "state.db-wal"),
    "WAL file is a folder": (lambda home: _replace_with_folder(home / "state.db-wal"), "state.db-wal"),
    "shared-memory file is garbage": (
        lambda home: _write_garbage(home / "state.db-shm", 32768),
        "state.db-shm",
    ),
    "shared-memory file is a folder": (
        lambda home: _replace_with_folder(home / "state.db-shm"),
        "state.db-shm",
    ),
    "locks is a file": (
        lambda home: (shutil.rmtree(home / "locks"), (home / "locks").write_text("x")),
        "locks",
    ),
    "locks read-only": (lambda home: (home / "locks").chmod(0o500), "locks"),
    "config file unreadable": (
        lambda home: ((home / "config.yaml").write_text("llm: {}\n"), (home / "config.yaml").chmod(0)),
        "config.yaml",
    ),
    "config file not text": (
        lambda home: (home / "config.yaml").write_bytes(b"\xff\xfe\x00\x81"),
        "config.yaml",
    ),
}
# Which commands each damage stops (exit 2 and a message); every other command works as on a
# healthy folder. What reads alone still works from a read-only database or a `locks` that is
# not usable; the emulated Step Functions keeps no run locks.
STOPS: dict[str, set[str]] = {
    "state folder is a file": STATEFUL,
    "state folder unreadable": STATEFUL,
    "state folder read-only": STATEFUL,
    "database is garbage": STATEFUL,
    "database truncated to half": STATEFUL,
    "database truncated in its header": STATEFUL,
    # rows they scan; a run stops too when the pages it writes (run records, telemetry) are among
    # the damaged ones, which depends on the file's layout: SQLite sees no other damage
    "database damaged inside": {"audit", "run", "run --engine stepfunctions"},
    "database is zero bytes": set(),
    "database is a folder": STATEFUL,
    "database read-only": WRITERS,
    "database unreadable": STATEFUL,
    "WAL file is garbage": set(),
    "WAL file is a folder": STATEFUL,
    "shared-memory file is garbage": set(),
    "shared-memory file is a folder": WRITERS,
    "locks is a file": {"run", "resume"},
    "locks read-only": {"run", "resume"},
    "config file unreadable": STATEFUL,
    "config file not text": STATEFUL,
}
# Commands that read only some rows of a damaged database: they stop (as in STOPS) when those
# rows are on damaged pages, else work, which depends on the file's layout (`runs list` reads the
# newest runs' summaries only).
MAY_MEET = {"database damaged inside": {"runs list"}}
# An empty database has forgotten the runs it held: `runs show` and `resume` of one say so.
FORGETS = {"database is zero bytes": {"runs show": 1, "resume": 1}}
FIXES = ("move it aside", "chmod", "free some space", "ORCHESTRATOR_HOME", "ORCHESTRATOR_CONFIG")
PERMISSION_DAMAGES = {name for name in DAMAGES if "read" in name and "garbage" not in name}


def _drop_root_overrides() -> None:
    """In the child, as root: file modes apply (PR_CAPBSET_DROP of CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH takes effect at exec). Where that is not allowed nothing changes, and
    `modes_apply` says so."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):
            libc.prctl(24, capability, 0, 0, 0)


def _orchestrator(
    arguments: list[str],
    home: Path,
    cwd: Path,
    *,
    prefix: list[str] | None = None,
    preexec: Callable[[], None] | None = _drop_root_overrides,
    env: dict[str, str] | None = None,
) -> CliResult:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "OPENAI_"))}
    environment.update(ORCHESTRATOR_HOME=str(home), PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    command = prefix or [sys.executable, "-m", "orchestrator"]
    done = subprocess.run(
        [*command, *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=110,
        preexec_fn=preexec,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def _no_traceback(result: CliResult) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Pipelines, a healthy state folder holding a succeeded and a failed run (state, cache,
    audit entries, run locks folder, emulated account), and each command's healthy exit code."""
    root = tmp_path_factory.mktemp("state-folders")
    for name, text in {"ok": OK, "bad": BAD, "filling": FILLING, "large_output": LARGE_OUTPUT}.items():
        (root / f"{name}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    project = root / "project"
    shutil.copytree(REPO / "pipelines", project / "pipelines")
    shutil.copytree(REPO / "infra", project / "infra")
    healthy = root / "healthy"
    assert _orchestrator(["run", str(root / "ok.yaml")], healthy, root).code == 0
    assert _orchestrator(["run", str(root / "ok.yaml"), "--engine", "stepfunctions"], healthy, root).code == 0
    failed = _orchestrator(["run", str(root / "bad.yaml"), "--json"], healthy, root)
    assert failed.code == 1, failed.stderr
    world = {"root": root, "healthy": healthy, "failed_run": failed.document()["run_id"]}
    world["baseline"] = {
        name: _command(world, name, _copy(world, "baseline-" + name)).code for name in COMMANDS
    }
    return world


def _copy(world: dict[str, Any], name: str) -> Path:
    home: Path = world["root"] / "homes" / re.sub(r"\W+", "-", name)
    shutil.copytree(world["healthy"], home)
    return home


def _command(world: dict[str, Any], name: str, home: Path) -> CliResult:
    root: Path = world["root"]
    values = {"ok": root / "ok.yaml", "failed_run": world["failed_run"], "project": root / "project"}
    arguments = [part.format(**values) for part in COMMANDS[name]]
    return _orchestrator(arguments, home, root)


@pytest.fixture(scope="module")
def modes_apply(tmp_path_factory: pytest.TempPathFactory) -> bool:
    """Whether a child can be kept out of a mode-000 file (not when root cannot drop its
    overrides, in a container without CAP_SETPCAP)."""
    secret = tmp_path_factory.mktemp("modes") / "secret"
    secret.write_text("x")
    secret.chmod(0)
    done = subprocess.run(
        [sys.executable, "-c", f"open({str(secret)!r}).read()"],
        capture_output=True,
        preexec_fn=_drop_root_overrides,
    )
    return done.returncode != 0


def _snapshot(entry: Path) -> Any:
    """What a damaged entry is, to the byte and the mode bit."""
    if not os.path.lexists(entry):
        return None
    mode = entry.stat().st_mode
    if entry.is_dir():
        return (
            "folder",
            mode,
            sorted(p.name for p in entry.iterdir()) if os.access(entry, os.R_OK) else None,
        )
    content = hashlib.sha256(entry.read_bytes()).hexdigest() if mode & 0o400 else None
    return ("file", mode, content)


def test_every_command_the_cli_lists_is_attacked(world: dict[str, Any]) -> None:
    listed = _orchestrator(["--help"], world["healthy"], world["root"]).stdout
    runs = _orchestrator(["runs", "--help"], world["healthy"], world["root"]).stdout
    commands = set(re.search(r"\{([a-z,]+)\}", listed)[1].split(","))  # type: ignore[index]
    runs_commands = set(re.search(r"\{([a-z,]+)\}", runs)[1].split(","))  # type: ignore[index]
    # `ui` serves until it is stopped: tests/ui/test_server.py gives it a damaged folder
    expected = (commands - {"runs", "ui"}) | {f"runs {name}" for name in runs_commands}
    assert expected <= {name.split(" --")[0] for name in COMMANDS}


FULL_MATRIX = os.environ.get("ORCHESTRATOR_ATTACKS") == "all"
"""`make attack` runs every command against every damage (209 processes). A CI run takes every
damage with `run` and `runs list` and about a quarter of the other commands, in turn, so every
command meets about five kinds of damage (about 90 processes, a third of the time)."""


def _damage_and_command() -> list[tuple[str, str]]:
    return [
        (damage, command)
        for turn, damage in enumerate(DAMAGES)
        for position, command in enumerate(COMMANDS)
        if FULL_MATRIX or command in {"run", "runs list"} or position % 4 == turn % 4
    ]


def test_the_matrix_of_a_ci_run_meets_every_damage_and_every_command() -> None:
    pairs = _damage_and_command()
    assert {damage for damage, _ in pairs} == set(DAMAGES)
    assert {command for _, command in pairs} == set(COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "command"), _damage_and_command())
def test_a_damaged_state_folder_never_gives_a_traceback(
    world: dict[str, Any], modes_apply: bool, damage: str, command: str
) -> None:
    if damage in PERMISSION_DAMAGES and not modes_apply:
        pytest.skip("file modes cannot be made to apply to this root child")
    # GIVEN a state folder with runs in it, damaged one way
    home = _copy(world, f"{damage}-{command}")
    apply, entry_name = DAMAGES[damage]
    apply(home)
    entry = home / entry_name if entry_name else home
    before = _snapshot(entry)

    # WHEN the command runs against it
    result = _command(world, command, home)

    # THEN no traceback; it stops with exit 2 naming the entry and the fix, or works as on a
    # healthy folder
    _no_traceback(result)
    if command in STOPS[damage] or (command in MAY_MEET.get(damage, set()) and result.code == 2):
        assert result.code == 2, result.stderr
        assert str(entry) in result.stderr, result.stderr
        assert any(fix in result.stderr for fix in FIXES), result.stderr
        assert _snapshot(entry) == before  # nothing of the user's is changed or moved
    else:
        expected = FORGETS.get(damage, {}).get(command, world["baseline"][command])
        assert result.code == expected, result.stderr
    for folder in (home, home / "locks"):  # so that the temporary folder can be removed
        if folder.is_dir():
            folder.chmod(0o700)


SEALED = """
name: sealed
security: {encrypt_variables: true}
input_variables:
  token: {type: string, sensitive: true}
tasks:
  - name: use
    type: python_task
    script: |
      if context.update_shared_state("tries", lambda n: n + 1, 0) == 1:
          raise RuntimeError("the first run fails")
      return len("{{ token }}")
"""
KEY_DAMAGES: dict[str, Callable[[Path], None]] = {
    "garbage": lambda key: key.write_bytes(b"not a key"),
    "zero bytes": lambda key: key.write_bytes(b""),
    "a folder": _replace_with_folder,
    "unreadable": lambda key: key.chmod(0),
}


@pytest.mark.parametrize("damage", list(KEY_DAMAGES))
@pytest.mark.parametrize("command", ["run", "resume"])
def test_a_damaged_sealing_key_is_a_message(
    world: dict[str, Any], modes_apply: bool, tmp_path: Path, damage: str, command: str
) -> None:
    if damage == "unreadable" and not modes_apply:
        pytest.skip("file modes cannot be made to apply to this root child")
    # GIVEN a failed run whose sensitive input is sealed with the state folder's key, then the
    # key damaged
    pipeline = tmp_path / "sealed.yaml"
    pipeline.write_text(textwrap.dedent(SEALED), encoding="utf-8")
    home = tmp_path / "home"
    first = _orchestrator(["run", str(pipeline), "--json", "-i", "token=secret-value"], home, tmp_path)
    assert first.code == 1, first.stderr
    KEY_DAMAGES[damage](home / "key")
    before = _snapshot(home / "key")

    # WHEN a run seals, or a resume unseals, with it
    arguments = (
        ["run", str(pipeline), "-i", "token=x"]
        if command == "run"
        else ["resume", first.document()["run_id"]]
    )
    result = _orchestrator(arguments, home, tmp_path)

    # THEN exit 2 names the key and the fix; the key is left as it was
    _no_traceback(result)
    assert result.code == 2, result.stderr
    assert f"{home / 'key'}: the key that seals sensitive inputs cannot be used" in result.stderr
    assert "move it" in result.stderr
    assert _snapshot(home / "key") == before


# A wrapper around the real CLI: every SQLite connection may grow its database by SPARE_PAGES
# pages at most, after which SQLite answers SQLITE_FULL ("database or disk is full").
_FULL_DISK = """
import os, sqlite3, sys
real_connect = sqlite3.connect
def connect(*args, **kwargs):
    connection = real_connect(*args, **kwargs)
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages + int(os.environ['SPARE_PAGES'])}")
    return connection
sqlite3.connect = connect
from orchestrator.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _on_a_full_disk(world: dict[str, Any], arguments: list[str], home: Path, spare_pages: int) -> CliResult:
    return _orchestrator(
        arguments,
        home,
        world["root"],
        prefix=[sys.executable, "-c", _FULL_DISK],
        env={"SPARE_PAGES": str(spare_pages)},
    )


def _shown(world: dict[str, Any], home: Path, run_id: str) -> dict[str, Any]:
    shown = _orchestrator(["runs", "show", run_id], home, world["root"])
    assert shown.code == 0, shown.stderr
    return dict(json.loads(shown.stdout))


@pytest.mark.slow
@pytest.mark.parametrize("spare_pages", [0, 2, 10, 40])
def test_a_run_that_fills_the_disk_ends_failed_and_resumes_once_there_is_space(
    world: dict[str, Any], spare_pages: int
) -> None:
    # GIVEN a state folder on a disk with a few pages left, and a task that writes more
    home = _copy(world, f"full-{spare_pages}")
    pipeline = str(world["root"] / "filling.yaml")

    # WHEN the run meets the full disk
    result = _on_a_full_disk(world, ["run", pipeline, "--json"], home, spare_pages)

    # THEN it ends failed, saying the disk is full and how to finish it, and is recorded so
    _no_traceback(result)
    if result.code == 2:
        # (with no page to spare, even the run's start may not fit: then nothing ran, nothing
        # is recorded as running, and the message says what to do)
        assert spare_pages == 0, result.stderr
        assert f"the disk holding the state folder {home} is full" in result.stderr
        assert "free some space" in result.stderr
        listed = _orchestrator(["runs", "list"], home, world["root"])
        assert listed.code == 0 and "running" not in listed.stdout, listed
        return
    assert result.code == 1, result.stderr
    document = result.document()
    assert document["status"] == "failed"
    assert document["error"]["type"] == "StateFolderError"
    assert f"the disk holding the state folder {home} is full" in document["error"]["message"]
    assert f"orchestrator resume {document['run_id']}" in document["error"]["message"]
    assert _shown(world, home, document["run_id"])["status"] == "failed"

    # WHEN there is space again, THEN resume finishes it, keeping the task that had finished
    resumed = _orchestrator(["resume", document["run_id"], "--json"], home, world["root"])
    assert resumed.code == 0, resumed.stderr
    assert resumed.document()["status"] == "succeeded"
    assert resumed.document()["outputs"] == {"first": 1, "fill": 2}
    assert _shown(world, home, document["run_id"])["status"] == "succeeded"


@pytest.mark.slow
def test_a_run_whose_end_cannot_be_saved_on_a_full_disk_ends_failed(world: dict[str, Any]) -> None:
    # GIVEN a full disk and a task whose output does not fit on it
    home = _copy(world, "full-at-the-end")
    pipeline = str(world["root"] / "large_output.yaml")

    # WHEN the run finishes and its document cannot be saved
    result = _on_a_full_disk(world, ["run", pipeline, "--json"], home, 10)

    # THEN the command prints it failed with the reason (the output it computed kept), and it
    # is recorded as failed, without its outputs, never left running
    _no_traceback(result)
    assert result.code == 1, result.stderr
    document = result.document()
    assert (document["status"], document["error"]["type"]) == ("failed", "StateFolderError")
    assert document["outputs"]["large"] == "y" * 400000
    shown = _shown(world, home, document["run_id"])
    assert (shown["status"], shown["outputs"]) == ("failed", {"large": None})
    resumed = _orchestrator(["resume", document["run_id"], "--json"], home, world["root"])
    assert (resumed.code, resumed.document()["status"]) == (0, "succeeded")


def _file_size_limit(limit: int) -> Callable[[], None]:
    def limited() -> None:
        _drop_root_overrides()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limited


@pytest.mark.slow
@pytest.mark.parametrize("limit", [0, 40_000, 120_000, 300_000])
@pytest.mark.parametrize("pipeline", ["filling", "large_output"])
def test_no_file_may_grow_and_no_run_stays_running(world: dict[str, Any], limit: int, pipeline: str) -> None:
    # GIVEN a process that may not grow any file past `limit` bytes
    home = _copy(world, f"fsize-{pipeline}-{limit}")

    # WHEN a run writes more than that
    path = str(world["root"] / f"{pipeline}.yaml")
    result = _orchestrator(["run", path, "--json"], home, world["root"], preexec=_file_size_limit(limit))

    # THEN it stops before starting (exit 2, a message) or ends failed with the reason; no run
    # of the folder is left running, and once files may grow the run can be finished
    _no_traceback(result)
    assert result.code in {1, 2}, result.stderr
    if result.code == 2:
        assert str(home) in result.stderr
        assert result.stdout == ""
    else:
        assert result.document()["error"]["type"] == "StateFolderError"
    listed = _orchestrator(["runs", "list", "--json"], home, world["root"])
    statuses = {run["run_id"]: run["status"] for run in json.loads(listed.stdout)}
    assert "running" not in statuses.values()
    if result.code == 1:
        run_id = result.document()["run_id"]
        assert statuses[run_id] == "failed"
        resumed = _orchestrator(["resume", run_id, "--json"], home, world["root"])
        assert (resumed.code, resumed.document()["status"]) == (0, "succeeded")


@pytest.fixture
def healthy_database(tmp_path: Path, cli: Cli) -> Iterator[Path]:
    """A state database with a run, state, cache and audit rows, made in process."""
    pipeline = tmp_path / "ok.yaml"
    pipeline.write_text(textwrap.dedent(OK), encoding="utf-8")
    for _ in range(2):
        assert cli("run", pipeline).code == 0
    close_databases()
    database = tmp_path / ".orchestrator" / "state.db"
    connection = sqlite3.connect(database)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    yield database
    close_databases()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cuts=st.lists(
        st.tuples(st.integers(min_value=0, max_value=200_000), st.binary(min_size=1, max_size=600)),
        min_size=1,
        max_size=6,
    ),
    truncate=st.one_of(st.none(), st.integers(min_value=0, max_value=200_000)),
)
def test_any_damage_to_the_database_bytes_is_a_message_or_harmless(
    healthy_database: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    cuts: list[tuple[int, bytes]],
    truncate: int | None,
) -> None:
    # GIVEN a copy of a healthy database with bytes overwritten and maybe cut short
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        home.mkdir()
        data = bytearray(healthy_database.read_bytes())
        for offset, chunk in cuts:
            start = offset % max(len(data), 1)
            data[start : start + len(chunk)] = chunk
        if truncate is not None:
            data = data[: truncate % (len(data) + 1)]
        (home / "state.db").write_bytes(bytes(data))
        monkeypatch.setenv("ORCHESTRATOR_HOME", str(home))

        # WHEN each reading command and a run use it
        try:
            for command in (("runs", "list"), ("audit",), ("runs", "show", "x")):
                result = cli(*command)

                # THEN each works, or stops with exit 2 naming the database and the fix
                _no_traceback(result)
                if result.code == 2:
                    assert str(home / "state.db") in result.stderr
                    assert "move it aside" in result.stderr
                else:
                    assert result.code in {0, 1}, result.stderr
        finally:
            close_databases()


def test_the_error_of_a_write_the_disk_refused_is_not_hidden_by_its_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After SQLITE_FULL, SQLite may have rolled the transaction back itself: the state
    store's compare-and-set and the checkpoint writer still report the full disk."""
    from orchestrator.errors import StateFolderError
    from orchestrator.stores.base import StateWrite
    from orchestrator.stores.sqlite import Database, SqliteStateStore

    database = Database(tmp_path / "state.db")
    connection = database.connection()
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages + 1}")
    store = SqliteStateStore(database)
    write = StateWrite("ns", "big", "x" * 100_000, None, None)
    with pytest.raises(StateFolderError, match="is full"):
        store.commit([write])
    assert not connection.in_transaction
    database.close()


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_full_disk_met_by_a_file_write_is_the_same_message(tmp_path: Path, number: int) -> None:
    from orchestrator.stores.sqlite import folder_error

    error = folder_error(OSError(number, os.strerror(number)), tmp_path / "state.db")
    assert f"the disk holding the state folder {tmp_path} is full" in str(error)
    assert "free some space" in str(error)
