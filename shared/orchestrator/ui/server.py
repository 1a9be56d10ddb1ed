"""The web UI's server: one HTML page, its script and style, and the JSON it polls.

Routes (a Werkzeug `Map`): `/` the page (with this server's token in a meta tag), `/static/..`
its script and style, `GET /api/runs` run summaries (filters `status`, `pipeline`, `limit`,
`offset`), `GET /api/runs/<id>` the run document as known now (`runtime.telemetry.live_document`:
`runs show`'s, with the telemetry of a run still going on), `GET /api/runs/<id>/graph` the
pipeline's graph (SVG text, or why there is none), `POST /api/runs/<id>/resume` starts
`orchestrator resume` for a failed or crashed run as a detached child process.

What keeps other web sites and other users' data out: the server listens on 127.0.0.1 only; a
request whose Host header is not `127.0.0.1:PORT` or `localhost:PORT` is refused (a DNS
rebinding page would send its own name); a POST must carry the token of the page this server
served in the `X-Orchestrator-Token` header (a custom header another origin cannot send without
a preflight this server never grants) and, if the browser sends an Origin, this server's own.
Every page gets a Content-Security-Policy that allows no inline script. Nothing here reads a
resume record beyond its pipeline path, so what the page sees is the run document, which is
redacted when it is saved.

Store calls run on a small pool of long-lived threads: the SQLite stores keep a connection per
thread, and the threaded server starts a thread per request.
"""

from __future__ import annotations

import hmac
import json
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from orchestrator.errors import OrchestratorError
from orchestrator.runtime.telemetry import live_document
from orchestrator.stores.base import Stores

HOST = "127.0.0.1"
STATUSES = ("running", "succeeded", "degraded", "failed", "crashed")
RESUMABLE = frozenset({"failed", "crashed"})
MAX_LIMIT = 500
TOKEN_HEADER = "X-Orchestrator-Token"
_STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
_RESUME_PATIENCE = 10.0  # seconds a POST waits to see the resumed run start, or its command fail

T = TypeVar("T")


