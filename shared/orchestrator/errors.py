"""The exception hierarchy: user mistakes become messages, internal bugs stay loud."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.error_types import is_retryable


class OrchestratorError(Exception):
    """Root of every error Orchestrator raises on purpose."""


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a pipeline file, located by line, column and YAML path."""

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: str = "error"

    def format(self) -> str:
        where = f" ({self.path})" if self.path else ""
        prefix = "" if self.severity == "error" else "warning: "
        return f"{self.file}:{self.line}:{self.column}: {prefix}{self.message}{where}"


class PipelineValidationError(OrchestratorError):
    """A pipeline file is not valid; carries every diagnostic found."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(d.format() for d in diagnostics))


class InputError(OrchestratorError):
    """The inputs given to a run do not match the pipeline's `input_variables`."""


class TemplateError(OrchestratorError):
    """A template failed to compile or to render (undefined name, bad syntax, sandbox)."""


class ConfigError(OrchestratorError):
    """The Orchestrator configuration (environment or config file) is wrong."""


class StateFolderError(ConfigError):
    """The state folder or a file in it cannot be used as it is (damaged, not writable, full,
    the wrong kind of entry); the message names it, what is wrong and the fix."""


class TaskError(OrchestratorError):
    """A task attempt failed. `error_type` is what run documents and Catch rules see.

    Whether a retry may help is the error type's, never the raise site's: see
    `orchestrator.error_types` (a type that is not registered, such as a script's
    `ValueError`, is retryable). `retry_after`: the seconds a provider asked to be left alone
    (its ``Retry-After``), which the task's policy waits at least before another attempt.
    """

    def __init__(self, error_type: str, message: str, *, retry_after: float | None = None) -> None:
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"{error_type}: {message}")

    @property
    def retryable(self) -> bool:
        return is_retryable(self.error_type)


class CompileError(OrchestratorError):
    """A valid pipeline uses a construct that cannot be expressed in a state machine.

    Raised with the YAML `location` of the construct; the compiler adds `diagnostic` (file,
    line and column) once it knows which file that location is in, and `str()` is then the
    located one-line message.
    """

    def __init__(self, message: str, location: tuple[str | int, ...] = ()) -> None:
        self.message = message
        self.location = location
        self.diagnostic: Diagnostic | None = None
        super().__init__(message)

    def __str__(self) -> str:
        return self.diagnostic.format() if self.diagnostic is not None else self.message


class MissingDependenciesError(OrchestratorError):
    """Some packages a pipeline needs are not installed (or not in a matching version)."""
