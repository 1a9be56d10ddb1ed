"""The search client of `web_search_task`: one GET to a JSON search endpoint, a list of results.

`HttpJsonSearchClient` calls ``ORCHESTRATOR_SEARCH_URL`` with ``?q=<query>&max_results=<n>``
(and ``Authorization: Bearer <key>`` when ``ORCHESTRATOR_SEARCH_API_KEY`` is set) using only
the standard library, once (a retry is another attempt of the task, under its `error_handling`;
a 429 is `SearchRateLimited`, a timeout, connection failure, 408 or 5xx `SearchTransientError`,
carrying the server's ``Retry-After``, as for the LLM client), and reads the common shapes of
search APIs: ``{"results": [...]}`` or a bare list, with ``link``/``href`` for ``url`` and
``description``/``content``/``body`` for ``snippet``.
`search_output` builds the task's output from the results.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from orchestrator.errors import TaskError
from orchestrator.runtime.llm import is_transient_status, parse_retry_after, transient_error
from orchestrator.runtime.provider_keys import search_key
from orchestrator.settings import Settings

__all__ = ["HttpJsonSearchClient", "SearchClient", "SearchResult", "search_output"]

_TITLE_KEYS = ("title", "name")
_URL_KEYS = ("url", "link", "href")
_SNIPPET_KEYS = ("snippet", "description", "content", "body")


@dataclass(frozen=True)
class SearchResult:
    """One hit: its title, address and a short excerpt."""

    title: str
    url: str
    snippet: str


class SearchClient(Protocol):
    """Anything that can answer a query with at most `max_results` results."""

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        """Return the results, best first, or raise `TaskError`."""
        ...


def search_output(query: str, results: list[SearchResult]) -> dict[str, object]:
    """A `web_search_task` output: ``{"query", "results": [{"title", "url", "snippet"}]}``."""
    return {
        "query": query,
        "results": [
            {"title": result.title, "url": result.url, "snippet": result.snippet} for result in results
        ],
    }


class HttpJsonSearchClient:
    """`SearchClient` for a JSON search endpoint, over `urllib.request`.

    Parameters
    ----------
    settings:
        ``search_url`` and the key (``search_api_key``, or the secret ``search_api_key_secret``).
    timeout:
        Seconds for the request; defaults to ``settings.llm_timeout``.
    """

    def __init__(self, settings: Settings, *, timeout: float | None = None) -> None:
        self._settings = settings
        self._timeout = settings.llm_timeout if timeout is None else timeout

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        """Ask the endpoint for `query` and return at most `max_results` results."""
        if max_results < 1:
            raise TaskError(
                "SearchRequestError",
                f"max_results must be at least 1, got {max_results}",
            )
        request = self._build_request(query, max_results)
        return _parse_results(self._fetch_once(request), max_results)[:max_results]

    def _build_request(self, query: str, max_results: int) -> urllib.request.Request:
        url = self._settings.search_url
        if not url:
            raise TaskError(
                "SearchConfigurationError",
                "no search endpoint is configured: set ORCHESTRATOR_SEARCH_URL "
                "(or search.url in the config file)",
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TaskError(
                "SearchConfigurationError",
                f"ORCHESTRATOR_SEARCH_URL must be an http(s) URL, got {url!r}",
            )
        params = [*parse_qsl(parts.query, keep_blank_values=True)]
        params += [("q", query), ("max_results", str(max_results))]
        full_url = urlunsplit(parts._replace(query=urlencode(params)))
        headers = {"Accept": "application/json", "User-Agent": "orchestrator"}
        key = search_key(self._settings)  # read from its secret, if named
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return urllib.request.Request(full_url, headers=headers, method="GET")

    def _fetch_once(self, request: urllib.request.Request) -> bytes:
        where = f"search at {_safe_url(request.full_url)}"
        try:
            # The scheme was checked in _build_request: only http(s) reaches urlopen.
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # nosec B310
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as error:
            with error:
                detail = f"HTTP {error.code}: {_error_text(error)}"
                if is_transient_status(error.code):
                    retry_after = parse_retry_after(error.headers.get("Retry-After"))
                    error_type = "SearchRateLimited" if error.code == 429 else "SearchTransientError"
                    raise transient_error(error_type, where, detail, retry_after) from None
                raise TaskError("SearchRequestError", f"{where}: {detail}") from None
        except TimeoutError:
            message = f"{where}: no answer within {self._timeout:g}s (timeout)"
            raise TaskError("SearchTransientError", message) from None
        except urllib.error.URLError as error:
            raise TaskError("SearchTransientError", f"{where}: connection failed: {error.reason}") from None
        except (ConnectionError, http.client.HTTPException) as error:
            raise TaskError("SearchTransientError", f"{where}: connection failed: {error!r}") from None


def _safe_url(url: str) -> str:
    """The URL without its query string (which holds the query, and maybe a key)."""
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        raw = error.read()
    except OSError:
        raw = b""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = None
    if isinstance(decoded, Mapping):
        inner = decoded.get("error", decoded)
        message = inner.get("message") if isinstance(inner, Mapping) else inner
        if isinstance(message, str) and message:
            return message
    return text[:300] or str(error.reason)


def _parse_results(payload: bytes, max_results: int) -> list[SearchResult]:
    try:
        decoded = json.loads(payload)
    except ValueError:
        raise TaskError(
            "SearchResponseError",
            f"the search endpoint did not return JSON: {payload[:200]!r}",
        ) from None
    items = decoded.get("results") if isinstance(decoded, Mapping) else decoded
    if not isinstance(items, list):
        raise TaskError(
            "SearchResponseError",
            f'the search response must be {{"results": [...]}} or a list of results, got {_shape(decoded)}',
        )
    results = []
    for index, item in enumerate(items[:max_results]):
        if not isinstance(item, Mapping):
            raise TaskError(
                "SearchResponseError",
                f"search result {index} must be an object, got {_shape(item)}",
            )
        results.append(
            SearchResult(
                title=_first_text(item, _TITLE_KEYS),
                url=_first_text(item, _URL_KEYS),
                snippet=_first_text(item, _SNIPPET_KEYS),
            )
        )
    return results


def _first_text(item: Mapping[str, object], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = item.get(key)
        if value is not None and value != "":
            return value if isinstance(value, str) else json.dumps(value)
    return ""


def _shape(value: object) -> str:
    if isinstance(value, Mapping):
        keys = ", ".join(sorted(map(str, value))[:10])
        return f"an object with keys [{keys}]"
    return type(value).__name__ if value is not None else "null"
