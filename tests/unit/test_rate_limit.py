"""Issue 15, shared rate limits (`runtime.rate_limit`), on a fake clock: for any arrivals and
token counts the schedule never starts calls faster than a model's `requests_per_minute` and
`tokens_per_minute` over any window (no burst allowance), never makes a call wait when its
model is free, gives back what a call did not use, fails a call whose slot is too far with
`LLMRateLimited` (taking nothing), and lets a stopped attempt stop waiting. The config keys
are checked when the config is loaded."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import ConfigError, TaskError
from orchestrator.runtime.attempt import Attempt, AttemptStopped
from orchestrator.runtime.llm import LLMReply, LLMRequest
from orchestrator.runtime.rate_limit import (
    NAMESPACE,
    STEP,
    RateLimitedClient,
    RateLimiter,
    Rates,
    rate_limited,
    within,
)
from orchestrator.settings import ModelRoute, Settings, load_settings
from orchestrator.stores.memory import MemoryStateStore

EPSILON = 1e-6


class Clock:
    """A fake time: `sleep` moves it on and remembers each step."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.steps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.steps.append(seconds)
        self.now += seconds


def limiter(clock: Clock, store: MemoryStateStore | None = None, max_wait: float = 1e9) -> RateLimiter:
    return RateLimiter(store or MemoryStateStore(), clock=clock, sleep=clock.sleep, max_wait=max_wait)


gaps = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=40)
per_minute = st.floats(min_value=1, max_value=100_000, allow_nan=False)


def arrivals(clock: Clock, offsets: list[float]) -> list[float]:
    return [clock.now + total for total in itertools.accumulate(offsets)]


@settings(max_examples=200, deadline=None)
@given(gaps, per_minute)
def test_calls_start_no_closer_than_the_request_rate_and_never_wait_needlessly(
    offsets: list[float], rpm: float
) -> None:
    clock = Clock()
    limits = limiter(clock)
    starts: list[float] = []
    for arrival in arrivals(clock, offsets):
        clock.now = arrival
        start = limits.reserve("m", Rates(requests_per_minute=rpm), tokens=0)
        # exactly the virtual schedule: now if the model is free, else the previous slot's end
        expected = arrival if not starts else max(arrival, starts[-1] + 60 / rpm)
        assert start == pytest.approx(expected, rel=1e-12, abs=EPSILON)
        starts.append(start)
    for first, later in itertools.combinations(range(len(starts)), 2):
        # calls first..later-1 all started within [starts[first], starts[later])
        assert later - first <= rpm / 60 * (starts[later] - starts[first]) + EPSILON


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=5, allow_nan=False), st.integers(0, 50_000)),
        min_size=1,
        max_size=40,
    ),
    per_minute,
    st.one_of(st.none(), per_minute),
)
def test_tokens_started_in_any_window_stay_within_the_token_rate(
    calls: list[tuple[float, int]], tpm: float, rpm: float | None
) -> None:
    clock = Clock()
    limits = limiter(clock)
    rates = Rates(requests_per_minute=rpm, tokens_per_minute=tpm)
    starts: list[float] = []
    for arrival, (_, tokens) in zip(arrivals(clock, [gap for gap, _ in calls]), calls, strict=True):
        clock.now = arrival
        starts.append(limits.reserve("m", rates, tokens))
        assert starts[-1] >= arrival
    costs = [tokens for _, tokens in calls]
    for first, later in itertools.combinations(range(len(starts)), 2):
        used = sum(costs[first:later])  # all but the last call of the window
        assert used <= tpm / 60 * (starts[later] - starts[first]) + 1e-6 * max(1.0, used)
        if rpm is not None:
            assert later - first <= rpm / 60 * (starts[later] - starts[first]) + EPSILON


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=3, allow_nan=False),  # gap before the call
            st.integers(1, 5_000),  # its estimate
            st.integers(0, 10_000),  # the tokens it used
            st.floats(min_value=0, max_value=3, allow_nan=False),  # how long it ran
        ),
        min_size=1,
        max_size=25,
    ),
    per_minute,
)
def test_corrected_token_counts_hold_the_rate_over_the_whole_run(
    calls: list[tuple[float, int, int, float]], tpm: float
) -> None:
    """Each call reserves its estimate and, when it ends, corrects by what it used; every call
    starts after the tokens of all before it (used if they ended, else estimated) are paid for."""
    clock = Clock()
    limits = limiter(clock)
    rates = Rates(tokens_per_minute=tpm)
    started: list[tuple[float, int, int, float]] = []  # start, estimate, used, end
    corrected: set[int] = set()
    for arrival, (_, estimate, used, duration) in zip(
        arrivals(clock, [gap for gap, *_ in calls]), calls, strict=True
    ):
        ending = sorted((end, number) for number, (*_, end) in enumerate(started) if number not in corrected)
        for end, number in ending:
            if end <= arrival:  # calls that end before this one arrives correct their count
                clock.now = max(clock.now, end)
                limits.adjust("m", rates, started[number][2] - started[number][1])
                corrected.add(number)
        clock.now = arrival
        start = limits.reserve("m", rates, estimate)
        charged = sum(call[2] if number in corrected else call[1] for number, call in enumerate(started))
        if started:
            assert charged <= tpm / 60 * (start - started[0][0]) + 1e-6 * max(1.0, charged)
        started.append((start, estimate, used, start + duration))


