"""Daemon worker threads for blocking task work: a hung script never keeps the process alive."""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class _Inbox:
    """Results for one event loop: threads append, the loop takes them all in one callback.

    Many tasks finishing together wake the loop once (one `call_soon_threadsafe`, one write to
    its self-pipe) instead of once each.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._results: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = collections.deque()
        self._scheduled = False
        self._lock = threading.Lock()

    def put(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        with self._lock:
            self._results.append((future, ok, value))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody waits for this result any more
            with self._lock:
                self._results.clear()
                self._scheduled = False

    def _deliver(self) -> None:
        with self._lock:
            results, self._results = self._results, collections.deque()
            self._scheduled = False
        for future, ok, value in results:
            if future.done():  # cancelled while the thread was still working
                continue
            if ok:
                future.set_result(value)
            elif isinstance(value, StopIteration):  # a future cannot hold one (PEP 479)
                future.set_exception(RuntimeError(f"StopIteration: {value}"))
            else:
                future.set_exception(value)


_INBOXES: dict[asyncio.AbstractEventLoop, _Inbox] = {}
_INBOXES_LOCK = threading.Lock()


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    found = _INBOXES.get(loop)
    if found is None:
        with _INBOXES_LOCK:
            for old in [old for old in _INBOXES if old.is_closed()]:
                del _INBOXES[old]
            found = _INBOXES.setdefault(loop, _Inbox(loop))
    return found


class _LoopJob:
    """Where a job started with `run_in_loop` delivers its result."""

    __slots__ = ("future", "inbox")

    def __init__(self, future: asyncio.Future[Any], inbox: _Inbox) -> None:
        self.future = future
        self.inbox = inbox


class DaemonThreadPool:
    """A thread pool whose threads are daemons, started on demand up to `max_threads`."""

    def __init__(self, max_threads: int) -> None:
        self._max = max_threads
        self._work: queue.SimpleQueue[tuple[Future[Any] | _LoopJob, Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()

    def _reserve(self) -> None:
        with self._lock:
            if self._idle <= 0 and self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._worker, daemon=True, name="orchestrator-task").start()
            else:
                self._idle -= 1

    def submit(self, function: Callable[..., Any], *arguments: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._reserve()
        self._work.put((future, function, arguments))
        return future

    def run_in_loop(self, function: Callable[..., Any], *arguments: Any) -> asyncio.Future[Any]:
        """Run `function(*arguments)` on a worker thread; await the result on the running loop.

        Like `asyncio.wrap_future(pool.submit(...))` with less work per call: cancelling the
        returned future before a thread picks the job up means it never runs.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._reserve()
        self._work.put((_LoopJob(future, _inbox(loop)), function, arguments))
        return future

    def _worker(self) -> None:
        while True:
            target, function, arguments = self._work.get()
            if isinstance(target, _LoopJob):
                self._run_for_loop(target, function, arguments)
            elif target.set_running_or_notify_cancel():
                try:
                    target.set_result(function(*arguments))
                except BaseException as error:  # handed to the waiting coroutine
                    target.set_exception(error)
            with self._lock:
                self._idle += 1

    @staticmethod
    def _run_for_loop(job: _LoopJob, function: Callable[..., Any], arguments: tuple[Any, ...]) -> None:
        if job.future.cancelled():
            return
        try:
            result = function(*arguments)
        except BaseException as error:  # handed to the waiting coroutine
            job.inbox.put(job.future, False, error)
        else:
            job.inbox.put(job.future, True, result)


_POOL: DaemonThreadPool | None = None
_POOL_LOCK = threading.Lock()


def shared_pool(max_threads: int) -> DaemonThreadPool:
    """The process's one pool: runs in the same process reuse its idle threads."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max < max_threads:
            _POOL = DaemonThreadPool(max_threads)
        return _POOL
