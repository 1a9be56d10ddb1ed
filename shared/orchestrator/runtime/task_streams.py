"""What scripts write to stdout, stderr or `logging` becomes task log lines on stderr, redacted.

While a run is in progress `sys.stdout` and `sys.stderr` are proxies: a write from a thread
that is running a script goes to that task's log (prefixed `[task] `, secrets masked, always
on the real stderr, so `run --json` keeps stdout for the run document); any other write goes
to the real stream untouched.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

_current = threading.local()
_install_lock = threading.Lock()
_installed = 0
_task_streams_saved: list[tuple[TextIO, TextIO]] = []


class _TaskAwareStream:
    def __init__(self, real: TextIO) -> None:
        self._real = real

    def write(self, text: str) -> int:
        log: Callable[[str], None] | None = getattr(_current, "log", None)
        if log is None:
            return self._real.write(text)
        log(text)
        return len(text)

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def task_streams() -> Iterator[None]:
    """Install the proxies for the duration of a run (nested runs share one installation)."""
    global _installed
    with _install_lock:
        if _installed == 0:
            _task_streams_saved.append((sys.stdout, sys.stderr))
            sys.stdout = _TaskAwareStream(sys.stdout)  # type: ignore[assignment,unused-ignore]
            sys.stderr = _TaskAwareStream(sys.stderr)  # type: ignore[assignment,unused-ignore]
        _installed += 1
    try:
        yield
    finally:
        with _install_lock:
            _installed -= 1
            if _installed == 0:
                sys.stdout, sys.stderr = _task_streams_saved.pop()


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
