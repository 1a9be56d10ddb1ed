"""Spec -> plan: named nodes in nested bodies, inferred dependencies, reference and cycle checks.

A body is the list of tasks of the pipeline, of a loop or of a group. Inside a body a task
depends on every sibling it names (`depends_on`, templates, condition, cache key,
`context.get_task_output("...")`); a name that no sibling defines is looked up in the
enclosing body, where it becomes a dependency of the whole container (SPEC section 5).
Children of a `parallel_group` are also visible in the group's own body, standing for the group.

A script that calls `get_task_output` with anything but a literal name (`f"chunk_{i}"`, a
variable) may read any task: such a task (`Node.computed_reads`) waits for every task before
it in its body, and a container holding one waits for every task before the container
(docs/decisions.md, "Reads by computed name"). This is decided here, once, for both engines.
"""

from __future__ import annotations

import difflib
import functools
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import Diagnostic, InputError, PipelineValidationError, TemplateError
from orchestrator.spec.input_types import coerce
from orchestrator.spec.loading import ChildSource, PipelineSource
from orchestrator.spec.models import (
    DynamicTaskGroup,
    ForLoop,
    LLMTask,
    ParallelGroup,
    Pipeline,
    PipelineGroup,
    PythonTask,
    TaskBase,
    WebSearchTask,
    WhileLoop,
)
from orchestrator.spec.scripts import (
    compiles_cleanly,
    may_have_multiline_strings,
    recording_compile_warnings,
)
from orchestrator.spec.yaml_source import Location, SourceMap
from orchestrator.template import jinja
from orchestrator.template.script import check_script_syntax, find_script_expressions

_TASK_OUTPUT_CALL = re.compile(
    r"""\bget_task_output\(\s*(?P<quote>['"])(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P=quote)(?=\s*[,)])"""
)
_STRING_NAME = re.compile(r"""[rRuU]?(?P<quote>['"])(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P=quote)""")
ALWAYS_DEFINED = frozenset({"input_hash", "run", "inputs"}) | jinja.GLOBAL_NAMES
CONTAINERS = (ForLoop, WhileLoop, ParallelGroup)
# the reference a computed-name read makes: "any task before me" (never a task or input name)
_ANY_EARLIER_TASK = "*"
# f-strings (and t-strings) are one STRING token before Python 3.12, a group of tokens after
_STRING_GROUP_STARTS = frozenset(
    getattr(tokenize, name) for name in ("FSTRING_START", "TSTRING_START") if hasattr(tokenize, name)
)
_STRING_GROUP_ENDS = frozenset(
    getattr(tokenize, name) for name in ("FSTRING_END", "TSTRING_END") if hasattr(tokenize, name)
)
_NOT_CODE = frozenset({tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT})


@dataclass
class Node:
    """One task of a body, with the siblings it waits for."""

    name: str
    task: TaskBase
    location: Location
    dependencies: set[str] = field(default_factory=set)
    body: Body | None = None
    reads: frozenset[str] = frozenset()  # every name the task's own fields read
    # its script (or its fallback's, or one in its body) calls get_task_output with a name
    # that is not a literal: it waits for every task before it in its body
    computed_reads: bool = False

    @property
    def kind(self) -> str:
        return str(getattr(self.task, "type", "task"))


@dataclass
class Body:
    """Tasks that are scheduled together, in file order."""

    nodes: dict[str, Node]
    exposed: dict[str, str]  # visible name -> node in this body (group children -> the group)

    def order(self) -> list[str]:
        return list(self.nodes)


@dataclass
class Plan:
    """A validated pipeline, ready for an engine or the compiler."""

    source: PipelineSource
    body: Body
    warnings: list[Diagnostic]
    # names the templates read that are neither declared inputs nor tasks: inputs to give with -i
    undeclared_inputs: frozenset[str] = frozenset()

    @property
    def pipeline(self) -> Any:
        return self.source.pipeline

    @property
    def pipeline_id(self) -> str:
        return self.source.pipeline_id

    @property
    def path(self) -> Path:
        return self.source.path


@dataclass
class _Reference:
    name: str
    location: Location
    hard: bool  # depends_on / get_task_output: must name a task


