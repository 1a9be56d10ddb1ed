"""Redaction: secret values and sensitive inputs become `***` wherever they would be shown.

A secret is masked in the forms a script is likely to show it in, not only as itself: each
line of a multi-line secret (a PEM key printed line by line), its JSON- and repr-escaped
forms (`\\n` as backslash-n, as `json.dumps` writes it, also JSON inside JSON) and its
URL-quoted form.

Short values cannot be masked inside free text without destroying it (`us` is in `status`,
`1` in every number). A value shorter than `MIN_FREE_TEXT` characters is therefore masked
only where it is a whole value: a string of user content equal to it (never in a dictionary
key, where masking could merge two keys). A number is masked only when it equals a sensitive
number of at least `MIN_FREE_TEXT` digits.
Redaction applies to user content (outputs, results, error messages, printed lines, state
and cache values); the run document's structure (its keys, run id, task names, statuses,
attempts, timestamps) is never redacted: `runtime.documents.redacted_document`.

`StreamRedactor` masks a stream written in pieces (a `print` writes its text and its newline
separately; a pipe delivers any number of bytes): it holds back a tail that could be the
start of a secret until the next piece decides it, and releases it at the end.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

MASK = "***"
MIN_FREE_TEXT = 4
"""A secret shorter than this is masked only as a whole value, never inside text."""
MIN_SECRET_LINE = 8
"""A line of a multi-line secret is masked on its own when it has at least this many characters."""


def derived_forms(secret: str) -> set[str]:
    """The secret and the forms a script is likely to show it in (all of them, short or not)."""
    forms = {secret}
    if "\n" in secret or "\r" in secret:
        forms.add(secret.replace("\r\n", "\n").replace("\n", "\r\n"))
        forms.update(line.strip() for line in secret.splitlines() if len(line.strip()) >= MIN_SECRET_LINE)
    for form in list(forms):
        escaped = json.dumps(form)[1:-1]
        forms.update(
            {
                escaped,
                json.dumps(form, ensure_ascii=False)[1:-1],
                json.dumps(escaped)[1:-1],  # JSON inside JSON (an output holding a JSON text)
                repr(form)[1:-1],
                form.encode("unicode_escape").decode("ascii"),
                urllib.parse.quote(form, safe=""),
                urllib.parse.quote_plus(form),
            }
        )
    return forms


class _Index:
    """A redactor's forms, longest first (so that a secret is masked before a part of it), and
    by first character (what `Redactor.pending` looks up)."""

    def __init__(self, ordered: tuple[str, ...]) -> None:
        self.ordered = ordered
        self.longest = len(ordered[0]) if ordered else 0
        self.starts: dict[str, list[str]] = {}
        for form in ordered:
            self.starts.setdefault(form[0], []).append(form)


class Redactor:
    """Remembers sensitive values and masks them in text and in any JSON-like value."""

    def __init__(self) -> None:
        self._values: set[str] = set()  # as given (str of numbers): masked as whole values
        self._forms: set[str] = set()  # long enough to be masked inside text
        self._numbers: set[str] = set()  # sensitive numbers masked where a number equals one
        self._index: _Index | None = _Index(())  # built from `_forms` on first use after a change
        self._lock = threading.Lock()

    def add(self, value: Any) -> None:
        """Remember a sensitive value (a string, a number, or every leaf of a list or dict)."""
        if isinstance(value, str) and value:
            self._add_text(value, number=False)
        elif isinstance(value, dict):
            for item in value.values():
                self.add(item)
        elif isinstance(value, list):
            for item in value:
                self.add(item)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self._add_text(str(value), number=True)

    def _add_text(self, value: str, *, number: bool) -> None:
        with self._lock:
            if value in self._values:
                return
            self._values.add(value)
            if number and len(value) >= MIN_FREE_TEXT:
                self._numbers.add(value)
            if len(value) < MIN_FREE_TEXT:
                return
            long_forms = {form for form in derived_forms(value) if len(form) >= MIN_FREE_TEXT}
            if long_forms - self._forms:
                self._forms |= long_forms
                self._index = None

    def _forms_index(self) -> _Index:
        index = self._index
        if index is None:
            with self._lock:
                index = self._index = self._index or _Index(tuple(sorted(self._forms, key=len, reverse=True)))
        return index

    def known(self) -> list[str]:
        """The values given to `add` (numbers as text), sorted."""
        with self._lock:
            return sorted(self._values)

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, text: str) -> str:
        """Free text with every secret of at least `MIN_FREE_TEXT` characters masked."""
        for form in self._forms_index().ordered:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def value(self, value: Any) -> Any:
        """User content with its strings, dictionary keys and sensitive numbers masked: a
        short secret only where a whole string equals it (a key only holding a long one)."""
        if not self._values:
            return value
        if isinstance(value, str):
            return self._string(value)
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        if isinstance(value, int | float) and not isinstance(value, bool) and str(value) in self._numbers:
            return MASK
        return value

    def holds(self, value: Any) -> bool:
        """Whether a sensitive value is anywhere in `value`: a whole string, key or number equal
        to one (however short), or a string holding a long one."""
        if isinstance(value, str):
            return value in self._values or any(form in value for form in self._forms_index().ordered)
        if isinstance(value, dict):
            return any(self.holds(key) or self.holds(item) for key, item in value.items())
        if isinstance(value, list | tuple):
            return any(self.holds(item) for item in value)
        return isinstance(value, int | float) and not isinstance(value, bool) and str(value) in self._values

    def _string(self, text: str) -> str:
        return MASK if text in self._values else self.text(text)

    def pending(self, text: str) -> int:
        """How many characters at the end of `text` (already masked) could be the start of a
        secret that the text to come completes: the tail a stream must hold back."""
        index = self._forms_index()
        starts, longest = index.starts, index.longest
        for start in range(max(0, len(text) - longest + 1), len(text)):
            tail = text[start:]
            if any(len(form) > len(tail) and form.startswith(tail) for form in starts.get(text[start], ())):
                return len(text) - start
        return 0


class StreamRedactor:
    """Masks a stream written in pieces: `feed` returns what can be shown now, `flush` the rest.

    The redactors are read at each piece (a list another thread may add to), so a secret read
    while the stream is open is masked from then on."""

    def __init__(self, redactors: Sequence[Redactor]) -> None:
        self._redactors = redactors
        self._held = ""
        self._lock = threading.Lock()

    def feed(self, text: str) -> str:
        with self._lock:
            masked = _masked(self._held + text, tuple(self._redactors))
            keep = max((redactor.pending(masked) for redactor in tuple(self._redactors)), default=0)
            self._held = masked[len(masked) - keep :]
            return masked[: len(masked) - keep]

    def flush(self) -> str:
        with self._lock:
            held, self._held = self._held, ""
            return _masked(held, tuple(self._redactors))


def _masked(text: str, redactors: Iterable[Redactor]) -> str:
    for redactor in redactors:
        text = redactor.text(text)
    return text
