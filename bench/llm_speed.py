"""How fast LLM pipelines start and how close a concurrent `for_loop` of LLM calls comes to ideal.

Section (i) of `make bench`. Against a local OpenAI-compatible server with a fixed latency
(`bench/llm_server.py`, a process of its own), through the client `llm_task` uses
(`ChatCompletionsClient`, over `httpx2`):

- **cold start**: `python -m orchestrator run one_llm.yaml --json` (one `llm_task`, server
  latency 0) in fresh processes, median wall time; beside it `python -c pass`,
  `python -c "import httpx2"` (the client's HTTP stack), and the largest top-level imports of
  the run under `python -X importtime` (cumulative, which importtime inflates by its own cost);
- **for_loop**: 1,000 iterations of one `llm_task` at 100 ms per call with `max_concurrency` 20
  and 100, run phase measured inside the process (`bench/child.py run`), against the ideal
  calls x latency / concurrency; the targets (issue 15, fast start) are for 20, 100 is for
  information.

`make bench` runs it too (`bench/run.py --only llm` for this section alone).

    .venv/bin/python bench/llm_speed.py                   # print the tables
    .venv/bin/python bench/llm_speed.py --json llm.json   # the measurements, for bench/run.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
REPS = max(5, int(os.environ.get("BENCH_REPS", "5")))
CALLS = 1000
LATENCY = 0.1
CONCURRENCY = (20, 100)
TARGET_COLD = 0.6
TARGET_LOOP = 1.15
TARGET_CONCURRENCY = 20  # the target is for 20; 100 is measured for information

ONE_LLM = """name: "bench one llm_task"
tasks:
  - name: ask
    type: llm_task
    model: bench-model
    prompt: "Say ok"
"""


def loop_yaml(calls: int, concurrency: int) -> str:
    """A `for_loop` over `range(calls)` whose body is one `llm_task`."""
    return f"""name: "bench llm for_loop"
tasks:
  - name: loop
    type: for_loop
    iterate_over: "{{{{ range({calls}) | list }}}}"
    item_variable: item
    max_concurrency: {concurrency}
    tasks:
      - name: ask
        type: llm_task
        model: bench-model
        prompt: "Say ok to {{{{ item }}}}"
  - name: check
    type: python_task
    script: |
      results = context.get_task_output("loop")
      return {{"count": len(results), "last": results[-1]["ask"]}}
"""


@contextlib.contextmanager
def llm_server(latency: float) -> Iterator[str]:
    """`bench/llm_server.py` in a process of its own; yields its base URL."""
    server = subprocess.Popen(
        [PYTHON, str(BENCH / "llm_server.py"), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        yield server.stdout.readline().strip()
    finally:
        server.kill()
        server.wait()


def _env(home: Path, base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "OPENAI_"))}
    env.update(
        ORCHESTRATOR_HOME=str(home),
        OPENAI_BASE_URL=base_url,
        PYTHONPATH=str(ROOT / "shared"),
    )
    return env


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(
    command: list[str], env: dict[str, str], cwd: Path, cpu: list[float] | None = None
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run `command`; its wall time, and its CPU time (user + system) appended to `cpu`."""
    started, cpu_before = time.perf_counter(), _cpu_of_children()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if cpu is not None:
        cpu.append(_cpu_of_children() - cpu_before)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return seconds, done


def _top_imports(stderr: str, count: int = 8) -> list[tuple[str, float]]:
    """The largest top-level imports (cumulative µs) of `python -X importtime` output."""
    rows: list[tuple[str, float]] = []
    for match in re.finditer(r"^import time:\s*\d+ \|\s*(\d+) \| (\S.*)$", stderr, re.MULTILINE):
        if not match.group(2).startswith(" "):
            rows.append((match.group(2).strip(), float(match.group(1))))
    return sorted(rows, key=lambda row: -row[1])[:count]


def measure_cold(work: Path) -> dict[str, Any]:
    file = work / "one_llm.yaml"
    file.write_text(ONE_LLM, encoding="utf-8")
    run = [PYTHON, "-m", "orchestrator", "run", str(file), "--json"]
    walls: dict[str, list[float]] = {"run": [], "pass": [], "httpx2": []}
    cpu: list[float] = []  # of the run: steadier than its wall time on a busy machine
    with llm_server(0.0) as url:
        env = _env(work / "home", url)
        _timed(run, env, work)  # warm-up: the state database and byte-code caches
        for _ in range(REPS):
            seconds, done = _timed(run, env, work, cpu)
            if json.loads(done.stdout)["status"] != "succeeded":
                raise RuntimeError(f"the one-llm_task run failed: {done.stdout[:2000]}")
            walls["run"].append(seconds)
            walls["pass"].append(_timed([PYTHON, "-c", "pass"], env, work)[0])
            walls["httpx2"].append(_timed([PYTHON, "-c", "import httpx2"], env, work)[0])
        _, traced = _timed([PYTHON, "-X", "importtime", *run[1:]], env, work)
    medians = {name: statistics.median(values) for name, values in walls.items()}
    return {
        "medians": medians,
        "walls": walls,
        "cpu": statistics.median(cpu),
        "imports": _top_imports(traced.stderr),
    }


