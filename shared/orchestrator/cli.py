"""The `orchestrator` command: parse arguments, call the package, print. No rules live here."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, TextIO

from orchestrator import __version__
from orchestrator.errors import (
    CompileError,
    ConfigError,
    InputError,
    MissingDependenciesError,
    OrchestratorError,
    PipelineValidationError,
    StateFolderError,
)

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class Progress:
    """A line per top-level task on stderr, with status and duration; silent when not a terminal."""

    SYMBOLS: ClassVar[dict[str, str]] = {
        "succeeded": "✓",
        "cached": "↺",
        "fallback": "↯",
        "skipped": "–",
        "failed": "✗",
        "cancelled": "⊘",
        "not_run": "·",
    }

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self._stream = stream
        self._enabled = enabled
        self._started: dict[str, float] = {}

    def task_started(self, name: str) -> None:
        self._started[name] = time.perf_counter()
        if self._enabled:
            self._stream.write(f"  ▶ {name} running\n")
            self._stream.flush()

    def task_finished(self, name: str, outcome: Any) -> None:
        if not self._enabled:
            return
        took = time.perf_counter() - self._started.get(name, time.perf_counter())
        status = str(outcome.status.value)
        tries = f", {outcome.attempts} attempts" if outcome.attempts > 1 else ""
        self._stream.write(f"  {self.SYMBOLS.get(status, '?')} {name} {status} in {took:.2f}s{tries}\n")
        self._stream.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator", description="Run AI and data pipelines written in YAML."
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check pipeline files; exit 1 on any error")
    validate.add_argument("files", nargs="+", type=Path)

    run = commands.add_parser("run", help="run a pipeline")
    run.add_argument("file", type=Path)
    run.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an input value (parsed as a YAML scalar, then coerced to its declared type)",
    )
    run.add_argument("--inputs-file", type=Path, help="a JSON or YAML mapping of inputs")
    run.add_argument(
        "--engine",
        choices=["local", "stepfunctions"],
        default="local",
        help="local: the embedded engine; stepfunctions: the compiled state machine on emulated AWS",
    )
    run.add_argument("--json", action="store_true", help="print exactly the run document on stdout")
    run.add_argument("--no-cache", action="store_true", help="do not read cached task outputs")
    run.add_argument("--user", help="the user id recorded for this run (default: the OS user)")
    _exchange_options(run)

    resume = commands.add_parser("resume", help="finish a killed or failed run; finished tasks are kept")
    resume.add_argument("run_id")
    resume.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="inputs to give again (sensitive inputs that were not encrypted at rest)",
    )
    resume.add_argument("--inputs-file", type=Path)
    resume.add_argument("--json", action="store_true", help="print exactly the run document on stdout")
    _exchange_options(resume)

    runs = commands.add_parser("runs", help="list recorded runs, or show one")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_commands.add_parser("list", help="the most recent runs, newest first")
    runs_list.add_argument("--pipeline", help="only runs of this pipeline id")
    runs_list.add_argument("--status", help="only runs with this status (running, crashed, failed, ...)")
    runs_list.add_argument("--limit", type=int, default=20)
    runs_list.add_argument("--json", action="store_true")
    runs_show = runs_commands.add_parser("show", help="a run's document (as run --json prints it)")
    runs_show.add_argument("run_id")

    audit = commands.add_parser("audit", help="print audit entries as JSON lines")
    audit.add_argument("--pipeline", help="only entries of this pipeline id")
    audit.add_argument("--run", help="only entries of this run id")

    compile_ = commands.add_parser(
        "compile", help="print (or write) the Amazon States Language of a pipeline"
    )
    compile_.add_argument("file", type=Path)
    compile_.add_argument("-o", "--output", type=Path, help="write the definition here instead of stdout")

    build = commands.add_parser(
        "build", help="write statemachine/*.asl.json and template.yaml from pipelines/ and infra/"
    )
    build.add_argument("--root", type=Path, default=Path("."), help="the project folder (default: .)")
    build.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")

    graph = commands.add_parser("graph", help="draw the pipeline as Mermaid, DOT, or an SVG or PNG picture")
    graph.add_argument("file", type=Path)
    graph.add_argument("--format", choices=["mermaid", "dot", "svg", "png"], default="mermaid")
    graph.add_argument("-o", "--output", type=Path, help="write the drawing here instead of stdout")

    commands.add_parser("schema", help="print the JSON Schema of pipeline files")

    ui = commands.add_parser("ui", help="serve a web page of the recorded runs on 127.0.0.1")
    ui.add_argument("--port", type=int, default=8765, help="the port (default 8765; 0: a free one)")
    return parser


def _exchange_options(command: argparse.ArgumentParser) -> None:
    exchanges = command.add_mutually_exclusive_group()
    exchanges.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="write every LLM and web-search exchange of the run to FILE (JSON lines, secrets redacted)",
    )
    exchanges.add_argument(
        "--replay",
        type=Path,
        metavar="FILE",
        help="answer every LLM call and web search from FILE (made by --record), with no network",
    )


def _with_exchanges(settings: Any, arguments: argparse.Namespace) -> Any:
    """`settings` with the command's --record or --replay file, which win over the environment's."""
    if arguments.record is None and arguments.replay is None:
        return settings
    record = arguments.record.absolute() if arguments.record is not None else None
    replay = arguments.replay.absolute() if arguments.replay is not None else None
    return dataclasses.replace(settings, record_file=record, replay_file=replay)


def _load_plan(file: Path) -> Any:
    from orchestrator.plan import build_plan
    from orchestrator.spec.loading import read_pipeline

    return build_plan(read_pipeline(file))


def _print_diagnostics(error: PipelineValidationError) -> None:
    for diagnostic in error.diagnostics:
        print(diagnostic.format(), file=sys.stderr)


def _plan_or_none(file: Path) -> Any:
    """The file's plan, or None after printing its diagnostics."""
    try:
        return _load_plan(file)
    except PipelineValidationError as error:
        _print_diagnostics(error)
        return None


