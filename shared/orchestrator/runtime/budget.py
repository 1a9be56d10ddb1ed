"""Token and cost budgets of LLM calls (`budget:` on a pipeline or a task), for both engines.

Which budgets cover a call. Every leaf attempt is covered by the budgets around it
(`covering`): the top pipeline's, its own pipeline file's when it runs in a child pipeline, the
containers' it runs in (a for_loop's, while_loop's, parallel_group's or dynamic_task_group's
covers every iteration and task inside it together) and its own (which covers every attempt
and repair call of that execution of the task: each iteration of a loop around it has its
own). A fallback task is covered by its own budget and those around it, not by the budget of
the task that failed. What covers an attempt is found from the pipeline files and the
attempt's task path (`runtime.telemetry`), which both engines give; `TaskRun.attempting` puts
it in place around the attempt (`covered`) and the leaf opens the ledger for its calls
(`metering`), so the one place a call is made (`runtime.llm.metered_call`) asks this module.

The ledger. Each budget of a run is one key of the state store (`StateStore`) in the run's
namespace `budget:<run id>`, which no script can name, holding the tokens and US dollars spent
or reserved so far; every change is one atomic `commit` of all the budgets covering the call,
each a compare-and-set, tried again when another writer got there first: so threads, sandboxed
processes and Lambdas share one count, and a resumed run (same run id) keeps what it spent.

Before a call is made its estimate is reserved in every budget covering it (`Meter.reserve`);
if one of them cannot take it, the call is not made and the attempt fails with
``BudgetExceeded`` (not retried; the task's fallback and `on_failure` still apply). After the
call the estimate is replaced by what the provider reported (`Hold.settle`: the estimate is
kept if it reported nothing); a call that failed gives its reservation back. The estimate is
`runtime.llm.estimated_usage`: the request's text at about three characters a token, plus
its `max_tokens` (1,024 when the task sets none). Calls running together can take a budget
past its limit only by what their replies used beyond their estimates. Costs come from the
model's price in the config (`Settings.prices`); a cost budget over a call to a model without a
price fails the call (``BudgetUnpriced``) rather than letting it through uncounted.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.errors import TaskError
from orchestrator.spec.models import (
    Budget,
    DynamicTaskGroup,
    ForLoop,
    ParallelGroup,
    Pipeline,
    TaskBase,
    WhileLoop,
)
from orchestrator.stores.base import StateWrite

if TYPE_CHECKING:
    from orchestrator.runtime.llm import LLMReply, LLMRequest
    from orchestrator.runtime.telemetry import TaskPlace
    from orchestrator.settings import ModelPrice
    from orchestrator.stores.base import StateStore

LEDGER_TTL = 30 * 24 * 3600.0
"""How long a run's budget ledger is kept after its last change (a resumed run keeps it)."""
CAS_TRIES = 200
"""How often a change of the ledger is tried against concurrent writers before giving up."""


@dataclass(frozen=True)
class Cover:
    """One budget covering a call: its ledger key, whose it is (for messages) and its limits."""

    key: str
    owner: str
    max_tokens: int | None
    max_cost_usd: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "owner": self.owner,
            "max_tokens": self.max_tokens,
            "max_cost_usd": self.max_cost_usd,
        }


