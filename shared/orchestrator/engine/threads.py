"""Daemon worker threads for blocking task work: a hung script never keeps the process alive."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class DaemonThreadPool:
    """A thread pool whose threads are daemons, started on demand up to `max_threads`."""

    def __init__(self, max_threads: int) -> None:
        self._max = max_threads
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, function: Callable[..., Any], *arguments: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._idle <= 0 and self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._worker, daemon=True, name="orchestrator-task").start()
            else:
                self._idle -= 1
        self._work.put((future, function, arguments))
        return future

    def _worker(self) -> None:
        while True:
            future, function, arguments = self._work.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*arguments))
                except BaseException as error:  # handed to the waiting coroutine
                    future.set_exception(error)
            with self._lock:
                self._idle += 1


_POOL: DaemonThreadPool | None = None
_POOL_LOCK = threading.Lock()


def shared_pool(max_threads: int) -> DaemonThreadPool:
    """The process's one pool: runs in the same process reuse its idle threads."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max < max_threads:
            _POOL = DaemonThreadPool(max_threads)
        return _POOL
