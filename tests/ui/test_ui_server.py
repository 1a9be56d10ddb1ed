"""The UI server through its HTTP surface (Werkzeug's test client, no browser): the run list
and its filters, a run's document and graph, the resume endpoint, and what keeps other web
sites, damaged folders and secrets out.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from conftest import CliResult
from fakes.pipelines import FAILS_ONCE
from orchestrator.settings import load_settings
from orchestrator.stores.factory import open_stores
from orchestrator.ui.server import TOKEN_HEADER, UiApp

PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"

OK = """
name: ok
tasks:
  - name: first
    type: python_task
    script: |
      return {"n": 1}
"""


@pytest.fixture
def app() -> Iterator[UiApp]:
    served = UiApp(open_stores(load_settings(), "memory"), port=PORT, token="the-token")
    yield served
    served.resumer.wait(60)
    served.close()


@pytest.fixture
def client(app: UiApp) -> Client:
    return Client(app)


def _get(client: Client, path: str, **headers: str) -> TestResponse:
    return client.get(path, base_url=BASE, headers=headers)


def _json(response: TestResponse) -> Any:
    return json.loads(response.get_data(as_text=True))


def _resume(client: Client, run_id: str, **headers: str) -> TestResponse:
    return client.post(f"/api/runs/{run_id}/resume", base_url=BASE, headers=headers)


def test_the_run_list_filters_by_status_and_pipeline_and_pages(
    client: Client, cli: Callable[..., CliResult], write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    # GIVEN three runs of `ok` and one failed run of `flaky`
    ok = write_pipeline(OK, name="ok")
    flaky = write_pipeline(FAILS_ONCE, name="flaky")
    oks = [cli("run", ok, "--json").document()["run_id"] for _ in range(3)]
    failed = cli("run", flaky, "--json", "-i", f"flag={tmp_path / 'flag'}").document()
    assert failed["status"] == "failed"

    # WHEN the list is asked for, filtered and paged
    everything = _json(_get(client, "/api/runs"))["runs"]
    by_status = _json(_get(client, "/api/runs?status=failed"))["runs"]
    by_pipeline = _json(_get(client, "/api/runs?pipeline=ok&limit=2&offset=1"))["runs"]

    # THEN newest first, with the summary fields, and the filters hold
    assert [run["run_id"] for run in everything] == [failed["run_id"], *reversed(oks)]
    assert set(everything[0]) == {
        "run_id", "pipeline", "status", "started_at", "ended_at", "duration", "engine", "user",
    }  # fmt: skip
    assert everything[0]["started_at"].endswith("Z") and everything[0]["duration"] >= 0
    assert [run["run_id"] for run in by_status] == [failed["run_id"]]
    assert [run["run_id"] for run in by_pipeline] == [oks[1], oks[0]]
    assert _json(_get(client, "/api/runs?pipeline=nothing"))["runs"] == []


@pytest.mark.parametrize("query", ["status=sideways", "limit=0", "limit=100000", "limit=ten", "offset=-1"])
def test_a_bad_list_query_is_a_400_with_a_message(client: Client, query: str) -> None:
    response = _get(client, f"/api/runs?{query}")
    assert response.status_code == 400
    assert _json(response)["error"]


def test_a_run_and_its_graph_are_served_and_a_missing_run_is_a_404(
    client: Client, cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    path = write_pipeline(OK, name="ok")
    document = cli("run", path, "--json").document()
    served = _json(_get(client, f"/api/runs/{document['run_id']}"))
    assert served["run"] == document and served["resumable"] is False
    graph = _json(_get(client, f"/api/runs/{document['run_id']}/graph"))
    assert set(graph) == {"svg", "reason"}
    path.unlink()
    gone = _json(_get(client, f"/api/runs/{document['run_id']}/graph"))
    assert gone["svg"] is None and str(path) in gone["reason"]
    missing = _get(client, "/api/runs/nope")
    assert missing.status_code == 404 and "nope" in _json(missing)["error"]
    assert _get(client, "/static/../server.py").status_code == 404
    assert _get(client, "/static/secrets.yaml").status_code == 404


@pytest.mark.parametrize(
    "host",
    ["evil.example:8765", "127.0.0.1:9999", "localhost", "127.0.0.1.evil.example:8765", "[::1]:8765"],
)
def test_a_request_for_another_host_name_is_refused(client: Client, host: str) -> None:
    # a DNS-rebinding page reaches this server under its own name
    for path in ("/", "/api/runs", "/static/app.js"):
        response = client.get(path, base_url=f"http://{host}")
        assert response.status_code == 403, (host, path)
        assert "token" not in response.get_data(as_text=True)


def test_the_page_carries_the_token_and_a_policy_without_inline_script(client: Client) -> None:
    for host in ("127.0.0.1", "localhost"):
        page = client.get("/", base_url=f"http://{host}:{PORT}")
        assert page.status_code == 200
        assert 'content="the-token"' in page.get_data(as_text=True)
        policy = page.headers["Content-Security-Policy"]
        scripts = policy.split("script-src")[1].split(";")[0]
        assert "'self'" in scripts and "unsafe-inline" not in scripts
        assert page.headers["X-Frame-Options"] == "DENY"


def test_a_resume_without_the_token_or_from_another_site_is_refused(
    client: Client, cli: Callable[..., CliResult], write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_pipeline(FAILS_ONCE, name="flaky")
    run_id = cli("run", path, "--json", "-i", f"flag={tmp_path / 'flag'}").document()["run_id"]
    attempts: list[dict[str, str]] = [
        {},
        {TOKEN_HEADER: "guess"},
        {TOKEN_HEADER: "the-token", "Origin": "http://evil.example"},
        {TOKEN_HEADER: "the-token", "Origin": f"http://127.0.0.1:{PORT}.evil.example"},
    ]
    for headers in attempts:
        assert _resume(client, run_id, **headers).status_code == 403, headers
    assert client.get(f"/api/runs/{run_id}/resume", base_url=BASE).status_code == 405
    assert _json(_get(client, f"/api/runs/{run_id}"))["run"]["status"] == "failed"


def test_only_a_failed_or_crashed_run_resumes(
    client: Client, cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    run_id = cli("run", write_pipeline(OK, name="ok"), "--json").document()["run_id"]
    refused = _resume(client, run_id, **{TOKEN_HEADER: "the-token"})
    assert refused.status_code == 409 and "succeeded" in _json(refused)["error"]


@pytest.mark.slow
def test_resume_from_the_page_finishes_a_failed_run(
    client: Client, cli: Callable[..., CliResult], write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    # GIVEN a run that failed
    path = write_pipeline(FAILS_ONCE, name="flaky")
    run_id = cli("run", path, "--json", "-i", f"flag={tmp_path / 'flag'}").document()["run_id"]

    # WHEN the page asks to resume it, with its token and from its own origin
    response = _resume(client, run_id, **{TOKEN_HEADER: "the-token", "Origin": BASE})

    # THEN a detached `orchestrator resume` finishes it, keeping the task that had succeeded
    assert response.status_code == 200, response.get_data(as_text=True)
    deadline = time.monotonic() + 60
    while (run := _json(_get(client, f"/api/runs/{run_id}"))["run"])["status"] != "succeeded":
        assert time.monotonic() < deadline, run
        time.sleep(0.1)
    assert run["outputs"] == {"counted": 1, "fails_once": "done"}


def test_a_resume_the_command_refuses_says_why(
    client: Client, cli: Callable[..., CliResult], write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    # GIVEN a failed run whose pipeline file has since been removed
    path = write_pipeline(FAILS_ONCE, name="flaky")
    run_id = cli("run", path, "--json", "-i", f"flag={tmp_path / 'flag'}").document()["run_id"]
    path.unlink()
    # THEN resuming it from the page answers with the command's own message
    refused = _resume(client, run_id, **{TOKEN_HEADER: "the-token"})
    assert refused.status_code == 409
    assert str(path) in _json(refused)["error"]


SECRETS = """
name: secretive
input_variables:
  password: {type: string, sensitive: true}
