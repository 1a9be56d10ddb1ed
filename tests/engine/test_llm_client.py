"""The chat completions client against real local servers (plain, TLS, behind a proxy), and the
parsing of replies. `test_llm_client_reference.py` holds it to the `openai` client it replaced."""

from __future__ import annotations

import dataclasses
import datetime
import gc
import ipaddress
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes.fixtures import fake_openai
from fakes.servers import FakeOpenAIServer, FakeResponse
from orchestrator.errors import TaskError
from orchestrator.runtime.llm import (
    ChatCompletionsClient,
    LLMRequest,
    parse_llm_output,
    parse_retry_after,
)
from orchestrator.settings import Settings, load_settings

# Imported fixtures are found by name; listing them here marks the import as used.
__all__ = ["fake_openai"]


def make_settings(tmp_path: Path, config: dict[str, Any] | None = None, **env: str) -> Settings:
    """Settings from `env` and a config file in tmp_path (never the developer's own)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config or {}), encoding="utf-8")
    return load_settings(
        {"ORCHESTRATOR_HOME": str(tmp_path / "home"), "ORCHESTRATOR_CONFIG": str(path), **env}
    )


def served_by(server: FakeOpenAIServer, tmp_path: Path, **changes: Any) -> Settings:
    settings = make_settings(tmp_path, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-test")
    return dataclasses.replace(settings, **changes)


# -- requests ---------------------------------------------------------------------------


def test_request_carries_model_messages_parameters_and_key(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    # GIVEN a server that answers "Paris"
    fake_openai.enqueue("Paris")
    request = LLMRequest(
        model="gpt-4o-mini",
        prompt="Capital of France?",
        system="Answer in one word.",
        temperature=0.2,
        max_tokens=5,
    )
    # WHEN the client sends a full request
    with ChatCompletionsClient(served_by(fake_openai, tmp_path)) as client:
        reply = client.complete(request).text
    # THEN the reply is the text and the request carries every field
    assert reply == "Paris"
    sent = fake_openai.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.json["model"] == "gpt-4o-mini"
    assert sent.json["messages"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert sent.json["temperature"] == 0.2
    assert sent.json["max_tokens"] == 5


def test_unset_fields_are_not_sent(fake_openai: FakeOpenAIServer, tmp_path: Path) -> None:
    with ChatCompletionsClient(served_by(fake_openai, tmp_path)) as client:
        reply = client.complete(LLMRequest(model="m", prompt="echo me")).text
    assert reply == "echo me"  # the fake's default reply echoes the prompt
    body = fake_openai.last_request.json
    assert body["messages"] == [{"role": "user", "content": "echo me"}]
    assert "temperature" not in body
    assert "max_tokens" not in body


def test_model_routed_in_config_file_goes_to_its_own_endpoint(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    # GIVEN a default endpoint and a config file routing claude-3 to a second server
    with FakeOpenAIServer(reply=lambda body: "from second") as second:
        config = {
            "llm": {
                "models": {
                    "claude-3": {
                        "base_url": second.base_url,
                        "api_key_env": "CLAUDE_KEY",
                        "model": "claude-3-5-sonnet-upstream",
                    }
                }
            }
        }
        settings = make_settings(
            tmp_path,
            config,
            OPENAI_BASE_URL=fake_openai.base_url,
            OPENAI_API_KEY="sk-default",
            CLAUDE_KEY="sk-claude",
        )
        # WHEN both models are asked
        with ChatCompletionsClient(settings) as client:
            routed = client.complete(LLMRequest(model="claude-3", prompt="hi")).text
            default = client.complete(LLMRequest(model="gpt-4o-mini", prompt="hi")).text
        # THEN each went to its own server with its own key and upstream name
        assert (routed, default) == ("from second", "hi")
        assert second.request_count == 1
        assert second.last_request.headers["authorization"] == "Bearer sk-claude"
        assert second.last_request.json["model"] == "claude-3-5-sonnet-upstream"
    assert fake_openai.request_count == 1
    assert fake_openai.last_request.headers["authorization"] == "Bearer sk-default"
    assert fake_openai.last_request.json["model"] == "gpt-4o-mini"


def test_local_server_without_key_gets_placeholder_key(fake_openai: FakeOpenAIServer, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, OPENAI_BASE_URL=fake_openai.base_url)
    with ChatCompletionsClient(settings) as client:
        client.complete(LLMRequest(model="llama3", prompt="hi"))
    assert fake_openai.last_request.headers["authorization"] == "Bearer not-needed"


def test_neither_key_nor_url_is_a_configuration_error(tmp_path: Path) -> None:
    with ChatCompletionsClient(make_settings(tmp_path)) as client, pytest.raises(TaskError) as caught:
        client.complete(LLMRequest(model="gpt-4o-mini", prompt="hi"))
    assert caught.value.error_type == "LLMConfigurationError"
    assert caught.value.retryable is False
    assert "OPENAI_API_KEY" in caught.value.message
    assert "OPENAI_BASE_URL" in caught.value.message


def test_one_openai_client_per_endpoint_shared_by_threads(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    replies: list[str] = []
    with ChatCompletionsClient(served_by(fake_openai, tmp_path)) as client:

        def ask(number: int) -> None:
            replies.append(client.complete(LLMRequest(model=f"model-{number % 2}", prompt="x")).text)

        threads = [threading.Thread(target=ask, args=(number,)) for number in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(client._clients) == 1
    assert replies == ["x"] * 8
    assert fake_openai.request_count == 8


# -- failures: one request each, typed for the task's policy ----------------------------


@pytest.mark.parametrize(
    ("answer", "error_type", "retry_after"),
    [
        (FakeResponse(status=429, headers={"Retry-After": "7"}), "LLMRateLimited", 7.0),
        (FakeResponse(status=429, headers={"retry-after-ms": "1500", "Retry-After": "2"}),
         "LLMRateLimited", 1.5),
        (FakeResponse(status=429), "LLMRateLimited", None),
        (FakeResponse(status=500, message="overloaded"), "LLMTransientError", None),
        (FakeResponse(status=503, headers={"Retry-After": "3"}), "LLMTransientError", 3.0),
        (FakeResponse(status=408), "LLMTransientError", None),
    ],
)  # fmt: skip
def test_a_transient_answer_fails_after_one_request_with_its_retry_after(
    fake_openai: FakeOpenAIServer,
    tmp_path: Path,
    answer: FakeResponse,
    error_type: str,
    retry_after: float | None,
) -> None:
    # GIVEN a server that answers once with a transient error, then would reply
    fake_openai.enqueue(answer, "never reached")
    # WHEN the client asks
    with (
        ChatCompletionsClient(served_by(fake_openai, tmp_path)) as client,
        pytest.raises(TaskError) as caught,
    ):
        client.complete(LLMRequest(model="m", prompt="p"))
    # THEN it made exactly one request: retrying is the task policy's job, told the Retry-After
    assert fake_openai.request_count == 1
    assert caught.value.error_type == error_type
    assert caught.value.retryable is True
    assert caught.value.retry_after == retry_after
    assert f"HTTP {answer.status}" in caught.value.message
    if retry_after is not None:
        assert f"Retry-After: {retry_after:g}s" in caught.value.message


@pytest.mark.parametrize(("status", "message"), [(401, "bad key"), (400, "bad request")])
def test_client_errors_are_not_retried(
    fake_openai: FakeOpenAIServer, tmp_path: Path, status: int, message: str
) -> None:
    fake_openai.enqueue(FakeResponse(status=status, message=message), "never reached")
    with (
        ChatCompletionsClient(served_by(fake_openai, tmp_path)) as client,
        pytest.raises(TaskError) as caught,
    ):
        client.complete(LLMRequest(model="m", prompt="p"))
    assert caught.value.error_type == "LLMRequestError"
    assert caught.value.retryable is False
    assert f"HTTP {status}" in caught.value.message
    assert message in caught.value.message
    assert fake_openai.request_count == 1


def test_a_timeout_is_one_transient_request(fake_openai: FakeOpenAIServer, tmp_path: Path) -> None:
    # GIVEN a first answer slower than the timeout, then a prompt one
    fake_openai.enqueue(FakeResponse(delay=5.0, text="too late"), "in time")
    settings = served_by(fake_openai, tmp_path, llm_timeout=0.05)
    with ChatCompletionsClient(settings) as client:
        # WHEN the client asks  THEN the slow request fails the call, and is not sent again
        with pytest.raises(TaskError) as caught:
            client.complete(LLMRequest(model="m", prompt="p"))
        assert caught.value.error_type == "LLMTransientError"
        assert "timeout" in caught.value.message
        assert fake_openai.request_count == 1
        # AND the next call (the task's next attempt) is answered
        assert client.complete(LLMRequest(model="m", prompt="p")).text == "in time"
    assert fake_openai.request_count == 2


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        base_url = server.base_url  # a port nobody listens on once the server stops
    settings = make_settings(tmp_path, OPENAI_BASE_URL=base_url)
    with ChatCompletionsClient(settings) as client, pytest.raises(TaskError) as caught:
        client.complete(LLMRequest(model="m", prompt="p"))
    assert caught.value.error_type == "LLMTransientError"
    assert caught.value.retry_after is None
    assert "connection" in caught.value.message.lower()


def test_reply_without_text_is_a_response_error(fake_openai: FakeOpenAIServer, tmp_path: Path) -> None:
    fake_openai.enqueue(
        FakeResponse(
            json_body={
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": None},
                        "finish_reason": "length",
                    }
                ],
            }
        )
    )
    with (
        ChatCompletionsClient(served_by(fake_openai, tmp_path)) as c,
        pytest.raises(TaskError) as caught,
    ):
        c.complete(LLMRequest(model="m", prompt="p"))
    assert caught.value.error_type == "LLMResponseError"
    assert "length" in caught.value.message


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (FakeResponse(raw_body=b"<html>busy</html>"), "not JSON"),
        (FakeResponse(raw_body=b""), "not JSON"),
        (FakeResponse(json_body=["a", "list"]), "not a JSON object"),
        (FakeResponse(json_body={"id": "x"}), "no choices"),
        (FakeResponse(json_body={"choices": []}), "no choices"),
        (FakeResponse(json_body={"choices": "ok"}), "no choices"),
        (FakeResponse(json_body={"choices": ["ok"]}), "no text"),
        (FakeResponse(json_body={"choices": [{"message": "ok"}]}), "no text"),
        (FakeResponse(json_body={"choices": [{"message": {"content": 42}}]}), "no text"),
    ],
)
def test_a_reply_that_is_not_a_chat_completion_is_a_response_error(
    fake_openai: FakeOpenAIServer, tmp_path: Path, answer: FakeResponse, problem: str
) -> None:
    fake_openai.enqueue(answer)
    with (
        ChatCompletionsClient(served_by(fake_openai, tmp_path)) as client,
        pytest.raises(TaskError) as caught,
    ):
        client.complete(LLMRequest(model="m", prompt="p"))
    assert caught.value.error_type == "LLMResponseError"
    assert caught.value.retryable is True
    assert problem in caught.value.message
    assert fake_openai.request_count == 1


@pytest.mark.parametrize(
    "usage",
    [None, "many", {"prompt_tokens": "5", "completion_tokens": True}, {"prompt_tokens": 5}],
)
def test_usage_the_provider_does_not_give_as_whole_numbers_is_unknown(
    fake_openai: FakeOpenAIServer, tmp_path: Path, usage: Any
) -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    fake_openai.enqueue(FakeResponse(json_body={"choices": [choice], "usage": usage}))
    with ChatCompletionsClient(served_by(fake_openai, tmp_path)) as client:
        reply = client.complete(LLMRequest(model="m", prompt="p"))
    expected_in = 5 if isinstance(usage, dict) and usage.get("prompt_tokens") == 5 else None
    assert (reply.text, reply.tokens_in, reply.tokens_out) == ("ok", expected_in, None)


@pytest.mark.parametrize("base_url", ["ftp://models.example/v1", "127.0.0.1:8000/v1", "http://"])
def test_an_endpoint_that_is_not_an_http_url_is_a_configuration_error(tmp_path: Path, base_url: str) -> None:
    settings = make_settings(tmp_path, OPENAI_BASE_URL=base_url)
    with ChatCompletionsClient(settings) as client, pytest.raises(TaskError) as caught:
        client.complete(LLMRequest(model="m", prompt="p"))
    assert caught.value.error_type == "LLMConfigurationError"
    assert base_url in caught.value.message
    assert "OPENAI_BASE_URL" in caught.value.message


def test_a_request_that_is_not_json_is_a_request_error(fake_openai: FakeOpenAIServer, tmp_path: Path) -> None:
    # GIVEN a schema holding a NaN (YAML's .nan), which JSON cannot carry
    request = LLMRequest(model="m", prompt="p", response_schema={"maximum": float("nan")})
    with (
        ChatCompletionsClient(served_by(fake_openai, tmp_path)) as client,
        pytest.raises(TaskError) as caught,
    ):
        client.complete(request)
    assert caught.value.error_type == "LLMRequestError"
    assert fake_openai.request_count == 0


# -- the network: proxies and TLS from the standard environment -----------------------------


def test_requests_go_through_the_proxy_the_environment_names(
    fake_openai: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an endpoint on a host that does not resolve, and HTTP_PROXY naming a server that
    # answers (the fake serves the absolute-form request a proxy receives)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", fake_openai.root_url)
    settings = make_settings(tmp_path, OPENAI_BASE_URL="http://llm.invalid/v1", OPENAI_API_KEY="sk-proxied")
    # WHEN the client asks  THEN the request went to the proxy, for the endpoint, with the key
    with ChatCompletionsClient(settings) as client:
        assert client.complete(LLMRequest(model="m", prompt="via proxy")).text == "via proxy"
    assert fake_openai.last_request.headers["host"] == "llm.invalid"
    assert fake_openai.last_request.headers["authorization"] == "Bearer sk-proxied"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no system trusts, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orchestrator test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[bytes]]]:
    """An HTTPS chat endpoint on 127.0.0.1 with a self-signed certificate: its base URL, the
    certificate, and the requests it read (each answered "secure", then the connection closed)."""
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    received: list[bytes] = []
    stop = threading.Event()
    body = b'{"choices": [{"message": {"role": "assistant", "content": "secure"}}]}'

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            try:
                with context.wrap_socket(raw, server_side=True) as connection:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += connection.recv(65536)
                    head, _, rest = data.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    while len(rest) < length:  # read it all: closing with unread bytes resets
                        rest += connection.recv(65536)
                    received.append(data)
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
            except (ssl.SSLError, OSError):
                raw.close()  # the client refused the certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/v1", cert_file, received
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_a_certificate_nobody_vouches_for_is_refused(
    tls_server: tuple[str, Path, list[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, _, received = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    settings = make_settings(tmp_path, OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-secret")
    with ChatCompletionsClient(settings) as client, pytest.raises(TaskError) as caught:
        client.complete(LLMRequest(model="m", prompt="p"))
    # THEN nothing, the key least of all, was sent to the server that could not prove who it is
    assert caught.value.error_type == "LLMTransientError"
    assert "certificate" in caught.value.message.lower()
    assert received == []


def test_a_certificate_the_environment_trusts_is_accepted(
    tls_server: tuple[str, Path, list[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, cert_file, received = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    with ChatCompletionsClient(make_settings(tmp_path, OPENAI_BASE_URL=base_url)) as client:
        assert client.complete(LLMRequest(model="m", prompt="p")).text == "secure"
    assert len(received) == 1 and received[0].startswith(b"POST /v1/chat/completions HTTP/1.1")


# -- Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), (" 1.5 ", 1.5), (None, None), ("", None), ("-1", None), ("nan", None), ("inf", None),
     ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0), ("Wed, 21 Oct 2015 07:26:00 GMT", 0.0),
     ("Wed, 21 Oct 2015 07:28:00", None)],
)  # fmt: skip
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    now = 1445412420.0  # Wed, 21 Oct 2015 07:27:00 GMT
    assert parse_retry_after(header, now=now) == seconds


# -- parsing replies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "output_type", "expected"),
    [
        ("  any text\n", "text", "  any text\n"),
        ("0.85", "number", 0.85),
        (" -3 \n", "number", -3.0),
        ("1e3", "number", 1000.0),
        ("Score: 0.85", "number", 0.85),
        ("The answer is 42.", "number", 42.0),
        ("about 1,234.5 units", "number", 1234.5),
        ("7", "integer", 7),
        ("3.0", "integer", 3),
        ("There are 12 apples.", "integer", 12),
        ("12345678901234567890", "integer", 12345678901234567890),
        ("true", "boolean", True),
        ("Yes.", "boolean", True),
        (" FALSE \n", "boolean", False),
        ("no", "boolean", False),
        ("**No**", "boolean", False),
        ('{"a": [1, 2]}', "json", {"a": [1, 2]}),
        ("  [1, 2, 3]  ", "json", [1, 2, 3]),
        ('Here you go:\n```json\n{"ok": true}\n```\nDone.', "json", {"ok": True}),
        ('```\n{"plain": "fence"}\n```', "json", {"plain": "fence"}),
        ('"just a string"', "json", "just a string"),
    ],
)
def test_replies_parse_to_their_output_type(text: str, output_type: str, expected: object) -> None:
    parsed = parse_llm_output(text, output_type)
    assert parsed == expected
    assert type(parsed) is type(expected)


@pytest.mark.parametrize(
    ("text", "output_type"),
    [
        ("no number here", "number"),
        ("between 3 and 5", "number"),
        ("nan", "number"),
        ("inf", "number"),
        ("1_000", "number"),
        ("about 1_000", "number"),
        ("1,2345", "number"),
        ("3.5", "integer"),
        ("", "integer"),
        ("maybe", "boolean"),
        ("yes and no", "boolean"),
        ("{not json}", "json"),
        ("NaN", "json"),
        ("```json\n{broken\n```", "json"),
    ],
)
def test_replies_that_do_not_parse_are_retryable_parse_errors(text: str, output_type: str) -> None:
    with pytest.raises(TaskError) as caught:
        parse_llm_output(text, output_type)
    assert caught.value.error_type == "OutputParseError"
    assert caught.value.retryable is True
    assert f"expected {output_type}" in caught.value.message


def test_parse_error_quotes_at_most_200_characters() -> None:
    with pytest.raises(TaskError) as caught:
        parse_llm_output("x" * 1000, "number")
    assert "x" * 200 in caught.value.message
    assert "x" * 201 not in caught.value.message


def test_unknown_output_type_is_a_bug() -> None:
    with pytest.raises(ValueError, match="output_type"):
        parse_llm_output("1", "float")


@pytest.fixture
def keep_alive_server() -> Iterator[str]:
    """A chat endpoint that keeps connections open between requests (HTTP/1.1), as providers
    do, unlike the fake server: its base URL."""
    import http.server

    body = b'{"choices": [{"message": {"role": "assistant", "content": "kept"}}]}'

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_client_nobody_closed_closes_its_connections_when_it_is_collected(
    keep_alive_server: str, tmp_path: Path
) -> None:
    """A warm Lambda keeps its client for the container's life and never closes it: when such a
    client goes, its kept-alive connection must not be left to the garbage collector (an
    unclosed socket, a ResourceWarning in whatever runs next)."""
    client = ChatCompletionsClient(make_settings(tmp_path, OPENAI_BASE_URL=keep_alive_server))
    assert client.complete(LLMRequest(model="m", prompt="keep the connection")).text == "kept"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del client
        gc.collect()
    assert [str(warning.message) for warning in caught if warning.category is ResourceWarning] == []
