"""Shared rate limits of LLM calls: a model's `requests_per_minute` and `tokens_per_minute`.

A model whose config route (`llm.models.<name>`) sets either rate has its real calls to the
provider spaced out so that, over any stretch of time, they stay within it: a call waits for
its slot instead of failing with the provider's 429. The schedule is one per model name as
tasks give it (`model:`), kept in the state store every run of the machine shares (the state
folder's SQLite file; on AWS the DynamoDB state table: `stores.factory.shared_state`), so
every task, thread, sandboxed child process, concurrent run and Lambda invocation takes its
slots from the same schedule. Replayed calls take none: the limit is put around the real
client only (`Services.llm_client`).

The schedule is GCRA (virtual scheduling), with no burst allowance: per rate, the store keeps
the time the model is next free (its theoretical arrival time). A call of cost `c` under a
rate `r` per minute starts at `max(now, free at)` over both rates, and moves each rate's
time to `start + 60 c / r`. So calls start at least `60 / requests_per_minute` seconds apart,
and the tokens started in any window of `w` seconds are at most `tokens_per_minute * w / 60`
plus one call's. Taking a slot is a compare-and-set of the model's entry, tried again when
another caller took one meanwhile (`StateStore.compare_and_set`: every backend does it
atomically across threads, processes and machines); the entry lives until a minute after the
schedule it holds.

Tokens are not known before a call: a call reserves an estimate (`runtime.llm.estimated_usage`,
which budgets reserve too: its text, plus its `max_tokens` or 1,024), and when
the reply reports its tokens the schedule moves by the difference: later for a call that
used more (from now, if the model is free by then), earlier for one that used less (the
model is then free sooner, but never before the present: capacity is given back for what is
to come, not for what has passed). A call that fails keeps its estimate.

The wait ends with the attempt: a slot further away than `MAX_WAIT` seconds, or than the
attempt's timeout leaves (`within`, which `run_leaf` puts around an LLM task's calls), is
not taken: the call fails with `LLMRateLimited` at once, carrying the wait as its
``Retry-After``, and the task's `error_handling` decides (as after a 429). A wait sleeps in
steps of `STEP` seconds, so an attempt stopped meanwhile (its run ending: `runtime.attempt`,
whose exception arrives when a sleep returns; a sandboxed child is killed) stops waiting.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.errors import TaskError
from orchestrator.runtime.attempt import current_attempt
from orchestrator.runtime.llm import LLMClient, LLMReply, LLMRequest, estimated_usage
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from orchestrator.stores.base import StateStore

__all__ = [
    "MAX_WAIT",
    "NAMESPACE",
    "RateLimitedClient",
    "RateLimiter",
    "Rates",
    "rate_limited",
    "within",
]

NAMESPACE = "orchestrator:llm-rate-limits"
"""The state namespace of the schedules: a task's own state lives under `run:` or `pipeline:`."""

MAX_WAIT = 60.0
"""Seconds a call may wait for its slot; a later slot fails the attempt with `LLMRateLimited`."""

STEP = 0.05
"""Seconds of one sleep of a wait: how soon a stopped attempt stops waiting."""

KEPT = 60.0
"""Seconds a model's schedule is kept after the last time it holds (its entry's TTL)."""

TOLD = 0.01
"""Seconds of waiting for a slot from which the attempt's telemetry tells the wait."""

TRIES = 200
"""Compare-and-sets a call tries before it gives up on a slot as `LLMRateLimited`."""


_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("rate_limit_deadline", default=None)
"""The timeout of the attempt making calls, and when it ends (`within`)."""


@contextmanager
def within(timeout: float | None, clock: Callable[[], float] = time.time) -> Iterator[None]:
    """Calls made in the block take no slot further than `timeout` seconds from now (the
    attempt's timeout; None: only `MAX_WAIT` holds): they fail with `LLMRateLimited` instead."""
    token = _DEADLINE.set(None if timeout is None else (timeout, clock() + timeout))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