class Resumer:
    """Starts `orchestrator resume RUN_ID` in a child process of its own session (it outlives a
    page, and Ctrl-C on the UI does not stop it), with this process's interpreter, environment
    and folder, so with the same ORCHESTRATOR_HOME. Finished children are reaped."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def start(self, run_id: str, running: Callable[[], bool]) -> str | None:
        """Start the resume; None once the run is seen running (or the command ended having
        run it), else what the command said when it refused (exit 2: inputs, folder)."""
        with self._lock:
            self._children = [child for child in self._children if child.poll() is None]
        with tempfile.TemporaryFile() as errors:
            child = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "resume", run_id],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
            with self._lock:
                self._children.append(child)
            deadline = time.monotonic() + _RESUME_PATIENCE
            while time.monotonic() < deadline:
                code = child.poll()
                if code is not None:
                    if code in {0, 1}:
                        return None
                    errors.seek(0)
                    said = errors.read().decode("utf-8", "replace").strip()
                    return said[-2000:] or f"orchestrator resume {run_id} ended with exit status {code}"
                if running():
                    return None
                time.sleep(0.05)
        return None

    def wait(self, timeout: float) -> None:
        """Wait for the resumes started to end (the server itself leaves them running)."""
        with self._lock:
            children = list(self._children)
        for child in children:
            child.wait(timeout)


class UiApp:
    """The WSGI application; `port` is set once the server is bound (see `serve`)."""

    def __init__(self, stores: Stores, *, port: int, token: str | None = None) -> None:
        self.stores = stores
        self.port = port
        self.token = token or secrets.token_urlsafe(32)
        self.resumer = Resumer()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="orchestrator-ui")
        self._files = resources.files("orchestrator.ui") / "static"
        self._routes = Map(
            [
                Rule("/", endpoint="page", methods=["GET"]),
                Rule("/static/<name>", endpoint="static", methods=["GET"]),
                Rule("/api/runs", endpoint="runs", methods=["GET"]),
                Rule("/api/runs/<run_id>", endpoint="run", methods=["GET"]),
                Rule("/api/runs/<run_id>/graph", endpoint="graph", methods=["GET"]),
                Rule("/api/runs/<run_id>/resume", endpoint="resume", methods=["POST"]),
            ]
        )
        self._endpoints: dict[str, Callable[..., Response]] = {
            "page": self._page,
            "static": self._static,
            "runs": self._runs,
            "run": self._run,
            "graph": self._graph,
            "resume": self._resume,
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        try:
            self._check_host(request)
            endpoint, values = self._routes.bind_to_environ(environ).match()
            response = self._endpoints[str(endpoint)](request, **values)
        except HTTPException as error:
            response = _json({"error": error.description}, error.code or 500)
        except OrchestratorError as error:  # a damaged state folder: its message, not a traceback
            response = _json({"error": str(error)}, 500)
        response.headers.update(_SECURITY_HEADERS)
        return response(environ, start_response)

    def _store(self, call: Callable[[], T]) -> T:
        return self._pool.submit(call).result()

    def _check_host(self, request: Request) -> None:
        hosts = {f"{HOST}:{self.port}", f"localhost:{self.port}"}
        if self.port == 80:
            hosts |= {HOST, "localhost"}
        if request.host not in hosts:
            raise Forbidden(f"this server answers only to http://{HOST}:{self.port}")

    def _page(self, request: Request) -> Response:
        html = (self._files / "index.html").read_text(encoding="utf-8")
        return Response(html.replace("{{TOKEN}}", self.token), mimetype="text/html")

    def _static(self, request: Request, name: str) -> Response:
        if name not in _STATIC:
            raise NotFound(f"no file {name}")
        return Response((self._files / name).read_bytes(), content_type=_STATIC[name])

    def _runs(self, request: Request) -> Response:
        status = request.args.get("status") or None
        pipeline = request.args.get("pipeline") or None
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
        limit = _number(request.args.get("limit"), "limit", 50, 1, MAX_LIMIT)
        offset = _number(request.args.get("offset"), "offset", 0, 0, None)
        runs = self._store(
            lambda: self.stores.runs.list(pipeline=pipeline, status=status, limit=limit, offset=offset)
        )
        return _json({"runs": runs, "limit": limit, "offset": offset})

    def _document(self, run_id: str) -> dict[str, Any]:
        """The run document as known now (`runs show`'s), with its telemetry while it runs."""
        document = self._store(lambda: live_document(self.stores, run_id))
        if document is None:
            raise NotFound(f"no run '{run_id}'")
        return document

    def _run(self, request: Request, run_id: str) -> Response:
        document = self._document(run_id)
        return _json({"run": document, "resumable": self._resumable(run_id, document)})

    def _resumable(self, run_id: str, document: dict[str, Any]) -> bool:
        """A failed or crashed run that keeps what `resume` needs (a run of the emulated Step
        Functions keeps none: it is run again, not resumed)."""
        if document.get("status") not in RESUMABLE:
            return False
        return self._store(lambda: self.stores.runs.resume_point(run_id)) is not None

    def _graph(self, request: Request, run_id: str) -> Response:
        """The run's pipeline drawn from its file (the document's `pipeline_file`; a run saved
        before that field, from its resume record), as the file is now."""
        path = self._document(run_id).get("pipeline_file")
        if not isinstance(path, str):
            point = self._store(lambda: self.stores.runs.resume_point(run_id))
            path = point[0].get("pipeline_path") if point is not None else None
        if not isinstance(path, str):
            return _json({"svg": None, "reason": "this run keeps no pipeline file to draw"})
        return _json(pipeline_graph(Path(path)))

    def _resume(self, request: Request, run_id: str) -> Response:
        self._check_origin(request)
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise Forbidden("the page's token is missing or wrong: reload the page")
        document = self._document(run_id)
        if not self._resumable(run_id, document):
            status = document.get("status")
            why = f"run '{run_id}' is {status}: only failed or crashed runs of the local engine resume"
            return _json({"error": why}, 409)

        def running() -> bool:
            now = self._store(lambda: self.stores.runs.load(run_id))
            return now is not None and now.get("status") == "running"

        refused = self.resumer.start(run_id, running)
        if refused is not None:
            return _json({"error": refused}, 409)
        return _json({"resumed": run_id})

    def _check_origin(self, request: Request) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and origin not in {
            f"http://{HOST}:{self.port}",
            f"http://localhost:{self.port}",
        }:
            raise Forbidden("requests from other web sites are refused")


def pipeline_graph(path: Path) -> dict[str, Any]:
    """The pipeline file's graph as SVG (`graph_svg`, the markup the page colours), or why
    there is none: the file is gone, or no longer a valid pipeline."""
    from orchestrator.graph_svg import render_svg
    from orchestrator.plan import build_plan
    from orchestrator.spec.loading import read_pipeline

    if not path.is_file():
        return {"svg": None, "reason": f"the pipeline file {path} is gone"}
    try:
        plan = build_plan(read_pipeline(path))
    except OrchestratorError:
        return {"svg": None, "reason": f"the pipeline file {path} is no longer a valid pipeline"}
    return {"svg": render_svg(plan), "reason": None}


def _number(text: str | None, name: str, default: int, least: int, most: int | None) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if value < least or (most is not None and value > most):
        raise BadRequest(
            f"{name} must be between {least} and {most}" if most else f"{name} must be >= {least}"
        )
    return value


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value, default=str), status=status, mimetype="application/json")


class _QuietHandler(WSGIRequestHandler):
    """No line per request on stderr: the page polls every second."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def serve(stores: Stores, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve on 127.0.0.1:`port` (0: a free port) until Ctrl-C; `on_ready` gets the URL."""
    app = UiApp(stores, port=port)
    bound = socket.create_server((HOST, port))  # an OSError (port taken) for the caller to say
    server: BaseWSGIServer = make_server(
        HOST, port, app, threaded=True, request_handler=_QuietHandler, fd=bound.fileno()
    )
    app.port = bound.getsockname()[1]
    bound.close()  # the server listens on its own duplicate of the socket
    on_ready(f"http://{HOST}:{app.port}/")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
