"""Hypothesis strategies for valid pipelines, for the differential fuzzer (test_differential_fuzz.py).

`pipelines(features)` draws a `GeneratedPipeline`: a pipeline document (a dict, dumped to YAML),
the child pipelines its `pipeline_group`s run (written beside it), the inputs to run it with,
and the names `orchestrator validate` may warn about (a `fallback_value` naming a missing value
on purpose). Every pipeline is small (at most `MAX_TASKS` tasks in all its files, generated
tasks included, fallbacks not) and deterministic: scripts never sleep, read the clock or draw
chance, and no output depends on which of two independent tasks finishes first.

Drawn: python tasks (literals, arithmetic on inputs, reads of other tasks through `{{ other }}`
placeholders in code, strings and comments, `{{ other.key }}`, `context.get_task_output("name")`
and computed `get_task_output(f"step_{i}")`, deliberate exceptions, flaky tasks that succeed
after some retries, outputs of 120-280 KB that AWS offloads to S3, outputs holding a sensitive
input), llm and web search tasks against the fake servers (echoed prompts; HTTP 400 on
demand), conditions (literal, on inputs, on task outputs, compound), `depends_on`, `for_loop`
(literal lists, ranges, array inputs, task outputs, custom item variables, concurrency),
`while_loop` (on `loop_index`, `loop_state`, or `true` up to `max_iterations`),
`parallel_group` (with `max_concurrency`, children read by later tasks and siblings),
`dynamic_task_group` (a planner task's specs, or inline ones; sequential or parallel),
`pipeline_group` (child files beside the parent, with inputs), `error_handling` (retries with
`retry_delay: 0`, fallback tasks, the three `on_failure`s, `fallback_value` literals and
templates, missing names included), a pipeline-wide `error_handling`, an `outputs` section,
and task names the compiler could confuse with its own states (`check`, `start`, `advance`,
`done`, `result`, ..., and names longer than a state name may be).

Races are kept out by construction: at most one task of a pipeline (its files together) may
end the run with `abort_pipeline` (two could abort in either order locally); every way a task
can fail (an exception, a template or condition error, a failing body) counts as `fails`
when its `on_failure` is chosen; flaky tasks keep their attempt counter per task and run. The
one race left is documented (docs/decisions.md): the siblings of a parallel_group child that
fails the group may or may not have finished; they are `racy`, compared only when both engines
ran them, and nothing reads them.

`Features` has a flag per divergence the engines have or had (numbered as in
test_differential_fuzz.KNOWN_DIVERGENCES): the defaults are what both engines agree on
today, which CI fuzzes; `Features.everything()` brings the known divergences back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml
from hypothesis import strategies as st

T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[Any]], Any]

MAX_TASKS = 8
PIPELINE_ID = "fuzz"
SECRET_PREFIX = "tok-"
# a prompt or query holding this makes the fuzzer's fake LLM and search servers answer HTTP 400
HTTP_400_MARKER = "HTTP400"

# names of the ASL compiler's own states (`<task>.<role>`, `<loop>/.check`) and of the
# execution state's keys: tasks may be called so
COMPILER_NAMES = (
    "check",
    "start",
    "advance",
    "done",
    "result",
    "skip",
    "failed",
    "fallback",
    "abort",
    "condition",
    "items",
    "children",
    "errors",
    "loops",
    "conditions",
    "output",
    "status",
    "tasks",
    "branch",
    "Payload",
)
WHILE_STATE_NAMES = ("check", "start", "advance", "done")
PLAIN_NAMES = ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta", "theta", "iota")
# long names, two sharing their first 60 characters: at the top level their state names, roles
# included (`<name>.condition`), stay within the 80 characters a state name may have
MEDIUM_NAMES = (
    "a_task_name_long_enough_to_test_how_state_names_are_made_up_to_70_a",
    "a_task_name_long_enough_to_test_how_state_names_are_made_up_to_70_b",
)
# longer: with a prefix (`group/`) or a role (`.items`) or alone, their state names are over 80
# characters, which the compiler shortens with a hash: (12)
LONG_NAMES = (
    "a_task_name_long_enough_to_overflow_every_step_functions_state_name_limit_1",
    "a_task_name_long_enough_to_overflow_every_step_functions_state_name_limit_2",
    "n" * 90,
    "loop_" + "x" * 72 + "_tail",
)
ITEM_VARIABLES = ("row", "entry", "element")
SAFE_TEXT = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 -_.,:;!?'\"éüßø☃"
INPUT_NAMES = ("in_n", "in_x", "in_mode", "in_flag", "in_list", "in_obj", "in_secret", "in_opt")


@dataclass(frozen=True)
class Features:
    """What the generator may use. Each flag, numbered as its divergence in
    test_differential_fuzz.KNOWN_DIVERGENCES, turns on a construct the engines disagreed on: on
    by default once fixed (the engines agree on it, and CI fuzzes it), off while it diverges."""

    # fixed (they diverged at 85d8474):
    # (1) get_task_output(f"step_{i}") reading children of a parallel_group
    group_child_computed_reads: bool = True
    # (2) get_task_output(f"step_{i}") without depends_on on the tasks it reads
    computed_reads_without_depends_on: bool = True
    # (3) an llm / web search task answered HTTP 400, with retries left
    http_400_retries: bool = True
    # (4) for_loop over a mapping
    mapping_loops: bool = True
    # (5) while_loop bodies with tasks named check/start/advance/done
    while_state_names: bool = True
    # (6) a script placeholder whose value cannot be a Python literal ({{ range(3) }})
    unrepresentable_placeholders: bool = True
    # (7) a fallback_value reading a key its value may not have ({{ task.absent }})
    fallback_value_missing_key: bool = True
    # (8) a condition on a sensitive input
    sensitive_conditions: bool = True
    # (9) a task, fallback_value or `outputs` reading a task output that holds a sensitive input
    secret_reads_downstream: bool = True
    # found by this fuzzer (all fixed):
    # (10) a generated task (dynamic_task_group) that fails under an error_handling of its own
    # or the pipeline's that does not abort; fixed: the task function carries its whole policy
    generated_task_policies: bool = True
    # (11) reading a child of a parallel_group that did not run (the group was skipped); fixed:
    # a task reading a group's child is passed the group's record, never the child's path
    skipped_group_children_reads: bool = True
    # (12) a state name over 80 characters (a long task name, or a group's child with a long name);
    # fixed: the compiler keeps what each shortened name stands for, and the document reads that
    long_state_names: bool = True
    # (13) a task failing with continue_with_degraded_service out of the run document's sight:
    # in a loop body or a child pipeline; fixed: it goes through a `.degraded` state on AWS
    hidden_degraded_tasks: bool = True
    # (14) an `outputs` section that cannot be rendered; fixed: one function renders it
    outputs_render_errors: bool = True
    # (15) a condition ordering a value of another type (`a > 4` where `a` is null or text);
    # fixed: the Choice rule sends every value Jinja might refuse to the dispatch function
    condition_type_errors: bool = True
    # (16) any other condition that cannot be evaluated (`a | length > 0` where `a` is null);
    # fixed: the dispatch function, not the task's Lambda, evaluates it (no attempt)
    condition_errors: bool = True
    # (17) a loop or group as a child of a parallel_group; fixed: a branch's last state is
    # `<child>.end`, apart from the container's own `<child>.result`
    containers_in_groups: bool = True
    # (18) a child pipeline that fails (its pipeline_group's error); fixed: a dispatch call
    # gives the group's ChildPipelineFailed on AWS
    failed_child_pipelines: bool = True
    # (19) a loop or group that fails with retries left (its attempts); fixed: the Map or
    # Parallel state retried them already, and the document now counts each of its starts
    container_retries: bool = True
    # (20) a parallel_group child that fails with abort_pipeline (the children's records);
    # fixed: the document reads a failed group's children from the history
    aborting_group_children: bool = True
    # (21) a child pipeline whose id (file name) starts with a digit; fixed: such an id is a
    # plain key in the execution state (`asl.state_key`)
    digit_child_ids: bool = True
    # (23) an output offloaded to S3 (over 200 KB) in a run that fails; fixed: read back
    big_outputs_in_failed_runs: bool = True
    # (24) a big output rendered whole into `outputs` or a fallback_value (over 256 KB);
    # fixed: the dispatch function offloads what it renders
    big_rendered_values: bool = True
    # (25) a loop's or group's output mapping rendered as text (its keys' order shows);
    # fixed: file order on both engines
    mapping_order_in_text: bool = True
    # (26) outputs under the 200 KB offload threshold adding up past 256 KB of execution state;
    # fixed (issue 12): a value goes to S3 above its share of the state's budget
    state_size_limit: bool = True
    # (27) a condition reading an attribute that is a Python method of the value (`text.count`);
    # fixed: the Choice rule sends values that may have such an attribute to the dispatch function
    method_attributes: bool = True
    # (28) a loop's or group's own timeout, and (29) the pipeline's timeout: no flag, as the
    # generator draws no timeouts (its scripts never sleep); (29) is fixed, (28) diverges
    # (30) a negative integer in a literal fallback_value: drawn all along, no flag; fixed

    @classmethod
    def everything(cls) -> Features:
        return cls(**{flag.name: True for flag in fields(cls)})

    @classmethod
    def parse(cls, text: str) -> Features:
        """`""` (the defaults), `"all"`, or a comma-separated list of flags to turn on."""
        if text.strip() == "all":
            return cls.everything()
        chosen = {name.strip() for name in text.split(",") if name.strip()}
        unknown = chosen - {flag.name for flag in fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown fuzzer features {sorted(unknown)}; known: {[f.name for f in fields(cls)]}"
            )
        return cls(**{name: True for name in chosen})


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


@dataclass(frozen=True)
class Ref:
    """A name a task may read, and what the generator knows of its value at run time."""

    name: str
    value: Any = UNKNOWN  # the exact value, when certain (then never null)
    tainted: bool = False  # holds a sensitive input's text
    big: bool = False  # a string of 100 KB or more
    group_child: bool = False
    is_input: bool = False
    maybe_undefined: bool = False  # a group's child that may not have run: (11)
    sure: bool = False  # it surely ran and succeeded (its value is never null)
    unordered: bool = False  # may hold a loop's or group's mapping, whose key order differs: (25)

    @property
    def certain(self) -> bool:
        return self.value is not UNKNOWN


@dataclass(frozen=True)
class Loop:
    kind: str  # "for" or "while"
    item_variable: str = "item"
    unordered_items: bool = False  # items from a Ref.unordered value


@dataclass
class Scope:
    """What a task list sees: names in scope, the loop it is the body of, where it is."""

    refs: list[Ref]
    loop: Loop | None = None
    top: bool = True  # a pipeline's own task list
    in_child: bool = False  # inside a child pipeline of a pipeline_group
    in_group: bool = False  # inside a parallel_group (its state names have a prefix)


@dataclass
class Built:
    """A generated task, what later tasks of its list may read, and whether it may abort the run."""

    spec: dict[str, Any]
    refs: list[Ref]
    aborts: bool = False


@dataclass
class GeneratedPipeline:
    """A drawn pipeline, ready to be written and run."""

    document: dict[str, Any]
    children: dict[str, dict[str, Any]]
    inputs: dict[str, Any]
    expected_warnings: frozenset[str]
    uses: frozenset[str]  # constructs this pipeline exercises (for statistics)
    flags: frozenset[str]  # the Features flags it exercises
    # siblings of a parallel_group child that may abort: whether each finished before the
    # group failed depends on timing, on both engines (docs/decisions.md)
    racy: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # the files themselves are in the example's notes (describe())
        children = f" and {len(self.children)} child pipeline(s)" if self.children else ""
        return f"<{PIPELINE_ID}.yaml of {self.task_count()} task(s){children}>"

    def write(self, folder: Path) -> Path:
        """Write the pipeline as `fuzz.yaml` with its children beside it; its path."""
        folder.mkdir(parents=True, exist_ok=True)
        for child_id, child in self.children.items():
            (folder / f"{child_id}.yaml").write_text(dump_yaml(child), encoding="utf-8")
        path = folder / f"{PIPELINE_ID}.yaml"
        path.write_text(dump_yaml(self.document), encoding="utf-8")
        return path

    def describe(self) -> str:
        """Every file and the inputs, as a falsifying example shows them."""
        parts = [f"# {PIPELINE_ID}.yaml\n{dump_yaml(self.document)}"]
        parts += [f"# {child_id}.yaml\n{dump_yaml(child)}" for child_id, child in self.children.items()]
        parts.append(f"# inputs (--inputs-file): {json.dumps(self.inputs)}")
        return "\n".join(parts)

    def task_count(self) -> int:
        total = count_tasks(self.document["tasks"])
        return total + sum(count_tasks(child["tasks"]) for child in self.children.values())


def count_tasks(tasks: list[Any]) -> int:
    """Tasks of a list at every depth, inline generated specs included, fallbacks not."""
    total = 0
    for task in tasks:
        total += 1
        inner = task.get("tasks")
        if isinstance(inner, list):
            total += count_tasks(inner)
    return total


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (scripts) as block scalars, keys in the order they were made."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def jinja_literal(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "none"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


Script = tuple[str, Any, bool, dict[str, Any]]  # script, its output when certain, fails?, extras


class _Builder:
    """Draws one pipeline; keeps the task budget, the abort budget and the names in use."""

    def __init__(self, draw: Draw, features: Features) -> None:
        self._draw = draw
        self.features = features
        self.tasks_left = MAX_TASKS
        self.abort_budget = 1
        self.used_names: set[str] = set()
        self.warnings: set[str] = set()
        self.uses: set[str] = set()
        self.flags: set[str] = set()
        self.children: dict[str, dict[str, Any]] = {}
        self.racy: set[str] = set()  # see GeneratedPipeline.racy
        self.default_on_failure = "abort_pipeline"
        self.sensitive: set[str] = set()
        self.fallback_unordered = False  # the last fallback_value drawn may be an unordered mapping

    # -- drawing helpers ---------------------------------------------------------------
    def draw(self, strategy: st.SearchStrategy[T]) -> T:
        result: T = self._draw(strategy)
        return result

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    def pick(self, options: list[T] | tuple[T, ...]) -> T:
        return self.draw(st.sampled_from(list(options)))

    def number(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def flag(self, name: str) -> None:
        """The pipeline uses the construct of a Features flag."""
        self.flags.add(name)
        self.uses.add(f"feature:{name}")

    def new_name(self, scope: Scope, *, group: bool = False) -> str:
        """A name no task of the pipeline has (`group`: a parallel_group's, whose children's
        state names it prefixes)."""
        pools: list[tuple[str, ...]] = [PLAIN_NAMES, PLAIN_NAMES, COMPILER_NAMES]
        if self.features.long_state_names:
            pools += [MEDIUM_NAMES, LONG_NAMES]
        elif scope.top and not scope.in_child and not group:
            pools.append(MEDIUM_NAMES)
        if scope.loop is not None and scope.loop.kind == "while" and self.features.while_state_names:
            pools += [WHILE_STATE_NAMES, WHILE_STATE_NAMES]
        for _ in range(3):
            pool = self.pick(pools)
            free = [name for name in pool if name not in self.used_names]
            if free:
                name = self.pick(free)
                self.used_names.add(name)
                if name in COMPILER_NAMES:
                    self.uses.add("name:compiler-like")
                if len(name) > 60:
                    self.uses.add("name:long")
                if name in LONG_NAMES or (
                    name in MEDIUM_NAMES and (group or not scope.top or scope.in_child)
                ):
                    self.flag("long_state_names")
                return name
        index = 0
        while f"t{index}" in self.used_names:
            index += 1
        self.used_names.add(f"t{index}")
        return f"t{index}"

    def next_step_name(self) -> str | None:
        """`step_<i>` for the first free i, if no gap would precede it."""
        index = 0
        while f"step_{index}" in self.used_names:
            index += 1
        if index > 3:
            return None
        self.used_names.add(f"step_{index}")
        return f"step_{index}"

    # -- values -------------------------------------------------------------------------
    def scalar(self) -> Any:
        return self.draw(
            st.one_of(
                st.integers(-5, 20),
                st.sampled_from([0.5, 2.25, -1.5, 0.001]),
                st.booleans(),
                st.none(),
                st.text(alphabet=SAFE_TEXT, max_size=8),
            )
        )

    def value(self, depth: int = 0) -> Any:
        kind = self.pick(["scalar", "scalar", "list", "dict"] if depth < 2 else ["scalar"])
        if kind == "list":
            return [self.value(depth + 1) for _ in range(self.number(0, 3))]
        if kind == "dict":
            keys = self.draw(
                st.lists(st.sampled_from(["k", "v", "name", "count", "ok"]), max_size=3, unique=True)
            )
            return {key: self.value(depth + 1) for key in keys}
        return self.scalar()

    def readable(self, scope: Scope) -> list[Ref]:
        """The refs a task may read (what would trigger a known divergence only if allowed)."""
        return [
            ref
            for ref in scope.refs
            if (self.features.secret_reads_downstream or not ref.tainted)
            and (self.features.skipped_group_children_reads or not ref.maybe_undefined)
        ]

    def reading(self, ref: Ref) -> None:
        if ref.tainted:
            self.flag("secret_reads_downstream")
        if ref.maybe_undefined:
            self.flag("skipped_group_children_reads")

    def as_text(self, ref: Ref) -> bool:
        """Whether a template may render the value as text (the order of its keys shows)."""
        if ref.unordered and self.features.mapping_order_in_text:
            self.flag("mapping_order_in_text")
        return not ref.unordered or self.features.mapping_order_in_text

    # -- inputs -------------------------------------------------------------------------
    def input_variables(self) -> tuple[dict[str, Any], dict[str, Any], list[Ref]]:
        """Declared inputs, the values the run gives (the others run on their defaults), refs."""
        chosen = self.draw(st.lists(st.sampled_from(INPUT_NAMES), max_size=4, unique=True))
        declared: dict[str, Any] = {}
        given: dict[str, Any] = {}
        refs: list[Ref] = []
        for name in sorted(chosen, key=INPUT_NAMES.index):
            spec, default, alternative = self._input(name)
            declared[name] = spec
            effective = default
            if default is UNKNOWN or self.chance(50):
                given[name] = effective = alternative
            refs.append(
                Ref(
                    name,
                    UNKNOWN if effective is None else effective,
                    tainted=name == "in_secret",
                    is_input=True,
                    sure=effective is not None,
                )
            )
            self.used_names.add(name)
            self.uses.add(f"input:{name}")
        return declared, given, refs

    def _input(self, name: str) -> tuple[dict[str, Any], Any, Any]:
        """An input's declaration, its default (UNKNOWN: none) and another value to give."""
        default: Any
        spec: dict[str, Any]
        if name == "in_n":
            default = self.number(0, 5)
            return {"type": "integer", "default": default}, default, self.number(-3, 9)
        if name == "in_x":
            default = self.pick([0.5, 1.25, 3.0])
            return {"type": "number", "default": default}, default, self.pick([2.5, -1.0, 4])
        if name == "in_mode":
            default = self.pick(["fast", "slow"])
            spec = {"type": "string", "default": default, "options": ["fast", "slow"]}
            return spec, default, self.pick(["fast", "slow"])
        if name == "in_flag":
            default = self.draw(st.booleans())
            return {"type": "boolean", "default": default}, default, self.draw(st.booleans())
        if name == "in_list":
            items = st.lists(st.integers(0, 9), max_size=3)
            default = self.draw(items)
            return {"type": "array", "default": default}, default, self.draw(items)
        if name == "in_obj":
            mapping = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 9), max_size=3)
            default = self.draw(mapping)
            return {"type": "object", "default": default}, default, self.draw(mapping)
        if name == "in_secret":
            self.sensitive.add(name)
            secret = SECRET_PREFIX + self.draw(
                st.text(alphabet="bcdfghjkmnpqrstvwxz", min_size=8, max_size=8)
            )
            spec = {"type": "string"}
            if self.chance(50):
                spec["sensitive"] = True
            return spec, UNKNOWN, secret
        # in_opt: optional, null when not given
        return {"type": "string", "required": False}, None, self.pick(["opt", "x y"])

    # -- conditions ---------------------------------------------------------------------
    def condition(self, scope: Scope) -> tuple[Any, bool]:
        """A task's condition and whether evaluating it may fail (a TemplateError)."""
        kind = self.pick(["literal", "input", "task", "task", "compound"])
        self.uses.add(f"condition:{kind}")
        if kind == "literal":
            return self.pick([True, False, "{{ false }}", "true", "1 > 2", "{{ 'yes' }}", "False"]), False
        if kind == "input":
            expression, fails = self.input_condition(scope)
        elif kind == "task":
            expression, fails = self.task_condition(scope)
        else:
            left, left_fails = self.task_condition(scope)
            right, right_fails = self.input_condition(scope)
            expression, fails = f"({left}) {self.pick(['and', 'or'])} ({right})", left_fails or right_fails
        if self.chance(30):
            expression = "{{ " + expression + " }}"
        return expression, fails

    def input_condition(self, scope: Scope) -> tuple[str, bool]:
        inputs = [ref for ref in scope.refs if ref.is_input]
        if not self.features.sensitive_conditions:
            inputs = [ref for ref in inputs if ref.name not in self.sensitive]
        if not inputs:
            return self.pick(["true", "false", "not false"]), False
        ref = self.pick(inputs)
        if ref.name in self.sensitive:
            self.flag("sensitive_conditions")
            return self.pick([f"{ref.name} == '{ref.value}'", f"{ref.name} != 'other'", ref.name]), False
        forms = {
            "in_n": ["in_n > 2", "in_n == 3", "in_n >= 1", "in_n"],
            "in_x": ["in_x < 1", "in_x == 0.5"],
            "in_mode": ["in_mode == 'fast'", "in_mode != 'fast'"],
            "in_flag": ["in_flag", "not in_flag", "in_flag == true"],
            "in_list": ["in_list", "in_list | length > 1", "2 in in_list"],
            "in_obj": ["in_obj.a is defined", "in_obj.a == 1", "in_obj"],
            "in_opt": ["in_opt", "in_opt is none", "in_opt == 'opt'"],
            "value": ["value > 2", "value == 0"],
        }
        return self.pick(forms[ref.name]), False

    def task_condition(self, scope: Scope) -> tuple[str, bool]:
        refs = [ref for ref in self.readable(scope) if not ref.is_input and not ref.big]
        if not refs:
            return self.pick(["true", "not true"]), False
        ref = self.pick(refs)
        self.reading(ref)
        path = ref.name
        if self.chance(40):
            methods = ["count", "items", "upper"] if self.features.method_attributes else []
            key = self.pick(["k", "v", "ok", *methods])
            if key in methods:
                self.flag("method_attributes")
            path = f"{ref.name}.{key}"
        literal = jinja_literal(
            self.draw(
                st.one_of(st.integers(-2, 5), st.sampled_from([0.5, True, False, None, "", "a", "fast"]))
            )
        )
        form = self.pick(["eq", "ne", "truthy", "not", "defined", "none", "order", "length"])
        self.uses.add(f"condition-form:{form}")
        if form == "eq":
            return f"{path} == {literal}", False
        if form == "ne":
            return f"{literal} != {path}", False
        if form == "truthy":
            return path, False
        if form == "not":
            return f"not {path}", False
        if form == "defined":
            return f"{path} is {self.pick(['defined', 'undefined'])}", False
        if form == "none":
            return f"{path} is none", False
        if form == "order":
            safe = path == ref.name and ref.certain and type(ref.value) in (int, float)
            if not safe and not self.features.condition_type_errors:
                return f"{path} is number", False
            if not safe:
                self.flag("condition_type_errors")
            return f"{path} {self.pick(['<', '<=', '>', '>='])} {self.number(-1, 5)}", not safe
        safe = path == ref.name and ref.certain and isinstance(ref.value, list | dict | str)
        if not safe and not self.features.condition_errors:
            return f"{path} is sequence", False
        if not safe:
            self.flag("condition_errors")
        return f"{path} | length > {self.number(0, 2)}", not safe

    # -- error handling -----------------------------------------------------------------
    def policy(
        self, scope: Scope, *, fails: bool, inner_aborts: bool, leaf: bool
    ) -> tuple[dict[str, Any], bool]:
        """An error_handling section ({} for none), and whether the task may then abort the run.

        A task whose body may abort is that same failure (no new abort); one that may fail on
        its own may abort only with the pipeline's abort budget.
        """
        if not fails and not self.chance(15):
            return {}, False
        handling: dict[str, Any] = {}
        on_failure = self.on_failure(scope, fails=fails, inner_aborts=inner_aborts)
        aborts = fails and on_failure == "abort_pipeline"
        if aborts and not inner_aborts:
            self.abort_budget -= 1
        if on_failure != self.default_on_failure or self.chance(30):
            handling["on_failure"] = on_failure
        if self.chance(20 if fails else 10) and (leaf or not fails or self.features.container_retries):
            handling["retry_count"] = self.number(1, 2)
            handling["retry_delay"] = 0
            self.uses.add("retries")
            if fails and not leaf:
                self.flag("container_retries")
        if leaf and self.chance(20):
            handling["fallback"] = self.fallback_task()
        if on_failure != "abort_pipeline" and self.chance(60):
            handling["fallback_value"] = self.fallback_value(scope)
        return handling, aborts

    def on_failure(self, scope: Scope, *, fails: bool, inner_aborts: bool) -> str:
        """An `on_failure` for a task: any, unless it may fail where that would trigger a known
        divergence (out of sight, in a child pipeline or a group) or race (the abort budget)."""
        options = ["skip", "continue_with_degraded_service", "abort_pipeline"]
        hidden = scope.in_child or scope.loop is not None
        if fails and hidden and not self.features.hidden_degraded_tasks:
            options.remove("continue_with_degraded_service")
        if fails and (
            (not inner_aborts and self.abort_budget <= 0)
            or (scope.in_child and not self.features.failed_child_pipelines)
            or (scope.in_group and not self.features.aborting_group_children)
        ):
            options.remove("abort_pipeline")
        on_failure = self.pick(options)
        self.uses.add(f"on_failure:{on_failure}")
        if fails and on_failure == "abort_pipeline" and scope.in_child:
            self.flag("failed_child_pipelines")
        if fails and on_failure == "abort_pipeline" and scope.in_group:
            self.flag("aborting_group_children")
        if fails and on_failure == "continue_with_degraded_service" and hidden:
            self.flag("hidden_degraded_tasks")
        return on_failure

    def fallback_task(self) -> dict[str, Any]:
        self.uses.add("fallback-task")
        if self.chance(25):
            return {"type": "python_task", "script": 'raise RuntimeError("fallback down")'}
        return {"type": "python_task", "script": f"return {self.value()!r}"}

    def fallback_value(self, scope: Scope) -> Any:
        refs = self.readable(scope)
        kind = self.pick(["literal", "literal", "ref", "path", "text", "missing", "filter"])
        self.uses.add(f"fallback_value:{kind}")
        if kind == "missing":
            name = self.pick(["nowhere", "not_a_task"])
            self.warnings.add(name)
            return "{{ " + name + " }}"
        if kind == "literal" or not refs:
            return self.value()
        ref = self.pick(refs)
        self.reading(ref)
        if ref.big and kind != "filter":
            if not self.features.big_rendered_values:
                kind = "filter"
            else:
                self.flag("big_rendered_values")
        if kind == "text" and not self.as_text(ref):
            kind = "ref"
        if kind in {"ref", "path"} and ref.unordered:
            self.fallback_unordered = True
        if kind == "ref":
            return "{{ " + ref.name + " }}"
        if kind == "text":
            return "was {{ " + ref.name + " }}"
        if kind == "filter":
            return "{{ " + ref.name + " | string | length }}"
        # a path into the value: where it certainly is, or (7) where it may not be
        if ref.certain and isinstance(ref.value, dict) and ref.value:
            return "{{ " + f"{ref.name}.{self.pick(sorted(ref.value))}" + " }}"
        if self.features.fallback_value_missing_key:
            self.flag("fallback_value_missing_key")
            return "{{ " + f"{ref.name}.absent" + " }}"
        return "{{ " + ref.name + " | default('none') }}"

    def finish(
        self,
        name: str,
        spec: dict[str, Any],
        scope: Scope,
        *,
        value: Any,
        fails: bool,
        leaf: bool,
        inner_aborts: bool = False,
        tainted: bool = False,
        big: bool = False,
        may_have_condition: bool = True,
        depends_on: list[str] | None = None,
        unordered: bool = False,
    ) -> Built:
        """Give a task its depends_on, condition and error policy; what later tasks see of it."""
        sure = not fails and not inner_aborts
        depends = list(depends_on or [])
        earlier = [
            ref.name
            for ref in self.readable(scope)  # (a depends_on is read on AWS too: 11)
            if not ref.is_input and ref.name not in depends
        ]
        if earlier and self.chance(15):
            depends += self.draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=2, unique=True))
            self.uses.add("depends_on")
        if depends:
            spec["depends_on"] = depends
        if may_have_condition and self.chance(25):
            condition, condition_fails = self.condition(scope)
            spec["condition"] = condition
            fails = fails or condition_fails
            sure = sure and condition is True and not condition_fails
        self.fallback_unordered = False
        handling, aborts = self.policy(
            scope, fails=fails or inner_aborts, inner_aborts=inner_aborts, leaf=leaf
        )
        unordered = unordered or self.fallback_unordered
        if handling:
            spec["error_handling"] = handling
        order = ["name", "type", "depends_on", "condition"]
        spec = {key: spec[key] for key in order if key in spec} | {
            key: item for key, item in spec.items() if key not in order
        }
        ref = Ref(name, value if sure else UNKNOWN, tainted=tainted, big=big, sure=sure, unordered=unordered)
        return Built(spec, [ref], aborts)

    # -- tasks --------------------------------------------------------------------------
    def task_list(self, scope: Scope, count: int, depth: int) -> tuple[list[dict[str, Any]], list[Built]]:
        """Up to `count` tasks (at least one), each seeing the ones before it."""
        specs: list[dict[str, Any]] = []
        made: list[Built] = []
        for _ in range(count):
            if self.tasks_left <= 0 and specs:
                break
            for built in self.task(scope, depth):
                specs.append(built.spec)
                made.append(built)
                scope.refs = scope.refs + built.refs
        return specs, made

    def task(self, scope: Scope, depth: int, *, group_child: bool = False) -> list[Built]:
        """One task (a dynamic group comes with its planner: two)."""
        self.tasks_left -= 1
        kinds = ["python"] * 5 + ["llm", "search"]
        containers = not group_child or self.features.containers_in_groups
        if depth < 2 and self.tasks_left >= 1 and containers:
            kinds += ["for", "while", "parallel"]
            if scope.loop is None:
                kinds.append("dynamic")
            if scope.top and not scope.in_child and self.tasks_left >= 2:
                kinds.append("pipelines")
        kind = self.pick(kinds)
        self.uses.add(f"task:{kind}")
        if group_child and kind not in {"python", "llm", "search"}:
            self.flag("containers_in_groups")
        if kind == "dynamic":
            return self.dynamic_group(scope)
        maker = {
            "python": self.python_task,
            "llm": self.llm_task,
            "search": self.search_task,
            "for": lambda s: self.for_loop(s, depth),
            "while": lambda s: self.while_loop(s, depth),
            "parallel": lambda s: self.parallel_group(s, depth),
            "pipelines": self.pipeline_group,
        }[kind]
        return [maker(scope)]

    def python_task(self, scope: Scope, *, name: str | None = None, last_in_while: bool = False) -> Built:
        if name is None and scope.top and not scope.in_child and self.chance(20):
            name = self.next_step_name()
        name = name or self.new_name(scope)
        script, value, fails, extra = self.while_step() if last_in_while else self.script(scope, name)
        built = self.finish(
            name,
            {"name": name, "type": "python_task", "script": script},
            scope,
            value=value,
            fails=fails,
            leaf=True,
            tainted=bool(extra.get("tainted")),
            big=bool(extra.get("big")),
            may_have_condition=not last_in_while,
            depends_on=extra.get("depends_on"),
            unordered=bool(extra.get("unordered")),
        )
        if "flaky_retries" in extra:  # the retries decide whether it fails (see _script_flaky)
            handling = built.spec.setdefault("error_handling", {})
            handling["retry_count"] = extra["flaky_retries"]
            handling["retry_delay"] = 0
        return built

    def script(self, scope: Scope, name: str) -> Script:
        refs = self.readable(scope)
        recipes = ["literal", "literal", "raise", "arith"]
        if refs:
            recipes += ["placeholder", "placeholder", "context", "attribute"]
        if scope.loop is not None:
            recipes += ["item", "item"] if scope.loop.kind == "for" else ["loop_state"]
        if scope.top and not scope.in_child:
            recipes += ["flaky", "big", "computed", "computed"]
        if any(ref.big for ref in refs):
            recipes.append("read_big")
        if any(ref.name == "in_secret" for ref in scope.refs):
            recipes.append("secret")
        if self.features.unrepresentable_placeholders:
            recipes.append("unrepresentable")
        recipe = self.pick(recipes)
        self.uses.add(f"script:{recipe}")
        made: Script = getattr(self, f"_script_{recipe}")(scope, name)
        return made

    def _script_literal(self, scope: Scope, name: str) -> Script:
        value = self.value()
        return f"return {value!r}", value, False, {}

    def _script_raise(self, scope: Scope, name: str) -> Script:
        script = self.pick(
            [
                'raise ValueError("no data for {{ run.pipeline }}")',
                "total = 0\nreturn 10 / total",
                "return None + 1",
                'class QuotaExceeded(Exception):\n    pass\n\nraise QuotaExceeded("quota of 3 spent")',
                'return {"a": 1}["missing"]',
                "return object()",  # OutputNotSerializable
            ]
        )
        return script, UNKNOWN, True, {}

    def _script_arith(self, scope: Scope, name: str) -> Script:
        numbers = [ref for ref in scope.refs if ref.is_input and ref.name in {"in_n", "in_x", "value"}]
        factor, offset = self.number(-3, 4), self.number(-5, 5)
        if not numbers:
            return f"return {factor} * 7 + {offset}", factor * 7 + offset, False, {}
        ref = self.pick(numbers)
        if self.chance(50):
            script = "return {{ " + ref.name + " }} * " + f"{factor} + {offset}"
        else:
            script = f'value = inputs["{ref.name}"]\nreturn value * {factor} + {offset}'
        return script, ref.value * factor + offset if ref.certain else UNKNOWN, False, {}

    def _script_placeholder(self, scope: Scope, name: str) -> Script:
        ref = self.pick(self.readable(scope))
        if ref.big:
            return self._script_read_big(scope, name)
        self.reading(ref)
        form = self.pick(["code", "string", "comment", "arith"])
        if form == "string" and not self.as_text(ref):
            form = "code"
        self.uses.add(f"placeholder:{form}")
        if form == "string":
            return 'return "seen: {{ ' + ref.name + ' }}"', UNKNOWN, False, {"tainted": ref.tainted}
        if form == "comment":
            return "# the value is {{ " + ref.name + " }}\nreturn 1", 1, False, {}
        if form == "arith" and ref.certain and type(ref.value) is int:
            return "return {{ " + ref.name + " }} + 1", ref.value + 1, False, {}
        if form == "arith":
            script = "value = {{ " + ref.name + " }}\nreturn value + 1 if type(value) is int else -1"
            return script, UNKNOWN, False, {}
        script = "value = {{ " + ref.name + " }}\nreturn {" + f'"from": "{ref.name}", "value": value' + "}"
        value = {"from": ref.name, "value": ref.value} if ref.certain else UNKNOWN
        return script, value, False, {"tainted": ref.tainted, "unordered": ref.unordered}

    def _script_context(self, scope: Scope, name: str) -> Script:
        refs = [ref for ref in self.readable(scope) if not ref.is_input]
        if not refs:
            return self._script_literal(scope, name)
        ref = self.pick(refs)
        if ref.big:
            return self._script_read_big(scope, name)
        self.reading(ref)
        script = f'value = context.get_task_output("{ref.name}")\nreturn [value, type(value).__name__]'
        value = [ref.value, type(ref.value).__name__] if ref.certain else UNKNOWN
        return script, value, False, {"tainted": ref.tainted, "unordered": ref.unordered}

    def _script_attribute(self, scope: Scope, name: str) -> Script:
        """`{{ task.key }}`: certain where the key is there; a TemplateError where it is not."""
        refs = [ref for ref in self.readable(scope) if not ref.big]
        if not refs:
            return self._script_literal(scope, name)
        ref = self.pick(refs)
        self.reading(ref)
        extra = {"tainted": ref.tainted, "unordered": ref.unordered}
        if ref.certain and isinstance(ref.value, dict) and ref.value:
            key = self.pick(sorted(ref.value))
            return "return {{ " + f"{ref.name}.{key}" + " }}", ref.value[key], False, extra
        if ref.certain and isinstance(ref.value, list) and ref.value:
            return "return {{ " + f"{ref.name}[0]" + " }}", ref.value[0], False, extra
        return "return {{ " + f"{ref.name}.{self.pick(['k', 'missing'])}" + " }}", UNKNOWN, True, extra

    def _script_item(self, scope: Scope, name: str) -> Script:
        assert scope.loop is not None
        variable = scope.loop.item_variable
        forms = [
            "item = {{ " + variable + " }}\nreturn {" + '"index": {{ loop_index }}, "item": item}',
            "return {{ loop_index }} * 10",
        ]
        if not scope.loop.unordered_items or self.features.mapping_order_in_text:
            forms.append('return "{{ loop_index }}: {{ ' + variable + ' }}"')
            if scope.loop.unordered_items:
                self.flag("mapping_order_in_text")
        return self.pick(forms), UNKNOWN, False, {"unordered": scope.loop.unordered_items}

    def _script_loop_state(self, scope: Scope, name: str) -> Script:
        script = self.pick(
            [
                "return {{ loop_state }}",
                'return context.get_loop_variable("n", -1)',
                "return [{{ loop_index }}, context.get_loop_iteration()]",
            ]
        )
        return script, UNKNOWN, False, {}

    def while_step(self) -> Script:
        """The last task of a while body: its output is the next loop_state."""
        limit = self.number(0, 3)
        script = self.pick(
            [
                "n = {{ loop_index }} + 1\nreturn {" + f'"n": n, "done": n >= {limit}' + "}",
                'n = context.get_loop_variable("n", 0) + 1\nreturn {' + f'"n": n, "done": n >= {limit}' + "}",
                'return {"n": {{ loop_index }} + 1, "done": {{ loop_index }} >= ' + f"{limit}" + "}",
            ]
        )
        return script, UNKNOWN, False, {}

    def _script_flaky(self, scope: Scope, name: str) -> Script:
        """Fails its first attempts; succeeds when its retries cover them."""
        failures, retries = self.number(1, 2), self.number(0, 2)
        script = (
            f'attempt = context.update_shared_state("flaky:{name}:{{{{ run.id }}}}", lambda n: n + 1, 0)\n'
            f"if attempt <= {failures}:\n"
            '    raise ConnectionError(f"attempt {attempt}: upstream busy")\n'
            "return attempt"
        )
        fails = retries < failures
        return script, UNKNOWN if fails else failures + 1, fails, {"flaky_retries": retries}

    def _script_big(self, scope: Scope, name: str) -> Script:
        """A string of 220-280 KB, offloaded to S3 on AWS (or of 120 KB, under the 200 KB a value
        may take, offloaded only as its share of the state's budget: 26); no run holding one may
        fail, unless (23)."""
        if not self.features.big_outputs_in_failed_runs:
            if self.abort_budget < 1:
                return self._script_literal(scope, name)
            self.abort_budget = 0
        elif self.abort_budget < 1:
            self.flag("big_outputs_in_failed_runs")
        size = self.pick([110_000, 140_000, *([60_000] if self.features.state_size_limit else [])])
        if size == 60_000:
            self.flag("state_size_limit")
        pair = self.pick(["ab", "xy", "é!"])
        return f'return "{pair}" * {size}', UNKNOWN, False, {"big": True}

    def _script_read_big(self, scope: Scope, name: str) -> Script:
        ref = self.pick([ref for ref in self.readable(scope) if ref.big])
        script = self.pick(
            [
                f'text = context.get_task_output("{ref.name}")\nreturn len(text) if text else 0',
                "return {{ " + ref.name + " | length }}",
                'return "{{ ' + ref.name + '[:6] }}"',
                f'return [len(context.get_task_output("{ref.name}") or ""), len(inputs)]',
            ]
        )
        return script, UNKNOWN, "| length" in script and not ref.sure, {}

    def _script_computed(self, scope: Scope, name: str) -> Script:
        """`get_task_output(f"step_{i}")`: names the dependency scan cannot see."""
        count = 0
        names = {ref.name for ref in scope.refs}
        while f"step_{count}" in names:
            count += 1
        read = [ref for ref in scope.refs if ref.name in {f"step_{i}" for i in range(count)}]
        if not read:
            return self._script_literal(scope, name)
        if any(ref.group_child for ref in read):
            if not self.features.group_child_computed_reads:
                return self._script_literal(scope, name)
            self.flag("group_child_computed_reads")
        if any(ref.tainted for ref in read):
            if not self.features.secret_reads_downstream:
                return self._script_literal(scope, name)
            self.flag("secret_reads_downstream")
        if any(ref.maybe_undefined for ref in read):
            if not self.features.skipped_group_children_reads:
                return self._script_literal(scope, name)
            self.flag("skipped_group_children_reads")
        script = (
            f'names = [f"step_{{i}}" for i in range({count})]\n'
            "return {name: context.get_task_output(name) for name in names}"
        )
        extra: dict[str, Any] = {"depends_on": [f"step_{i}" for i in range(count)]}
        if self.features.computed_reads_without_depends_on and self.chance(50):
            self.flag("computed_reads_without_depends_on")
            extra = {}
        value = {ref.name: ref.value for ref in read} if all(ref.certain for ref in read) else UNKNOWN
        if any(ref.unordered for ref in read):
            extra["unordered"] = True
        return script, value, False, extra

    def _script_secret(self, scope: Scope, name: str) -> Script:
        script = self.pick(
            [
                'return "key=" + inputs["in_secret"]',
                'return {"auth": "Bearer {{ in_secret }}", "length": len("{{ in_secret }}")}',
                "return {{ in_secret }}",
            ]
        )
        return script, UNKNOWN, False, {"tainted": True}

    def _script_unrepresentable(self, scope: Scope, name: str) -> Script:
        self.flag("unrepresentable_placeholders")
        return "return {{ range(3) }}", UNKNOWN, True, {}

    def llm_task(self, scope: Scope) -> Built:
        return self.service_task(scope, "llm_task", "prompt", "Say hello", "About {{ %s }}")

    def search_task(self, scope: Scope) -> Built:
        return self.service_task(scope, "web_search_task", "query", "serverless", "news {{ %s }}")

    def service_task(self, scope: Scope, kind: str, key: str, plain: str, reading: str) -> Built:
        """An llm or search task; the fake servers echo, or answer 400 to HTTP_400_MARKER."""
        name = self.new_name(scope)
        refs = [ref for ref in self.readable(scope) if not ref.big]
        text = plain
        if refs and self.chance(60):
            ref = self.pick(refs)
            self.reading(ref)
            if self.as_text(ref):
                text = reading % ref.name
        refused = self.chance(20)
        if refused:
            text = f"{HTTP_400_MARKER} {text}"
            self.uses.add("http-400")
        spec: dict[str, Any] = {"name": name, "type": kind, key: text}
        if kind == "llm_task" and self.chance(30):
            spec["system"] = "Answer briefly."
        if kind == "web_search_task" and self.chance(40):
            spec["max_results"] = self.number(1, 3)
        built = self.finish(name, spec, scope, value=UNKNOWN, fails=refused, leaf=True)
        handling = built.spec.get("error_handling") or {}
        if refused and handling.get("retry_count"):
            if self.features.http_400_retries:
                self.flag("http_400_retries")
            else:
                del handling["retry_count"]
                handling.pop("retry_delay", None)
        return built

    # -- containers ---------------------------------------------------------------------
    def body_scope(self, scope: Scope, loop: Loop | None, *, group: bool = False) -> Scope:
        return Scope(
            list(scope.refs),
            loop=loop or scope.loop,
            top=False,
            in_child=scope.in_child,
            in_group=group or (scope.in_group and loop is None),
        )

    def for_loop(self, scope: Scope, depth: int) -> Built:
        name = self.new_name(scope)
        iterate_over, fails, unordered_items = self.loop_items(scope)
        spec: dict[str, Any] = {"name": name, "type": "for_loop", "iterate_over": iterate_over}
        item_variable = "item"
        free = [variable for variable in ITEM_VARIABLES if variable not in self.used_names]
        if free and self.chance(40):
            item_variable = self.pick(free)
            self.used_names.add(item_variable)
            spec["item_variable"] = item_variable
        if self.chance(40):
            spec["max_concurrency"] = self.number(1, 3)
        loop = Loop("for", item_variable, unordered_items)
        body, made = self.task_list(self.body_scope(scope, loop), self.number(1, 2), depth + 1)
        spec["tasks"] = body
        inner_aborts = any(built.aborts for built in made)
        return self.finish(
            name,
            spec,
            scope,
            value=UNKNOWN,
            fails=fails,
            leaf=False,
            inner_aborts=inner_aborts,
            unordered=True,  # [{task: output}]: the tasks' order differs (25)
        )

    def loop_items(self, scope: Scope) -> tuple[Any, bool, bool]:
        """`iterate_over`, whether it may not give a list (InvalidLoopItems), and whether its
        items may hold unordered mappings (Ref.unordered)."""
        refs = self.readable(scope)
        kind = self.pick(["literal", "literal", "range", "input", "task", "mapping"])
        self.uses.add(f"iterate_over:{kind}")
        if kind == "input" and any(ref.name == "in_list" for ref in refs):
            return "{{ in_list }}", False, False
        outputs = [ref for ref in refs if not ref.is_input and not ref.big]
        if kind == "task" and outputs:
            ref = self.pick(outputs)
            self.reading(ref)
            whole = "{{ " + ref.name + " }}"
            if ref.certain and isinstance(ref.value, list):
                return whole, False, ref.unordered
            # a mapping's pairs, or its keys, come in its order
            if self.as_text(ref) and self.features.mapping_loops:
                if not (ref.certain and isinstance(ref.value, list)):
                    self.flag("mapping_loops")
                return whole, not (ref.certain and isinstance(ref.value, dict)), ref.unordered
            if self.as_text(ref) and ref.certain and isinstance(ref.value, dict):
                return "{{ " + ref.name + " | list }}", False, False
            sequence = f"{ref.name} if {ref.name} is sequence and {ref.name} is not mapping else []"
            return "{{ " + sequence + " }}", False, ref.unordered
        if kind == "mapping" and self.features.mapping_loops:
            self.flag("mapping_loops")
            if any(ref.name == "in_obj" for ref in refs):
                return "{{ in_obj }}", False, False
            return "{{ {'a': 1, 'b': [2]} }}", False, False
        if kind == "range":
            return "{{ range(" + str(self.number(0, 3)) + ") | list }}", False, False
        items: list[Any] = self.draw(
            st.lists(st.one_of(st.integers(0, 9), st.sampled_from(["a", "b"])), max_size=3)
        )
        if self.chance(30):
            items = [{"k": index, "v": str(item)} for index, item in enumerate(items)]
        return items, False, False

    def while_loop(self, scope: Scope, depth: int) -> Built:
        name = self.new_name(scope)
        limit = str(self.number(0, 3))
        condition = self.pick(
            [
                "{{ loop_index < " + limit + " }}",
                "not loop_state.done",
                "loop_state.n | default(0) < " + limit,
                True,
            ]
        )
        spec: dict[str, Any] = {
            "name": name,
            "type": "while_loop",
            "condition": condition,
            "max_iterations": self.number(1, 3),
        }
        inner = self.body_scope(scope, Loop("while"))
        made: list[Built] = []
        body: list[dict[str, Any]] = []
        if self.tasks_left >= 2 and self.chance(50):
            body, made = self.task_list(inner, 1, depth + 1)
        self.tasks_left -= 1
        last = self.python_task(inner, last_in_while=True)
        spec["tasks"] = [*body, last.spec]
        inner_aborts = any(built.aborts for built in [*made, last])
        return self.finish(
            name,
            spec,
            scope,
            value=UNKNOWN,
            fails=False,
            leaf=False,
            inner_aborts=inner_aborts,
            may_have_condition=False,
            unordered=True,
        )

    def parallel_group(self, scope: Scope, depth: int) -> Built:
        name = self.new_name(scope, group=True)
        spec: dict[str, Any] = {"name": name, "type": "parallel_group"}
        if self.chance(40):
            spec["max_concurrency"] = self.number(1, 2)
        inner = self.body_scope(scope, None, group=True)
        children: list[Built] = []
        for _ in range(self.number(1, 3)):
            if self.tasks_left <= 0 and children:
                break
            step = self.next_step_name() if self.chance(35) else None
            if step is not None:
                self.tasks_left -= 1
                made = [self.python_task(inner, name=step)]
            else:
                made = self.task(inner, depth + 1, group_child=True)
            for child in made:
                children.append(child)
                inner.refs = inner.refs + child.refs
        spec["tasks"] = [child.spec for child in children]
        inner_aborts = any(child.aborts for child in children)
        built = self.finish(
            name,
            spec,
            scope,
            value=UNKNOWN,
            fails=False,
            leaf=False,
            inner_aborts=inner_aborts,
            unordered=True,
        )
        if inner_aborts:
            # a child may fail the group: its siblings may have finished, been cancelled or not
            # started, on either engine; nothing reads them (their values are a race too)
            self.racy |= {child.refs[0].name for child in children if not child.aborts}
            return built
        # children are tasks in the outer list too; certain when the group surely runs whole
        surely = "condition" not in built.spec
        for child in children:  # (a child group's own children are not: only in the child's list)
            ref = child.refs[0]
            built.refs.append(
                Ref(
                    ref.name,
                    ref.value if surely else UNKNOWN,
                    tainted=ref.tainted,
                    big=ref.big,
                    group_child=True,
                    maybe_undefined=not surely,
                    sure=ref.sure and surely,
                    unordered=ref.unordered,
                )
            )
        return built

    def dynamic_group(self, scope: Scope) -> list[Built]:
        """A dynamic_task_group, with the planner task whose output is its specs (or inline specs)."""
        parallel = self.chance(40)
        name = self.new_name(scope)
        spec: dict[str, Any] = {"name": name, "type": "dynamic_task_group"}
        if parallel:
            spec["parallel"] = True
            if self.chance(50):
                spec["max_concurrency"] = self.number(1, 2)
        made: list[Built] = []
        inline = self.tasks_left < 2 or self.chance(30)
        specs, fails = self.generated_specs(
            sequential=not parallel, room=self.tasks_left - (0 if inline else 1)
        )
        if inline:
            self.uses.add("dynamic:inline")
            spec["tasks"] = specs
        else:
            self.tasks_left -= 1
            planner_name = self.new_name(scope)
            planner = Built(
                {"name": planner_name, "type": "python_task", "script": f"return {specs!r}"},
                [Ref(planner_name, specs, sure=True)],
            )
            made.append(planner)
            spec["tasks"] = "{{ " + planner_name + " }}"
            scope = Scope(scope.refs + planner.refs, scope.loop, scope.top, scope.in_child, scope.in_group)
        self.tasks_left -= len(specs)
        made.append(self.finish(name, spec, scope, value=UNKNOWN, fails=fails, leaf=False))
        return made

    def generated_specs(self, *, sequential: bool, room: int) -> tuple[list[dict[str, Any]], bool]:
        """Specs of generated python tasks, and whether one may fail the group."""
        specs: list[dict[str, Any]] = []
        fails = False
        names: list[str] = []
        for index in range(max(1, min(self.number(1, 3), room))):
            generated: dict[str, Any] = {"type": "python_task"}
            name = f"task_{index}"
            if self.chance(30):
                name = f"gen_{index}"
                generated["name"] = name
            form = self.pick(["literal", "literal", "previous", "raise"])
            if form == "previous" and sequential and names:
                generated["script"] = (
                    f"value = context.get_task_output('{self.pick(names)}')\n"
                    "return (value if type(value) is int else 0) + 1"
                )
            elif form == "raise" and (
                self.features.generated_task_policies or self.default_on_failure == "abort_pipeline"
            ):
                generated["script"] = "raise ValueError('generated task failed')"
                if self.features.generated_task_policies:
                    self.flag("generated_task_policies")
                    generated["error_handling"] = {
                        "on_failure": self.pick(["skip", "continue_with_degraded_service"]),
                        "fallback_value": self.number(0, 9),
                    }
                else:
                    fails = True
            else:
                generated["script"] = f"return {self.number(0, 9)} * 10"
            names.append(name)
            specs.append(generated)
        return specs, fails

    def pipeline_group(self, scope: Scope) -> Built:
        name = self.new_name(scope)
        spec: dict[str, Any] = {"name": name, "type": "pipeline_group"}
        if self.chance(50):
            spec["mode"] = self.pick(["parallel", "sequential"])
        entries: list[dict[str, Any]] = []
        aborts = False
        for _ in range(self.number(1, 2)):
            if self.tasks_left <= 0 and entries:
                break
            child_id, child_aborts = self.child_pipeline()
            aborts = aborts or child_aborts
            entry: dict[str, Any] = {"pipeline": f"{child_id}.yaml"}
            numbers = [ref for ref in self.readable(scope) if ref.certain and type(ref.value) is int]
            choice = self.pick(["default", "literal", "template"])
            if choice == "literal":
                entry["inputs"] = {"value": self.number(0, 9)}
            elif choice == "template" and numbers:
                entry["inputs"] = {"value": "{{ " + self.pick(numbers).name + " }}"}
            entries.append(entry)
        spec["pipelines"] = entries
        return self.finish(
            name, spec, scope, value=UNKNOWN, fails=False, leaf=False, inner_aborts=aborts, unordered=True
        )

    def child_pipeline(self) -> tuple[str, bool]:
        """A child pipeline file of 1-2 python tasks; whether it may fail (abort)."""
        child_id = f"{PIPELINE_ID}_child_{len(self.children)}"
        if self.features.digit_child_ids and self.chance(30):
            self.flag("digit_child_ids")
            child_id = f"{len(self.children)}_{PIPELINE_ID}_child"
        saved = self.used_names, self.default_on_failure
        self.used_names, self.default_on_failure = {"value"}, "abort_pipeline"
        scope = Scope([Ref("value", is_input=True)], top=True, in_child=True)
        specs: list[dict[str, Any]] = []
        made: list[Built] = []
        for _ in range(self.number(1, 2)):
            if self.tasks_left <= 0 and specs:
                break
            self.tasks_left -= 1
            built = self.python_task(scope)
            specs.append(built.spec)
            made.append(built)
            scope.refs = scope.refs + built.refs
        self.used_names, self.default_on_failure = saved
        self.children[child_id] = {
            "name": f"child {len(self.children)}",
            "input_variables": {"value": {"type": "integer", "default": self.number(0, 5)}},
            "tasks": specs,
        }
        return child_id, any(built.aborts for built in made)

    def outputs(self, scope: Scope) -> dict[str, Any] | None:
        refs = self.readable(scope)
        if not refs or not self.chance(40):
            return None
        self.uses.add("outputs")
        section: dict[str, Any] = {}
        for index in range(self.number(1, 3)):
            ref = self.pick(refs)
            self.reading(ref)
            forms: list[Any] = [
                "{{ " + ref.name + " }}",
                "{{ " + ref.name + " | tojson }}",
                "value: {{ " + ref.name + " }}",
                {"nested": "{{ " + ref.name + " }}", "fixed": 3},
                7,
            ]
            if ref.big and self.features.big_rendered_values:
                self.flag("big_rendered_values")
            elif ref.big:
                forms = [7, 7, 7, 7, 7]
            elif not self.as_text(ref):  # as a value, not as text
                forms = [forms[0], forms[0], forms[3], forms[3], 7]
            sized = (ref.certain and isinstance(ref.value, list | dict | str)) or (ref.big and ref.sure)
            if sized or self.features.outputs_render_errors:
                forms.append("{{ " + ref.name + " | length }}")
            value = self.pick(forms)
            if len(forms) == 6 and value == forms[-1] and not sized:
                self.flag("outputs_render_errors")
            section[f"out_{index}"] = value
        return section