@dataclass(frozen=True)
class Covering:
    """The budgets covering one attempt's calls, and the run whose ledger holds them."""

    run_id: str
    covers: tuple[Cover, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "covers": [cover.as_dict() for cover in self.covers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Covering:
        return cls(str(data["run_id"]), tuple(Cover(**cover) for cover in data["covers"]))


def _cover(budget: Budget | None, key: list[str], owner: str) -> list[Cover]:
    if budget is None:
        return []
    return [Cover("/".join(key), owner, budget.max_tokens, budget.max_cost_usd)]


_BUDGETED: dict[int, tuple[Pipeline, bool]] = {}


def _budgeted(pipeline: Pipeline) -> bool:
    """Whether the pipeline or any task in it may have a budget (worked out once per pipeline,
    so a run with no budget pays nothing per attempt): its JSON holds a `budget` object. Text
    holding the word has its quotes escaped; another mapping so named (an input's default)
    only makes `covering` look."""
    known = _BUDGETED.get(id(pipeline))
    if known is None or known[0] is not pipeline:
        if len(_BUDGETED) >= _INDEXES_KEPT:
            _BUDGETED.clear()
        known = (pipeline, '"budget":{' in pipeline.model_dump_json(exclude_none=True))
        _BUDGETED[id(pipeline)] = known
    return known[1]


_Index = dict[str, tuple[TaskBase, tuple[ParallelGroup, ...]]]
_INDEXES: dict[int, tuple[Sequence[Any], _Index]] = {}
_INDEXES_KEPT = 256


def _index(tasks: Sequence[Any]) -> _Index:
    """The tasks of a list by name, the children of its parallel groups included, each with the
    groups it is in (outermost first); worked out once per list (a run looks up every leaf)."""
    found = _INDEXES.get(id(tasks))
    if found is not None and found[0] is tasks:
        return found[1]
    index: _Index = {}
    for task in tasks:
        if task.name is not None:
            index[task.name] = (task, ())
        if isinstance(task, ParallelGroup):
            for name, (inner, groups) in _index(task.tasks).items():
                index[name] = (inner, (task, *groups))
    if len(_INDEXES) >= _INDEXES_KEPT:
        _INDEXES.clear()
    _INDEXES[id(tasks)] = (tasks, index)
    return index


def _containers(
    tasks: Sequence[Any], path: tuple[str, ...], done: tuple[str, ...]
) -> list[tuple[TaskBase, tuple[str, ...]]]:
    """The containers a leaf at `path` (names and iteration keys, `runtime.telemetry`) runs in,
    outermost first, each with its own path (`done`: the path so far). A parallel group takes
    no part of a path (its tasks are placed beside it); a loop adds its name and the key of the
    iteration; a dynamic_task_group's generated tasks are not in the file."""
    found = _index(tasks).get(path[0]) if path else None
    if found is None:
        return []
    task, groups = found
    chain: list[tuple[TaskBase, tuple[str, ...]]] = [(group, (*done, str(group.name))) for group in groups]
    here = (*done, path[0])
    if len(path) > 1 and isinstance(task, ForLoop | WhileLoop):
        chain += [(task, here), *_containers(task.tasks, path[2:], (*here, path[1]))]
    elif len(path) > 1 and isinstance(task, DynamicTaskGroup):
        chain.append((task, here))
    return chain


def covering(
    task: TaskBase, place: TaskPlace, pipeline: Pipeline, top: Pipeline | None, *, fallback: bool
) -> Covering | None:
    """The budgets covering an attempt of the task at `place` (`task`: it, or its fallback
    task), outermost first, in `pipeline`, run as a child pipeline of `top` (None: it is the
    top pipeline); None when there are none."""
    if task.budget is None and not _budgeted(pipeline) and (top is None or not _budgeted(top)):
        return None
    run = place.pipeline_run
    covers: list[Cover] = []
    if top is not None:
        covers += _cover(top.budget, ["pipeline"], f"pipeline '{top.name}'")
    covers += _cover(
        pipeline.budget, ["pipeline", run] if run else ["pipeline"], f"pipeline '{pipeline.name}'"
    )
    for container, path in _containers(pipeline.tasks, place.path, ()):
        covers += _cover(container.budget, ["task", run, *path], f"task '{container.name}'")
    own = [*place.path, "fallback"] if fallback else list(place.path)
    name = f"fallback task of '{place.path[-1]}'" if fallback else f"task '{place.path[-1]}'"
    covers += _cover(task.budget, ["task", run, *own], name)
    return Covering(place.run_id, tuple(covers)) if covers else None


_COVERING: ContextVar[Covering | None] = ContextVar("orchestrator_budget_covering", default=None)
_METER: ContextVar[Meter | None] = ContextVar("orchestrator_budget_meter", default=None)


@contextmanager
def covered(by: Covering | None) -> Iterator[None]:
    """Around one attempt: the budgets covering its calls (`covering`)."""
    token = _COVERING.set(by)
    try:
        yield
    finally:
        _COVERING.reset(token)


def current_covering() -> Covering | None:
    return _COVERING.get()


@contextmanager
def metering(state: StateStore, prices: Mapping[str, ModelPrice]) -> Iterator[None]:
    """Around a leaf's calls: the ledger the budgets covering them are counted in."""
    found = _COVERING.get()
    token = _METER.set(None if found is None else Meter(state, found, prices))
    try:
        yield
    finally:
        _METER.reset(token)


def current_meter() -> Meter | None:
    return _METER.get()


def _cost(price: ModelPrice | None, tokens_in: int, tokens_out: int) -> float:
    if price is None:
        return 0.0
    return (tokens_in * price.input_per_million + tokens_out * price.output_per_million) / 1_000_000


def _spent(value: Any) -> tuple[int, float]:
    if not isinstance(value, dict):
        return 0, 0.0
    return int(value.get("tokens", 0)), float(value.get("cost_usd", 0.0))


def _refusal(
    cover: Cover, tokens: int, cost: float, want: tuple[int, float], unset_reply: bool
) -> str | None:
    """Why `cover`, with `tokens` and `cost` spent or reserved, cannot take `want`; None if it can."""
    if cover.max_tokens is not None and tokens + want[0] > cover.max_tokens:
        hint = " (set the task's max_tokens to reserve less for the reply)" if unset_reply else ""
        return (
            f"the budget of {cover.owner} (max_tokens {cover.max_tokens}) has {tokens} tokens spent or "
            f"reserved and this call needs up to {want[0]}{hint}: no call was made"
        )
    if cover.max_cost_usd is not None and cost + want[1] > cover.max_cost_usd:
        return (
            f"the budget of {cover.owner} (max_cost_usd {cover.max_cost_usd:g}) has {cost:.6f} USD spent "
            f"or reserved and this call may cost up to {want[1]:.6f}: no call was made"
        )
    return None


class Meter:
    """The ledger of the budgets covering one attempt's calls (see the module)."""

    def __init__(self, state: StateStore, covering: Covering, prices: Mapping[str, ModelPrice]) -> None:
        self._state = state
        self._covering = covering
        self._prices = prices
        self._namespace = f"budget:{covering.run_id}"

    def reserve(self, request: LLMRequest) -> Hold:
        """Reserve the estimate of `request` in every budget covering it, or raise `TaskError`
        (``BudgetExceeded``, ``BudgetUnpriced``) without reserving anything."""
        from orchestrator.runtime.llm import estimated_usage

        price = self._prices.get(request.model)
        if price is None:
            for cover in self._covering.covers:
                if cover.max_cost_usd is not None:
                    raise TaskError(
                        "BudgetUnpriced",
                        f"the budget of {cover.owner} has a max_cost_usd, but model '{request.model}' has no "
                        f"price: add llm.models.{request.model}.price to the config file",
                    )
        tokens_in, tokens_out = estimated_usage(request)
        want = (tokens_in + tokens_out, _cost(price, tokens_in, tokens_out))
        self.adjust(want, check=True, unset_reply=request.max_tokens is None)
        return Hold(self, price, want)

    def adjust(self, delta: tuple[int, float], *, check: bool, unset_reply: bool = False) -> None:
        """Add `delta` to every budget covering the call, atomically; with `check`, a delta that
        one of them cannot take raises ``BudgetExceeded`` naming the innermost such budget (the
        one the task itself is sure to meet) and changes nothing."""
        for tries in range(CAS_TRIES):
            writes: list[StateWrite] = []
            for cover in reversed(self._covering.covers):
                found = self._state.read(self._namespace, cover.key)
                tokens, cost = _spent(found.value)
                if check:
                    refusal = _refusal(cover, tokens, cost, delta, unset_reply)
                    if refusal is not None:
                        raise TaskError("BudgetExceeded", refusal)
                value = {"tokens": max(0, tokens + delta[0]), "cost_usd": max(0.0, cost + delta[1])}
                writes.append(StateWrite(self._namespace, cover.key, value, found.version, LEDGER_TTL))
            if self._state.commit(writes):
                return
            time.sleep(random.uniform(0, 0.002 * (tries + 1)))
        raise TaskError("StateConflict", "the budget ledger kept conflicting with concurrent writers")


class Hold:
    """What one call reserved, until it is settled."""

    def __init__(self, meter: Meter, price: ModelPrice | None, reserved: tuple[int, float]) -> None:
        self._meter = meter
        self._price = price
        self._reserved = reserved

    def settle(self, reply: LLMReply | None) -> None:
        """Replace the reservation by what the call used: the reply's tokens, the reservation
        kept when it reported none, nothing for a call that failed (`reply` None)."""
        if reply is None:
            used = (0, 0.0)
        elif reply.tokens_in is None or reply.tokens_out is None:
            return
        else:
            used = (reply.tokens_in + reply.tokens_out, _cost(self._price, reply.tokens_in, reply.tokens_out))
        delta = (used[0] - self._reserved[0], used[1] - self._reserved[1])
        if delta != (0, 0.0):
            self._meter.adjust(delta, check=False)
