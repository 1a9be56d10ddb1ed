"""bench/RESULTS.md and the README's benchmark table, from the measurements of bench/run.py.

The results may cover only some sections (`bench/run.py --only ...` with no earlier run to
complete them): a section that was not measured is rendered as such, and the README's table
is only written from results that have all it shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cloud_cost
import llm_speed
import state_size
import ui_list
from measure import Series

N = 2000
PENDING = "PENDING"
# the sections of bench/RESULTS.md, by the name `bench/run.py --only` takes, in the order they run
TITLES = {
    "overhead": "(a) Orchestration cost per task, cold start and memory, against Prefect 3",
    "scale": "(b) Scale: a `for_loop` over 10,000 and 100,000 items",
    "dag": "(c) Scheduling quality: a seeded random 200-node DAG of sleep tasks",
    "lambda": "(d) Lambda cold start",
    "compile": "(e) Compile a generated 1,000-task pipeline",
    "cloud": "(f) Cloud cost per bundled pipeline",
    "state": "(g) Execution state size on Step Functions",
    "ui": "(h) Web UI: the run list with 10,000 recorded runs",
    "llm": "(i) LLM pipelines: cold start and 1,000 concurrent LLM calls",
}
README_SECTIONS = ("overhead", "scale", "dag", "compile")


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _mb(value: float) -> str:
    return f"{value:.0f} MB"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def per_task(series: dict[tuple[str, int], Series], kind: str) -> float:
    return (series[(kind, N)].wall - series[(kind, 1)].wall) / (N - 1)


def _overhead_numbers(overhead: dict[str, Any]) -> dict[str, Any]:
    ours, theirs, engine = overhead["ours"], overhead["theirs"], overhead["engine"]
    numbers: dict[str, Any] = {}
    for kind in ("chain", "independent"):
        numbers[kind] = (per_task(ours, kind), per_task(theirs, kind))
        numbers[f"{kind}_engine"] = per_task(engine, kind)
    numbers["template"] = (ours[("template", N)].wall - ours[("chain", 1)].wall) / (N - 1)
    numbers["cold"] = (ours[("chain", 1)].wall, overhead["dedicated"].wall, theirs[("chain", 1)].wall)
    return numbers


def _overhead(results: dict[str, Any]) -> str:
    overhead = results["overhead"]
    ours, theirs, engine = overhead["ours"], overhead["theirs"], overhead["engine"]
    numbers = _overhead_numbers(overhead)
    rows: list[list[str]] = []
    for kind, label in (("chain", "2,000-task chain"), ("independent", "2,000 independent tasks")):
        mine, peer = numbers[kind]
        rows.append(
            [
                f"cost per task, {label}",
                _ms(mine),
                _ms(peer),
                f"{peer / mine:.1f}x lower",
                "≥ 30x lower",
                _met(peer / mine >= 30),
            ]
        )
    cold_ours, cold_peer, cold_ephemeral = numbers["cold"]
    rows.append(
        [
            "1-task pipeline from a cold process (Prefect: API server already running)",
            _s(cold_ours),
            _s(cold_peer),
            f"{cold_peer / cold_ours:.1f}x faster",
            "< 0.5 s",
            _met(cold_ours < 0.5),
        ]
    )
    rows.append(
        [
            "1-task, Prefect default (PREFECT_API_URL unset: temporary API server per process)",
            _s(cold_ours),
            _s(cold_ephemeral),
            f"{cold_ephemeral / cold_ours:.1f}x faster",
            "< 0.5 s",
            _met(cold_ours < 0.5),
        ]
    )
    for kind, label in (
        ("chain", "2,000-task chain"),
        ("independent", "2,000 independent tasks"),
        ("chain1", "1 task"),
    ):
        key = ("chain", 1) if kind == "chain1" else (kind, N)
        mine = ours[key].peak_rss_mb
        flow = theirs[key].own_rss_mb
        both = theirs[key].tree_rss_mb
        rows.append(
            [
                f"peak RSS, {label}: vs Prefect's flow process alone",
                _mb(mine),
                _mb(flow),
                f"{mine / flow:.2f}",
                "< 0.33",
                _met(mine / flow < 1 / 3),
            ]
        )
        rows.append(
            [
                f"peak RSS, {label}: vs Prefect's flow process + its API server",
                _mb(mine),
                _mb(both),
                f"{mine / both:.2f}",
                "< 0.33",
                _met(mine / both < 1 / 3),
            ]
        )
    main = _table(["measure", "Orchestrator", "Prefect 3", "ratio", "target", "met?"], rows)

    detail_rows = []
    for key, label in (
        (("chain", 1), "chain, 1 task"),
        (("chain", N), "chain, 2,000 tasks"),
        (("independent", 1), "independent, 1 task"),
        (("independent", N), "independent, 2,000 tasks"),
        (("template", N), "chain via `{{ t<i-1> }}` in the script, 2,000 tasks"),
    ):
        peer = theirs.get(key)
        detail_rows.append(
            [
                label,
                _s(ours[key].wall),
                _s(engine[key].wall) if key in engine else "-",
                _s(peer.wall) if peer else "-",
                _mb(ours[key].peak_rss_mb),
                _mb(peer.own_rss_mb) if peer else "-",
                _mb(peer.tree_rss_mb) if peer else "-",
            ]
        )
    details = _table(
        [
            "configuration",
            "Orchestrator CLI wall",
            "engine API wall (no YAML)",
            "Prefect wall",
            "Orchestrator peak RSS",
            "Prefect flow peak RSS",
            "Prefect flow + API server peak RSS",
        ],
        detail_rows,
    )
    extra = _table(
        ["variant (Orchestrator only)", "cost per task"],
        [
            ["chain, engine API (pipeline given as data: no YAML parsing)", _ms(numbers["chain_engine"])],
            ["independent, engine API (no YAML parsing)", _ms(numbers["independent_engine"])],
            ["chain passing the value as `{{ t<i-1> }}` in the script (CLI)", _ms(numbers["template"])],
        ],
    )
    return f"""## {TITLES["overhead"]}

