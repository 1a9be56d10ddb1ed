"""Where moto's Step Functions reads a definition differently from AWS, put right while emulating.

- **A definite path through an array index** (`$[0].status`, `$.a[1].b`): AWS gives the one value
  it names, as it does for any path made only of names and literal indices. moto wraps it in a
  list whenever the value's parent was reached by an index (its fix for filter queries, moto
  issue 7825), so a `ResultSelector` reading a Parallel's branch results field by field would
  see `["succeeded"]` where AWS sees `"succeeded"`. Paths with filters, wildcards or slices keep
  moto's reading.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFINITE_PATH = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*")
"""A path naming one value: `$`, then `.name` and `[index]` steps only."""

_READERS = (
    "moto.stepfunctions.parser.asl.component.common.string.string_expression",
    "moto.stepfunctions.parser.asl.component.intrinsic.argument.argument",
    "moto.stepfunctions.parser.asl.eval.states",
)
"""The modules of moto that read values with `json_path.extract_json`."""


@contextmanager
def aws_json_paths() -> Iterator[None]:
    """Inside: moto reads definite paths through indices as AWS does (see the module's docstring)."""
    import importlib

    from jsonpath_ng.ext.parser import parse
    from moto.stepfunctions.parser.asl.utils import json_path

    original = json_path.extract_json

    def extract_json(path: str, data: Any) -> Any:
        if DEFINITE_PATH.fullmatch(path) and "[" in path:
            matches = parse(path).find(data)
            if len(matches) == 1:
                return matches[0].value
        return original(path, data)

    modules = [importlib.import_module(name) for name in _READERS]
    saved = [getattr(module, "extract_json") for module in modules]  # noqa: B009 (a module's global)
    for module in modules:
        setattr(module, "extract_json", extract_json)  # noqa: B010
    try:
        yield
    finally:
        for module, function in zip(modules, saved, strict=True):
            setattr(module, "extract_json", function)  # noqa: B010
