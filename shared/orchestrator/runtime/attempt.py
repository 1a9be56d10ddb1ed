"""Stopping a task attempt that runs on a thread: what its timeout (or its run ending) means.

A leaf attempt runs on a worker thread (`Attempt.run`). When its timeout passes, or the run
stops waiting for it, `Attempt.stop` makes it stop for good, on both engines:

- from then on the attempt cannot write: its state commit, cache writes and audit entries
  each run under `Attempt.writing`, which raises `AttemptStopped` once the attempt is
  stopped (a write that started before the stop completes; none starts after it);
- `AttemptStopped` is raised inside the attempt's thread (CPython's asynchronous exception,
  `PyThreadState_SetAsyncExc`), again every `RESEND` seconds while the thread is still in the
  attempt, so a script that catches it and carries on is interrupted again. A thread blocked
  in C (a `time.sleep`, a socket read) gets it when the call returns; it uses no CPU meanwhile.

The exception is only ever sent while the attempt's lock is held and the thread is still in
the attempt, and the thread clears any that arrived too late under that lock before it
leaves, so it never lands in the next job the thread runs. Writes hold the same lock, so the
exception never interrupts a store transaction half way.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

RESEND = 0.1
"""Seconds between two deliveries of `AttemptStopped` to a thread still in a stopped attempt."""

T = TypeVar("T")

_SET_ASYNC_EXC = ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(_SET_ASYNC_EXC)
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(_SET_ASYNC_EXC)
_CURRENT = threading.local()


class AttemptStopped(BaseException):
    """Raised in an attempt that was stopped (its timeout passed): it must end now. A
    `BaseException`, so that a script's `except Exception` does not swallow it."""


def current_attempt() -> Attempt | None:
    """The attempt the calling thread runs, if any (what `Context` guards its writes with)."""
    found: Attempt | None = getattr(_CURRENT, "attempt", None)
    return found


class Attempt:
    """One attempt of a leaf task that can be stopped from another thread."""

    __slots__ = ("_lock", "_stopped", "_thread")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._thread: int | None = None

    @property
    def stopped(self) -> bool:
        return self._stopped

    def run(self, function: Callable[..., T], *arguments: Any) -> T:
        """Run `function(*arguments)` on the calling thread as this attempt."""
        ident = threading.get_ident()
        with self._lock:
            if self._stopped:
                raise AttemptStopped
            self._thread = ident
        previous = current_attempt()
        _CURRENT.attempt = self
        try:
            return function(*arguments)
        finally:
            _CURRENT.attempt = previous
            try:
                self._leave(ident)
            except AttemptStopped:  # delivered before the clear: nothing can be sent after it
                self._leave(ident)

    def _leave(self, ident: int) -> None:
        with self._lock:
            self._thread = None
            _clear_async_exc(ident, None)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold off a stop while a write runs; raise `AttemptStopped` if it came already."""
        with self._lock:
            if self._stopped:
                raise AttemptStopped
            yield

    def stop(self) -> None:
        """Stop the attempt: no write starts any more, and its thread is interrupted. Returns
        at once; a daemon thread does the work (it may wait for a write under way)."""
        if not self._stopped:
            threading.Thread(target=self._stopping, daemon=True, name="orchestrator-stop").start()

    def _stopping(self) -> None:
        event = threading.Event()
        while True:
            with self._lock:
                self._stopped = True
                if self._thread is None:
                    return
                _set_async_exc(self._thread, AttemptStopped)
            event.wait(RESEND)