Cost per task = (T_2000 - T_1) / 1999 from the medians of whole-process wall times.

{main}

Medians of the individual configurations:

{details}

{extra}
"""


def _scale(results: dict[str, Any]) -> tuple[str, dict[str, float]]:
    series: dict[int, Series] = results["scale"]["series"]
    rows = []
    for n, s in series.items():
        run = s.child_json("run")
        rows.append(
            [
                f"{n:,}",
                _s(s.wall),
                _s(run),
                f"{run / n * 1e6:.0f} µs" if n > 1 else "-",
                _mb(s.peak_rss_mb),
            ]
        )
    run_growth = series[100_000].child_json("run") / series[10_000].child_json("run")
    base = series[1].peak_rss_mb
    rss_growth = (series[100_000].peak_rss_mb - base) / max(series[10_000].peak_rss_mb - base, 0.1)
    wall_growth = series[100_000].wall / series[10_000].wall
    table = _table(["items", "process wall", "run phase", "per item", "peak RSS"], rows)
    growth = _table(
        ["growth 10k -> 100k (10x the items)", "Orchestrator", "linear", "target", "met?"],
        [
            ["run phase time", f"{run_growth:.1f}x", "10x", "≤ 12x (linear)", _met(run_growth <= 12)],
            ["process wall time", f"{wall_growth:.1f}x", "≤ 10x", "≤ 12x", _met(wall_growth <= 12)],
            [
                "peak RSS above a 1-item loop",
                f"{rss_growth:.1f}x",
                "10x",
                "≤ 12x (linear)",
                _met(rss_growth <= 12),
            ],
        ],
    )
    text = f"""## {TITLES["scale"]}

`iterate_over: "{{{{ range(N) | list }}}}"`, default `max_concurrency` (1), body: one python task
`return context.get_loop_variable("item") * 2`; a last task checks the count and the last result.
Run phase = the engine's run alone (measured inside the process); peak RSS = the whole process.

{table}

{growth}
"""
    return text, {"run_growth": run_growth, "rss_growth": rss_growth}


def _dag(results: dict[str, Any]) -> tuple[str, float]:
    dag = results["dag"]
    makespan = dag["series"].child_json("run")
    ratio = makespan / dag["critical_path"]
    table = _table(
        ["makespan (run phase)", "critical path", "ratio", "target", "met?"],
        [[_s(makespan), _s(dag["critical_path"]), f"{ratio:.3f}", "≤ 1.05", _met(ratio <= 1.05)]],
    )
    text = f"""## {TITLES["dag"]}

200 python tasks sleeping 20-80 ms (seed 7), an edge from each lower to each higher index with
probability 0.03 ({dag["edges"]} edges, {dag["depth"]} levels deep, up to {dag["width"]} tasks at once in an
ideal schedule, {dag["total_work"]:.1f} s of work in all), unbounded concurrency. The makespan is the
engine's whole run (it includes writing the run record), median of {len(dag["series"].samples)} processes.