def _print_warnings(plan: Any) -> None:
    for warning in plan.warnings:
        print(warning.format(), file=sys.stderr)


def command_validate(arguments: argparse.Namespace) -> int:
    status = EXIT_OK
    for file in arguments.files:
        plan = _plan_or_none(file)
        if plan is None:
            status = EXIT_FAILED
            continue
        _print_warnings(plan)
        print(f"{file}: ok ({len(plan.body.nodes)} tasks)")
    return status


def _read_inputs(arguments: argparse.Namespace) -> tuple[dict[str, Any], frozenset[str]]:
    from orchestrator.runtime.inputs import parse_assignment, read_inputs_file

    given: dict[str, Any] = {}
    if arguments.inputs_file is not None:
        given.update(read_inputs_file(arguments.inputs_file))
    text_keys: set[str] = set()
    for assignment in arguments.input:
        key, value = parse_assignment(assignment)
        given[key] = value
        text_keys.add(key)
    return given, frozenset(text_keys)


def command_run(arguments: argparse.Namespace) -> int:
    from orchestrator.engine.local import RunOptions, run_plan
    from orchestrator.runtime.dependencies import check_dependencies
    from orchestrator.runtime.exchanges import opened as exchanges_opened
    from orchestrator.runtime.inputs import resolve_inputs, unused_input_warnings
    from orchestrator.settings import load_settings
    from orchestrator.stores.factory import open_stores

    plan = _plan_or_none(arguments.file)
    if plan is None:
        return EXIT_INVALID
    try:
        given, text_keys = _read_inputs(arguments)
        inputs = resolve_inputs(plan.pipeline, given, text_keys=text_keys)
    except InputError as error:
        print(f"{arguments.file}: input error: {error}", file=sys.stderr)
        return EXIT_INVALID
    for warning in unused_input_warnings(plan.pipeline, given, plan.undeclared_inputs):
        print(f"{arguments.file}: warning: {warning}", file=sys.stderr)
    check_dependencies(plan.pipeline.dependencies)
    if arguments.engine == "stepfunctions":
        from orchestrator.aws.extras import require_emulator_packages

        require_emulator_packages()
    settings = _with_exchanges(load_settings(), arguments)
    stores = open_stores(settings, plan.pipeline.state_management.storage_backend)
    progress = Progress(sys.stderr, sys.stderr.isatty() and not arguments.json)
    options = RunOptions(
        settings=settings,
        stores=stores,
        no_cache=arguments.no_cache,
        user_id=arguments.user,
        observer=progress,
    )
    _settle_long_lived_objects(arguments)
    out = _stdout_for_the_document(arguments)
    with exchanges_opened(settings):
        if arguments.engine == "stepfunctions":
            from orchestrator.aws.stepfunctions_engine import run_plan_on_stepfunctions

            try:
                document = run_plan_on_stepfunctions(plan, inputs, options)
            except CompileError as error:
                _print_compile_error(arguments.file, error)
                return EXIT_INVALID
        else:
            document = run_plan(plan, inputs, options)
    if arguments.json:
        _print_json(document, out)
    else:
        _print_summary(document, out)
    return EXIT_FAILED if document["status"] == "failed" else EXIT_OK