@dataclass
class _Analysis:
    source: SourceMap
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)

    def error(self, location: Location, message: str) -> None:
        self.errors.append(self.source.diagnostic(location, message))

    def warn(self, location: Location, message: str) -> None:
        self.warnings.append(self.source.diagnostic(location, message, severity="warning"))


def _template_references(
    value: Any, location: Location, analysis: _Analysis, *, expression: bool = False
) -> list[_Reference]:
    if isinstance(value, dict):
        return [
            reference
            for key, item in value.items()
            for reference in _template_references(item, (*location, key), analysis)
        ]
    if isinstance(value, list):
        return [
            reference
            for index, item in enumerate(value)
            for reference in _template_references(item, (*location, index), analysis)
        ]
    if not isinstance(value, str) or not (expression or jinja.is_template(value)):
        return []
    source = jinja.condition_expression(value) if expression else value
    try:
        names = jinja.referenced_names(source, expression=expression)
    except TemplateError as error:
        analysis.error(location, str(error))
        return []
    return [_Reference(name, location, hard=False) for name in sorted(names)]


_PLAIN_SCRIPT = re.compile(r"[\x20-\x7e\n]*")


def _plainly_valid(script: str, name: str) -> bool:
    """A quick check that `check_script_syntax` would find nothing wrong, for the common case:
    a script without placeholders, in printable ASCII without tabs or backslashes (which the
    tokenizer reads like the compiler), whose first statement starts its line. Then compiling it as the body
    of the task's function, as running it will, is the same check. False means: not known."""
    if "{{" in script or "\\" in script or not _PLAIN_SCRIPT.fullmatch(script):
        return False
    for line in script.split("\n"):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            if line[0] == " ":
                return False
            break
    return compiles_cleanly(script, f"<task {name}>")


@functools.lru_cache(maxsize=4096)
def _script_analysis(
    script: str, name: str
) -> tuple[tuple[int, int, str] | None, tuple[str, ...], tuple[str, ...], bool]:
    """What planning needs from a script's text: its syntax problem or None, its `{{ }}`
    expressions, the literal names of its `get_task_output` calls and whether it also reads a
    name it computes. (`name` is the task's: running it then reuses the code compiled here.)"""
    if not _plainly_valid(script, name):
        problem = check_script_syntax(script)
        if problem is not None:
            return problem, (), (), False
    calls, computed = _task_output_reads(script)
    return None, tuple(find_script_expressions(script)), tuple(calls), computed


def _script_references(script: str, name: str, location: Location, analysis: _Analysis) -> list[_Reference]:
    problem, expressions, calls, computed = _script_analysis(script, name)
    if problem is not None:
        line, column, message = problem
        analysis.error(location, f"python syntax error in script line {line}, column {column}: {message}")
        return []
    references: list[_Reference] = []
    for expression in expressions:
        references += _template_references(expression, location, analysis, expression=True)
    references += [_Reference(name, location, hard=True) for name in calls]
    if computed:
        references.append(_Reference(_ANY_EARLIER_TASK, location, hard=False))
    return references


_PLAIN_CALL = re.compile(
    r"""get_task_output\( *(?P<quote>['"])(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P=quote) *[,)]"""
)


def _plain_task_output_calls(script: str) -> list[str] | None:
    """What `_task_output_reads` answers, without tokenizing, when that is certain and no name
    is computed (the names; else None).

    Certain when no string can span lines and every `get_task_output` is a plain
    `get_task_output("name")` or `get_task_output("name", ...` whose line has no quote or `#`
    before it (so it is code, not inside a string or a comment) and no name character just
    before it.
    """
    if may_have_multiline_strings(script) or "\r" in script:
        return None
    names: list[str] = []
    start = script.find("get_task_output")
    while start != -1:
        line_start = script.rfind("\n", 0, start) + 1
        before = script[line_start:start]
        if '"' in before or "'" in before or "#" in before or (before and not _is_boundary(before[-1])):
            return None
        match = _PLAIN_CALL.match(script, start)
        if match is None:
            return None
        names.append(match.group("name"))
        start = script.find("get_task_output", match.end())
    return names


def _is_boundary(character: str) -> bool:
    """A character that cannot be part of a name or a number just before `get_task_output`."""
    return character.isascii() and not (character.isalnum() or character == "_")