{table}
"""
    return text, ratio


def _lambda(results: dict[str, Any]) -> str:
    info = results["lambda"]
    bare_us, _ = info["bare"]
    rows = [
        [
            "bare handler (Powertools Logger, Tracer, Metrics + boto3)",
            f"{bare_us / 1000:.0f} ms",
            "1.00",
            "-",
            "-",
        ]
    ]
    for name, value in info["handlers"].items():
        if isinstance(value, str):
            rows.append([f"`functions/{name}/app.py`", f"import failed: {value}", "-", "≤ 1.5x", "**no**"])
            continue
        us, _ = value
        rows.append(
            [
                f"`functions/{name}/app.py`",
                f"{us / 1000:.0f} ms",
                f"{us / bare_us:.2f}x",
                "≤ 1.5x",
                _met(us / bare_us <= 1.5),
            ]
        )
    if not info["handlers"]:
        rows.append([f"`functions/*/app.py`: {PENDING}, none exists yet", "-", "-", "≤ 1.5x", "-"])
    table = _table(["handler", "import time", "vs bare", "target", "met?"], rows)
    layer = info["layer"]
    if "error" in layer:
        layer_text = f"Layer size could not be measured ({layer['source']}): {layer['error']}"
    else:
        largest = ", ".join(f"{name} {size / 2**20:.1f} MB" for name, size in layer["largest"])
        layer_text = (
            f"Runtime layer, unzipped: **{layer['total_bytes'] / 2**20:.1f} MB** "
            f"({layer['dependencies_bytes'] / 2**20:.1f} MB of dependencies from {layer['source']}, "
            f"installed with `pip install --target` for Lambda arm64 / Python 3.12, plus "
            f"{layer['package_bytes'] / 2**20:.2f} MB for the `orchestrator` package). Largest: {largest}. "
            "Lambda allows 250 MB unzipped for a function and its layers."
        )
    return f"""## {TITLES["lambda"]}

`python -X importtime -c "import app"` in each handler's folder, `shared/` on `PYTHONPATH`,
`POWERTOOLS_SERVICE_NAME`/`POWERTOOLS_METRICS_NAMESPACE` set; the cumulative import time of
`app`, median of {max(results["meta"]["reps"], 5)} processes.

{table}

{layer_text}
"""


def _compile(results: dict[str, Any]) -> tuple[str, float]:
    series: Series = results["compile"]["series"]
    whole = series.child_json("compile_file")
    only = series.child_json("compile_pipeline")
    table = _table(
        ["measure", "Orchestrator", "target", "met?"],
        [
            [
                "`compile_file` (read + validate + plan + ASL), 1,000 tasks",
                _s(whole),
                "< 1 s",
                _met(whole < 1),
            ],
            ["`compile_pipeline` alone (plan -> ASL)", _s(only), "-", "-"],
            ["the whole process (imports included)", _s(series.wall), "-", "-"],
        ],
    )
    return (
        f"""## {TITLES["compile"]}

Chained python tasks (`context.get_task_output`), every tenth with a condition ASL decides,
every tenth with retries and `on_failure: skip`; median of {len(series.samples)} fresh processes.

{table}
""",
        whole,
    )


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cloud_row(label: str, status: str, run: dict[str, Any]) -> list[str]:
    """One pipeline's run, or the totals of all (`cloud_cost.totals`): counts against the fewest."""
    return [
        label,
        status,
        str(run["transitions"]),
        str(run["leaf_calls"]),
        _times(run["transitions_per_leaf_call"]),
        str(run["lambda_calls"]),
        str(run["leaf_calls"]),
        _times(run["overhead_ratio"]),
    ]