def command_resume(arguments: argparse.Namespace) -> int:
    from orchestrator.engine.local import RunOptions, resume_run
    from orchestrator.runtime.exchanges import opened as exchanges_opened
    from orchestrator.settings import load_settings
    from orchestrator.stores.factory import open_stores

    settings = _with_exchanges(load_settings(), arguments)
    stores = open_stores(settings)
    record = stores.runs.load(arguments.run_id)
    backend = "database"
    if record is not None:
        point = stores.runs.resume_point(arguments.run_id)
        if point is not None:
            backend = _backend_of(Path(point[0]["pipeline_path"]))
    stores = open_stores(settings, backend)
    try:
        given, text_keys = _read_inputs(arguments)
        progress = Progress(sys.stderr, sys.stderr.isatty() and not arguments.json)
        options = RunOptions(settings=settings, stores=stores, observer=progress)
        _settle_long_lived_objects(arguments)
        out = _stdout_for_the_document(arguments)
        with exchanges_opened(settings):
            document = resume_run(arguments.run_id, options, given, text_keys)
    except (InputError, PipelineValidationError) as error:
        print(f"cannot resume {arguments.run_id}: {error}", file=sys.stderr)
        return EXIT_INVALID
    if arguments.json:
        _print_json(document, out)
    else:
        _print_summary(document, out)
    return EXIT_FAILED if document["status"] == "failed" else EXIT_OK


def _print_json(value: Any, out: TextIO | None = None) -> None:
    """A JSON document on stdout (or `out`): indented for a person at a terminal, on one line for a
    program reading a pipe or a file (as `gh --json` does; `jq .` indents it). Indenting is
    done by the json module's Python encoder: about 25 µs per task of a large run document."""
    out = out or sys.stdout
    if out is None:  # the command was started with stdout closed: nowhere to print
        return
    print(json.dumps(value, indent=2 if out.isatty() else None, default=str), file=out, flush=True)


def _stdout_for_the_document(arguments: argparse.Namespace) -> TextIO:
    """Where `run` and `resume` print the run document. When this command is the whole process
    (POSIX), stdout is kept for the document alone: file descriptor 1 and `sys.stdout` go to
    stderr from here on, so a thread or a process a script started cannot write on stdout
    around the document, and what they write is redacted until the process ends, after its run
    too (`runtime.task_streams.keep_redacting`)."""
    from orchestrator.runtime.task_streams import keep_redacting

    if not arguments.owns_process or os.name != "posix" or sys.stdout is None:
        return sys.stdout
    sys.stdout.flush()
    try:
        out = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
    except OSError:  # stdout or stderr closed by the caller: nothing to keep apart
        return sys.stdout
    sys.stdout = sys.stderr
    keep_redacting()
    return out