def measure_loops(work: Path) -> list[dict[str, Any]]:
    loops: list[dict[str, Any]] = []
    with llm_server(LATENCY) as url:
        env = _env(work / "home", url)
        for concurrency in CONCURRENCY:
            file = work / f"loop_{concurrency}.yaml"
            file.write_text(loop_yaml(CALLS, concurrency), encoding="utf-8")
            runs: list[float] = []
            walls: list[float] = []
            cpu: list[float] = []
            for _ in range(max(3, REPS // 2)):
                wall, done = _timed([PYTHON, str(BENCH / "child.py"), "run", str(file)], env, work, cpu)
                line = json.loads(done.stdout.strip().splitlines()[-1])
                if line["status"] != "succeeded" or line["result"] != {"count": CALLS, "last": "ok"}:
                    raise RuntimeError(f"for_loop at {concurrency}: {line}")
                runs.append(line["run"])
                walls.append(wall)
            ideal = CALLS * LATENCY / concurrency
            run = statistics.median(runs)
            loops.append(
                {
                    "concurrency": concurrency,
                    "ideal": ideal,
                    "run": run,
                    "wall": statistics.median(walls),
                    "ratio": run / ideal,
                    "runs": runs,
                    "cpu": statistics.median(cpu),
                }
            )
    return loops


def measure_all() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as directory:
        work = Path(directory)
        print("  (i) cold start of a one-llm_task pipeline", file=sys.stderr, flush=True)
        cold = measure_cold(work)
        print("  (i) for_loop of 1,000 LLM calls", file=sys.stderr, flush=True)
        loops = measure_loops(work)
    return {"cold": cold, "loops": loops, "reps": REPS, "load": os.getloadavg()}


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render(results: dict[str, Any]) -> str:
    """Markdown tables of the measurements."""
    cold = results["cold"]["medians"]
    lines = [
        "| measure | value | target | met? |",
        "|---|---|---|---|",
        f"| one `llm_task`, cold `orchestrator run` (local server) | {cold['run']:.2f} s "
        f"| < {TARGET_COLD} s | {_met(cold['run'] < TARGET_COLD)} |",
    ]
    for loop in results["loops"]:
        targeted = loop["concurrency"] == TARGET_CONCURRENCY
        lines.append(
            f"| for_loop of {CALLS:,} calls at {LATENCY * 1000:.0f} ms, max_concurrency "
            f"{loop['concurrency']}: run phase {loop['run']:.2f} s, ideal {loop['ideal']:.2f} s "
            f"| {loop['ratio']:.2f}x "
            + (f"| ≤ {TARGET_LOOP}x | {_met(loop['ratio'] <= TARGET_LOOP)} |" if targeted else "| - | - |")
        )
    lines += [
        "",
        "| cold process | median wall |",
        "|---|---|",
        f"| `python -c pass` | {cold['pass']:.3f} s |",
        f'| `python -c "import httpx2"` | {cold["httpx2"]:.3f} s |',
        f"| `python -m orchestrator run one_llm.yaml --json` | {cold['run']:.3f} s "
        f"(CPU {results['cold']['cpu']:.3f} s) |",
        "",
        "| largest top-level imports of the run (`-X importtime`, cumulative) | time |",
        "|---|---|",
        *(f"| `{name}` | {us / 1000:.0f} ms |" for name, us in results["cold"]["imports"]),
        "",
        "| for_loop | process wall | process CPU | run phase (median) | ideal | ratio |",
        "|---|---|---|---|---|---|",
        *(
            f"| max_concurrency {loop['concurrency']} | {loop['wall']:.2f} s | {loop['cpu']:.2f} s "
            f"| {loop['run']:.2f} s "
            f"| {loop['ideal']:.2f} s | {loop['ratio']:.2f}x |"
            for loop in results["loops"]
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write the measurements here (for bench/run.py)")
    arguments = parser.parse_args(argv)
    results = measure_all()
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
