"""Issue 13: a secret a script shows, by any route and in any usual encoding, never appears.

Each test runs `orchestrator run --json` as a user would (a process of its own, a fresh state
folder) with a multi-line secret (a PEM key) in the environment, and looks for the secret,
each of its lines and its escaped forms on stdout, on stderr, in the stored run and in every
byte of the state folder; on the emulated AWS also in the execution history. Each route the
script uses writes a marker next to the secret, so the test also sees that the route's
output arrived, masked: a route whose output vanished would pass without proving anything.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, CliResult

pytestmark = pytest.mark.slow


def pem_key(seed: int) -> str:
    """A private key as a PEM file holds it: base64 lines of 64 characters between markers."""
    body = base64.b64encode(random.Random(seed).randbytes(600)).decode("ascii")
    lines = [body[start : start + 64] for start in range(0, len(body), 64)]
    return "\n".join(["-----BEGIN PRIVATE KEY-----", *lines, "-----END PRIVATE KEY-----"])


PEM = pem_key(13)


def leaked_forms(secret: str) -> dict[str, str]:
    """What must never be seen: the secret, each line of its body, its escaped forms."""
    forms = {
        "whole": secret,
        "json-escaped": json.dumps(secret)[1:-1],
        "json-in-json": json.dumps(json.dumps(secret))[1:-1],
        "repr-escaped": repr(secret)[1:-1],
        "crlf": secret.replace("\n", "\r\n"),
    }
    for number, line in enumerate(secret.splitlines()[1:-1]):
        forms[f"line {number}"] = line
    return forms


def assert_nothing_leaks(text: str, where: str, secret: str = PEM) -> None:
    for name, form in leaked_forms(secret).items():
        assert form not in text, f"{name} form of the secret in {where}"


def every_byte_under(folder: Path) -> str:
    found = b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())
    return found.decode("utf-8", errors="replace")


def run_cli(path: Path, home: Path, *arguments: str, secret: str = PEM) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ORCHESTRATOR_HOME=str(home), ORCHESTRATOR_SECRET_PEM=secret)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(path), "--json", *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=110,
        check=False,
    )


def stored_run(home: Path, run_id: str) -> str:
    env = dict(os.environ, ORCHESTRATOR_HOME=str(home))
    shown = subprocess.run(
        [sys.executable, "-m", "orchestrator", "runs", "show", run_id],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    return shown.stdout


def checked_run(path: Path, home: Path, engine: str, *arguments: str) -> tuple[dict[str, Any], str]:
    """Run it; assert stdout is exactly the document and nothing leaks anywhere; (document, stderr)."""
    process = run_cli(path, home, "--engine", engine, *arguments)
    document = json.loads(process.stdout)  # exactly one JSON document, nothing before or after
    assert process.stdout.count("\n") <= 1, process.stdout[:300]
    assert_nothing_leaks(process.stdout, "stdout")
    assert_nothing_leaks(process.stderr, "stderr")
    stored = stored_run(home, document["run_id"])
    assert json.loads(stored)["status"] == document["status"]
    assert_nothing_leaks(stored, "the stored run")
    assert_nothing_leaks(every_byte_under(home), "the state folder")
    return document, process.stderr


ENCODINGS = """
name: encodings
tasks:
  - name: show
    type: python_task
    script: |
      import json, logging, sys
      pem = context.get_secret("pem")
      print("whole:", pem)
      for line in pem.splitlines():
          print("line:", line)
      sys.stdout.write("split:" + pem[:20])
      sys.stdout.write(pem[20:90])
      sys.stdout.write(pem[90:] + "\\n")
      print("json:", json.dumps(pem))
      print("repr:", repr(pem))
      print("crlf:", pem.replace("\\n", "\\r\\n"))
      logging.getLogger("show").warning("logged: %s", pem)
      return {
          "whole": pem,
          "json": json.dumps(pem),
          "json_in_json": json.dumps(json.dumps(pem)),
          "repr": repr(pem),
          "lines": pem.splitlines(),
          "dict": json.dumps({"key": pem}),
      }
  - name: fail_escaped
    type: python_task
    error_handling: {on_failure: continue_with_degraded_service}
    script: |
      import json
      raise ValueError("bad key " + json.dumps(context.get_secret("pem")))
  - name: fail_lines
    type: python_task
    error_handling: {on_failure: continue_with_degraded_service}
    script: |
      raise ValueError("line " + context.get_secret("pem").splitlines()[3])