def _cloud(results: dict[str, Any]) -> str:
    cloud = results["cloud"]
    runs: list[dict[str, Any]] = cloud["pipelines"]
    total = cloud_cost.totals(runs)
    succeeded = sum(run["status"] == "SUCCEEDED" for run in runs)
    rows = [_cloud_row(f"`{run['pipeline']}`", run["status"].lower(), run) for run in runs]
    rows.append(_cloud_row("**all**", f"{succeeded}/{len(runs)} succeeded", total))
    table = _table(
        [
            "pipeline",
            "run",
            "state transitions",
            "fewest possible",
            "transitions ÷ fewest",
            "Lambda calls",
            "leaf calls (fewest possible)",
            "Lambda calls ÷ fewest",
        ],
        rows,
    )
    fewest = total["leaf_calls"]
    at_fewest = sum(run["lambda_calls"] == run["leaf_calls"] for run in runs)
    actions = ", ".join(f"{action} {count}" for action, count in total["dispatch_actions"].items())
    extra = f"the {total['dispatch_calls']} extra are dispatch calls ({actions})" if actions else "none extra"
    failed = [f"`{run['pipeline']}`" for run in runs if run["status"] != "SUCCEEDED"]
    failures = f" Runs that did not succeed: {', '.join(failed)}." if failed else ""
    not_measured = ", ".join(f"`{name}` ({why})" for name, why in cloud_cost.SKIP.items())
    summary = (
        f"**In all: {total['transitions']} state transitions against {fewest} at the fewest possible "
        f"({_times(total['transitions_per_leaf_call'])}), {total['lambda_calls']} Lambda calls against "
        f"{fewest} ({_times(total['overhead_ratio'])}).** Of the Lambda calls, {extra}; "
        f"{at_fewest} of the {len(runs)} pipelines make no call beyond their leaf calls, and "
        f"{total['leaf_skipped_without_call']} leaf tasks were skipped by a Choice state without any call."
        + failures
    )
    return f"""## {TITLES["cloud"]}

One run of each bundled pipeline (`pipelines/*.yaml`) as its compiled state machine on the
emulated AWS (`--engine stepfunctions`), against the local fake LLM and search servers, counted
from its execution history by `bench/cloud_cost.py`, in a process of its own after the timed
sections ({cloud["seconds"]:.0f} s in all). State transitions are the states entered (what a Standard
workflow bills); Lambda calls are the scheduled Lambda tasks, retries included. The fewest possible
is one state transition and one Lambda call per leaf call (an attempt of a python, LLM or web
search task that ran) and nothing else: no orchestration can go below one call per task it runs.
Lambda calls above that are dispatch calls, for what ASL cannot evaluate (templated conditions,
`iterate_over` lists, `while_loop` steps, ...). Not measured: {not_measured}.

{table}

{summary}

The dollar figures (cost per 1,000 runs at us-east-1 list prices, next to the cost at the fewest
possible) and the dispatch calls of each pipeline by action are in [docs/cost.md](../docs/cost.md),
which `make bench` writes from the same runs.
"""


def _state(results: dict[str, Any]) -> str:
    state = results["state"]
    runs: list[dict[str, Any]] = state["runs"]
    largest = max(runs, key=lambda run: run["largest_state"])
    return f"""## {TITLES["state"]}

Step Functions fails a run whose state passes 256 KiB (`States.DataLimitExceeded`, which no
Catch handles). Values go to S3 above their share of a {largest["budget"]:,}-byte budget
(`shared/orchestrator/aws/state_budget.py`). Each workload runs once as its compiled state
machine on the emulated AWS, measured by `bench/state_size.py` from its execution history: the
largest state input or output, as JSON ({state["seconds"]:.0f} s in all).

{state_size.render(runs)}

**The largest state: {largest["largest_state"]:,} bytes, {largest["quota_ratio"]:.0%} of the quota**
(`{largest["workload"]}`).
"""


def _ui(results: dict[str, Any]) -> str:
    ui = results["ui"]
    return f"""## {TITLES["ui"]}

`orchestrator ui` on a state folder holding {ui["runs"]:,} finished runs (a real run document of
`pipelines/demo.yaml`, {ui["document_bytes"]:,} bytes, saved under new ids over 20 pipelines and
three statuses; the database is {ui["database_bytes"] / 1e6:.0f} MB), each query of the run list asked
over HTTP as the page asks (`/api/runs?...`, 50 runs a page), timed from request to last byte, 30
times after 3 untimed ones (`bench/ui_list.py`). The list reads the runs table's summary
columns in rowid order, never a document.

{ui_list.render(ui)}
"""


