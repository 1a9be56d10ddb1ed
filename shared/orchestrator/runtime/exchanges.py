"""Record and replay: every LLM and web-search exchange of a run written to a file, or answered
from it with no network (`orchestrator run --record FILE` / `--replay FILE`).

The file is JSON lines, one exchange a line, readable and diff-friendly: a header line, then
``{"kind", "key", "seq", "task", "request", "reply"}`` (or ``"error": {"type", "message"}``
instead of ``"reply"`` for a call that failed, so a failing run replays the same way); an LLM
reply also keeps the ``"usage"`` the provider reported (``{"tokens_in", "tokens_out"}``), so a
replayed run counts the same tokens, costs and budgets as the recorded one. When
the run ends its lines are sorted (by kind, task, key, seq) so recording the same run twice
gives the same file whatever order concurrent tasks answered in.

An exchange is found by its ``key``: the sha256 of its kind and request (for an LLM call the
model name of the pipeline, system, prompt and every parameter that changes the answer; for a
search the query and `max_results`), never of a key, URL or endpoint: a recording made against
one endpoint replays in CI with none configured. The request is redacted with the run's
redactor before it is keyed or written, as the reply is before it is written: a secret or
sensitive input never reaches the file, and a recording replays with other secret values.
The same request made several times in a run (a retry, a loop over equal items) is answered
in the order recorded (``seq``), so keys never depend on which concurrent task asked first.

One `ExchangeBook` serves the whole process for the length of a command (`opened`): the
embedded engine's threads and the emulated Lambda functions (which run in process and find it
by path through `Settings`) share its counters and its lock. A sandboxed task's child process
opens its own book on the same file: it appends whole lines (``O_APPEND``, one write each),
and in replay its counters start from the first recorded answer.

An exchange missing from the file is the task error `ReplayMiss` (never retried; the task's
`error_handling` applies), naming the task, the model or query and how to record again.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.errors import ConfigError, TaskError
from orchestrator.runtime.redact import Redactor

if TYPE_CHECKING:
    from orchestrator.runtime.llm import LLMClient, LLMReply, LLMRequest
    from orchestrator.runtime.search import SearchClient, SearchResult
    from orchestrator.settings import Settings

__all__ = [
    "HEADER",
    "ExchangeBook",
    "ExchangeFileError",
    "RecordingLLMClient",
    "RecordingSearchClient",
    "acting_for",
    "book_for",
    "caller_redactor",
    "exchange_key",
    "opened",
    "read_exchanges",
]

HEADER = {"format": "orchestrator-exchanges", "version": 1}
Mode = Literal["record", "replay"]


class ExchangeFileError(ConfigError):
    """A record file cannot be read, is not one, or cannot be written."""


@dataclasses.dataclass(frozen=True)
class _Caller:
    task: str | None
    redactor: Redactor


_CALLER: contextvars.ContextVar[_Caller | None] = contextvars.ContextVar("exchange_caller", default=None)


@contextmanager
def acting_for(task: str, redactor: Redactor) -> Iterator[None]:
    """Within: exchanges are made for `task` and redacted with its run's `redactor`."""
    token = _CALLER.set(_Caller(task, redactor))
    try:
        yield
    finally:
        _CALLER.reset(token)


def _caller() -> _Caller:
    return _CALLER.get() or _Caller(None, Redactor())


def caller_redactor() -> Redactor:
    """The redactor of the run whose task makes the exchange (`acting_for`), else a new one."""
    return _caller().redactor