def _task_output_calls(script: str) -> list[str]:
    """Names in `get_task_output("name")` calls written as code (not inside string literals)."""
    return _task_output_reads(script)[0]


def _task_output_reads(script: str) -> tuple[list[str], bool]:
    """The literal names a script reads with `get_task_output`, and whether it also reads a
    name it computes (see `_tokenized_task_output_reads`)."""
    plain = _plain_task_output_calls(script)
    return (plain, False) if plain is not None else _tokenized_task_output_reads(script)


def _tokenized_task_output_calls(script: str) -> list[str]:
    return _tokenized_task_output_reads(script)[0]


def _tokenized_task_output_reads(script: str) -> tuple[list[str], bool]:
    """Literal names and the computed-name flag, from the script's tokens.

    A literal name is `get_task_output` `(` a plain string literal of a name `)` or `,`. Any
    other `get_task_output` written as code (a variable, `f"chunk_{i}"`, `"a" + b`, `"%s" % x`,
    the method passed around uncalled) computes its name. An f-string whose text holds
    `get_task_output` counts as a computed read: its replacement fields are one STRING token
    before Python 3.12 and separate tokens after, so it is judged by its text on every
    version, and the answer never depends on the Python that plans.
    """
    try:
        tokens = _code_tokens(script)
    except (tokenize.TokenError, SyntaxError):
        found = [match.group("name") for match in _TASK_OUTPUT_CALL.finditer(script)]
        return found, script.count("get_task_output") > len(found)
    names: list[str] = []
    computed = False
    for index, token in enumerate(tokens):
        if token.type == tokenize.STRING:
            if _is_interpolated(token.string) and "get_task_output" in token.string:
                computed = True
            continue
        if token.type != tokenize.NAME or token.string != "get_task_output":
            continue
        name = _literal_argument(tokens[index + 1 : index + 4])
        if name is None:
            computed = True
        else:
            names.append(name)
    return names, computed


def _literal_argument(tokens: list[tokenize.TokenInfo]) -> str | None:
    """The name in `( "name" )` or `( "name" ,`: the tokens after `get_task_output`; else None."""
    if len(tokens) < 3 or tokens[0].string != "(" or tokens[1].type != tokenize.STRING:
        return None
    if tokens[2].string not in {")", ","}:
        return None
    match = _STRING_NAME.fullmatch(tokens[1].string)
    return match.group("name") if match else None


def _is_interpolated(literal: str) -> bool:
    """Whether a string token is an f-string (or t-string): its prefix has an f or a t."""
    for position, character in enumerate(literal):
        if character in "'\"":
            return any(letter in literal[:position] for letter in "fFtT")
    return False


def _code_tokens(script: str) -> list[tokenize.TokenInfo]:
    """The script's tokens without line breaks and comments; from Python 3.12 on, an f-string's
    tokens are folded into one STRING token holding its text, as earlier Pythons give it."""
    lines = script.split("\n")
    tokens: list[tokenize.TokenInfo] = []
    depth = 0
    start = (0, 0)
    for token in tokenize.generate_tokens(io.StringIO(script).readline):
        if token.type in _STRING_GROUP_STARTS:
            if depth == 0:
                start = token.start
            depth += 1
        elif token.type in _STRING_GROUP_ENDS:
            depth -= 1
            if depth == 0:
                text = _source_text(lines, start, token.end)
                tokens.append(token._replace(type=tokenize.STRING, string=text, start=start))
        elif depth == 0 and token.type not in _NOT_CODE:
            tokens.append(token)
    return tokens


