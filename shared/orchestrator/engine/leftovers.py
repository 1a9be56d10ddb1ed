"""What a run's scripts leave behind when the `orchestrator` command ends, and its removal.

Scripts run in the command's own process, so what they start is the command's: processes
(`subprocess`, `multiprocessing`, a sandboxed task's own children) and threads. When the
command ends, none of it outlives it:

- `adopt_descendants` (at start) makes the command the subreaper of every process started
  under it (Linux), so a process that detaches itself (double fork, `setsid`) still counts
  as its descendant; `end_descendants` (at the end) kills every descendant still running.
  Elsewhere only the processes that are still its children or theirs are found.
- `exit_past_threads` ends the process once the command is done even if a script left a
  non-daemon thread running, which would otherwise keep the interpreter waiting for it after
  the run document was printed. Exit handlers (`atexit`) still run first.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
REAP_PATIENCE = 2.0
"""Seconds to wait for killed children to be gone (so nothing of theirs lingers as a zombie)."""


def adopt_descendants() -> None:
    """Become the subreaper of every process started under this one (Linux; else nothing)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (children first), from /proc; empty where there is none."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    if int(child) not in found:
                        found.append(int(child))
                        pending.append(int(child))
    return found


def end_descendants() -> None:
    """Kill every process still running under this one, and reap those that were its own."""
    for _ in range(3):  # a dying process may still have forked: look again
        found = descendants(os.getpid())
        if not found:
            return
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        _reap(REAP_PATIENCE)


def _reap(patience: float) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def exit_past_threads(code: int) -> None:
    """End the process now with `code` if a non-daemon thread other than this one is alive;
    return otherwise (the interpreter then exits as usual)."""
    current = threading.current_thread()
    if not any(t.is_alive() and not t.daemon and t is not current for t in threading.enumerate()):
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    atexit._run_exitfuncs()
    os._exit(code)
