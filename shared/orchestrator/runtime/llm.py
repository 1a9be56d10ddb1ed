"""The LLM client of `llm_task`: one chat request to an OpenAI-compatible endpoint, one typed reply.

`ChatCompletionsClient` sends a request to the chat completions endpoint that
`Settings.route_for` names for the model (so one pipeline can mix OpenAI, a local server and
any other OpenAI-compatible provider), once: one `complete` is one HTTP request, and every
failure is a `TaskError` whose `error_type` says whether the task's `error_handling` may try
again (a 429 is `LLMRateLimited`, a timeout, connection failure, 408 or 5xx
`LLMTransientError`, carrying the server's ``Retry-After`` for the policy to honour).
`parse_llm_output` turns the reply text into the task's `output_type`; `complete_with_schema`
asks until a reply matches the task's `output_schema`, sending each reply that does not back
with what is wrong with it (the repair loop).

The client speaks HTTP with `httpx2` (the transport of the `openai` package, without its API
types: importing `openai` takes 0.5-0.9 s and a request through it about 1.2 ms of CPU, against
0.07 s and 0.4 ms; `bench/OPTIMISATIONS.md`), imported only when the first request is sent,
so a run without an `llm_task` never loads an HTTP stack.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from orchestrator import __version__
from orchestrator.errors import TaskError
from orchestrator.runtime.provider_keys import llm_route
from orchestrator.settings import ModelRoute, Settings

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "ChatCompletionsClient",
    "LLMClient",
    "LLMReply",
    "LLMRequest",
    "complete_with_schema",
    "estimated_usage",
    "is_transient_status",
    "parse_llm_output",
    "parse_retry_after",
    "transient_error",
]

OUTPUT_TYPES = ("text", "number", "integer", "boolean", "json")

_DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
_KEY_FOR_LOCAL_SERVERS = "not-needed"  # local servers need none; many insist on the header
_USER_AGENT = f"orchestrator/{__version__}"


@dataclass(frozen=True)
class LLMRequest:
    """One rendered `llm_task` request; `model` is the name used in the pipeline file.

    `turns` follow the prompt: the replies of a repair loop and what it said back to each
    (`complete_with_schema`). `response_schema` is sent as the `response_format` of the
    provider's structured-output mode.
    """

    model: str
    prompt: str
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    turns: tuple[tuple[Literal["assistant", "user"], str], ...] = ()
    response_schema: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class LLMReply:
    """What one call to a model answered: the reply's text and the tokens in and out that the
    provider reported (None when it did not say)."""

    text: str
    tokens_in: int | None = None
    tokens_out: int | None = None


class LLMClient(Protocol):
    """Anything that can answer an `LLMRequest`: one call to the model."""

    def complete(self, request: LLMRequest) -> LLMReply:
        """Return the model's reply, or raise `TaskError`."""
        ...


CHARS_PER_TOKEN = 3
"""Characters of a request's text counted as one token of its estimate (on the high side)."""
MESSAGE_TOKENS = 8
"""Tokens added to an estimate for each message of the request."""
DEFAULT_REPLY_TOKENS = 1024
"""The reply tokens an estimate counts for a request that sets no `max_tokens`."""


def estimated_usage(request: LLMRequest) -> tuple[int, int]:
    """The tokens in and out a request is reckoned to take before it is sent, the one estimate
    that budgets reserve (`runtime.budget`) and rate limits schedule (`runtime.rate_limit`)
    until the reply reports its own: its text (system, prompt, a repair loop's turns and the
    response schema) at `CHARS_PER_TOKEN` characters a token plus `MESSAGE_TOKENS` a message,
    and its `max_tokens`, else `DEFAULT_REPLY_TOKENS`."""
    texts = [request.prompt, *(text for _, text in request.turns)]
    if request.system is not None:
        texts.append(request.system)
    characters = sum(len(text) for text in texts)
    if request.response_schema is not None:
        characters += len(json.dumps(request.response_schema))
    tokens_in = math.ceil(characters / CHARS_PER_TOKEN) + MESSAGE_TOKENS * len(texts)
    return tokens_in, DEFAULT_REPLY_TOKENS if request.max_tokens is None else request.max_tokens


def metered_call(client: LLMClient, request: LLMRequest) -> LLMReply:
    """`client.complete(request)`, entered in the attempt's telemetry (model, tokens, latency)
    when it is recorded (`runtime.telemetry`), whether it answered or failed: the one place a
    call to a model is counted, whatever client (real, recorded or replayed) answered it; and
    in the budgets covering it (`runtime.budget`), which may refuse it before it is made."""
    from orchestrator.runtime.budget import current_meter
    from orchestrator.runtime.telemetry import current_recording

    meter = current_meter()
    hold = None if meter is None else meter.reserve(request)  # may refuse: then no call is made
    started = time.perf_counter()
    reply: LLMReply | None = None
    try:
        reply = client.complete(request)
        return reply
    finally:
        recording = current_recording()
        if recording is not None:
            tokens = (None, None) if reply is None else (reply.tokens_in, reply.tokens_out)
            recording.llm_call(request.model, tokens[0], tokens[1], time.perf_counter() - started)
        if hold is not None:
            hold.settle(reply)


