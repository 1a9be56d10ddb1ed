"""The LLM client of `llm_task`: one chat request to an OpenAI-compatible endpoint, one typed reply.

`OpenAIChatClient` sends a request through the real `openai` package to the endpoint that
`Settings.route_for` names for the model (so one pipeline can mix OpenAI, a local server and
any other OpenAI-compatible provider), retries transient failures itself with exponential
backoff and jitter, and turns every failure into a `TaskError` whose `error_type` a pipeline's
`error_handling` can match. `parse_llm_output` turns the reply text into the task's
`output_type`.

`openai` is imported only when the first request is sent: importing it takes about a second,
which every CLI command would otherwise pay.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from orchestrator.errors import TaskError
from orchestrator.settings import ModelRoute, Settings

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam

__all__ = [
    "LLMClient",
    "LLMRequest",
    "OpenAIChatClient",
    "backoff_delay",
    "is_transient_status",
    "parse_llm_output",
    "parse_retry_after",
]

OUTPUT_TYPES = ("text", "number", "integer", "boolean", "json")

_DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
_KEY_FOR_LOCAL_SERVERS = "not-needed"


@dataclass(frozen=True)
class LLMRequest:
    """One rendered `llm_task` request; `model` is the name used in the pipeline file."""

    model: str
    prompt: str
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


class LLMClient(Protocol):
    """Anything that can answer an `LLMRequest` with the reply text."""

    def complete(self, request: LLMRequest) -> str:
        """Return the model's reply, or raise `TaskError`."""
        ...


# -- the retry policy, shared with the search client ------------------------------------------


def is_transient_status(status: int) -> bool:
    """Whether an HTTP status is worth retrying: 408, 429 and every 5xx."""
    return status in (408, 429) or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; ``None`` for anything else."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: rare enough to fall back on our own backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def backoff_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt number `attempt` (0-based).

    Exponential (`base` doubled per attempt, at most `cap`) with "equal jitter": between half
    and all of that, so clients that failed together do not retry together. A server's
    ``Retry-After`` is honoured when it asks for longer, up to `cap`.
    """
    ceiling = min(cap, base * 2.0**attempt)
    delay = ceiling / 2 + rng() * ceiling / 2
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


class _TransientFailure(Exception):
    """An attempt failed in a way that another attempt may not."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


# -- the OpenAI client ------------------------------------------------------------------------


class OpenAIChatClient:
    """`LLMClient` over the `openai` package's chat completions API.

    Parameters
    ----------
    settings:
        Endpoints, keys and per-model routes (`Settings.route_for`), the per-attempt
        timeout (`llm_timeout`) and how many times a transient failure is retried
        (`llm_max_retries`).
    sleep, rng:
        Injected for tests: the wait between attempts and the jitter source.

    One `openai.OpenAI` client is built per (base URL, key) on first use and shared by all
    threads; its own retries are off, so the policy here is the only one. Call `close()`
    (or use the object as a context manager) to release the clients' connections.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._rng = rng
        self._clients: dict[tuple[str, str], openai.OpenAI] = {}
        self._lock = threading.Lock()

    def complete(self, request: LLMRequest) -> str:
        """Send `request` to the model's endpoint and return the reply text."""
        route = self._settings.route_for(request.model)
        client = self._client_for(request.model, route)
        upstream_model = route.model or request.model
        attempts = max(0, self._settings.llm_max_retries) + 1
        last: _TransientFailure | None = None
        for attempt in range(attempts):
            if attempt:
                retry_after = last.retry_after if last is not None else None
                self._sleep(backoff_delay(attempt - 1, retry_after=retry_after, rng=self._rng))
            started = time.perf_counter()
            usage: tuple[int | None, int | None] = (None, None)
            try:
                text, usage = self._send_once(client, upstream_model, request)
                return text
            except _TransientFailure as failure:
                last = failure
            finally:
                _record_call(request.model, usage, time.perf_counter() - started)
        where = _describe(request.model, upstream_model, client)
        reason = last.message if last is not None else "no attempt was made"
        raise TaskError(
            "LLMTransientError",
            f"{where}: gave up after {attempts} attempt(s): {reason}",
        )

    def close(self) -> None:
        """Close every cached `openai` client; the next request builds new ones."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    def __enter__(self) -> OpenAIChatClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _client_for(self, model: str, route: ModelRoute) -> openai.OpenAI:
        if route.api_key:
            api_key = route.api_key
        elif route.base_url:
            api_key = _KEY_FOR_LOCAL_SERVERS  # local servers need none; the client insists
        else:
            raise TaskError(
                "LLMConfigurationError",
                f"no endpoint is configured for model {model!r}: set OPENAI_API_KEY or "
                "OPENAI_BASE_URL, or route the model in the config file (llm.models)",
            )
        # Always explicit, so the process environment cannot override what Settings resolved.
        base_url = route.base_url or _DEFAULT_OPENAI_URL
        key = (base_url, api_key)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                import openai

                client = openai.OpenAI(
                    api_key=api_key,
                    base_url=base_url,
                    timeout=self._settings.llm_timeout,
                    max_retries=0,
                )
                self._clients[key] = client
            return client

    def _send_once(
        self, client: openai.OpenAI, upstream_model: str, request: LLMRequest
    ) -> tuple[str, tuple[int | None, int | None]]:
        """The reply's text and its tokens in and out (None when the reply does not say)."""
        import openai

        messages: list[ChatCompletionMessageParam] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        where = _describe(request.model, upstream_model, client)
        try:
            completion = client.chat.completions.create(
                model=upstream_model,
                messages=messages,
                temperature=openai.omit if request.temperature is None else request.temperature,
                max_tokens=openai.omit if request.max_tokens is None else request.max_tokens,
            )
        except openai.APIStatusError as error:
            status = error.status_code
            detail = f"HTTP {status}: {_server_message(error)}"
            if is_transient_status(status):
                retry_after = parse_retry_after(error.response.headers.get("retry-after"))
                raise _TransientFailure(detail, retry_after) from None
            raise TaskError("LLMRequestError", f"{where}: {detail}") from None
        except openai.APITimeoutError:
            raise _TransientFailure(f"no answer within {self._settings.llm_timeout:g}s (timeout)") from None
        except openai.APIConnectionError as error:
            raise _TransientFailure(f"connection failed: {_cause(error)}") from None
        except openai.OpenAIError as error:
            raise TaskError("LLMRequestError", f"{where}: {error}") from None
        if not completion.choices:
            raise TaskError("LLMResponseError", f"{where}: the reply has no choices")
        choice = completion.choices[0]
        if choice.message.content is None:
            raise TaskError(
                "LLMResponseError",
                f"{where}: the reply has no text (finish_reason={choice.finish_reason!r})",
            )
        usage = completion.usage
        tokens = (
            (_count(usage.prompt_tokens), _count(usage.completion_tokens))
            if usage is not None
            else (None, None)
        )
        return choice.message.content, tokens


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _record_call(model: str, usage: tuple[int | None, int | None], latency: float) -> None:
    """One provider call in the attempt's telemetry, when it is recorded (`runtime.telemetry`)."""
    from orchestrator.runtime.telemetry import current_recording

    recording = current_recording()
    if recording is not None:
        recording.llm_call(model, usage[0], usage[1], latency)


def _describe(model: str, upstream_model: str, client: openai.OpenAI) -> str:
    named = repr(model) if model == upstream_model else f"{model!r} (upstream {upstream_model!r})"
    return f"model {named} at {client.base_url}"


def _server_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return error.message


def _cause(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    return f"{error} ({cause})" if cause is not None and str(cause) else str(error)


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
