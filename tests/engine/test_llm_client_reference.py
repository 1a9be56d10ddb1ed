"""`ChatCompletionsClient` against the `openai` package it replaced, both talking to one fake
OpenAI-compatible server: the same request goes out as the same JSON with the same key, and the
same answer (a reply with or without usage, an error status) is read the same way.

The reference is the `openai` client called as `llm_task` called it before (retries off, unset
parameters not sent, the schema as a non-strict ``json_schema`` `response_format`); `openai` is
a development dependency only, for this comparison.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fakes.servers import FakeOpenAIServer, FakeResponse
from orchestrator.errors import TaskError
from orchestrator.runtime.llm import ChatCompletionsClient, LLMReply, LLMRequest
from orchestrator.settings import Settings

KEY = "sk-reference-test"


def _settings(server: FakeOpenAIServer, home: Any) -> Settings:
    return Settings(home=home, openai_base_url=server.base_url, openai_api_key=KEY, llm_timeout=5.0)


def _reference(server: FakeOpenAIServer, request: LLMRequest) -> LLMReply:
    """`request` through the `openai` package, as the client it replaced sent it."""
    options: dict[str, Any] = {}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.max_tokens is not None:
        options["max_tokens"] = request.max_tokens
    if request.response_schema is not None:
        options["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": dict(request.response_schema), "strict": False},
        }
    messages: list[Any] = [] if request.system is None else [{"role": "system", "content": request.system}]
    messages.append({"role": "user", "content": request.prompt})
    messages += [{"role": role, "content": content} for role, content in request.turns]
    with openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0, timeout=5.0) as client:
        completion = client.chat.completions.create(model=request.model, messages=messages, **options)
    text = completion.choices[0].message.content
    assert text is not None
    usage = completion.usage
    if usage is None:
        return LLMReply(text)
    return LLMReply(text, usage.prompt_tokens, usage.completion_tokens)


# -- the same request, the same bytes' meaning ---------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # no lone surrogates
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_REQUESTS = st.builds(
    LLMRequest,
    model=st.text(string.ascii_letters + string.digits + "-.:/", min_size=1, max_size=20),
    prompt=_TEXT,
    system=st.none() | _TEXT,
    temperature=st.none() | st.floats(0, 2),
    max_tokens=st.none() | st.integers(1, 100_000),
    turns=st.lists(st.tuples(st.sampled_from(["assistant", "user"]), _TEXT), max_size=3).map(tuple),
    response_schema=st.none() | st.dictionaries(_TEXT, _JSON, max_size=4),
)


@pytest.mark.slow  # about a second: 25 requests through each client
def test_both_clients_send_the_same_request(tmp_path: Any) -> None:
    with FakeOpenAIServer() as server, ChatCompletionsClient(_settings(server, tmp_path)) as ours:

        @hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(request=_REQUESTS)
        def check(request: LLMRequest) -> None:
            # WHEN the same request goes through the openai client and ours
            expected = _reference(server, request)
            replied = ours.complete(request)
            # THEN the server saw the same JSON body, path and credentials
            theirs, mine = server.requests[-2], server.requests[-1]
            assert mine.json == theirs.json
            assert mine.path == theirs.path == "/v1/chat/completions"
            for header in ("authorization", "content-type", "accept"):
                assert mine.headers[header] == theirs.headers[header], header
            assert mine.headers["authorization"] == f"Bearer {KEY}"
            assert mine.headers["user-agent"].startswith("orchestrator/")
            # AND both read the (echoing) reply and its usage the same way
            assert replied == expected

        check()


# -- the same answer, read the same way ----------------------------------------------------------


def _completion(message: Mapping[str, Any], usage: Any = None, finish_reason: str = "stop") -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": dict(message), "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


@pytest.mark.parametrize(
    "answer",
    [
        FakeResponse(text="plain words"),
        FakeResponse(json_body=_completion({"role": "assistant", "content": "no usage"})),
        FakeResponse(json_body=_completion({"role": "assistant", "content": "é ✓ 中"}, {"prompt_tokens": 9,
            "completion_tokens": 3, "total_tokens": 12})),
        FakeResponse(json_body=_completion({"role": "assistant", "content": ""}, {"prompt_tokens": 1,
            "completion_tokens": 0, "total_tokens": 1}, finish_reason="length")),
    ],
)  # fmt: skip
def test_both_clients_read_a_reply_alike(tmp_path: Any, answer: FakeResponse) -> None:
    request = LLMRequest(model="m", prompt="p")
    with FakeOpenAIServer() as server, ChatCompletionsClient(_settings(server, tmp_path)) as ours:
        server.enqueue(answer, answer)
        assert ours.complete(request) == _reference(server, request)


@pytest.mark.parametrize(
    "answer",
    [
        FakeResponse(status=400, message="bad request"),
        FakeResponse(status=401, message="invalid key"),
        FakeResponse(status=404, message="no such model"),
        FakeResponse(status=422, raw_body=b"plain text complaint"),
        FakeResponse(status=429, message="slow down", headers={"Retry-After": "7"}),
        FakeResponse(status=500, json_body={"message": "top-level message"}),
        FakeResponse(status=503, json_body={"error": {"message": "overloaded", "type": "server_error"}}),
    ],
)
def test_both_clients_read_an_error_status_alike(tmp_path: Any, answer: FakeResponse) -> None:
    request = LLMRequest(model="m", prompt="p")
    with FakeOpenAIServer() as server, ChatCompletionsClient(_settings(server, tmp_path)) as ours:
        server.enqueue(answer, answer)
        # GIVEN what the openai client reports: the status and the server's own message
        with pytest.raises(openai.APIStatusError) as reference:
            _reference(server, request)
        body = reference.value.body
        said = str(body["message"]) if isinstance(body, Mapping) else str(body).strip()
        # WHEN ours gets the same answer  THEN it names the same status and message, once
        with pytest.raises(TaskError) as caught:
            ours.complete(request)
        assert f"HTTP {reference.value.status_code}: {said}" in caught.value.message
        assert server.request_count == 2