def test_a_call_that_used_less_than_its_estimate_gives_the_rest_back() -> None:
    clock = Clock()
    limits = limiter(clock)
    rates = Rates(tokens_per_minute=600)  # 10 tokens a second
    assert limits.reserve("m", rates, 100) == clock.now  # free till now + 10 s
    clock.now += 1
    limits.adjust("m", rates, 20 - 100)  # it used 20: free at +2 s
    assert limits.reserve("m", rates, 10) == pytest.approx(clock.now + 1)
    clock.now += 30
    limits.adjust("m", rates, -10_000)  # a refund never moves the schedule before now
    assert limits.reserve("m", rates, 10) == clock.now
    limits.adjust("m", rates, 50)  # it used 50 more than it reserved: 6 s later in all
    assert limits.reserve("m", rates, 0) == pytest.approx(clock.now + 6)
    clock.now += 60
    limits.adjust("m", rates, 30)  # more tokens reported once the model is free: paid from now
    assert limits.reserve("m", rates, 0) == pytest.approx(clock.now + 3)


def test_a_slot_further_than_the_longest_wait_fails_the_call_and_takes_nothing() -> None:
    clock = Clock()
    store = MemoryStateStore()
    limits = limiter(clock, store, max_wait=5)
    rates = Rates(requests_per_minute=6)  # one call every 10 s
    assert limits.reserve("m", rates, 0) == clock.now
    before = store.read(NAMESPACE, "m")
    with pytest.raises(TaskError) as raised:
        limits.reserve("m", rates, 0)
    assert raised.value.error_type == "LLMRateLimited"
    assert raised.value.retry_after == pytest.approx(10)
    assert "requests_per_minute: 6" in raised.value.message and "'m'" in raised.value.message
    assert store.read(NAMESPACE, "m") == before
    clock.now += 6
    assert limits.reserve("m", rates, 0) == pytest.approx(clock.now + 4)


def test_no_slot_is_taken_past_the_attempts_timeout() -> None:
    clock = Clock()
    store = MemoryStateStore()
    limits = limiter(clock, store)
    rates = Rates(requests_per_minute=6)  # one call every 10 s
    with within(5, clock):
        assert limits.reserve("m", rates, 0) == clock.now
        before = store.read(NAMESPACE, "m")
        clock.now += 2  # the next slot is 8 s away, 3 s of the timeout are left
        with pytest.raises(TaskError) as raised:
            limits.reserve("m", rates, 0)
    assert raised.value.error_type == "LLMRateLimited" and raised.value.retry_after == pytest.approx(8)
    assert "more than what the task's timeout (5s) leaves" in raised.value.message
    assert store.read(NAMESPACE, "m") == before
    with within(8.5, clock):
        assert limits.reserve("m", rates, 0) == pytest.approx(clock.now + 8)
    assert limits.reserve("m", rates, 0) == pytest.approx(clock.now + 18)  # no timeout outside