def _settle_long_lived_objects(arguments: argparse.Namespace) -> None:
    """When this command is the whole process, hide what exists before the run (modules, the
    plan: they live until exit) from the garbage collector, and turn it back on (`main` turns
    it off while modules are imported and the pipeline is read: what they allocate lives on,
    and collections there cost ~30 ms of every start). A run makes many short-lived objects,
    and each full collection would otherwise walk all of these again (about 0.05 ms per task
    of a 2,000-task pipeline). Not done when called in-process (tests)."""
    if arguments.owns_process:
        gc.freeze()
        gc.enable()


def _backend_of(path: Path) -> str:
    try:
        return str(_load_plan(path).pipeline.state_management.storage_backend)
    except OrchestratorError:
        return "database"


def command_runs(arguments: argparse.Namespace) -> int:
    from orchestrator.settings import load_settings
    from orchestrator.stores.factory import open_stores

    settings = load_settings()
    stores = open_stores(settings, "memory")
    runs = stores.runs
    if arguments.runs_command == "show":
        from orchestrator.runtime.telemetry import live_document

        document = live_document(stores, arguments.run_id, settings.prices)
        if document is None:
            print(f"no run '{arguments.run_id}': see 'orchestrator runs list'", file=sys.stderr)
            return EXIT_FAILED
        _print_json(document)
        return EXIT_OK
    listed = runs.list(pipeline=arguments.pipeline, status=arguments.status, limit=arguments.limit)
    if arguments.json:
        _print_json(listed)
        return EXIT_OK
    for run in listed:
        started = run["started_at"][:19].replace("T", " ")
        print(f"{run['run_id']}  {started}  {run['status']:<9}  {run['pipeline']}")
    if not listed:
        print("no runs recorded yet", file=sys.stderr)
    return EXIT_OK


def command_audit(arguments: argparse.Namespace) -> int:
    from orchestrator.settings import load_settings
    from orchestrator.stores.factory import open_stores

    audit = open_stores(load_settings(), "memory").audit
    for entry in audit.query(pipeline=arguments.pipeline, run=arguments.run):
        print(json.dumps(entry, default=str))
    return EXIT_OK


def _print_summary(document: dict[str, Any], out: TextIO) -> None:
    print(f"run {document['run_id']}: {document['status']}", file=out)
    for name, record in document["tasks"].items():
        line = f"  {name}: {record['status']}"
        if record["attempts"] > 1:
            line += f" ({record['attempts']} attempts)"
        if record["error"]:
            line += f" - {record['error']['type']}: {record['error']['message']}"
        print(line, file=out)
    if document["error"]:
        error = document["error"]
        where = f"error in task '{error['task']}'" if error.get("task") else "error"
        print(f"{where}: {error['type']}: {error['message']}", file=out)
    shown = document["result"] if document["result"] is not None else document["outputs"]
    print(json.dumps(shown, indent=2, default=str), file=out, flush=True)


def _print_compile_error(file: Path, error: CompileError) -> None:
    """One located line: `FILE:LINE:COLUMN: cannot compile: ... (yaml.path)`."""
    located = error.diagnostic is not None
    print(str(error) if located else f"{file}: cannot compile: {error}", file=sys.stderr)


def command_compile(arguments: argparse.Namespace) -> int:
    from orchestrator.aws.asl import compile_pipeline

    plan = _plan_or_none(arguments.file)
    if plan is None:
        return EXIT_FAILED
    try:
        definition = compile_pipeline(plan)
    except CompileError as error:
        _print_compile_error(arguments.file, error)
        return EXIT_FAILED
    from orchestrator.aws.history import history_warnings

    for warning in history_warnings(plan):
        print(warning.format(), file=sys.stderr)
    return _write_output(arguments.output, json.dumps(definition, indent=2, sort_keys=True) + "\n")