@st.composite
def pipelines(draw: Draw, features: Features | None = None) -> GeneratedPipeline:
    """A valid, deterministic pipeline of at most MAX_TASKS tasks (see the module's docstring)."""
    builder = _Builder(draw, features or Features())
    document: dict[str, Any] = {"name": "fuzzed pipeline"}
    declared, given, input_refs = builder.input_variables()
    if declared:
        document["input_variables"] = declared
    if "in_secret" in declared and "sensitive" not in declared["in_secret"]:
        document["security"] = {"sensitive_variables": ["in_secret"]}
    if builder.chance(30):
        builder.default_on_failure = builder.pick(
            ["skip", "continue_with_degraded_service", "abort_pipeline"]
        )
        handling: dict[str, Any] = {"retry_delay": 0, "on_failure": builder.default_on_failure}
        if builder.chance(20):
            handling["retry_backoff"] = builder.pick(["fixed", "exponential", 1.5])
        document["error_handling"] = handling
        builder.uses.add("pipeline-error_handling")
    scope = Scope(input_refs)
    tasks: list[dict[str, Any]] = []
    while builder.tasks_left > 0 and (not tasks or builder.chance(75)):
        for built in builder.task(scope, 0):
            tasks.append(built.spec)
            scope.refs = scope.refs + built.refs
    document["tasks"] = tasks
    outputs = builder.outputs(scope)
    if outputs is not None:
        document["outputs"] = outputs
    return GeneratedPipeline(
        document=document,
        children=dict(builder.children),
        inputs=given,
        expected_warnings=frozenset(builder.warnings),
        uses=frozenset(builder.uses),
        flags=frozenset(builder.flags),
        racy=frozenset(builder.racy),
    )


__all__ = [
    "HTTP_400_MARKER",
    "MAX_TASKS",
    "PIPELINE_ID",
    "SECRET_PREFIX",
    "Features",
    "GeneratedPipeline",
    "count_tasks",
    "dump_yaml",
    "pipelines",
]
