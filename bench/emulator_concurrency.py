"""Issue 12: do Lambda calls run side by side on `--engine stepfunctions`, as tasks do locally?

Four independent python tasks that each sleep one second, run in fresh processes on both
engines: as the four children of a parallel_group, and as four independent top-level tasks (the
compiler puts these in the branches of one Parallel state). A pipeline of one such task gives
each engine's fixed cost (starting, and on stepfunctions creating the emulated account), so
that what four tasks add to one is what running them costs: about 0 s when they run at once,
3 s or more one after another. Nothing is asserted; the numbers are printed.

    .venv/bin/python bench/emulator_concurrency.py          # BENCH_REPS runs each (default 3)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPS = max(1, int(os.environ.get("BENCH_REPS", "3")))
ENGINES = ("local", "stepfunctions")
SLEEP = 1.0


def _task(name: str, indent: str) -> str:
    script = (
        f"{indent}  script: |\n{indent}    import time\n{indent}    started = time.time()\n"
        f"{indent}    time.sleep({SLEEP})\n{indent}    return {{'start': started, 'end': time.time()}}\n"
    )
    return f"{indent}- name: {name}\n{indent}  type: python_task\n{script}"


def pipelines() -> dict[str, str]:
    """The pipelines measured, by name."""
    four = [f"t{n}" for n in range(1, 5)]
    group = "name: group\ntasks:\n  - name: group\n    type: parallel_group\n    tasks:\n"
    group += "".join(_task(name, "      ") for name in four)
    return {
        "one task": "name: one\ntasks:\n" + _task("t1", "  "),
        "four in a parallel_group": group,
        "four top-level tasks": "name: top\ntasks:\n" + "".join(_task(name, "  ") for name in four),
    }


def run_once(path: Path, engine: str, home: Path) -> tuple[float, float]:
    """Wall seconds of one `orchestrator run` in a fresh process, and the span of its tasks (the
    first start to the last end, from their outputs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["ORCHESTRATOR_HOME"] = str(home)
    command = [sys.executable, "-m", "orchestrator", "run", str(path), "--json", "--engine", engine]
    started = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd=ROOT)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"{engine} {path.name}: exit {finished.returncode}\n{finished.stderr[-2000:]}")
    outputs: dict[str, Any] = json.loads(finished.stdout)["outputs"]
    intervals = [value for output in outputs.values() for value in _intervals(output)]
    span = max(i["end"] for i in intervals) - min(i["start"] for i in intervals)
    return wall, span


def _intervals(output: Any) -> list[dict[str, float]]:
    if isinstance(output, dict) and {"start", "end"} <= set(output):
        return [output]
    if isinstance(output, dict):  # a group's output: its children's
        return [value for child in output.values() for value in _intervals(child)]
    return []


Samples = dict[tuple[str, str], list[tuple[float, float]]]


def medians(samples: Samples, name: str, engine: str) -> tuple[float, float]:
    found = samples[(name, engine)]
    return statistics.median(s[0] for s in found), statistics.median(s[1] for s in found)


def main() -> None:
    samples: Samples = {}
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as folder:
        work = Path(folder)
        files = {}
        for name, text in pipelines().items():
            files[name] = work / f"{name.replace(' ', '_')}.yaml"
            files[name].write_text(text, encoding="utf-8")
        for rep in range(REPS):
            for name, path in files.items():
                for engine in ENGINES:  # interleaved: a noisy neighbour hurts both alike
                    wall, span = run_once(path, engine, work / f"home-{engine}-{rep}")
                    samples.setdefault((name, engine), []).append((wall, span))
                    print(
                        f"  run {rep + 1}/{REPS} {engine:13} {name:26} {wall:5.2f}s (tasks {span:4.2f}s)",
                        flush=True,
                    )
    print(f"\nmedians of {REPS} runs; each task sleeps {SLEEP:g} s")
    print(f"{'pipeline':26} {'engine':13} {'wall':>7} {'tasks':>7} {'added to one task':>18}")
    for name in pipelines():
        for engine in ENGINES:
            wall, span = medians(samples, name, engine)
            added = wall - medians(samples, "one task", engine)[0]
            print(f"{name:26} {engine:13} {wall:6.2f}s {span:6.2f}s {added:+17.2f}s")
    print()
    for name in pipelines():
        if name != "one task":
            local, remote = (medians(samples, name, engine)[0] for engine in ENGINES)
            print(f"{name}: stepfunctions / local wall time = {remote / local:.2f}")


if __name__ == "__main__":
    main()