def _write_output(output: Path | None, content: str | bytes) -> int:
    """Write CONTENT to the -o path, or to stdout without one."""
    if output is None:
        if isinstance(content, bytes):
            sys.stdout.flush()
            sys.stdout.buffer.write(content)
            sys.stdout.buffer.flush()
        else:
            print(content, end="")
        return EXIT_OK
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            output.write_bytes(content)
        else:
            output.write_text(content, encoding="utf-8")
    except OSError as error:
        reason = error.strerror or str(error)
        if isinstance(error, FileExistsError):
            reason = f"{error.filename} is a file, not a folder"
        print(f"cannot write {output}: {reason}; choose another -o path", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {output}", file=sys.stderr)
    return EXIT_OK


def command_build(arguments: argparse.Namespace) -> int:
    from orchestrator.aws.build import build_app, stale_files

    try:
        if arguments.check:
            stale = stale_files(arguments.root)
            for name in stale:
                print(f"stale: {name} (run 'orchestrator build')", file=sys.stderr)
            return EXIT_FAILED if stale else EXIT_OK
        written = build_app(arguments.root)
    except PipelineValidationError as error:
        _print_diagnostics(error)
        return EXIT_FAILED
    except CompileError as error:
        _print_compile_error(arguments.root, error)
        return EXIT_FAILED
    for path in written:
        print(path)
    return EXIT_OK


def command_graph(arguments: argparse.Namespace) -> int:
    from orchestrator.graph import to_dot, to_mermaid

    if arguments.format == "png" and arguments.output is None and sys.stdout.isatty():
        print("a PNG image is not for the terminal: write it with -o FILE.png (or pipe it)", file=sys.stderr)
        return EXIT_INVALID
    plan = _plan_or_none(arguments.file)
    if plan is None:
        return EXIT_FAILED
    content: str | bytes
    if arguments.format == "svg":
        from orchestrator.graph_svg import render_svg

        content = render_svg(plan)
    elif arguments.format == "png":
        from orchestrator.graph_png import render_png

        content = render_png(plan)
    else:
        content = to_mermaid(plan) if arguments.format == "mermaid" else to_dot(plan)
    return _write_output(arguments.output, content)


def command_schema(arguments: argparse.Namespace) -> int:
    from orchestrator.spec.schema import pipeline_json_schema

    print(json.dumps(pipeline_json_schema(), indent=2))
    return EXIT_OK


def command_ui(arguments: argparse.Namespace) -> int:
    from orchestrator.settings import load_settings
    from orchestrator.stores.factory import open_stores
    from orchestrator.ui.server import serve

    stores = open_stores(load_settings(), "memory")

    def ready(url: str) -> None:
        print(f"serving the runs of this state folder on {url} (Ctrl-C stops)", file=sys.stderr, flush=True)

    try:
        serve(stores, arguments.port, ready)
    except OSError as error:
        print(
            f"cannot serve on 127.0.0.1:{arguments.port} ({error.strerror}): choose another --port",
            file=sys.stderr,
        )
        return EXIT_INVALID
    return EXIT_OK


COMMANDS = {
    "validate": command_validate,
    "run": command_run,
    "resume": command_resume,
    "runs": command_runs,
    "audit": command_audit,
    "compile": command_compile,
    "build": command_build,
    "graph": command_graph,
    "schema": command_schema,
    "ui": command_ui,
}


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    arguments.owns_process = argv is None
    if not arguments.owns_process:
        return _command(arguments)
    from orchestrator.engine import leftovers

    gc.disable()  # until the run starts: see _settle_long_lived_objects
    leftovers.adopt_descendants()
    try:
        code = _command(arguments)
    finally:
        leftovers.end_descendants()  # what scripts started does not outlive the command
    leftovers.exit_past_threads(code)
    return code


def _command(arguments: argparse.Namespace) -> int:
    try:
        return COMMANDS[arguments.command](arguments)
    except MissingDependenciesError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except StateFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except OrchestratorError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt as interrupt:
        run_id = getattr(interrupt, "run_id", None)  # engine.local.RunInterrupted: run or resume
        if run_id is None:
            print("interrupted", file=sys.stderr)
        else:
            print(
                f"interrupted: run {run_id} stopped; resume it with: orchestrator resume {run_id}",
                file=sys.stderr,
            )
        return 130


if __name__ == "__main__":
    sys.exit(main())