def exchange_key(kind: str, request: dict[str, Any]) -> str:
    """The sha256 of an exchange's kind and (redacted) request, as canonical JSON."""
    text = json.dumps([kind, request], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _what(kind: str, request: dict[str, Any]) -> str:
    if kind == "llm":
        prompt = str(request.get("prompt", ""))
        shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
        return f"the LLM call to model {request.get('model')!r} with prompt {shown!r}"
    return f"the web search for {request.get('query')!r} (max_results {request.get('max_results')})"


class ExchangeBook:
    """The exchanges of one record or replay file, for one process (thread-safe)."""

    def __init__(self, path: Path, mode: Mode, *, fresh: bool = False) -> None:
        """`fresh`: a recording starts the file anew (the command that owns it); otherwise it
        appends (a sandboxed child). A replay reads the file whole, now."""
        self.path = path
        self.mode = mode
        self._lock = threading.Lock()
        self._asked: dict[str, int] = {}
        self._answers: dict[str, list[dict[str, Any]]] = {}
        if mode == "replay":
            for entry in read_exchanges(path):
                self._answers.setdefault(entry["key"], []).append(entry)
        elif fresh or not _holds_anything(path):
            self._append([HEADER], truncate=True)

    def exchange(
        self, kind: str, request: dict[str, Any], call: Callable[[], tuple[Any, dict[str, Any]]]
    ) -> tuple[Any, dict[str, Any]]:
        """The answer to `request` (JSON) and what the exchange keeps beside it (an LLM reply's
        ``usage``), from the file or from `call()` (then written)."""
        caller = _caller()
        shown = caller.redactor.value({name: value for name, value in request.items() if value is not None})
        key = exchange_key(kind, shown)
        with self._lock:
            seq = self._asked.get(key, 0)
            self._asked[key] = seq + 1
        if self.mode == "replay":
            return self._replayed(kind, key, seq, shown, caller.task)
        entry: dict[str, Any] = {"kind": kind, "task": caller.task, "seq": seq, "request": shown}
        try:
            answer, beside = call()
        except TaskError as error:
            message = caller.redactor.text(error.message)
            self._append([{**entry, "error": {"type": error.error_type, "message": message}, "key": key}])
            raise
        self._append([{**entry, "reply": caller.redactor.value(answer), **beside, "key": key}])
        return answer, beside

    def _replayed(
        self, kind: str, key: str, seq: int, shown: dict[str, Any], task: str | None
    ) -> tuple[Any, dict[str, Any]]:
        answers = self._answers.get(key, [])
        if seq >= len(answers):
            where = f"task '{task}': " if task else ""
            held = f"holds {len(answers)} answer(s) to it, all given" if answers else "does not hold it"
            raise TaskError(
                "ReplayMiss",
                f"{where}{_what(kind, shown)} is not in the replay file {self.path} (the file {held}); "
                f"the pipeline, its inputs or its config changed since it was recorded: record it "
                f"again with `orchestrator run --record {self.path} ...`",
            )
        entry = answers[seq]
        if "error" in entry:
            raise TaskError(str(entry["error"]["type"]), str(entry["error"]["message"]))
        return entry["reply"], {name: entry[name] for name in _BESIDE if name in entry}

    def _append(self, entries: list[dict[str, Any]], *, truncate: bool = False) -> None:
        with self._lock:
            self._write(entries, truncate=truncate)

    def _write(self, entries: list[dict[str, Any]], *, truncate: bool) -> None:
        data = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
        try:
            descriptor = os.open(self.path, flags, 0o600)
            try:
                os.fchmod(descriptor, 0o600)
                os.write(descriptor, data.encode())  # one write: whole lines, even across processes
            finally:
                os.close(descriptor)
        except OSError as error:
            message = f"{self.path}: cannot write the record file: {error.strerror}"
            raise ExchangeFileError(message) from None

    def finish(self) -> None:
        """A recording's lines in a stable order (header first), so that two recordings of the
        same run are the same file."""
        if self.mode != "record":
            return
        with self._lock:
            entries = read_exchanges(self.path)
            entries.sort(key=lambda entry: (entry["kind"], entry["task"] or "", entry["key"], entry["seq"]))
            self._write([HEADER, *entries], truncate=True)


def _holds_anything(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def read_exchanges(path: Path) -> list[dict[str, Any]]:
    """The exchanges of a record file, in file order; `ExchangeFileError` names the line at fault."""
    fix = f"record it again with `orchestrator run --record {path} ...`"
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 is in replies
    except FileNotFoundError:
        message = f"{path}: no such record file; record one with `orchestrator run --record {path} ...`"
        raise ExchangeFileError(message) from None
    except IsADirectoryError:
        raise ExchangeFileError(f"{path}: is a folder, not a record file") from None
    except UnicodeDecodeError:
        raise ExchangeFileError(f"{path}: not a record file (not UTF-8 text); {fix}") from None
    except OSError as error:
        raise ExchangeFileError(f"{path}: cannot read the record file: {error.strerror}") from None
    entries: list[dict[str, Any]] = []
    header = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as error:
            raise ExchangeFileError(f"{path} line {number}: not JSON ({error}); {fix}") from None
        if not header:
            if entry != HEADER:
                expected = json.dumps(HEADER)
                message = f"{path} line {number}: not a record file (its first line is {expected}); {fix}"
                raise ExchangeFileError(message)
            header = True
            continue
        problem = _entry_problem(entry)
        if problem:
            raise ExchangeFileError(f"{path} line {number}: {problem}; {fix}")
        entries.append(entry)
    if not header:
        raise ExchangeFileError(f"{path}: empty, not a record file; {fix}")
    return entries


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "an exchange must be a JSON object"
    for name, kind in (("kind", str), ("key", str), ("seq", int), ("request", dict)):
        if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
            return f"an exchange needs {name!r} ({kind.__name__})"
    if entry["kind"] not in ("llm", "search"):
        return f"unknown kind {entry['kind']!r} (llm or search)"
    if ("reply" in entry) == ("error" in entry):
        return "an exchange needs either 'reply' or 'error'"
    if "error" in entry:
        error = entry["error"]
        if not isinstance(error, dict) or not all(isinstance(error.get(k), str) for k in ("type", "message")):
            return '\'error\' must be {"type": text, "message": text}'
    elif entry["kind"] == "llm" and not isinstance(entry["reply"], str):
        return "the 'reply' of an LLM call must be text"
    elif entry["kind"] == "search" and not _search_results(entry["reply"]):
        return 'the \'reply\' of a search must be a list of {"title", "url", "snippet"} texts'
    if "usage" in entry and not _usage(entry["usage"]):
        return '\'usage\' must be {"tokens_in": count or null, "tokens_out": count or null}'
    if entry["key"] != exchange_key(entry["kind"], entry["request"]):
        return "its 'key' is not the digest of its 'request' (was the request edited by hand?)"
    return None


_BESIDE = ("usage",)


def _usage(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"tokens_in", "tokens_out"}
        and all(
            count is None or (isinstance(count, int) and not isinstance(count, bool) and count >= 0)
            for count in value.values()
        )
    )


def _search_results(reply: Any) -> bool:
    fields = {"title", "url", "snippet"}
    return isinstance(reply, list) and all(
        isinstance(item, dict) and set(item) == fields and all(isinstance(item[name], str) for name in fields)
        for item in reply
    )


# -- the books of this process ------------------------------------------------------------------

_BOOKS: dict[tuple[Mode, Path], ExchangeBook] = {}
_BOOKS_LOCK = threading.Lock()


def _mode_of(settings: Settings) -> tuple[Mode, Path] | None:
    if settings.record_file is not None:
        return "record", settings.record_file
    if settings.replay_file is not None:
        return "replay", settings.replay_file
    return None


def book_for(settings: Settings) -> ExchangeBook | None:
    """The book `settings` name: the command's own (`opened`) or, in a process that has none
    (a sandboxed task's child), one of its own that appends to the same file."""
    mode = _mode_of(settings)
    if mode is None:
        return None
    with _BOOKS_LOCK:
        book = _BOOKS.get(mode)
        if book is None:
            book = _BOOKS[mode] = ExchangeBook(mode[1], mode[0])
        return book


@contextmanager
def opened(settings: Settings) -> Iterator[None]:
    """Within: the record or replay file of `settings` (if any) serves this process and the
    sandboxed children it starts; a recording starts empty and is put in order at the end.
    An unreadable or corrupt replay file raises `ExchangeFileError` here, before anything runs."""
    mode = _mode_of(settings)
    if mode is None:
        yield
        return
    from orchestrator.runtime.sandbox import child_environment_hook
    from orchestrator.settings import RECORD_VARIABLE, REPLAY_VARIABLE, exchange_environment

    book = ExchangeBook(mode[1], mode[0], fresh=True)
    variables = exchange_environment(settings)

    def give_the_file(environment: dict[str, str]) -> None:
        for variable in (RECORD_VARIABLE, REPLAY_VARIABLE):
            environment.pop(variable, None)  # the command's option wins over the shell's
        environment.update(variables)

    with _BOOKS_LOCK:
        _BOOKS[mode] = book
    try:
        with child_environment_hook(give_the_file):
            yield
    finally:
        with _BOOKS_LOCK:
            _BOOKS.pop(mode, None)
        book.finish()


# -- the clients --------------------------------------------------------------------------------


class RecordingLLMClient:
    """An `LLMClient` whose exchanges go through an `ExchangeBook`; the real client is built
    only when a request is actually sent (never in replay)."""

    def __init__(self, book: ExchangeBook, client: Callable[[], LLMClient]) -> None:
        self._book = book
        self._make = client
        self._client: LLMClient | None = None
        self._lock = threading.Lock()

    def complete(self, request: LLMRequest) -> LLMReply:
        from orchestrator.runtime.llm import LLMReply

        fields = dataclasses.asdict(request)
        if not request.turns:  # only a repair loop's calls have turns: earlier files stay valid
            del fields["turns"]

        def send() -> tuple[str, dict[str, Any]]:
            reply = self._inner().complete(request)
            return reply.text, {"usage": {"tokens_in": reply.tokens_in, "tokens_out": reply.tokens_out}}

        text, beside = self._book.exchange("llm", fields, send)
        usage = beside.get("usage") or {}
        return LLMReply(str(text), usage.get("tokens_in"), usage.get("tokens_out"))

    def _inner(self) -> LLMClient:
        with self._lock:
            if self._client is None:
                self._client = self._make()
            return self._client

    def close(self) -> None:
        with self._lock:
            close = getattr(self._client, "close", None)
            self._client = None
        if close is not None:
            close()


class RecordingSearchClient:
    """A `SearchClient` whose exchanges go through an `ExchangeBook`."""

    def __init__(self, book: ExchangeBook, client: Callable[[], SearchClient]) -> None:
        self._book = book
        self._make = client
        self._client: SearchClient | None = None
        self._lock = threading.Lock()

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        from orchestrator.runtime.search import SearchResult

        def send() -> tuple[list[dict[str, str]], dict[str, Any]]:
            with self._lock:
                if self._client is None:
                    self._client = self._make()
                client = self._client
            return [dataclasses.asdict(result) for result in client.search(query, max_results)], {}

        request = {"query": query, "max_results": max_results}
        answer, _ = self._book.exchange("search", request, send)
        return [SearchResult(**item) for item in answer]