class SlowToRead:
    """A state store that answers a read after a pause, so that callers interleave."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def read(self, namespace: str, key: str) -> Any:
        found = self._store.read(namespace, key)
        time.sleep(0.002)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_threads_taking_slots_at_once_each_get_their_own(backend: str, tmp_path: Path) -> None:
    """Sixteen threads at the same instant, each slow between its read and its write: the
    compare-and-set gives each a slot of its own, one interval after another, none lost or
    given twice."""
    from orchestrator.stores.factory import shared_state

    store = MemoryStateStore() if backend == "memory" else shared_state(Settings(home=tmp_path))
    clock = Clock()
    limits = RateLimiter(SlowToRead(store), clock=clock, sleep=clock.sleep)
    barrier = threading.Barrier(16)
    starts: list[float] = []

    def take() -> None:
        barrier.wait()
        starts.append(limits.reserve("m", Rates(requests_per_minute=60), 0))

    threads = [threading.Thread(target=take) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(starts) == [pytest.approx(clock.now + slot) for slot in range(16)]


def test_a_caller_configured_without_a_rate_keeps_the_schedule_of_those_that_have_it() -> None:
    clock = Clock()
    store = MemoryStateStore()
    limits = limiter(clock, store)
    assert limits.reserve("m", Rates(tokens_per_minute=600), 100) == clock.now  # free at +10 s
    assert limits.reserve("m", Rates(requests_per_minute=60), 100) == clock.now  # tokens not limited here
    assert store.read(NAMESPACE, "m").value == {"tokens": clock.now + 10, "requests": clock.now + 1}
    assert limits.reserve("m", Rates(tokens_per_minute=600), 0) == clock.now + 10


def test_models_have_schedules_of_their_own() -> None:
    clock = Clock()
    limits = limiter(clock)
    rates = Rates(requests_per_minute=1)
    assert limits.reserve("a", rates, 0) == clock.now
    assert limits.reserve("b", rates, 0) == clock.now
    assert limits.reserve("a", rates, 0) == clock.now + 60


def test_a_wait_sleeps_in_short_steps_so_a_stopped_attempt_stops_waiting() -> None:
    clock = Clock()
    limits = limiter(clock)
    assert limits.wait_until(clock.now + 1.0) == pytest.approx(1.0)
    assert clock.steps and max(clock.steps) <= STEP
    clock.steps.clear()
    assert limits.wait_until(clock.now - 5) == 0 and clock.steps == []


def test_a_stopped_attempt_stops_waiting_for_its_slot() -> None:
    """An attempt stopped (its run ended) while it waits for a slot a quarter of an hour away
    ends with `AttemptStopped`, as it would in a call (else this test outlives its timeout)."""
    limits = RateLimiter(MemoryStateStore())
    attempt = Attempt()
    waiting = threading.Event()
    ended: list[BaseException] = []

    def wait() -> None:
        waiting.set()
        limits.wait_until(time.time() + 900)

    def run() -> None:
        try:
            attempt.run(wait)
        except BaseException as error:
            ended.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    waiting.wait()
    attempt.stop()
    thread.join()
    assert [type(error) for error in ended] == [AttemptStopped]


class Answering:
    """An inner client answering with known usage; counts its calls."""

    def __init__(self, usage: tuple[int, int] | None) -> None:
        self.usage = usage
        self.calls = 0

    def complete(self, request: LLMRequest) -> LLMReply:
        self.calls += 1
        return LLMReply("ok", *(self.usage or (None, None)))


def test_the_client_waits_for_limited_models_and_corrects_by_the_reply_usage() -> None:
    clock = Clock()
    store = MemoryStateStore()
    opened: list[RateLimiter] = []

    def make() -> RateLimiter:
        opened.append(limiter(clock, store))
        return opened[-1]

    settings_ = Settings(
        home=Path("."),
        model_routes={"slow": ModelRoute(requests_per_minute=60, tokens_per_minute=6000)},
    )
    inner = Answering((30, 20))
    client = RateLimitedClient(inner, settings_, make)
    assert client.complete(LLMRequest(model="free", prompt="x")).text == "ok"
    assert opened == []  # a model without limits never opens the store
    request = LLMRequest(model="slow", prompt="x" * 40, max_tokens=90)  # estimate 100 tokens
    start = clock.now
    client.complete(request)
    client.complete(request)
    assert clock.now == pytest.approx(start + 1)  # one request a second
    # the two calls used 50 tokens each (0.5 s at 100 tokens a second), not 100
    assert store.read(NAMESPACE, "slow").value["tokens"] == pytest.approx(start + 1.5)
    assert inner.calls == 3


def test_only_a_config_with_limits_wraps_the_client() -> None:
    inner = Answering(None)
    assert rate_limited(inner, Settings(home=Path("."), model_routes={"m": ModelRoute()})) is inner
    limited = Settings(home=Path("."), model_routes={"m": ModelRoute(tokens_per_minute=10)})
    assert isinstance(rate_limited(inner, limited), RateLimitedClient)


def settings_from(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "config.yaml"
    config.write_text(text, encoding="utf-8")
    return load_settings({"ORCHESTRATOR_HOME": str(tmp_path / "home"), "ORCHESTRATOR_CONFIG": str(config)})


def test_the_config_gives_each_model_its_rates(tmp_path: Path) -> None:
    loaded = settings_from(
        tmp_path,
        "llm:\n  models:\n    gpt-4o-mini: {requests_per_minute: 500, tokens_per_minute: 200000}\n"
        "    local: {base_url: 'http://127.0.0.1:8080/v1', requests_per_minute: 0.5}\n",
    )
    route: Any = loaded.route_for("gpt-4o-mini")
    assert (route.requests_per_minute, route.tokens_per_minute) == (500, 200_000)
    local = loaded.route_for("local")
    assert (local.requests_per_minute, local.tokens_per_minute) == (0.5, None)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("requests_per_minute", "0", "'llm.models.m.requests_per_minute' must be a number of requests"),
        ("requests_per_minute", "-5", "above 0, got -5"),
        ("tokens_per_minute", "'lots'", "'llm.models.m.tokens_per_minute' must be a number of tokens"),
        ("tokens_per_minute", "true", "got True"),
        ("tokens_per_minute", ".inf", "got inf"),
        ("request_per_minute", "5", "did you mean 'requests_per_minute'?"),
    ],
)
def test_a_wrong_rate_is_a_config_error_naming_the_file_and_key(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml") as raised:
        settings_from(tmp_path, f"llm:\n  models:\n    m:\n      {key}: {value}\n")
    assert message in str(raised.value)
