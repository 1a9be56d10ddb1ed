"""What scripts write, by any route, becomes redacted log lines on stderr, never stdout.

While a run is in progress:

- `sys.stdout` and `sys.stderr` are proxies: a write
  from a thread that is running a script goes to that task's `TaskLog` (lines prefixed
  `[task] `, secrets masked, on the real stderr); any other write goes to the real stream.
  Closing a proxy does nothing, so a script that closes them cannot break the run.
- File descriptors 1 and 2 are one pipe (POSIX), read by a thread that masks secrets and
  forwards to the real stderr: what bypasses `sys.stdout` (a thread the script starts, a
  child process, `os.write(1, ...)`, `sys.__stdout__`) is redacted too, and `run --json` keeps
  stdout for the run document.

Both mask as a stream (`redact.StreamRedactor`), so a secret split across writes (a PEM key
printed line by line) is masked whole. Writes to the real streams go one thread at a time
(`_write_to`): a script's thread printing while the engine writes could crash CPython.
Nested and concurrent runs share one installation; the pipe's reader masks the secrets of
every run in progress. A process that is one command keeps the pipe until it exits
(`keep_redacting`), for what a script's leftover thread or process writes after its run.
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import io
import os
import selectors
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from orchestrator.runtime.redact import Redactor, StreamRedactor

if TYPE_CHECKING:
    from orchestrator.runtime.context import RunInfo

_current = threading.local()
_install_lock = threading.Lock()
_write_lock = threading.RLock()  # CPython's text streams are not safe to write from two threads at once
_installed = 0
_saved: list[tuple[TextIO, TextIO]] = []
_active: list[Redactor] = []  # the redactors of the runs in progress (the pipe's reader reads it)
_capture: list[_DescriptorCapture] = []
_lingering = Redactor()  # the secrets of the runs that ended, while the pipe is kept (`keep_redacting`)
_kept: list[bool] = []
_READ_SIZE = 65536
_PIPE_CAPACITY = 1 << 20  # Linux's largest default pipe size (/proc/sys/fs/pipe-max-size)


class TaskLog:
    """A script's output as log lines on the real stderr: prefixed with the task, secrets
    masked; the lines are also the attempt's printed lines in its telemetry, when recorded."""

    def __init__(self, name: str, run: RunInfo) -> None:
        from orchestrator.runtime.telemetry import current_recording

        self._name = name
        self._redacted = StreamRedactor([run.redactor])
        self._partial = ""
        self._recording = current_recording()

    def write(self, text: str) -> None:
        self._emit(self._redacted.feed(text), final=False)

    def close(self) -> None:
        self._emit(self._redacted.flush(), final=True)

    def _emit(self, text: str, *, final: bool) -> None:
        complete, newline, self._partial = (self._partial + text).rpartition("\n")
        if final and self._partial:
            complete, newline, self._partial = complete + newline + self._partial, "\n", ""
        if not newline:
            return
        if self._recording is not None:
            self._recording.printed(complete)
        _write_to(real_stderr(), "".join(f"[{self._name}] {line}\n" for line in complete.split("\n")))


def _write_to(stream: TextIO, text: str) -> None:
    """Write to a real stream, one thread at a time, straight to its file descriptor where it has
    one: writing one text stream from two threads at once can crash CPython, and a daemon thread
    stopped at exit inside a stream's buffer would leave its lock held. At exit (daemon threads
    stopped, maybe holding the lock) the write goes ahead without the lock."""
    descriptor = None
    if isinstance(stream, io.TextIOWrapper):  # any other stream (a wrapper, in memory): its own write
        with contextlib.suppress(ValueError, OSError):
            descriptor = stream.fileno()
    with contextlib.nullcontext() if sys.is_finalizing() else _write_lock:
        if descriptor is None:
            stream.write(text)
            stream.flush()
            return
        with contextlib.suppress(ValueError, OSError):
            stream.flush()  # what it buffered before comes first
        data = text.encode(getattr(stream, "encoding", None) or "utf-8", errors="backslashreplace")
        while data:
            data = data[os.write(descriptor, data) :]