"""


@pytest.mark.parametrize("engine", ["local", "stepfunctions"])
def test_a_multiline_secret_is_masked_whole_by_line_and_escaped(tmp_path: Path, engine: str) -> None:
    # GIVEN a script that shows a PEM key whole, line by line, split across writes, escaped
    path = tmp_path / "encodings.yaml"
    path.write_text(ENCODINGS, encoding="utf-8")
    # WHEN it runs THEN nothing of the key is seen anywhere
    document, stderr = checked_run(path, tmp_path / "home", engine)
    assert document["status"] == "degraded"
    # AND every route was shown, masked
    for marker in ("whole: ***", "line: ***", "split:***", 'json: "***"', "repr: '***'", "logged: ***"):
        assert marker in stderr, marker
    outputs = document["outputs"]["show"]
    assert outputs["whole"] == "***"
    assert outputs["repr"] == "'***'"
    assert outputs["json"] == '"***"'
    assert set(outputs["lines"]) == {"***"}
    assert json.loads(outputs["dict"]) == {"key": "***"}
    assert document["tasks"]["fail_escaped"]["error"]["message"].startswith('bad key "***"')
    assert document["tasks"]["fail_lines"]["error"]["message"].startswith("line ***")


BYPASS = """
name: bypass
tasks:
  - name: routes
    type: python_task
    script: |
      import atexit, os, subprocess, sys, threading
      pem = context.get_secret("pem")
      atexit.register(lambda: print("via-atexit", pem))  # after the run, the document printed
      atexit.register(os.write, 1, ("via-atexit-fd " + pem + "\\n").encode())
      thread = threading.Thread(target=lambda: print("via-thread", pem))
      thread.start()
      thread.join()
      child = dict(os.environ, LEAK=pem)
      subprocess.run([sys.executable, "-c", "import os; print('via-child', os.environ['LEAK'])"], env=child)
      err = "import os, sys; sys.stderr.write('via-child-err ' + os.environ['LEAK'])"
      subprocess.run([sys.executable, "-c", err], env=child)
      os.environ["LEAK"] = pem
      os.system('printf "via-system %s\\\\n" "$LEAK"')
      os.write(1, ("via-fd1 " + pem + "\\n").encode())
      os.write(2, ("via-fd2 " + pem + "\\n").encode())
      sys.__stdout__.write("via-dunder-out " + pem + "\\n")
      sys.__stderr__.write("via-dunder-err " + pem + "\\n")
      sys.stdout.buffer.write(("via-buffer " + pem + "\\n").encode())
      sys.stdout.close()
      sys.stderr.close()
      sys.__stdout__.close()
      print("after-close", pem)
      return "done"
  - name: later
    type: python_task
    depends_on: [routes]
    script: |
      print("still-printing")
      return 1
"""

ROUTES = (
    "via-thread",
    "via-child",
    "via-child-err",
    "via-system",
    "via-fd1",
    "via-fd2",
    "via-dunder-out",
    "via-dunder-err",
    "via-buffer",
    "after-close",
    "via-atexit",
    "via-atexit-fd",
)


@pytest.mark.parametrize("engine", ["local", "stepfunctions"])
def test_output_that_bypasses_sys_stdout_is_masked_and_kept_off_stdout(tmp_path: Path, engine: str) -> None:
    # GIVEN a script that writes the key from a thread, child processes, raw descriptors and the
    # interpreter's original streams, then closes its streams, and again once the run is over
    path = tmp_path / "bypass.yaml"
    path.write_text(BYPASS, encoding="utf-8")
    # WHEN it runs THEN stdout is the document alone, the run finished, nothing leaked
    document, stderr = checked_run(path, tmp_path / "home", engine)
    assert document["status"] == "succeeded"
    assert document["outputs"] == {"routes": "done", "later": 1}
    # AND each route's output reached stderr, masked (on the emulated AWS, what a thread the
    # script started writes to stdout is the function's log, which the emulator drops)
    for route in ROUTES:
        if not (engine == "stepfunctions" and route == "via-thread"):
            assert f"{route} ***" in stderr, route
    assert "still-printing" in stderr


ENDLESS = """
name: endless
tasks:
  - name: starts
    type: python_task
    script: |
      import os, threading
      pem = context.get_secret("pem")
      wrote = threading.Event()
      def forever():
          while True:
              print("endless", pem)
              os.write(2, ("endless-fd " + pem + "\\n").encode())
              wrote.set()
      threading.Thread(target=forever, daemon=True).start()
      wrote.wait()
      return "started"
