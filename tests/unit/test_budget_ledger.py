"""Issue 15: the budget ledger (`runtime.budget`): reservations from many threads never take a
budget past its limit, on every state store (memory, SQLite, Redis, DynamoDB), settling and
releasing add up, and which budgets cover a call."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import TaskError
from orchestrator.runtime.budget import Cover, Covering, Meter, covering
from orchestrator.runtime.llm import (
    CHARS_PER_TOKEN,
    DEFAULT_REPLY_TOKENS,
    MESSAGE_TOKENS,
    LLMReply,
    LLMRequest,
    estimated_usage,
)
from orchestrator.runtime.telemetry import TaskPlace
from orchestrator.settings import ModelPrice
from orchestrator.spec.models import Pipeline
from orchestrator.stores.dynamodb import DynamoStateStore
from orchestrator.stores.memory import MemoryStateStore, MemoryTelemetryLog
from orchestrator.stores.redis import RedisStateStore
from orchestrator.stores.sqlite import Database, SqliteStateStore

PRICES = {"m": ModelPrice(input_per_million=2.0, output_per_million=8.0)}


def request_of(tokens_in: int, tokens_out: int, model: str = "m") -> LLMRequest:
    """A request whose estimate is exactly `tokens_in` in and `tokens_out` out."""
    chars = (tokens_in - MESSAGE_TOKENS) * CHARS_PER_TOKEN
    return LLMRequest(model=model, prompt="x" * chars, max_tokens=tokens_out)


def spent(state: Any, key: str = "pipeline") -> dict[str, float]:
    value = state.read("budget:run1", key).value
    return value or {"tokens": 0, "cost_usd": 0.0}


def meter(state: Any, *covers: Cover) -> Meter:
    return Meter(state, Covering("run1", covers), PRICES)


PIPELINE = Cover("pipeline", "pipeline 'p'", 1000, None)


def test_the_estimate_counts_every_message_the_schema_and_the_reply_it_may_get() -> None:
    request = LLMRequest(model="m", prompt="a" * 30, system="b" * 7, turns=(("assistant", "c" * 2),))
    assert estimated_usage(request) == (-(-39 // CHARS_PER_TOKEN) + 3 * MESSAGE_TOKENS, DEFAULT_REPLY_TOKENS)
    assert estimated_usage(request_of(20, 5)) == (20, 5)
    schema = {"type": "object"}
    with_schema = LLMRequest(model="m", prompt="a" * 30, response_schema=schema, max_tokens=0)
    assert estimated_usage(with_schema) == (
        -(-(30 + len('{"type": "object"}')) // CHARS_PER_TOKEN) + MESSAGE_TOKENS,
        0,
    )


@settings(max_examples=25, deadline=None)
@given(
    limit=st.integers(40, 400),
    calls=st.lists(
        st.tuples(st.integers(9, 40), st.integers(1, 30), st.floats(0, 1), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    threads=st.integers(2, 8),
)
def test_concurrent_reservations_never_take_a_budget_past_its_limit(
    limit: int, calls: list[tuple[int, int, float, bool]], threads: int
) -> None:
    # GIVEN one budget and many threads making calls whose replies use at most their estimate
    state = MemoryStateStore()
    ledger = meter(state, Cover("pipeline", "pipeline 'p'", limit, None))
    admitted: list[int] = []  # what the calls made used
    reserved: list[int] = []  # what the calls made reserved
    refused: list[int] = []  # what the calls refused wanted
    lock = threading.Lock()
    work = iter(calls)

    def worker() -> None:
        for tokens_in, tokens_out, used, fails in work:
            request = request_of(tokens_in, tokens_out)
            try:
                hold = ledger.reserve(request)
            except TaskError as error:
                assert error.error_type == "BudgetExceeded" and not error.retryable
                with lock:
                    refused.append(tokens_in + tokens_out)
                continue
            with lock:
                reserved.append(tokens_in + tokens_out)
            assert spent(state)["tokens"] <= limit
            reply_in, reply_out = int(tokens_in * used), int(tokens_out * used)
            hold.settle(None if fails else LLMReply("ok", reply_in, reply_out))
            if not fails:
                with lock:
                    admitted.append(reply_in + reply_out)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    # THEN what was spent is exactly what the admitted calls used, never past the limit
    assert spent(state)["tokens"] == sum(admitted) <= limit
    # AND a call was refused only when what was spent or reserved then (at most everything the
    # admitted calls reserved) left too little for it
    assert all(sum(reserved) + want > limit for want in refused)


def _state_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if backend == "sqlite":
        return SqliteStateStore(Database(tmp_path / "state.db"))
    if backend == "redis":
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_server"))
        return RedisStateStore(client, prefix=f"budget-test-{tmp_path.name}")
    tables = request.getfixturevalue("dynamodb_tables")
    return DynamoStateStore(tables["StateTable"], tables["client"])


@pytest.mark.parametrize("backend", ["sqlite", "redis", pytest.param("dynamodb", marks=pytest.mark.slow)])
def test_every_store_s_ledger_is_shared_by_threads(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # GIVEN 4 threads making 5 calls each, of 20 tokens, under a budget of 300
    state = _state_store(backend, request, tmp_path)
    ledger = meter(state, Cover("pipeline", "pipeline 'p'", 15 * 20, None))
    outcomes: list[bool] = []

    def worker() -> None:
        for _ in range(5):
            try:
                hold = ledger.reserve(request_of(10, 10))
            except TaskError:
                outcomes.append(False)
                continue
            hold.settle(LLMReply("ok", 10, 10))
            outcomes.append(True)

    pool = [threading.Thread(target=worker) for _ in range(4)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    # THEN exactly 15 were made, through the store's compare-and-set
    assert outcomes.count(True) == 15 and spent(state)["tokens"] == 300


def test_settling_replaces_the_estimate_and_a_failed_call_gives_it_back() -> None:
    state = MemoryStateStore()
    ledger = meter(state, Cover("pipeline", "pipeline 'p'", None, 1.0), Cover("task", "task 't'", 500, None))
    hold = ledger.reserve(request_of(100, 50))
    assert spent(state)["tokens"] == 150  # a cost budget keeps the tokens too, for messages
    assert spent(state)["cost_usd"] == pytest.approx((100 * 2.0 + 50 * 8.0) / 1e6)
    assert spent(state, "task")["tokens"] == 150
    hold.settle(LLMReply("ok", 30, 10))
    assert spent(state, "task")["tokens"] == 40
    assert spent(state)["cost_usd"] == pytest.approx((30 * 2.0 + 10 * 8.0) / 1e6)
    ledger.reserve(request_of(100, 50)).settle(None)  # the call failed: nothing spent
    assert spent(state, "task")["tokens"] == 40
    ledger.reserve(request_of(100, 50)).settle(LLMReply("ok", None, None))  # no usage: estimate kept
    assert spent(state, "task")["tokens"] == 190


def test_a_refusal_names_the_budget_and_reserves_nothing_anywhere() -> None:
    state = MemoryStateStore()
    ledger = meter(state, PIPELINE, Cover("task/x", "task 'x'", 100, None))
    with pytest.raises(TaskError) as refused:
        ledger.reserve(request_of(90, 20))
    assert refused.value.error_type == "BudgetExceeded"
    assert "task 'x' (max_tokens 100) has 0 tokens spent" in refused.value.message
    assert "needs up to 110" in refused.value.message and "no call was made" in refused.value.message
    assert spent(state)["tokens"] == 0  # the pipeline's took nothing either
    with pytest.raises(TaskError, match="set the task's max_tokens"):
        ledger.reserve(LLMRequest(model="m", prompt="hi"))  # the default reply reservation


def test_a_cost_budget_over_a_model_without_a_price_fails_the_call() -> None:
    ledger = meter(MemoryStateStore(), Cover("pipeline", "pipeline 'p'", None, 0.5))
    with pytest.raises(TaskError) as refused:
        ledger.reserve(request_of(20, 5, model="free"))
    assert refused.value.error_type == "BudgetUnpriced" and not refused.value.retryable
    assert "add llm.models.free.price to the config file" in refused.value.message
    meter(MemoryStateStore(), PIPELINE).reserve(request_of(20, 5, model="free"))  # tokens only: fine


NESTED = Pipeline.model_validate(
    {
        "name": "p",
        "budget": {"max_tokens": 1},
        "tasks": [
            {
                "name": "outer",
                "type": "for_loop",
                "iterate_over": [1, 2],
                "budget": {"max_tokens": 2},
                "tasks": [
                    {
                        "name": "group",
                        "type": "parallel_group",
                        "budget": {"max_cost_usd": 3},
                        "tasks": [
                            {
                                "name": "inner",
                                "type": "while_loop",
                                "condition": True,
                                "max_iterations": 2,
                                "budget": {"max_tokens": 4},
                                "tasks": [
                                    {
                                        "name": "ask",
                                        "type": "llm_task",
                                        "prompt": "p",
                                        "budget": {"max_tokens": 5},
                                    }
                                ],
                            }
                        ],
                    }
                ],
            },
            {"name": "gen", "type": "dynamic_task_group", "tasks": "{{ [] }}", "budget": {"max_tokens": 6}},
            {"name": "plain", "type": "llm_task", "prompt": "p"},
            {
                "name": "side",
                "type": "parallel_group",
                "budget": {"max_tokens": 7},
                "tasks": [{"name": "beside", "type": "llm_task", "prompt": "p"}],
            },
        ],
    }
)


def place(*path: str, child: str = "") -> TaskPlace:
    return TaskPlace(MemoryTelemetryLog(), "run1", child, path)


def test_the_budgets_covering_a_call_are_found_from_its_task_path() -> None:
    outer = NESTED.tasks[0]
    ask = outer.tasks[0].tasks[0].tasks[0]  # type: ignore[union-attr]
    found = covering(ask, place("outer", "1", "inner", "0", "ask"), NESTED, None, fallback=False)
    assert found is not None and found.run_id == "run1"
    assert [(c.key, c.owner, c.max_tokens, c.max_cost_usd) for c in found.covers] == [
        ("pipeline", "pipeline 'p'", 1, None),
        ("task//outer", "task 'outer'", 2, None),
        ("task//outer/1/group", "task 'group'", None, 3),
        ("task//outer/1/inner", "task 'inner'", 4, None),
        ("task//outer/1/inner/0/ask", "task 'ask'", 5, None),
    ]
    plain = NESTED.tasks[2]
    generated = NESTED.tasks[1].model_copy(update={"budget": None})  # a generated task without one
    keys = [c.key for c in covering(generated, place("gen", "g1", "g1"), NESTED, None, fallback=False).covers]  # type: ignore[union-attr]
    assert keys == ["pipeline", "task//gen"]
    fallback = plain.model_copy(update={"budget": NESTED.budget})
    keys = [c.key for c in covering(fallback, place("plain"), NESTED, None, fallback=True).covers]  # type: ignore[union-attr]
    assert keys == ["pipeline", "task//plain/fallback"]
    # a parallel group takes no part of its tasks' paths
    beside = NESTED.tasks[3].tasks[0]  # type: ignore[union-attr]
    keys = [c.key for c in covering(beside, place("beside"), NESTED, None, fallback=False).covers]  # type: ignore[union-attr]
    assert keys == ["pipeline", "task//side"]
    # in a child pipeline: the top pipeline's budget, then the child's own
    child = Pipeline.model_validate({"name": "c", "budget": {"max_tokens": 9}, "tasks": [plain.model_dump()]})
    keys = [c.key for c in covering(plain, place("plain", child="c"), child, NESTED, fallback=False).covers]  # type: ignore[union-attr]
    assert keys == ["pipeline", "pipeline/c"]
    assert (
        covering(plain, place("plain"), child.model_copy(update={"budget": None}), None, fallback=False)
        is None
    )
