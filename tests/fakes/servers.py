"""Real local HTTP servers that stand in for the OpenAI and search endpoints in tests.

Both servers listen on ``127.0.0.1`` on a free port, answer from a daemon thread, record
every request, and are scripted with a queue of answers. Use them as context managers (or
through the ``fake_openai`` / ``fake_search`` fixtures in ``tests/fakes/fixtures.py``)::

    with FakeOpenAIServer() as server:
        server.enqueue(FakeResponse(status=429), "hello")  # first a 429, then a reply
        settings = load_settings({"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "k"})
        ...
        assert server.requests[-1].json["model"] == "gpt-4o-mini"

A queued item is either a plain value (for ``FakeOpenAIServer`` the assistant's text, for
``FakeSearchServer`` the list of results) or a `FakeResponse`, which can also set the status
code, a delay, extra headers or an exact (possibly malformed) body. When the queue is empty
the server answers with its default: ``reply`` (a function of the request's JSON body) for
the OpenAI server, ``results`` (a list, or a function of the request) for the search server.

Delays wait on the server's stop event, so stopping a server never waits for a scripted
delay to run out; every connection is closed after one request (HTTP/1.0), and stopping
joins every handler thread, so no socket outlives the server.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "FakeOpenAIServer",
    "FakeResponse",
    "FakeSearchServer",
    "RecordedRequest",
]


@dataclass(frozen=True)
class FakeResponse:
    """One scripted answer.

    ``text`` is the assistant's reply (OpenAI server only); ``json_body`` replaces the whole
    JSON body; ``raw_body`` replaces the body with exact bytes (for malformed responses).
    A non-2xx ``status`` without a body gets an error body in the OpenAI shape carrying
    ``message``. ``delay`` seconds pass before the answer is written.
    """

    status: int = 200
    text: str | None = None
    json_body: Any = None
    raw_body: bytes | None = None
    delay: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)
    message: str = "scripted error"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it. Header names are lower-case; ``at`` is when it
    arrived (``time.monotonic()`` of the server's process, for gaps between requests)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any
    at: float = 0.0


class _Server(ThreadingHTTPServer):
    # Handler threads are joined on close so no socket outlives the server.
    daemon_threads = False
    block_on_close = True


class _FakeServer:
    """Shared machinery: a threaded server, a request log and a queue of scripted answers."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Any] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and start answering."""
        if self._server is not None:
            return self
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"
            timeout = 5.0  # a client that never sends cannot hold `stop()` up for long

            def do_GET(self) -> None:
                owner._handle(self)

            def do_POST(self) -> None:
                owner._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering, wake any delayed answer, close every socket and join threads."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- scripting and inspection --------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake server is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    def enqueue(self, *answers: Any) -> None:
        """Queue answers, used one per request before the default takes over."""
        with self._lock:
            self._queue.extend(answers)

    @property
    def pending(self) -> int:
        """How many queued answers have not been used yet."""
        with self._lock:
            return len(self._queue)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def gaps(self) -> list[float]:
        """Seconds between the arrivals of consecutive requests."""
        with self._lock:
            times = [request.at for request in self.requests]
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self.requests:
                raise AssertionError("the fake server has received no request")
            return self.requests[-1]

    # -- request handling ----------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        arrived = time.monotonic()
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        split = urlsplit(handler.path)
        request = RecordedRequest(
            method=handler.command,
            path=split.path,
            query=parse_qs(split.query),
            headers={name.lower(): value for name, value in handler.headers.items()},
            body=body,
            json=parsed,
            at=arrived,
        )
        with self._lock:
            self.requests.append(request)
            scripted = self._queue.popleft() if self._queue else _DEFAULT
        answer = self._answer(request, scripted)
        if answer.delay > 0 and self._stopping.wait(answer.delay):
            return  # stopping: drop the connection without answering
        payload = self._encode(request, answer)
        try:
            handler.send_response(answer.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (for example on its own timeout)

    def _answer(self, request: RecordedRequest, scripted: Any) -> FakeResponse:
        raise NotImplementedError

    def _encode(self, request: RecordedRequest, answer: FakeResponse) -> bytes:
        if answer.raw_body is not None:
            return answer.raw_body
        if answer.json_body is not None:
            return json.dumps(answer.json_body).encode()
        if answer.status >= 400:
            return json.dumps(_error_body(answer.status, answer.message)).encode()
        return self._success_body(request, answer)

    def _success_body(self, request: RecordedRequest, answer: FakeResponse) -> bytes:
        raise NotImplementedError


_DEFAULT = object()


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _echo_last_user_message(body: Any) -> str:
    """The default reply: the text of the last user message (so a test sees its prompt)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


class FakeOpenAIServer(_FakeServer):
    """An OpenAI-compatible ``POST /v1/chat/completions`` endpoint.

    Parameters
    ----------
    reply:
        Default answer when the queue is empty: a function of the request's JSON body
        returning the assistant's text or a `FakeResponse`. The default echoes the last user
        message.
    response_format:
        When given, the server is a model with structured output that insists on it: a
        request whose ``response_format`` is not equal to this gets a 400 saying so, before
        any queued answer is used.

    Examples
    --------
    >>> with FakeOpenAIServer(reply=lambda body: "42") as server:
    ...     server.enqueue(FakeResponse(status=503), FakeResponse(delay=0.5, text="late"))
    ...     base_url = server.base_url  # http://127.0.0.1:PORT/v1
    """

    def __init__(
        self,
        reply: Callable[[Any], str | FakeResponse] | None = None,
        *,
        response_format: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.reply = reply or _echo_last_user_message
        self.response_format = response_format
        self._completions = 0

    @property
    def base_url(self) -> str:
        """The value for ``OPENAI_BASE_URL``: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.root_url}/v1"

    @property
    def bodies(self) -> list[Any]:
        """The JSON body of every request, in order."""
        with self._lock:
            return [request.json for request in self.requests]

    def _answer(self, request: RecordedRequest, scripted: Any) -> FakeResponse:
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            return FakeResponse(status=404, message=f"no route for {request.method} {request.path}")
        if self.response_format is not None:
            sent = request.json.get("response_format") if isinstance(request.json, dict) else None
            if sent != self.response_format:
                if scripted is not _DEFAULT:
                    with self._lock:
                        self._queue.appendleft(scripted)  # it waits for a proper request
                return FakeResponse(
                    status=400, message=f"expected response_format {self.response_format}, got {sent}"
                )
        if scripted is _DEFAULT:
            scripted = self.reply(request.json)
        if isinstance(scripted, FakeResponse):
            return scripted
        return FakeResponse(text=str(scripted))

    def _success_body(self, request: RecordedRequest, answer: FakeResponse) -> bytes:
        with self._lock:
            self._completions += 1
            number = self._completions
        text = answer.text if answer.text is not None else ""
        body = request.json if isinstance(request.json, dict) else {}
        prompt_tokens = sum(
            len(str(message.get("content", "")).split())
            for message in body.get("messages") or []
            if isinstance(message, dict)
        )
        completion_tokens = len(text.split())
        return json.dumps(
            {
                "id": f"chatcmpl-fake-{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": str(body.get("model", "fake-model")),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        ).encode()


SearchResults = list[dict[str, Any]]
SearchAnswers = SearchResults | Callable[[RecordedRequest], SearchResults | FakeResponse]


class FakeSearchServer(_FakeServer):
    """A JSON search endpoint answering ``GET /search?q=...&max_results=...``.

    Parameters
    ----------
    results:
        Default answer when the queue is empty: a list of result objects, or a function of
        the `RecordedRequest` returning such a list or a `FakeResponse`. Answers are sent
        as ``{"results": [...]}``; use ``FakeResponse(json_body=[...])`` for a bare list.
        The default is two results that mention the query.

    Examples
    --------
    >>> with FakeSearchServer(results=[{"title": "T", "url": "https://e.x", "snippet": "S"}]) as s:
    ...     s.enqueue(FakeResponse(status=500))
    ...     url = s.url  # http://127.0.0.1:PORT/search
    """

    def __init__(
        self,
        results: SearchAnswers | None = None,
    ) -> None:
        super().__init__()
        self.results = results if results is not None else _default_results

    @property
    def url(self) -> str:
        """The value for ``ORCHESTRATOR_SEARCH_URL``: ``http://127.0.0.1:PORT/search``."""
        return f"{self.root_url}/search"

    @property
    def queries(self) -> list[str]:
        """The ``q`` parameter of every request, in order."""
        with self._lock:
            return [request.query.get("q", [""])[0] for request in self.requests]

    def _answer(self, request: RecordedRequest, scripted: Any) -> FakeResponse:
        if request.method != "GET":
            return FakeResponse(status=405, message=f"{request.method} is not allowed")
        if scripted is _DEFAULT:
            scripted = self.results(request) if callable(self.results) else self.results
        if isinstance(scripted, FakeResponse):
            return scripted
        return FakeResponse(json_body={"results": list(scripted)})

    def _success_body(self, request: RecordedRequest, answer: FakeResponse) -> bytes:
        return json.dumps({"results": []}).encode()


def _default_results(request: RecordedRequest) -> SearchResults:
    query = request.query.get("q", [""])[0]
    return [
        {
            "title": f"Result {number} for {query}",
            "url": f"https://example.com/{number}",
            "snippet": f"Snippet {number} about {query}.",
        }
        for number in (1, 2)
    ]