# -- transient answers, shared with the search client ----------------------------------------


def is_transient_status(status: int) -> bool:
    """Whether an HTTP status may be different next time: 408, 429 and every 5xx."""
    return status in (408, 429) or status >= 500


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds, or an HTTP date from `now`, default the
    current time); ``None`` when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = max(0.0, when.timestamp() - (time.time() if now is None else now))
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def transient_error(error_type: str, where: str, detail: str, retry_after: float | None) -> TaskError:
    """A transient HTTP answer as a task error carrying the server's ``Retry-After`` (also named
    in the message) for the task's policy to honour."""
    asked = "" if retry_after is None else f" (Retry-After: {retry_after:g}s)"
    return TaskError(error_type, f"{where}: {detail}{asked}", retry_after=retry_after)


# -- the chat completions client --------------------------------------------------------------


class ChatCompletionsClient:
    """`LLMClient` over the OpenAI chat completions API (``POST {base_url}/chat/completions``),
    spoken with `httpx2`.

    Parameters
    ----------
    settings:
        Endpoints, keys and per-model routes (`Settings.route_for`) and the timeout of a
        request (`llm_timeout`).

    One `httpx2.Client` (a pool of keep-alive connections) is built per (base URL, key) on
    first use and shared by all threads. It verifies TLS certificates and takes proxies and CA
    bundles from the standard environment variables (``HTTPS_PROXY``, ``NO_PROXY``,
    ``SSL_CERT_FILE``, ...), as the `openai` package's client does, and follows redirects as
    it does too (the key is not sent on to another host). It never retries: a retry is another
    attempt of the task, under its `error_handling` (`runtime.task`). Call `close()` (or use
    the object as a context manager) to release the connections.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: dict[tuple[str, str], httpx2.Client] = {}
        self._lock = threading.Lock()

    def complete(self, request: LLMRequest) -> LLMReply:
        """Send `request` to the model's endpoint, once, and return its reply."""
        route = llm_route(self._settings, request.model)  # its key read from its secret, if named
        base_url, api_key = _endpoint(request.model, route)
        upstream_model = route.model or request.model
        named = (
            repr(request.model)
            if request.model == upstream_model
            else f"{request.model!r} (upstream {upstream_model!r})"
        )
        where = f"model {named} at {base_url}"
        body = _encode(where, _request_body(upstream_model, request))
        return self._send_once(self._client_for(base_url, api_key), where, body)

    def prepare(self, model: str) -> None:
        """Build the pooled client of `model`'s endpoint now (the first imports `httpx2` and
        reads the key's secret, if one is named), so that a call that waited for its rate-limit
        slot is sent when the slot comes (`runtime.rate_limit`)."""
        self._client_for(*_endpoint(model, llm_route(self._settings, model)))

    def close(self) -> None:
        """Close every pooled client; the next request builds new ones."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    def __del__(self) -> None:
        """Close the pooled connections of a client nobody closed (a warm Lambda's, kept for
        the container's life), as the `openai` package's client does, rather than leave
        their sockets to the garbage collector."""
        try:  # noqa: SIM105 - at interpreter exit module globals (contextlib) may be gone
            self.close()
        except Exception:
            pass

    def __enter__(self) -> ChatCompletionsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _client_for(self, base_url: str, api_key: str) -> httpx2.Client:
        key = (base_url, api_key)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                import httpx2

                client = httpx2.Client(
                    base_url=base_url,
                    headers={
                        "Accept": "application/json",
                        "Content-Type": "application/json",
                        "User-Agent": _USER_AGENT,
                        "Authorization": f"Bearer {api_key}",
                    },
                    timeout=self._settings.llm_timeout,
                    limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100),
                    follow_redirects=True,
                    verify=True,
                    trust_env=True,
                )
                self._clients[key] = client
            return client

    def _send_once(self, client: httpx2.Client, where: str, body: bytes) -> LLMReply:
        import httpx2

        try:
            response = client.post("chat/completions", content=body)
        except httpx2.TimeoutException:
            message = f"{where}: no answer within {self._settings.llm_timeout:g}s (timeout)"
            raise TaskError("LLMTransientError", message) from None
        except httpx2.HTTPError as error:
            raise TaskError("LLMTransientError", f"{where}: connection failed: {_cause(error)}") from None
        status = response.status_code
        if not 200 <= status < 300:
            detail = f"HTTP {status}: {_server_message(response)}"
            if is_transient_status(status):
                error_type = "LLMRateLimited" if status == 429 else "LLMTransientError"
                raise transient_error(error_type, where, detail, _retry_after(response.headers)) from None
            raise TaskError("LLMRequestError", f"{where}: {detail}")
        return _read_reply(where, response.content)


def _endpoint(model: str, route: ModelRoute) -> tuple[str, str]:
    """The base URL and key of `model`'s requests: OpenAI's own URL when none is set (always
    explicit, so nothing but `Settings` decides), a placeholder key for a local server that
    needs none (many insist on the header)."""
    if route.api_key:
        api_key = route.api_key
    elif route.base_url:
        api_key = _KEY_FOR_LOCAL_SERVERS
    else:
        raise TaskError(
            "LLMConfigurationError",
            f"no endpoint is configured for model {model!r}: set OPENAI_API_KEY or "
            "OPENAI_BASE_URL, or route the model in the config file (llm.models)",
        )
    base_url = route.base_url or _DEFAULT_OPENAI_URL
    scheme, _, rest = base_url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise TaskError(
            "LLMConfigurationError",
            f"the endpoint of model {model!r} is not an http(s) URL: {base_url!r}; fix "
            "OPENAI_BASE_URL, or llm.base_url / llm.models.<name>.base_url in the config file",
        )
    return base_url.rstrip("/") + "/", api_key


def _request_body(upstream_model: str, request: LLMRequest) -> dict[str, Any]:
    """The JSON body of a chat completion request; unset parameters are not sent."""
    messages: list[dict[str, str]] = []
    if request.system is not None:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": request.prompt})
    messages.extend({"role": role, "content": content} for role, content in request.turns)
    body: dict[str, Any] = {"messages": messages, "model": upstream_model}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.response_schema is not None:
        body["response_format"] = _response_format(request.response_schema)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


def _response_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The `response_format` of structured output: the schema, not strict (OpenAI's strict mode
    accepts only a subset of JSON Schema); the reply is validated here either way."""
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": dict(schema), "strict": False}}


def _encode(where: str, body: dict[str, Any]) -> bytes:
    """`body` as UTF-8 JSON, as the `openai` package writes it (no NaN or infinity)."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as error:
        raise TaskError("LLMRequestError", f"{where}: the request cannot be sent as JSON: {error}") from None


def _read_reply(where: str, content: bytes) -> LLMReply:
    """The text and token counts of a chat completion; `LLMResponseError` when the reply is
    not one or has no text."""
    try:
        reply = json.loads(content)
    except ValueError:
        shown = content[:200].decode("utf-8", errors="replace")
        raise TaskError("LLMResponseError", f"{where}: the reply is not JSON: {shown!r}") from None
    if not isinstance(reply, dict):
        raise TaskError("LLMResponseError", f"{where}: the reply is not a JSON object")
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices:
        raise TaskError("LLMResponseError", f"{where}: the reply has no choices")
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        raise TaskError(
            "LLMResponseError",
            f"{where}: the reply has no text (finish_reason={choice.get('finish_reason')!r})",
        )
    usage = reply.get("usage")
    if not isinstance(usage, dict):
        return LLMReply(text)
    return LLMReply(text, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait a transient answer asks for: OpenAI's ``retry-after-ms``, else ``Retry-After``."""
    try:
        seconds = float(headers.get("retry-after-ms") or "nan") / 1000
    except ValueError:
        seconds = math.nan
    if math.isfinite(seconds) and seconds >= 0:
        return seconds
    return parse_retry_after(headers.get("retry-after"))


def _server_message(response: httpx2.Response) -> str:
    """What an error answer says: its JSON ``error.message`` (OpenAI's shape) or ``message``,
    else its text (at most 500 characters), else its status code."""
    text = response.content.decode("utf-8", errors="replace").strip()
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    if isinstance(body, dict):
        body = body.get("error", body)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return f"Error code: {response.status_code}"


def _cause(error: BaseException) -> str:
    return str(error) or type(error).__name__


# -- parsing replies --------------------------------------------------------------------------

_NUMBER = re.compile(
    r"(?<![\w.])[-+]?"
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)"
    r"(?:[eE][-+]?\d+)?"
    r"(?!_)"  # not the head of "1_000", which float() would read but we refuse
)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)
_BOOLEANS = {"true": True, "yes": True, "false": False, "no": False}