@dataclass(frozen=True)
class Rates:
    """A model's limits, per minute (None: not limited)."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


def _free_at(state: Any, rate: str) -> float:
    """When a stored schedule (None: never used, or expired) says the model is next free."""
    value = state.get(rate) if isinstance(state, dict) else None
    return float(value) if isinstance(value, int | float) else 0.0


class RateLimiter:
    """Slots of per-model schedules kept in `store` (see the module).

    `clock` gives the time in seconds since the epoch (shared by every process and machine
    that shares the store) and `sleep` waits; both are injectable for tests.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_wait: float = MAX_WAIT,
    ) -> None:
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._max_wait = max_wait

    def reserve(self, model: str, rates: Rates, tokens: float) -> float:
        """Take the model's next slot for one call of `tokens` and return when it starts
        (never before now); `LLMRateLimited`, taking nothing, if that is more than `max_wait`
        away or past the deadline of `within`."""
        for _ in range(TRIES):
            now = self._clock()
            found = self._store.read(NAMESPACE, model)
            costs = (
                ("requests", 1.0, rates.requests_per_minute),
                ("tokens", tokens, rates.tokens_per_minute),
            )
            limits = {rate: (cost, per_minute) for rate, cost, per_minute in costs if per_minute is not None}
            start = max([now, *(_free_at(found.value, rate) for rate in limits)])
            deadline = _DEADLINE.get()
            if start - now > self._max_wait:
                raise self._too_long(model, rates, start - now, f"the {self._max_wait:g}s a call waits")
            if deadline is not None and start > max(now, deadline[1]):
                left = f"what the task's timeout ({deadline[0]:g}s) leaves"
                raise self._too_long(model, rates, start - now, left)
            state = dict(found.value) if isinstance(found.value, dict) else {}  # others' limits kept
            state.update(
                (rate, max(start, _free_at(found.value, rate)) + 60.0 * cost / per_minute)
                for rate, (cost, per_minute) in limits.items()
            )
            if self._put(model, state, found.version, now) is not None:
                return start
            time.sleep(random.uniform(0, 0.002))  # another caller took a slot meanwhile
        raise TaskError(
            "LLMRateLimited",
            f"model {model!r}: no rate-limit slot could be taken ({TRIES} callers at once took them first)",
            retry_after=1.0,
        )

    def adjust(self, model: str, rates: Rates, tokens: float) -> None:
        """Move the model's token schedule by `tokens` more (or fewer) than were reserved.

        More tokens are paid for from now when the model is free by now: the lull before the
        reply came was no lull, the call was using them. Fewer tokens move the free time
        earlier; moved into the past it frees the model now, no more (`reserve` starts no
        call before now: capacity that went unused in the past is never given back)."""
        if rates.tokens_per_minute is None or tokens == 0:
            return
        shift = 60.0 * tokens / rates.tokens_per_minute
        for _ in range(TRIES):
            now = self._clock()
            found = self._store.read(NAMESPACE, model)
            free_at = _free_at(found.value, "tokens")
            moved = (max(free_at, now) if shift > 0 else free_at) + shift
            if free_at <= now and moved <= now:
                return  # a free time in the past holds nothing back: nothing to move
            state = dict(found.value) if isinstance(found.value, dict) else {}
            state["tokens"] = moved
            if self._put(model, state, found.version, now) is not None:
                return
            time.sleep(random.uniform(0, 0.002))

    def wait_until(self, start: float) -> float:
        """Sleep until `start`, in steps of `STEP` (so a stopped attempt stops waiting);
        the seconds waited."""
        began = self._clock()
        while (left := start - self._clock()) > 0:
            self._sleep(min(left, STEP))
        return max(0.0, self._clock() - began)

    def _put(self, model: str, state: dict[str, Any], version: int, now: float) -> int | None:
        """The compare-and-set of a schedule, as one of the attempt's writes: none once it is
        stopped, and a stop never lands in the middle of one (`Attempt.writing`)."""
        last = max((value for value in state.values() if isinstance(value, int | float)), default=now)
        ttl = max(0.0, last - now) + KEPT
        attempt = current_attempt()
        with attempt.writing() if attempt is not None else contextlib.nullcontext():
            return self._store.compare_and_set(NAMESPACE, model, state, version, ttl=ttl)

    def _too_long(self, model: str, rates: Rates, wait: float, limit: str) -> TaskError:
        return TaskError(
            "LLMRateLimited",
            f"model {model!r}: the next slot under its rate limits ({_describe(rates)}) is "
            f"{wait:.1f}s away, more than {limit}",
            retry_after=wait,
        )


def _describe(rates: Rates) -> str:
    parts = []
    if rates.requests_per_minute is not None:
        parts.append(f"requests_per_minute: {rates.requests_per_minute:g}")
    if rates.tokens_per_minute is not None:
        parts.append(f"tokens_per_minute: {rates.tokens_per_minute:g}")
    return ", ".join(parts)


class RateLimitedClient:
    """An `LLMClient` whose calls to a rate-limited model wait for their slot (see the module)
    before `client` sends them; calls to other models go straight through."""

    def __init__(self, client: LLMClient, settings: Settings, limiter: Callable[[], RateLimiter]) -> None:
        self._client = client
        self._settings = settings
        self._make = limiter
        self._limiter: RateLimiter | None = None
        self._lock = threading.Lock()

    def complete(self, request: LLMRequest) -> LLMReply:
        route = self._settings.route_for(request.model)
        rates = Rates(route.requests_per_minute, route.tokens_per_minute)
        if not rates.limited:
            return self._client.complete(request)
        prepare = getattr(self._client, "prepare", None)
        if prepare is not None:  # what the client does once (imports) is not done in the slot
            prepare(request.model)
        limiter = self._opened()
        estimate = sum(estimated_usage(request))
        waited = limiter.wait_until(limiter.reserve(request.model, rates, estimate))
        if waited >= TOLD:
            _tell_waited(request.model, rates, waited)
        reply = self._client.complete(request)
        if reply.tokens_in is not None and reply.tokens_out is not None:
            limiter.adjust(request.model, rates, reply.tokens_in + reply.tokens_out - estimate)
        return reply

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            close()

    def _opened(self) -> RateLimiter:
        with self._lock:
            if self._limiter is None:
                self._limiter = self._make()
            return self._limiter


def _tell_waited(model: str, rates: Rates, waited: float) -> None:
    """A line in the attempt's telemetry (`printed`) saying how long the call waited."""
    from orchestrator.runtime.telemetry import current_recording

    recording = current_recording()
    if recording is not None:
        recording.printed(f"waited {waited:.2f}s for a slot of model {model!r} ({_describe(rates)})")


def rate_limited(client: LLMClient, settings: Settings) -> LLMClient:
    """`client`, its calls held to the config's rate limits when any model has some."""
    if not any(
        Rates(r.requests_per_minute, r.tokens_per_minute).limited for r in settings.model_routes.values()
    ):
        return client

    def limiter() -> RateLimiter:
        from orchestrator.stores.factory import shared_state

        return RateLimiter(shared_state(settings))

    return RateLimitedClient(client, settings, limiter)