tasks:
  - name: use
    type: python_task
    script: |
      secret = context.get_secret("api_key")
      print("password", "{{ password }}", "secret", secret)
      return {"echo": "{{ password }}", "secret": secret}
  - name: breaks
    type: python_task
    depends_on: [use]
    script: |
      raise RuntimeError("leaking " + context.get_secret("api_key") + " and {{ password }}")
"""


def test_no_secret_or_sensitive_input_reaches_any_endpoint(
    client: Client,
    cli: Callable[..., CliResult],
    write_pipeline: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a failed run that printed, returned and raised a secret and a sensitive input
    secret, password = "s3cr3t-VALUE-4242", "pa55-WORD-9191"
    monkeypatch.setenv("ORCHESTRATOR_SECRET_API_KEY", secret)
    path = write_pipeline(SECRETS, name="secretive")
    document = cli("run", path, "--json", "-i", f"password={password}").document()
    assert document["status"] == "failed"
    run_id = document["run_id"]

    # WHEN every endpoint is read
    bodies = [
        _get(client, url).get_data(as_text=True)
        for url in (
            "/",
            "/static/app.js",
            "/api/runs",
            "/api/runs?pipeline=secretive&status=failed",
            f"/api/runs/{run_id}",
            f"/api/runs/{run_id}/graph",
        )
    ]
    bodies.append(_resume(client, run_id, **{TOKEN_HEADER: "the-token"}).get_data(as_text=True))

    # THEN neither value is in any of them, whole or in part
    for body in bodies:
        for value in (secret, password):
            for part in (value, value[:8], value[-8:], json.dumps(value)[1:-1]):
                assert part not in body


def test_a_damaged_state_folder_or_a_taken_port_is_a_message(tmp_path: Path) -> None:
    # GIVEN a state folder that is a file, then a port another server holds
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    damaged = _ui(home, "--port", "0")
    assert damaged.returncode == 2
    assert str(home) in damaged.stderr and "Traceback" not in damaged.stderr
    with _listening() as port:
        taken = _ui(tmp_path / "home", "--port", str(port))
    assert taken.returncode == 2
    assert f"127.0.0.1:{port}" in taken.stderr and "--port" in taken.stderr
    assert "Traceback" not in taken.stderr


def _ui(home: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "ui", *arguments],
        env={**os.environ, "ORCHESTRATOR_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )


class _listening:
    """A socket listening on a free port of 127.0.0.1, for the `with` block."""

    def __enter__(self) -> int:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen()
        port: int = self._socket.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._socket.close()


@pytest.mark.slow
def test_a_run_on_the_emulated_step_functions_is_listed_shown_and_drawn(
    client: Client, cli: Callable[..., CliResult], write_pipeline: Callable[..., Path]
) -> None:
    result = cli("run", write_pipeline(OK, name="ok"), "--json", "--engine", "stepfunctions")
    assert result.code == 0, result.stderr
    document = result.document()
    listed = _json(_get(client, "/api/runs?pipeline=ok"))["runs"]
    assert [(run["run_id"], run["status"]) for run in listed] == [(document["run_id"], "succeeded")]
    # saved once, when it ended: listed from when it started all the same
    assert listed[0]["started_at"] == document["started_at"] and listed[0]["engine"] == "stepfunctions"
    served = _json(_get(client, f"/api/runs/{document['run_id']}"))
    assert served == {"run": document, "resumable": False}
    # and its graph is drawn from the file it ran, as for a run of the embedded engine
    graph = _json(_get(client, f"/api/runs/{document['run_id']}/graph"))
    assert graph["svg"] is not None and 'data-task="' in graph["svg"], graph


def test_the_page_script_never_parses_data_as_html(client: Client) -> None:
    # every value goes in with textContent or an attribute; the browser tests attack it too
    script = _get(client, "/static/app.js").get_data(as_text=True)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert sink not in script, sink
    assert 'parseFromString(body.svg, "image/svg+xml")' in script  # the graph: parsed as SVG only
