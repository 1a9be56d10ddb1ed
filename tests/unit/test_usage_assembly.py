"""Issue 15, usage and cost: the run document's `usage` fields, assembled from any LLM calls.

Whatever calls a run's attempts made (nested in loops, to priced models or not, with tokens
told or not), each call's cost is its tokens at its model's price, each task's usage is the sum
over its attempts and children, and the run's is the sum over its tasks; a cost is `null` when
it cannot be known. Prices come from the config file (`llm.models.<name>.price`), checked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import ConfigError
from orchestrator.runtime.telemetry import record_usage, with_telemetry
from orchestrator.settings import ModelPrice, load_settings
from orchestrator.stores.memory import MemoryAuditLog

RUN_START = 1_700_000_000.0
MODELS = ["priced", "cheap", "unpriced"]
NAMES = st.sampled_from(["a", "b", "loop"])
KEYS = st.sampled_from(["0", "1", "10"])
TOKENS = st.one_of(st.none(), st.integers(0, 2_000_000))
RATES = st.floats(0, 1_000, allow_nan=False, allow_infinity=False)


@st.composite
def calls(draw: st.DrawFn) -> list[dict[str, Any]]:
    return [
        {
            "model": draw(st.sampled_from(MODELS)),
            "tokens_in": draw(TOKENS),
            "tokens_out": draw(TOKENS),
            "latency": 0.1,
        }
        for _ in range(draw(st.integers(0, 3)))
    ]


@st.composite
def entries(draw: st.DrawFn) -> list[dict[str, Any]]:
    found = []
    for number in range(draw(st.integers(0, 10))):
        path = [draw(NAMES)]
        for _ in range(draw(st.integers(0, 2))):
            path += [draw(KEYS), draw(NAMES)]
        started = RUN_START + number
        found.append(
            {
                "id": f"{number:04d}",
                "pipeline_run": "",
                "path": path,
                "fallback": draw(st.booleans()),
                "status": "succeeded",
                "started_at": started,
                "ended_at": started + 0.5,
                "error": None,
                "printed": [],
                "llm_calls": draw(calls()),
                "inputs": None,
            }
        )
    return found


def exact_cost(call: dict[str, Any], prices: dict[str, ModelPrice]) -> float | None:
    price = prices.get(call["model"])
    if price is None or call["tokens_in"] is None or call["tokens_out"] is None:
        return None
    return (call["tokens_in"] * price.input_per_million + call["tokens_out"] * price.output_per_million) / 1e6


def expected_usage(calls: list[dict[str, Any]], prices: dict[str, ModelPrice]) -> dict[str, Any]:
    priced = [call for call in calls if call["model"] in prices]
    costs = [exact_cost(call, prices) for call in priced]
    known = bool(priced) and all(cost is not None for cost in costs)
    return {
        "llm_calls": len(calls),
        "tokens_in": sum(call["tokens_in"] or 0 for call in calls),
        "tokens_out": sum(call["tokens_out"] or 0 for call in calls),
        "cost_usd": math.fsum(c for c in costs if c is not None) if known else None,
    }


def walk(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every task record in `record`'s children, at any depth, with `record` itself."""
    found = [record]
    for child in record.get("children") or []:
        for inner in child["tasks"].values():
            found += walk(inner)
    return found