class _TaskAwareStream:
    def __init__(self, real: TextIO) -> None:
        self._real = real

    def write(self, text: str) -> int:
        log: Callable[[str], None] | None = getattr(_current, "log", None)
        if log is None:
            _write_to(self._real, text)
        else:
            log(text)
        return len(text)

    def flush(self) -> None:
        if not sys.is_finalizing():  # (all was written: `_write_to`)
            with _write_lock, contextlib.suppress(ValueError, OSError):
                self._real.flush()

    def close(self) -> None:
        """A script may not close the process's streams."""

    @property
    def closed(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _DescriptorCapture:
    """File descriptors 1 and 2 as one pipe, whose reader masks secrets and forwards to the
    real stderr, until `stop` (which forwards what is left in the pipe)."""

    def __init__(self) -> None:
        self._stdout = os.dup(1)  # OSError when 1 or 2 is closed: then there is nothing to capture
        try:
            self._stderr = os.dup(2)
        except OSError:
            os.close(self._stdout)
            raise
        read, write = os.pipe()
        self._read = read
        self._wake_read, self._wake = os.pipe()
        os.set_blocking(read, False)
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self._redacted = StreamRedactor(_active)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._thread = threading.Thread(target=self._forward, name="stream-redactor", daemon=True)
        self._thread.start()

    def stop(self, *, at_exit: bool = False) -> None:
        """Forward what is in the pipe and end: descriptors 1 and 2 are the real ones again, or
        `at_exit` /dev/null (what a leftover thread writes from then on is dropped, and it
        cannot block on a pipe no one reads)."""
        if at_exit:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.close(null)
        else:
            os.dup2(self._stdout, 1)
            os.dup2(self._stderr, 2)
        os.write(self._wake, b"x")
        self._thread.join()
        for descriptor in (self._read, self._wake_read, self._wake, self._stdout, self._stderr):
            os.close(descriptor)

    def _forward(self) -> None:
        # a selector, not select.select: a process with over 1,024 open descriptors is fine
        with selectors.DefaultSelector() as selector:
            selector.register(self._read, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            self._forward_with(selector)

    def _forward_with(self, selector: selectors.BaseSelector) -> None:
        stopping = False
        left = _PIPE_CAPACITY  # after the stop: no more than the pipe held then (a writer may go on)
        while left > 0:
            if not stopping:
                ready = {key.fd for key, _ in selector.select()}
                stopping = self._wake_read in ready
            try:
                data = os.read(self._read, _READ_SIZE)
            except BlockingIOError:
                if stopping:  # all that was written before the stop has been forwarded
                    break
                continue
            if not data:
                break
            if stopping:
                left -= len(data)
            self._out(self._redacted.feed(self._decoder.decode(data)))
        self._out(self._redacted.feed(self._decoder.decode(b"", final=True)) + self._redacted.flush())

    def _out(self, text: str) -> None:
        data = text.encode("utf-8", errors="surrogateescape")
        with contextlib.suppress(OSError):  # the real stderr is gone: nothing can be shown
            while data:
                data = data[os.write(self._stderr, data) :]


@contextmanager
def task_streams(redactor: Redactor, *, descriptors: bool = True) -> Iterator[None]:
    """Install the proxies (and, with `descriptors`, on POSIX, the pipe on file descriptors 1
    and 2) for the duration of a run whose secrets `redactor` knows."""
    global _installed
    with _install_lock:
        _active.append(redactor)
        if descriptors and os.name == "posix" and not _capture:
            _flush_real_streams()
            with contextlib.suppress(OSError):
                _capture.append(_DescriptorCapture())
        if not _saved:  # (kept installed after a run by `keep_redacting`)
            _flush_real_streams()
            # (`sys.__stdout__` and `sys.__stderr__` are left alone: C code borrows them without a
            # reference, so swapping them while other threads run crashed the interpreter; what
            # they write goes through descriptors 1 and 2, into the redacting pipe)
            _saved.append((sys.stdout, sys.stderr))
            sys.stdout = _TaskAwareStream(sys.stdout)  # type: ignore[assignment,unused-ignore]
            sys.stderr = _TaskAwareStream(sys.stderr)  # type: ignore[assignment,unused-ignore]
        _installed += 1
    try:
        yield
    finally:
        with _install_lock:
            _installed -= 1
            if _installed == 0 and not _kept:
                sys.stdout, sys.stderr = _saved.pop()
                _flush_real_streams()  # what they hold was written during the run: into the pipe
                if _capture:
                    _capture.pop().stop()
            _active.remove(redactor)
            if _kept:
                for value in redactor.known():
                    _lingering.add(value)


def keep_redacting() -> None:
    """From now until this process exits, the pipe on descriptors 1 and 2 and the proxies stay
    once a run ends, masking the secrets of every run so far: what a thread or process a script
    left behind writes after its run is masked too, and written one thread at a time. For a
    process that is one command (the CLI); at exit, what is in the pipe is forwarded."""
    with _install_lock:
        if _kept or os.name != "posix":
            return
        _kept.append(True)
        _active.append(_lingering)
        if not _capture:
            with contextlib.suppress(OSError):
                _capture.append(_DescriptorCapture())
    atexit.register(_forward_the_rest)


def _forward_the_rest() -> None:
    _flush_real_streams()
    with _install_lock:
        if _capture:
            _capture.pop().stop(at_exit=True)


def _flush_real_streams() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with _write_lock, contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()  # type: ignore[union-attr]


def real_stderr() -> TextIO:
    """The stderr underneath the proxies."""
    stream = sys.stderr
    return stream._real if isinstance(stream, _TaskAwareStream) else stream


@contextmanager
def writing_as(log: Callable[[str], None]) -> Iterator[None]:
    """Within this block, this thread's writes to stdout and stderr go to `log`."""
    previous = getattr(_current, "log", None)
    _current.log = log
    try:
        yield
    finally:
        _current.log = previous