"""


@pytest.mark.parametrize("engine", ["local", "stepfunctions"])
def test_a_thread_that_never_stops_writing_cannot_break_the_run(tmp_path: Path, engine: str) -> None:
    # GIVEN a script that leaves a thread writing the key without end, through sys.stdout and fd 2
    # (writing one text stream from two threads at once crashed the interpreter)
    path = tmp_path / "endless.yaml"
    path.write_text(ENDLESS, encoding="utf-8")
    # WHEN it runs THEN the command ends with the document, and the writes are masked
    document, stderr = checked_run(path, tmp_path / "home", engine)
    assert document["outputs"] == {"starts": "started"}
    assert "endless-fd ***" in stderr


@pytest.mark.parametrize("engine", ["local", "stepfunctions"])
def test_a_sandboxed_task_that_crashes_does_not_show_the_secret_it_read(tmp_path: Path, engine: str) -> None:
    # GIVEN a sandboxed task (cpu_limit) that writes the key to its raw stderr, has a process it
    # starts write it too, then dies without a reply (SIGKILL of its own process)
    path = tmp_path / "crash.yaml"
    path.write_text(
        textwrap.dedent(
            """
            name: crash
            tasks:
              - name: dies
                type: python_task
                resource_limits: {cpu_limit: 1}
                script: |
                  import os, signal, subprocess, sys
                  pem = context.get_secret("pem")
                  os.write(2, ("raw " + pem + "\\n").encode())
                  subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write(sys.argv[1])", pem])
                  print("printed", pem)
                  os.kill(os.getpid(), signal.SIGKILL)
            """
        ),
        encoding="utf-8",
    )
    # WHEN it runs THEN its SandboxError keeps the child's last lines, masked, and nothing leaks
    document, _ = checked_run(path, tmp_path / "home", engine)
    error = document["tasks"]["dies"]["error"]
    assert error["type"] == "SandboxError"
    assert "killed by SIGKILL" in error["message"]
    assert "raw ***" in error["message"]


# -- the execution history (in process: the emulator's history is not kept in the state folder)


@pytest.fixture
def histories(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The histories of the executions the emulated runs make."""
    from orchestrator.aws import stepfunctions_engine

    seen: list[Any] = []
    real = stepfunctions_engine.run_execution

    def recording(*arguments: Any, **keywords: Any) -> Any:
        execution = real(*arguments, **keywords)
        seen.append(execution["history"])
        return execution

    monkeypatch.setattr(stepfunctions_engine, "run_execution", recording)
    yield seen


def test_the_execution_history_holds_no_form_of_the_secret(
    cli: Callable[..., CliResult], tmp_path: Path, histories: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the encodings pipeline on the emulated Step Functions
    path = tmp_path / "encodings.yaml"
    path.write_text(ENCODINGS, encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_SECRET_PEM", PEM)
    # WHEN it runs
    result = cli("run", path, "--json", "--engine", "stepfunctions")
    assert result.code == 0, result.stderr
    # THEN its history, as text (each event's input and output are JSON inside JSON), holds none
    assert histories
    history = json.dumps(histories, default=str)
    assert '\\"***\\"' in history  # the masked outputs travelled in it
    assert_nothing_leaks(history, "the execution history")
    assert_nothing_leaks(json.dumps(histories, default=str, ensure_ascii=False), "the execution history")