def _source_text(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    """The script's text from one token position (1-based row, column) to another."""
    (first_row, first_column), (last_row, last_column) = start, end
    if first_row == last_row:
        return lines[first_row - 1][first_column:last_column]
    middle = lines[first_row : last_row - 1]
    return "\n".join([lines[first_row - 1][first_column:], *middle, lines[last_row - 1][:last_column]])


def _own_references(
    task: TaskBase, location: Location, analysis: _Analysis, name: str = ""
) -> list[_Reference]:
    """What a task reads, not counting the tasks nested in it (`name`: the node it runs as)."""
    references = [
        _Reference(name, (*location, "depends_on", index), hard=True)
        for index, name in enumerate(task.depends_on)
    ]
    if task.condition is not None and not isinstance(task, WhileLoop):
        references += _template_references(
            task.condition, (*location, "condition"), analysis, expression=True
        )
    if task.cache_key is not None:
        references += _template_references(task.cache_key, (*location, "cache_key"), analysis)
    handling = task.error_handling
    if handling is not None:
        references += _template_references(
            handling.fallback_value, (*location, "error_handling", "fallback_value"), analysis
        )
        if handling.fallback is not None:
            references += _own_references(
                handling.fallback, (*location, "error_handling", "fallback"), analysis, name
            )
    if isinstance(task, PythonTask):
        references += _script_references(task.script, name, (*location, "script"), analysis)
    elif isinstance(task, LLMTask):
        for key in ("prompt", "system", "model"):
            references += _template_references(getattr(task, key), (*location, key), analysis)
    elif isinstance(task, WebSearchTask):
        references += _template_references(task.query, (*location, "query"), analysis)
    elif isinstance(task, ForLoop):
        references += _template_references(task.iterate_over, (*location, "iterate_over"), analysis)
    elif isinstance(task, DynamicTaskGroup) and isinstance(task.tasks, str):
        references += _template_references(task.tasks, (*location, "tasks"), analysis)
    elif isinstance(task, PipelineGroup):
        for index, child in enumerate(task.pipelines):
            references += _template_references(
                child.inputs, (*location, "pipelines", index, "inputs"), analysis
            )
    return references


def _loop_names(task: TaskBase) -> set[str]:
    if isinstance(task, ForLoop):
        return {task.item_variable, "loop_index"}
    if isinstance(task, WhileLoop):
        return {"loop_state", "loop_index"}
    return set()


def find_cycle(body: Body) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dependency in sorted(body.nodes[name].dependencies):
            if state.get(dependency) == 1:
                return [*stack[stack.index(dependency) :], dependency]
            if dependency not in state and (cycle := visit(dependency)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in body.nodes:
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def analyse_body(
    tasks: list[Any], location: Location, analysis: _Analysis, *, default_names: bool = False
) -> tuple[Body, list[_Reference]]:
    """Build a body; return it and the references it could not resolve itself."""
    nodes: dict[str, Node] = {}
    exposed: dict[str, str] = {}
    for index, task in enumerate(tasks):
        task_location = (*location, index)
        name = task.name or (f"task_{index}" if default_names else None)
        if name is None:
            analysis.error(task_location, "task needs a 'name'")
            continue
        if name in exposed:
            analysis.error((*task_location, "name"), f"duplicate task name '{name}' in this scope")
            continue
        nodes[name] = Node(name, task, task_location)
        exposed[name] = name
        if isinstance(task, ParallelGroup):
            for child in task.tasks:
                if child.name and child.name not in exposed:
                    exposed[child.name] = name
    unresolved: list[_Reference] = []
    for node in nodes.values():
        references = _own_references(node.task, node.location, analysis, node.name)
        node.reads = frozenset(reference.name for reference in references) - {_ANY_EARLIER_TASK}
        if isinstance(node.task, CONTAINERS):
            inner_body, inner = analyse_body(node.task.tasks, (*node.location, "tasks"), analysis)
            node.body = inner_body
            local = _loop_names(node.task)
            if isinstance(node.task, WhileLoop):
                inner += [
                    r
                    for r in _template_references(
                        node.task.condition,
                        (*node.location, "condition"),
                        analysis,
                        expression=True,
                    )
                    if r.name not in inner_body.exposed
                ]
            references += [r for r in inner if r.name not in local]
        _resolve(node, references, exposed, unresolved, analysis)
    if any(node.computed_reads for node in nodes.values()):
        _wait_for_earlier_tasks(nodes)
    body = Body(nodes, exposed)
    cycle = find_cycle(body)
    if cycle:
        first = body.nodes[cycle[0]]
        analysis.error(first.location, "dependency cycle: " + " -> ".join(cycle))
    return body, unresolved


def _resolve(
    node: Node,
    references: list[_Reference],
    exposed: dict[str, str],
    unresolved: list[_Reference],
    analysis: _Analysis,
) -> None:
    """Turn a node's references into dependencies on its siblings; keep the others for the
    enclosing body. A computed-name read marks the node and is passed on once."""
    for reference in references:
        if reference.name == _ANY_EARLIER_TASK:
            if not node.computed_reads:
                node.computed_reads = True
                unresolved.append(reference)
            continue
        target = exposed.get(reference.name)
        if target is None:
            unresolved.append(reference)
        elif target == node.name:
            if reference.name == node.name:
                analysis.error(reference.location, f"task '{node.name}' refers to itself")
        else:
            node.dependencies.add(target)


def _wait_for_earlier_tasks(nodes: dict[str, Node]) -> None:
    """Make each task that reads by computed name wait for every task before it in the body.

    Except a task that itself waits for it (through a `depends_on` naming a later task): that
    one cannot have started, on either engine, so the reader would only make a cycle. Only the
    edges that matter are added: a task another added one already waits for is left out (it
    is finished all the same), so graphs stay readable.
    """
    names = list(nodes)
    position = {name: index for index, name in enumerate(names)}
    # without an edge to a later task, nothing before a task can wait for it
    forward = any(
        position[dependency] > position[node.name]
        for node in nodes.values()
        for dependency in node.dependencies
    )
    for index, name in enumerate(names):
        reader = nodes[name]
        if not reader.computed_reads or index == 0:
            continue
        waiting = _waiting_for(nodes, name) if forward else set()
        covered: set[str] = set()
        for earlier in reversed(names[:index]):
            if earlier in covered or earlier in waiting:
                continue
            reader.dependencies.add(earlier)
            _add_closure(nodes, earlier, covered)


def _waiting_for(nodes: dict[str, Node], name: str) -> set[str]:
    """Every task of the body that waits for `name`, directly or through others."""
    dependents: dict[str, list[str]] = {other: [] for other in nodes}
    for node in nodes.values():
        for dependency in node.dependencies:
            dependents[dependency].append(node.name)
    found: set[str] = set()
    stack = [name]
    while stack:
        for dependent in dependents[stack.pop()]:
            if dependent not in found:
                found.add(dependent)
                stack.append(dependent)
    return found


def _add_closure(nodes: dict[str, Node], name: str, found: set[str]) -> None:
    """Add `name` and everything it waits for, directly or not, to `found`."""
    stack = [name]
    while stack:
        current = stack.pop()
        if current not in found:
            found.add(current)
            stack.extend(nodes[current].dependencies)


def dependency_closure(body: Body, name: str) -> set[str]:
    """The tasks of `body` that `name` waits for, directly or through others (not `name`)."""
    found: set[str] = set()
    for dependency in body.nodes[name].dependencies:
        _add_closure(body.nodes, dependency, found)
    found.discard(name)
    return found


def build_plan(source: PipelineSource) -> Plan:
    """Check references and cycles and infer dependencies; raises `PipelineValidationError`."""
    analysis = _Analysis(source.source)
    with recording_compile_warnings():
        body, unresolved = analyse_body(source.pipeline.tasks, ("tasks",), analysis)
    known = set(source.pipeline.input_variables) | ALWAYS_DEFINED
    every_task = _every_task_name(body)
    undeclared: set[str] = set()
    strict = source.pipeline.input_validation.strict_mode
    for reference in unresolved:
        if reference.name in known or reference.name == _ANY_EARLIER_TASK:
            continue
        if reference.hard:
            close = difflib.get_close_matches(reference.name, sorted(every_task), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            where = " in this scope" if reference.name in every_task else ""
            analysis.error(reference.location, f"no task named '{reference.name}'{where}{hint}")
            continue
        undeclared.add(reference.name)
        fix = (
            "input_validation.strict_mode rejects undeclared inputs: declare it under input_variables"
            if strict
            else "it must be passed with -i at run time"
        )
        analysis.warn(reference.location, f"'{reference.name}' is not a declared input or a task; {fix}")
    _check_input_defaults(source.pipeline, analysis)
    _check_sensitive_loops(body, source.pipeline.sensitive_inputs(), analysis)
    _check_child_pipelines(body, source.path, analysis, (source.path.resolve(),), source.children)
    for name in source.pipeline.security.sensitive_variables:
        if name not in source.pipeline.input_variables:
            analysis.warn(("security", "sensitive_variables"), f"'{name}' is not a declared input")
    if analysis.errors:
        raise PipelineValidationError(
            sorted(analysis.errors, key=lambda d: (d.line, d.column)) + analysis.warnings
        )
    return Plan(source, body, _unique(analysis.warnings), frozenset(undeclared))


def _check_sensitive_loops(body: Body, sensitive: set[str], analysis: _Analysis) -> None:
    """A for_loop may not iterate a sensitive input: its items are the loop's state on AWS
    (in the clear in the execution's history) and every iteration's output would be masked."""
    if not sensitive:
        return
    for node in body.nodes.values():
        if isinstance(node.task, ForLoop) and isinstance(node.task.iterate_over, str):
            location = (*node.location, "iterate_over")
            # problems of the template itself are reported once, by the reference analysis
            scratch = _Analysis(analysis.source)
            read = {
                reference.name
                for reference in _template_references(node.task.iterate_over, location, scratch)
            }
            for name in sorted(read & sensitive):
                analysis.error(
                    location,
                    f"for_loop '{node.name}' iterates the sensitive input '{name}': loop items are "
                    "not secret on AWS (they are the loop's state); pass the items as a plain input, "
                    "or read the secret inside the loop's tasks",
                )
        if node.body is not None:
            _check_sensitive_loops(node.body, sensitive, analysis)


def _check_input_defaults(pipeline: Pipeline, analysis: _Analysis) -> None:
    """A `default` must be a value its input accepts: of its type, and one of its `options`."""
    for name, spec in pipeline.input_variables.items():
        if spec.default is None:
            continue
        location: Location = ("input_variables", name, "default")
        try:
            value = coerce(name, spec.default, spec, from_text=False)
        except InputError as error:
            analysis.error(location, f"the default of {error}; change the default or the type")
            continue
        if spec.options and value not in spec.options:
            choices = ", ".join(map(str, spec.options))
            analysis.error(location, f"the default of input '{name}' is {value!r}, not one of: {choices}")


def _check_child_pipelines(
    body: Body, path: Path, analysis: _Analysis, stack: tuple[Path, ...], children: dict[Path, ChildSource]
) -> None:
    """Child pipelines (read with the pipeline: `children`) must validate and must not include
    each other; missing ones only warn."""
    for node in body.nodes.values():
        if node.body is not None:
            _check_child_pipelines(node.body, path, analysis, stack, children)
        if not isinstance(node.task, PipelineGroup):
            continue
        for index, child in enumerate(node.task.pipelines):
            location = (*node.location, "pipelines", index, "pipeline")
            child_path = (path.parent / child.pipeline).resolve()
            if child_path in stack:
                chain = " -> ".join(p.name for p in (*stack, child_path))
                analysis.error(location, f"pipelines include each other: {chain}")
                continue
            found = children.get(child_path)
            if found is None:
                analysis.warn(location, f"'{child.pipeline}' does not exist (yet): the run will fail here")
                continue
            if isinstance(found, PipelineValidationError):
                analysis.errors.extend(found.diagnostics)
                continue
            try:
                child_analysis = _Analysis(found.source)
                child_body, _ = analyse_body(found.pipeline.tasks, ("tasks",), child_analysis)
                _check_child_pipelines(child_body, child_path, child_analysis, (*stack, child_path), children)
            except PipelineValidationError as error:
                analysis.errors.extend(error.diagnostics)
                continue
            analysis.errors.extend(child_analysis.errors)


def _every_task_name(body: Body) -> set[str]:
    names = set(body.exposed)
    for node in body.nodes.values():
        if node.body is not None:
            names |= _every_task_name(node.body)
    return names


def _unique(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen: dict[tuple[str, int, int, str], Diagnostic] = {}
    for diagnostic in diagnostics:
        seen.setdefault((diagnostic.file, diagnostic.line, diagnostic.column, diagnostic.message), diagnostic)
    return sorted(seen.values(), key=lambda d: (d.line, d.column))


def plan_tasks(tasks: list[Any], source: SourceMap) -> Body:
    """Plan generated task specs (a `dynamic_task_group`'s list) as one body."""
    analysis = _Analysis(source)
    body, _ = analyse_body(tasks, ("tasks",), analysis, default_names=True)
    if analysis.errors:
        raise PipelineValidationError(analysis.errors)
    return body
