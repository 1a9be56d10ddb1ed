"""The JSON search client against a real local fake server."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.fixtures import fake_search
from fakes.servers import FakeResponse, FakeSearchServer
from orchestrator.errors import TaskError
from orchestrator.runtime.search import HttpJsonSearchClient, SearchResult, search_output
from orchestrator.settings import Settings, load_settings

# Imported fixtures are found by name; listing them here marks the import as used.
__all__ = ["fake_search"]


def make_settings(tmp_path: Path, **env: str) -> Settings:
    """Settings from `env` and an empty config file in tmp_path (never the developer's own)."""
    path = tmp_path / "config.yaml"
    path.write_text("{}\n", encoding="utf-8")
    return load_settings(
        {"ORCHESTRATOR_HOME": str(tmp_path / "home"), "ORCHESTRATOR_CONFIG": str(path), **env}
    )


def client_for(server: FakeSearchServer, tmp_path: Path, *, key: str | None = None) -> HttpJsonSearchClient:
    env = {"ORCHESTRATOR_SEARCH_URL": server.url}
    if key is not None:
        env["ORCHESTRATOR_SEARCH_API_KEY"] = key
    return HttpJsonSearchClient(make_settings(tmp_path, **env), timeout=5.0)


def test_results_are_mapped_and_the_query_sent(fake_search: FakeSearchServer, tmp_path: Path) -> None:
    # GIVEN a server with two results
    fake_search.enqueue(
        [
            {"title": "Python", "url": "https://python.org", "snippet": "The language."},
            {"title": "PyPI", "url": "https://pypi.org", "snippet": "The index.", "rank": 2},
        ]
    )
    client = client_for(fake_search, tmp_path)
    # WHEN the client searches
    results = client.search("python & packaging", 5)
    # THEN the results are mapped and the query went out encoded
    assert results == [
        SearchResult("Python", "https://python.org", "The language."),
        SearchResult("PyPI", "https://pypi.org", "The index."),
    ]
    request = fake_search.last_request
    assert request.method == "GET"
    assert request.path == "/search"
    assert request.query == {"q": ["python & packaging"], "max_results": ["5"]}
    assert "authorization" not in request.headers


def test_fallback_field_names(fake_search: FakeSearchServer, tmp_path: Path) -> None:
    fake_search.enqueue(
        [
            {"title": "A", "link": "https://a.example", "description": "about a"},
            {"name": "B", "href": "https://b.example", "content": "about b"},
            {"title": "C", "url": "https://c.example", "body": "about c"},
            {"title": "D", "url": "", "link": "https://d.example", "snippet": None, "body": "d"},
            {"url": "https://e.example"},
        ]
    )
    client = client_for(fake_search, tmp_path)
    assert client.search("q", 10) == [
        SearchResult("A", "https://a.example", "about a"),
        SearchResult("B", "https://b.example", "about b"),
        SearchResult("C", "https://c.example", "about c"),
        SearchResult("D", "https://d.example", "d"),
        SearchResult("", "https://e.example", ""),
    ]


def test_bare_list_response_is_truncated_to_max_results(
    fake_search: FakeSearchServer, tmp_path: Path
) -> None:
    items = [{"title": f"T{n}", "url": f"https://e.example/{n}", "snippet": "s"} for n in range(5)]
    fake_search.enqueue(FakeResponse(json_body=items))
    client = client_for(fake_search, tmp_path)
    results = client.search("q", 2)
    assert [result.title for result in results] == ["T0", "T1"]


def test_api_key_is_sent_as_bearer_token(fake_search: FakeSearchServer, tmp_path: Path) -> None:
    client = client_for(fake_search, tmp_path, key="search-secret")
    client.search("q", 1)
    assert fake_search.last_request.headers["authorization"] == "Bearer search-secret"


def test_query_string_of_the_configured_url_is_kept(fake_search: FakeSearchServer, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ORCHESTRATOR_SEARCH_URL=f"{fake_search.url}?engine=web")
    HttpJsonSearchClient(settings).search("q", 3)
    assert fake_search.last_request.query == {"engine": ["web"], "q": ["q"], "max_results": ["3"]}


def test_search_output_shape() -> None:
    output = search_output("q", [SearchResult("T", "https://e.example", "S")])
    assert output == {
        "query": "q",
        "results": [{"title": "T", "url": "https://e.example", "snippet": "S"}],
    }


# -- failures: one request each, typed for the task's policy ----------------------------


@pytest.mark.parametrize(
    ("answer", "error_type", "retry_after"),
    [
        (FakeResponse(status=429, headers={"Retry-After": "2"}), "SearchRateLimited", 2.0),
        (FakeResponse(status=429), "SearchRateLimited", None),
        (FakeResponse(status=502, message="bad gateway"), "SearchTransientError", None),
        (FakeResponse(status=503, headers={"Retry-After": "4"}), "SearchTransientError", 4.0),
    ],
)
def test_a_transient_answer_fails_after_one_request_with_its_retry_after(
    fake_search: FakeSearchServer,
    tmp_path: Path,
    answer: FakeResponse,
    error_type: str,
    retry_after: float | None,
) -> None:
    # GIVEN an endpoint that answers once with a transient error, then would answer
    fake_search.enqueue(answer)
    # WHEN the client searches
    with pytest.raises(TaskError) as caught:
        client_for(fake_search, tmp_path, key="secret").search("private query", 2)
    # THEN it made one request: retrying is the task policy's job, told the Retry-After
    assert fake_search.request_count == 1
    assert caught.value.error_type == error_type
    assert caught.value.retryable is True
    assert caught.value.retry_after == retry_after
    assert f"HTTP {answer.status}: {answer.message}" in caught.value.message
    assert "private query" not in caught.value.message  # the URL is quoted without its query
    assert "secret" not in caught.value.message


def test_client_error_is_not_retried(fake_search: FakeSearchServer, tmp_path: Path) -> None:
    fake_search.enqueue(FakeResponse(status=403, message="quota exhausted"))
    with pytest.raises(TaskError) as caught:
        client_for(fake_search, tmp_path).search("q", 2)
    assert caught.value.error_type == "SearchRequestError"
    assert caught.value.retryable is False
    assert "HTTP 403: quota exhausted" in caught.value.message
    assert fake_search.request_count == 1


def test_a_timeout_is_one_transient_request(fake_search: FakeSearchServer, tmp_path: Path) -> None:
    fake_search.enqueue(FakeResponse(delay=5.0, json_body={"results": []}))
    settings = make_settings(tmp_path, ORCHESTRATOR_SEARCH_URL=fake_search.url)
    client = HttpJsonSearchClient(settings, timeout=0.05)
    with pytest.raises(TaskError) as caught:
        client.search("q", 2)
    assert caught.value.error_type == "SearchTransientError"
    assert "timeout" in caught.value.message
    assert fake_search.request_count == 1
    assert len(client.search("q", 2)) == 2  # the task's next attempt


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    with FakeSearchServer() as server:
        url = server.url  # nobody listens there once the server stops
    settings = make_settings(tmp_path, ORCHESTRATOR_SEARCH_URL=url)
    with pytest.raises(TaskError) as caught:
        HttpJsonSearchClient(settings).search("q", 1)
    assert caught.value.error_type == "SearchTransientError"
    assert "connection failed" in caught.value.message


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (FakeResponse(raw_body=b"<html>oops</html>"), "did not return JSON"),
        (FakeResponse(json_body={"items": []}), "an object with keys [items]"),
        (FakeResponse(json_body={"results": "none"}), "got an object with keys [results]"),
        (FakeResponse(json_body=["just a string"]), "search result 0 must be an object"),
        (FakeResponse(json_body=None, raw_body=b"null"), "got null"),
    ],
)
def test_malformed_responses_are_response_errors(
    fake_search: FakeSearchServer, tmp_path: Path, answer: FakeResponse, fragment: str
) -> None:
    fake_search.enqueue(answer)
    with pytest.raises(TaskError) as caught:
        client_for(fake_search, tmp_path).search("q", 3)
    assert caught.value.error_type == "SearchResponseError"
    assert fragment in caught.value.message
    assert fake_search.request_count == 1


def test_missing_url_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError) as caught:
        HttpJsonSearchClient(make_settings(tmp_path)).search("q", 3)
    assert caught.value.error_type == "SearchConfigurationError"
    assert caught.value.retryable is False
    assert "ORCHESTRATOR_SEARCH_URL" in caught.value.message


def test_non_http_url_is_a_configuration_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ORCHESTRATOR_SEARCH_URL="file:///etc/passwd")
    with pytest.raises(TaskError) as caught:
        HttpJsonSearchClient(settings).search("q", 3)
    assert caught.value.error_type == "SearchConfigurationError"


def test_max_results_below_one_is_refused(fake_search: FakeSearchServer, tmp_path: Path) -> None:
    client = client_for(fake_search, tmp_path)
    with pytest.raises(TaskError) as caught:
        client.search("q", 0)
    assert caught.value.error_type == "SearchRequestError"
    assert fake_search.request_count == 0
