"""Read a user's text file (a pipeline, an inputs file) without hanging or crashing on it.

Only a regular file of at most `MAX_FILE_BYTES` is read: `/dev/zero`, a FIFO, a directory or
a huge file is refused with the reason, before anything is read from it (a FIFO is opened
without waiting for a writer). Every problem is an `UnreadableFile` whose message says what
is wrong and what to do; a path that names nothing gives None, which callers report their way.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_FILE_BYTES = 16 * 1024 * 1024
"""The largest file read (a pipeline of 2,000 tasks is about 200 KB)."""


class UnreadableFile(Exception):
    """A file that cannot be used; `str()` is the reason and the fix."""


def shown(path: Path | str, limit: int = 120) -> str:
    """A path as messages name it: shortened in the middle when very long."""
    text = str(path)
    return (
        text
        if len(text) <= limit
        else f"{text[: limit // 2]}...{text[-limit // 2 :]} ({len(text):,} characters)"
    )


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_text(path: Path) -> str | None:
    """The UTF-8 text of a regular file; None when there is no such file."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise UnreadableFile(
                f"the path is too long ({len(str(path)):,} characters): name a file with a shorter path"
            ) from None
        if error.errno == errno.ENOTDIR:
            return None
        raise UnreadableFile(f"cannot open it: {error.strerror or error}") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(f"it is {_kind(info.st_mode)}, not a file: name a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise UnreadableFile(
                f"it is {info.st_size:,} bytes, more than the {MAX_FILE_BYTES:,} allowed: split it"
            )
        with os.fdopen(os.dup(descriptor), "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise UnreadableFile(f"cannot read it: {error.strerror or error}") from None
    finally:
        os.close(descriptor)
    if len(data) > MAX_FILE_BYTES:
        raise UnreadableFile(f"it grew past the {MAX_FILE_BYTES:,} bytes allowed while it was read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnreadableFile(
            f"it is not UTF-8 text (byte {error.start:,} is 0x{data[error.start]:02x}): save it as UTF-8"
        ) from None