def parse_llm_output(text: str, output_type: str) -> object:
    """Turn a reply into the `output_type` of its task.

    - ``text``: the reply unchanged.
    - ``number``: a float. The whole reply, or else the one number inside it
      (``"Score: 0.85"``); none, several, or a non-finite value is an error.
    - ``integer``: an int by the same rule; ``"3.0"`` is 3, ``"3.5"`` is an error.
    - ``boolean``: ``true/false/yes/no``, any case, with a trailing period allowed.
    - ``json``: ``json.loads`` of the reply, or of its first fenced ```` ```json ```` block.

    A reply that does not parse raises ``TaskError("OutputParseError", ...)``:
    asking again often gives a reply that does.
    """
    if output_type == "text":
        return text
    if output_type == "number":
        return _parse_number(text)
    if output_type == "integer":
        return _parse_integer(text)
    if output_type == "boolean":
        return _parse_boolean(text)
    if output_type == "json":
        return _parse_json(text)
    raise ValueError(f"unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}")


def _parse_error(output_type: str, text: str, reason: str = "") -> TaskError:
    because = f" ({reason})" if reason else ""
    return TaskError(
        "OutputParseError",
        f"expected {output_type}, got: {text[:200]!r}{because}",
    )


def _number_token(text: str, output_type: str) -> str:
    """The reply itself when it is a number, else the single number found in it."""
    stripped = text.strip()
    if "_" not in stripped:  # float() would accept "1_000"; we do not
        try:
            float(stripped)
        except ValueError:
            pass
        else:
            return stripped
    found = _NUMBER.findall(stripped)
    if not found:
        raise _parse_error(output_type, text, "found no number")
    if len(found) > 1:
        raise _parse_error(output_type, text, f"found {len(found)} numbers, need exactly one")
    return str(found[0]).replace(",", "")