def same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["llm_calls"] == want["llm_calls"]
    assert got["tokens_in"] == want["tokens_in"]
    assert got["tokens_out"] == want["tokens_out"]
    if want["cost_usd"] is None:
        assert got["cost_usd"] is None
    else:
        assert got["cost_usd"] == pytest.approx(want["cost_usd"], rel=1e-12, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(entries(), RATES, RATES, RATES, RATES)
def test_every_usage_is_the_sum_of_the_calls_under_it(
    found: list[dict[str, Any]], price_in: float, price_out: float, cheap_in: float, cheap_out: float
) -> None:
    # GIVEN any attempts with LLM calls, and prices for two of the three models
    prices = {"priced": ModelPrice(price_in, price_out), "cheap": ModelPrice(cheap_in, cheap_out)}
    # WHEN the document is assembled
    document = with_telemetry({"status": "succeeded", "tasks": {}}, found, prices=prices)
    # THEN each call costs its tokens at its model's price (null when it cannot be known) ...
    every_call = []
    for record in document["tasks"].values():
        for task in walk(record):
            task_calls = [call for attempt in task["attempt_log"] for call in attempt["llm_calls"]]
            for call in task_calls:
                cost = exact_cost(call, prices)
                want = None if cost is None else pytest.approx(cost, rel=1e-12, abs=1e-9)
                assert call["cost_usd"] == want
            # ... each task's usage sums its own calls and its children's ...
            below = [c for inner in walk(task) for a in inner["attempt_log"] for c in a["llm_calls"]]
            same(task["usage"], expected_usage(below, prices))
            every_call += task_calls
    # ... and the run's sums every call of the run, once
    assert len(every_call) == sum(len(entry["llm_calls"]) for entry in found)
    same(document["usage"], expected_usage(every_call, prices))


def test_a_run_without_prices_counts_tokens_and_no_cost_and_audits_its_usage() -> None:
    entry = {
        "id": "1",
        "pipeline_run": "",
        "path": ["ask"],
        "status": "succeeded",
        "started_at": RUN_START,
        "ended_at": RUN_START + 1,
        "llm_calls": [{"model": "m", "tokens_in": 10, "tokens_out": 3, "latency": 0.2}],
    }
    document = with_telemetry({"status": "succeeded", "tasks": {"quiet": {"status": "succeeded"}}}, [entry])
    assert document["usage"] == {"llm_calls": 1, "tokens_in": 10, "tokens_out": 3, "cost_usd": None}
    assert document["tasks"]["quiet"]["usage"] == {
        "llm_calls": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": None,
    }
    assert document["tasks"]["ask"]["attempt_log"][0]["llm_calls"][0]["cost_usd"] is None
    assert "cost_usd" not in entry["llm_calls"][0]  # the entries read are left as they were
    # the run's usage goes to the audit log, with that of the tasks that called a model ...
    audit = MemoryAuditLog()
    record_usage(audit, {**document, "pipeline": "p", "run_id": "r", "user": "ada"})
    (written,) = audit.query(run="r")
    assert (written["event"], written["pipeline_id"], written["user_id"]) == ("llm_usage", "p", "ada")
    assert written["usage"] == document["usage"]
    assert written["tasks"] == {"ask": document["usage"]}
    # ... but only for a run that called one
    quiet = with_telemetry({"status": "succeeded", "tasks": {"quiet": {"status": "succeeded"}}}, [])
    record_usage(audit, {**quiet, "pipeline": "p", "run_id": "q", "user": "ada"})
    assert audit.query(run="q") == []


def settings_from(tmp_path: Path, text: str) -> dict[str, ModelPrice]:
    config = tmp_path / "config.yaml"
    config.write_text(text, encoding="utf-8")
    env = {"ORCHESTRATOR_HOME": str(tmp_path / "home"), "ORCHESTRATOR_CONFIG": str(config)}
    return load_settings(env).prices


def test_prices_come_from_the_config_file(tmp_path: Path) -> None:
    prices = settings_from(
        tmp_path,
        "llm:\n  models:\n    gpt-4o-mini:\n      price: {input_per_million: 0.15, output_per_million: 0.6}\n"
        "    local: {base_url: 'http://127.0.0.1:8080/v1'}\n",
    )
    assert prices == {"gpt-4o-mini": ModelPrice(0.15, 0.6)}


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ("{input_per_million: 1}", "'llm.models.m.price.output_per_million' must be a number"),
        ("{input_per_million: '1', output_per_million: 2}", "'llm.models.m.price.input_per_million' must be"),
        ("{input_per_million: -1, output_per_million: 2}", "0 or more, got -1"),
        ("{input_per_million: true, output_per_million: 2}", "got True"),
        ("{input_per_million: .inf, output_per_million: 2}", "got inf"),
        ("{input_per_milion: 1, output_per_million: 2}", "did you mean 'input_per_million'?"),
        ("0.15", "'llm.models.m.price' must be a mapping"),
    ],
)
def test_a_wrong_price_is_a_config_error_naming_the_key(tmp_path: Path, price: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml") as raised:
        settings_from(tmp_path, f"llm:\n  models:\n    m:\n      price: {price}\n")
    assert message in str(raised.value)