def _llm(results: dict[str, Any]) -> str:
    llm = results["llm"]
    httpx2_import = llm["cold"]["medians"]["httpx2"]
    return f"""## {TITLES["llm"]}

Against a local OpenAI-compatible server in a process of its own (`bench/llm_server.py`: one
asyncio loop, keep-alive connections, a fixed latency per request), measured by
`bench/llm_speed.py` ({llm["seconds"]:.0f} s in all; load average at the end
{", ".join(f"{x:.1f}" for x in llm["load"])}: on a shared machine the wall times grow with it,
the CPU times much less), through the client `llm_task` uses
(`ChatCompletionsClient`, over `httpx2`). Cold start: `python -m orchestrator run FILE --json`
of one `llm_task` (latency 0), median of {llm["reps"]} fresh processes after one warm-up. The
for_loop: 1,000 iterations of one `llm_task` at 100 ms per request, run phase measured inside
the process (`bench/child.py run`), median of {max(3, llm["reps"] // 2)} processes, against the
ideal calls x latency / max_concurrency (the target is for max_concurrency 20; 100 is for
information).

{llm_speed.render(llm)}

Where the time goes: `import httpx2` takes {httpx2_import:.2f} s of a cold process (the
`openai` package, which `llm_task` used before, took 0.5-0.9 s: it imports every API type it
has), and a request costs about 0.4 ms of CPU in the process against 1.2 ms through the
`openai` client; at max_concurrency 100 the loop is bound by that CPU and the engine's own
0.2 ms per iteration under one GIL: see `bench/OPTIMISATIONS.md`.
"""


def _only(sections: list[str]) -> str:
    """The command that measures these sections alone."""
    return f"`bench/run.py --only {' '.join(sections)}`"


def _letters(sections: list[str]) -> str:
    """The sections as words: "section (f)", "sections (b), (f)"."""
    letters = ", ".join(TITLES[name].split()[0] for name in sections)
    return f"section {letters}" if len(sections) == 1 else f"sections {letters}"


def _header(meta: dict[str, Any]) -> str:
    if meta.get("only"):
        only = meta["only"]
        sentences = [f"Written by {_only(only)} on {meta['date']}, which measured {_letters(only)} only."]
    else:
        sentences = [f"Written by `make bench` (`bench/run.py`) on {meta['date']}."]
    for run in meta.get("remeasured", []):
        sections = run["sections"]
        sentences.append(
            f"{_letters(sections).capitalize()}: measured again by {_only(sections)} on {run['date']}."
        )
    sentences.append("Do not edit by hand: the section on optimisations comes from `bench/OPTIMISATIONS.md`.")
    return " ".join(sentences)


def _not_measured(name: str) -> str:
    return f"""## {TITLES[name]}

Not measured by this run: {_only([name])} measures it.
"""


