"""Runs inside a fresh process for one measurement and prints one JSON line.

child.py run FILE.yaml        load + plan + run on the embedded engine (phases timed)
child.py run-dict FILE.json   the same from plain data: no YAML parsing
child.py compile FILE.yaml    read, plan and compile (`compile_file`), and compile_pipeline alone
"""

from __future__ import annotations

import json
import resource
import sys
import time

STARTED = time.perf_counter()

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def _peak_rss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _run(path: Path, from_dict: bool) -> dict[str, Any]:
    from orchestrator.engine.local import RunOptions, run_plan
    from orchestrator.plan import build_plan
    from orchestrator.settings import load_settings
    from orchestrator.spec.loading import PipelineSource, read_pipeline
    from orchestrator.spec.models import Pipeline
    from orchestrator.spec.yaml_source import SourceMap
    from orchestrator.stores.factory import open_stores

    imported = time.perf_counter()
    if from_dict:
        data = json.loads(path.read_text(encoding="utf-8"))
        source = PipelineSource(
            Pipeline.model_validate(data), SourceMap(str(path)), path.with_suffix(".yaml")
        )
    else:
        source = read_pipeline(path)
    loaded = time.perf_counter()
    plan = build_plan(source)
    planned = time.perf_counter()
    settings = load_settings()
    options = RunOptions(settings=settings, stores=open_stores(settings, "database"))
    document = run_plan(plan, {}, options)
    ran = time.perf_counter()
    return {
        "status": document["status"],
        "result": document["outputs"].get("check"),
        "imports": imported - STARTED,
        "load": loaded - imported,
        "plan": planned - loaded,
        "run": ran - planned,
        "total": ran - STARTED,
        "peak_rss_kb": _peak_rss_kb(),
    }


def _compile(path: Path) -> dict[str, Any]:
    from orchestrator.aws.asl import compile_pipeline
    from orchestrator.plan import build_plan
    from orchestrator.spec.loading import read_pipeline

    imported = time.perf_counter()
    definition = compile_pipeline(build_plan(read_pipeline(path)))
    compiled = time.perf_counter()
    plan = build_plan(read_pipeline(path))
    again = time.perf_counter()
    compile_pipeline(plan)
    only = time.perf_counter() - again
    return {
        "imports": imported - STARTED,
        "compile_file": compiled - imported,
        "compile_pipeline": only,
        "definition_bytes": len(json.dumps(definition)),
        "total": compiled - STARTED,
        "peak_rss_kb": _peak_rss_kb(),
    }


def main() -> None:
    command, file = sys.argv[1], Path(sys.argv[2])
    if command == "run":
        result = _run(file, from_dict=False)
    elif command == "run-dict":
        result = _run(file, from_dict=True)
    elif command == "compile":
        result = _compile(file)
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