def _parse_number(text: str) -> float:
    value = float(_number_token(text, "number"))
    if not math.isfinite(value):
        raise _parse_error("number", text, "not a finite number")
    return value


def _parse_integer(text: str) -> int:
    token = _number_token(text, "integer")
    try:
        return int(token)
    except ValueError:
        pass
    value = float(token)
    if not math.isfinite(value) or not value.is_integer():
        raise _parse_error("integer", text, "not a whole number")
    return int(value)


def _parse_boolean(text: str) -> bool:
    word = text.strip().strip("*`\"'").strip()
    word = word.removesuffix(".").strip().lower()
    if word not in _BOOLEANS:
        raise _parse_error("boolean", text, "accepted: true, false, yes, no")
    return _BOOLEANS[word]


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _parse_json(text: str) -> object:
    candidates = [text.strip()]
    fences = _FENCE.findall(text)
    labelled = [body for label, body in fences if label.lower() == "json"]
    unlabelled = [body for label, body in fences if not label]
    candidates += [body.strip() for body in labelled[:1] + unlabelled[:1]]
    problems: list[str] = []
    for candidate in candidates:
        try:
            return json.loads(candidate, parse_constant=_reject_constant)
        except ValueError as error:
            problems.append(str(error))
    raise _parse_error("json", text, problems[-1])


# -- typed output: the repair loop ------------------------------------------------------------


def _schema_instruction(schema: Mapping[str, Any]) -> str:
    """What is added to the prompt of a model without structured output: the schema to follow."""
    text = json.dumps(schema, indent=2, ensure_ascii=False)
    return f"\n\nReply with only a JSON value that matches this JSON Schema:\n```json\n{text}\n```"


def _repair_prompt(problem: str) -> str:
    """What is sent back after a reply that does not parse or does not match the schema."""
    return (
        f"Your reply does not match the required JSON Schema: {problem}\n"
        "Reply again with only the corrected JSON value."
    )


def _reply_problem(text: str, schema: Mapping[str, Any]) -> tuple[object, str | None]:
    """The JSON value of a reply and why it does not match `schema` (None when it does)."""
    from orchestrator.spec.output_schema import validation_problem

    try:
        value = parse_llm_output(text, "json")
    except TaskError as error:
        return None, f"it is not JSON: {error.message}"
    return value, validation_problem(value, dict(schema))


def complete_with_schema(
    client: LLMClient,
    request: LLMRequest,
    schema: Mapping[str, Any],
    *,
    retries: int,
    structured: bool,
) -> object:
    """The JSON value of the first reply that matches `schema`, asking at most `retries` more
    times, each time with the replies so far and what is wrong with them; then
    ``TaskError("OutputValidationError")``. All these calls belong to one attempt of the task.

    With `structured` the schema goes as the request's `response_format`; without it, the
    prompt says which schema to follow (`_schema_instruction`).
    """
    if structured:
        request = replace(request, response_schema=schema)
    else:
        request = replace(request, prompt=request.prompt + _schema_instruction(schema))
    problem: str | None = None
    for _ in range(retries + 1):
        text = metered_call(client, request).text
        value, problem = _reply_problem(text, schema)
        if problem is None:
            return value
        request = replace(
            request, turns=(*request.turns, ("assistant", text), ("user", _repair_prompt(problem)))
        )
    raise TaskError(
        "OutputValidationError",
        f"no reply matched the output_schema in {retries + 1} tries (schema_retries: {retries}); "
        f"the last: {problem}",
    )