def _took(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"


def _duration(meta: dict[str, Any]) -> str:
    command = _only(meta["only"]) if meta.get("only") else "The whole `make bench`"
    again = "".join(
        f"; {_only(run['sections'])} took {_took(run['seconds'])} more" for run in meta.get("remeasured", [])
    )
    return f"- {command} took {_took(meta['seconds'])}{again}.\n"


def _prefect(results: dict[str, Any]) -> str:
    prefect = results["prefect"]
    version, spec = prefect.get("prefect_version", "?"), prefect.get("spec", "prefect>=3,<4")
    return f"""- Prefect {version} (`pip install '{spec}'` into
  `bench/.venv-prefect`; created now: {prefect.get("created_now", "?")}; the install took
  {prefect.get("install_seconds", "?")} s).
  The flows are in `bench/workloads.py`: one `@task def work(x): return x + 1`; the chain calls it
  2,000 times passing the value on, the independent flow `.submit()`s it 2,000 times on the default
  task runner (`ThreadPoolTaskRunner`) and sums the results.
  Settings for every Prefect process: `PREFECT_API_URL` unset (Prefect's default: the flow process
  starts a temporary API server subprocess, SQLite in a bench-local `PREFECT_HOME`, without its UI,
  and stops it at exit), `PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=true`, `PREFECT_UI_ENABLED=false`,
  `PREFECT_SERVER_ANALYTICS_ENABLED=false`, `PREFECT_LOGGING_TO_API_ENABLED=false`,
  `PREFECT_LOGGING_LEVEL=WARNING` (no console line per task run); results are not persisted (the
  default). The server's start-up is the same in T_1 and T_2000, so it cancels out of the cost per
  task. A long-lived server was tried for the per-task runs and dropped: after a 2,000-task run it
  keeps one core busy digesting the run's events for over a minute, which slows whatever runs next.
  The cold-start row "API server already running" uses one (`prefect server start`, started and
  warmed up before timing, idle before each run) with `PREFECT_API_URL` pointing at it: the best
  case for Prefect. Prefect's peak RSS is given for the flow process alone and for the flow
  process plus its API server (both sampled every 50 ms).
"""


def _method(results: dict[str, Any]) -> str:
    meta = results["meta"]
    prefect = _prefect(results) if "prefect" in results else ""
    return f"""## How this was measured

- Machine: {meta["cpus"]} CPUs ({meta["machine"]}), Python {meta["python"]}; load average at the end
  {", ".join(f"{x:.1f}" for x in meta["load"])} (other work may share the machine: every
  configuration is run {meta["reps"]} times, Orchestrator and Prefect interleaved, and medians are kept).
- Orchestrator: `python -m orchestrator run FILE.yaml --json` in a fresh process per run, state in
  a bench-local `ORCHESTRATOR_HOME` (SQLite, as a user gets by default). "Engine API" rows build
  the pipeline from plain data in a fresh `python` process and call the same engine
  (`bench/child.py`). Peak RSS is `ru_maxrss` of the process (`os.wait4`).
{prefect}{_duration(meta)}"""


def render(results: dict[str, Any], optimisations: str) -> str:
    """bench/RESULTS.md, from all the sections' results or some of them (and the run's meta)."""
    sections = {
        "overhead": lambda: _overhead(results),
        "scale": lambda: _scale(results)[0],
        "dag": lambda: _dag(results)[0],
        "lambda": lambda: _lambda(results),
        "compile": lambda: _compile(results)[0],
        "cloud": lambda: _cloud(results),
        "state": lambda: _state(results),
        "ui": lambda: _ui(results),
        "llm": lambda: _llm(results),
    }
    return "\n".join(
        [
            "# Benchmarks",
            "",
            _header(results["meta"]),
            "",
            *(sections[name]() if name in results else _not_measured(name) for name in TITLES),
            _method(results),
            optimisations.strip(),
            "",
        ]
    )


def readme_table(results: dict[str, Any]) -> str:
    numbers = _overhead_numbers(results["overhead"])
    overhead = results["overhead"]
    _, growth = _scale(results)
    _, ratio = _dag(results)
    _, whole = _compile(results)
    chain, chain_peer = numbers["chain"]
    independent, independent_peer = numbers["independent"]
    cold, cold_peer, _ = numbers["cold"]
    memory = overhead["ours"][("independent", N)].peak_rss_mb
    memory_peer = overhead["theirs"][("independent", N)].tree_rss_mb
    loop = results["scale"]["series"][100_000].child_json("run")
    rows = [
        ["cost per task, 2,000-task chain", _ms(chain), _ms(chain_peer), f"{chain_peer / chain:.0f}x lower"],
        [
            "cost per task, 2,000 independent tasks",
            _ms(independent),
            _ms(independent_peer),
            f"{independent_peer / independent:.0f}x lower",
        ],
        [
            "1-task pipeline, cold process (Prefect: API server already up)",
            _s(cold),
            _s(cold_peer),
            f"{cold_peer / cold:.0f}x faster",
        ],
        [
            "peak RSS, 2,000 independent tasks",
            _mb(memory),
            f"{_mb(memory_peer)} (flow + API server)",
            f"{memory / memory_peer:.2f}x",
        ],
        ["`for_loop` over 100,000 items", _s(loop), "-", f"10x items: {growth['run_growth']:.1f}x time"],
        ["200-node DAG: makespan / critical path", f"{ratio:.3f}", "-", "target ≤ 1.05"],
        ["compile a 1,000-task pipeline to ASL", _s(whole), "-", "target < 1 s"],
    ]
    table = _table(["measure", "Orchestrator", "Prefect 3", "ratio"], rows)
    return (
        "## Benchmarks\n\n"
        f"From `make bench` ({results['meta']['date']}, {results['meta']['cpus']} CPUs); the details, "
        "how they are measured and the Lambda cold-start numbers are in `bench/RESULTS.md`.\n\n"
        + table
        + "\n\n"
    )


def update_readme(readme: Path, section: str) -> None:
    """Replace the README's "## Benchmarks" section, or add it just before "## Deploying with SAM"."""
    text = readme.read_text(encoding="utf-8")
    start = text.find("## Benchmarks\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        end = len(text) if end < 0 else end + 1
        text = text[:start] + section + text[end:]
    else:
        anchor = text.find("## Deploying with SAM")
        before, after = (text.rstrip("\n") + "\n\n", "") if anchor < 0 else (text[:anchor], text[anchor:])
        text = before + section + after
    readme.write_text(text, encoding="utf-8")
