"""Check a pipeline's `dependencies:` before anything runs, and say how to install what is missing."""

from __future__ import annotations

import shlex

from orchestrator.errors import MissingDependenciesError


def check_dependencies(requirements: list[str]) -> None:
    """Raise `MissingDependenciesError` naming each missing package and the pip line that fixes it."""
    if not requirements:
        return
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement  # ~25 ms: only when needed

    problems: list[str] = []
    to_install: list[str] = []
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement as error:
            problems.append(f"'{text}' is not a pip requirement: {error}")
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} is not installed")
            to_install.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement.name} {installed} is installed, but the pipeline needs {text}")
            to_install.append(text)
    if problems:
        lines = ["the pipeline's dependencies are not met:", *(f"  - {p}" for p in problems)]
        if to_install:
            lines.append("install them with:")
            lines.append("  pip install " + " ".join(shlex.quote(r) for r in to_install))
        raise MissingDependenciesError("\n".join(lines))
