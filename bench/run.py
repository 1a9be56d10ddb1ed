"""`make bench`: measure Orchestrator against Prefect 3 and its own targets; write bench/RESULTS.md.

Every number comes from fresh processes, run several times (BENCH_REPS, default 3) and
reduced to medians; Orchestrator and Prefect runs are interleaved so that a noisy neighbour
hurts both alike. The cloud cost (f), the execution state size (g), the UI's run list (h) and the
LLM pipelines (i) come last, each in a process of its own. See bench/RESULTS.md for what is measured and how.

    .venv/bin/python bench/run.py                    # every section (what `make bench` runs)
    .venv/bin/python bench/run.py --only cloud       # measure (f) again, keep the other sections
    .venv/bin/python bench/run.py --only cloud --output /tmp/RESULTS.md
    .venv/bin/python bench/run.py --report-only      # render again from the last measurements

The measurements are kept in bench/.work/results.pickle; `--only` measures the sections it
names and takes the others from there (a section with no measurement says so in the report).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import cloud_cost  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
import workloads  # noqa: E402
from measure import Series, log, run_process  # noqa: E402

REPS = max(3, int(os.environ.get("BENCH_REPS", "3")))
N = 2000
WORK = BENCH / ".work"
SAVED = WORK / "results.pickle"
RESULTS = BENCH / "RESULTS.md"
SECTIONS = tuple(report.TITLES)
PREFECT_VENV = BENCH / ".venv-prefect"
PYTHON = sys.executable


def orchestrator_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["ORCHESTRATOR_HOME"] = str(home)
    env["PYTHONDONTWRITEBYTECODE"] = "0"
    return env


def cli_run(file: Path) -> list[str]:
    return [PYTHON, "-m", "orchestrator", "run", str(file), "--json"]


def check_document(sample: measure.Sample, expect: Any = None) -> None:
    document = json.loads(sample.stdout)
    if document["status"] != "succeeded":
        raise RuntimeError(f"run failed: {json.dumps(document)[:2000]}")
    if expect is not None:
        outputs = document["outputs"]
        assert expect(outputs), "unexpected outputs"


# (a) orchestration cost, cold start and memory against Prefect ------------------------------


def section_overhead() -> dict[str, Any]:
    """Per-task cost and memory: Orchestrator and Prefect (its default, ephemeral API server)."""
    work = WORK / "overhead"
    work.mkdir(parents=True, exist_ok=True)
    env = orchestrator_env(work / "orchestrator-home")
    files = {
        ("chain", N): workloads.write(work / "chain_2000.yaml", workloads.chain_yaml(N)),
        ("chain", 1): workloads.write(work / "chain_1.yaml", workloads.chain_yaml(1)),
        ("independent", N): workloads.write(work / "independent_2000.yaml", workloads.independent_yaml(N)),
        ("independent", 1): workloads.write(work / "independent_1.yaml", workloads.independent_yaml(1)),
        ("template", N): workloads.write(work / "template_2000.yaml", workloads.chain_yaml(N, template=True)),
    }
    dicts = {}
    for key in [("chain", N), ("chain", 1), ("independent", N), ("independent", 1)]:
        data = workloads.pipeline_dict_of(files[key].read_text())
        dicts[key] = workloads.write(work / f"dict_{key[0]}_{key[1]}.json", json.dumps(data))
    flows = workloads.write(work / "prefect_flows.py", workloads.PREFECT_FLOWS)
    prefect_python = str(PREFECT_VENV / "bin" / "python")
    prefect_home = work / "prefect-home"
    prefect_home.mkdir(parents=True, exist_ok=True)
    penv = measure.prefect_env(prefect_home, None)

    ours: dict[tuple[str, int], Series] = {k: Series(f"orchestrator {k}") for k in files}
    engine: dict[tuple[str, int], Series] = {k: Series(f"engine {k}") for k in dicts}
    theirs: dict[tuple[str, int], Series] = {k: Series(f"prefect {k}") for k in files if k[0] != "template"}

    # warm-up (not timed): creates both state databases and the byte-code caches
    run_process(cli_run(files[("chain", 1)]), env=env, cwd=work)
    warm = run_process([prefect_python, str(flows), "chain", "1"], env=penv, cwd=work)
    if warm.returncode != 0:
        raise RuntimeError(f"prefect warm-up failed:\n{warm.stderr[-3000:]}")

    for rep in range(REPS):
        for key in [("chain", 1), ("independent", 1), ("chain", N), ("independent", N), ("template", N)]:
            log(f"  (a) rep {rep + 1}/{REPS}: {key[0]} x{key[1]}")
            sample = run_process(cli_run(files[key]), env=env, cwd=work)
            ours[key].add(sample)
            check_document(sample)
            if key in dicts:
                child = [PYTHON, str(BENCH / "child.py"), "run-dict", str(dicts[key])]
                engine[key].add(run_process(child, env=env, cwd=work))
            if key in theirs:
                flow = [prefect_python, str(flows), key[0], str(key[1])]
                theirs[key].add(run_process(flow, env=penv, cwd=work, sample=True))
    return {"ours": ours, "engine": engine, "theirs": theirs, "flows": flows, "work": work}


def section_dedicated(overhead: dict[str, Any]) -> Series:
    """A 1-task flow against an API server that is already running (started once, not timed)."""
    work: Path = overhead["work"]
    home = work / "prefect-home-dedicated"
    series = Series("prefect dedicated server 1 task")
    python = str(PREFECT_VENV / "bin" / "python")
    with measure.prefect_server(PREFECT_VENV, home, WORK / "prefect-server.log") as server:
        env = measure.prefect_env(home, server.api_url)
        run_process([python, str(overhead["flows"]), "chain", "1"], env=env, cwd=work)  # warm-up
        for rep in range(REPS):
            server.wait_idle(limit=30)
            log(f"  (a) rep {rep + 1}/{REPS}: prefect 1 task, dedicated API server")
            series.add(run_process([python, str(overhead["flows"]), "chain", "1"], env=env, cwd=work))
    return series


# (b) scale ------------------------------------------------------------------------------------


def section_scale() -> dict[str, Any]:
    work = WORK / "scale"
    work.mkdir(parents=True, exist_ok=True)
    env = orchestrator_env(work / "orchestrator-home")
    sizes = [1, 10_000, 100_000]
    results: dict[int, Series] = {n: Series(f"for_loop {n}") for n in sizes}
    files = {n: workloads.write(work / f"loop_{n}.yaml", workloads.for_loop_yaml(n, 1)) for n in sizes}
    run_process([PYTHON, str(BENCH / "child.py"), "run", str(files[1])], env=env, cwd=work)
    for rep in range(REPS):
        for n in sizes:
            log(f"  (b) rep {rep + 1}/{REPS}: for_loop over {n} items")
            sample = run_process([PYTHON, str(BENCH / "child.py"), "run", str(files[n])], env=env, cwd=work)
            results[n].add(sample)
            line = json.loads(sample.stdout.strip().splitlines()[-1])
            if line["status"] != "succeeded" or line["result"] != {"count": n, "last": 2 * (n - 1)}:
                raise RuntimeError(f"for_loop {n}: {line}")
    return {"series": results}


# (c) scheduling quality ------------------------------------------------------------------------


def section_dag() -> dict[str, Any]:
    work = WORK / "dag"
    work.mkdir(parents=True, exist_ok=True)
    env = orchestrator_env(work / "orchestrator-home")
    dag = workloads.random_dag()
    file = workloads.write(work / "dag_200.yaml", workloads.dag_yaml(dag))
    series = Series("dag")
    for rep in range(REPS):
        log(f"  (c) rep {rep + 1}/{REPS}: random 200-node DAG")
        sample = run_process([PYTHON, str(BENCH / "child.py"), "run", str(file)], env=env, cwd=work)
        series.add(sample)
    edges = sum(len(parents) for parents in dag.parents)
    return {
        "series": series,
        "critical_path": dag.critical_path(),
        "total_work": sum(dag.durations),
        "edges": edges,
        "width": dag.width(),
        "depth": _depth(dag),
    }


def _depth(dag: workloads.Dag) -> int:
    levels: list[int] = []
    for parents in dag.parents:
        levels.append(1 + max((levels[p] for p in parents), default=0))
    return max(levels)


# (d) Lambda cold start ---------------------------------------------------------------------------

BARE_HANDLER = """import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event, context):
    return {"ok": True}
"""


def _import_time_us(directory: Path, env: dict[str, str]) -> tuple[float, float]:
    """Median cumulative import time of `app` (µs) and median process wall time (s)."""
    imports: list[float] = []
    walls: list[float] = []
    for _ in range(max(REPS, 5)):
        started = time.perf_counter()
        done = subprocess.run(
            [PYTHON, "-X", "importtime", "-c", "import app"],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
        )
        walls.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"import app in {directory} failed:\n{done.stderr[-3000:]}")
        match = re.search(r"\|\s*(\d+)\s*\|\s*app\s*$", done.stderr, re.MULTILINE)
        if not match:
            raise RuntimeError(f"no import time for app in {directory}")
        imports.append(float(match.group(1)))
    return measure.median(imports), measure.median(walls)


def section_lambda() -> dict[str, Any]:
    work = WORK / "lambda"
    work.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "POWERTOOLS_"))}
    base_env.update(
        {
            "POWERTOOLS_SERVICE_NAME": "bench",
            "POWERTOOLS_METRICS_NAMESPACE": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "ORCHESTRATOR_HOME": str(work / "orchestrator-home"),
        }
    )
    bare = workloads.write(work / "bare" / "app.py", BARE_HANDLER).parent
    env = dict(base_env, PYTHONPATH=str(bare))
    log("  (d) bare handler")
    bare_us, bare_wall = _import_time_us(bare, env)
    handlers: dict[str, Any] = {}
    for app in sorted((ROOT / "functions").glob("*/app.py")):
        log(f"  (d) {app.parent.name}")
        env = dict(base_env, PYTHONPATH=os.pathsep.join([str(ROOT / "shared"), str(app.parent)]))
        try:
            handlers[app.parent.name] = _import_time_us(app.parent, env)
        except RuntimeError as error:
            handlers[app.parent.name] = str(error).splitlines()[-1][:200]
    return {"bare": (bare_us, bare_wall), "handlers": handlers, "layer": _layer_size(work)}


def _layer_size(work: Path) -> dict[str, Any]:
    """Unzipped size of the runtime layer: its requirements for Lambda arm64/3.12, plus the package."""
    requirements = ROOT / "shared" / "requirements.txt"
    if requirements.exists():
        source = "shared/requirements.txt"
        args = ["-r", str(requirements)]
    else:
        import tomllib

        dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        source = "pyproject.toml [project].dependencies (shared/requirements.txt does not exist yet)"
        args = list(dependencies)
    target = work / "layer"
    shutil.rmtree(target, ignore_errors=True)
    log("  (d) layer: pip install --target (Lambda arm64, python 3.12 wheels)")
    done = subprocess.run(
        [
            PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(target),
            "--platform", "manylinux2014_aarch64", "--implementation", "cp", "--python-version", "3.12",
            "--only-binary=:all:", *args,
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode != 0:
        return {"source": source, "error": done.stderr.strip().splitlines()[-1][:300]}
    package = ROOT / "shared" / "orchestrator"
    shutil.copytree(package, target / "orchestrator", ignore=shutil.ignore_patterns("__pycache__"))
    dependencies_bytes = _du(target) - _du(target / "orchestrator")
    return {
        "source": source,
        "total_bytes": _du(target),
        "dependencies_bytes": dependencies_bytes,
        "package_bytes": _du(target / "orchestrator"),
        "largest": _largest(target),
    }


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _largest(target: Path) -> list[tuple[str, int]]:
    sizes = [(entry.name, _du(entry)) for entry in target.iterdir() if entry.is_dir()]
    return sorted(sizes, key=lambda item: -item[1])[:5]


# (e) compile ------------------------------------------------------------------------------------


def section_compile() -> dict[str, Any]:
    work = WORK / "compile"
    work.mkdir(parents=True, exist_ok=True)
    env = orchestrator_env(work / "orchestrator-home")
    file = workloads.write(work / "compile_1000.yaml", workloads.compile_yaml(1000))
    series = Series("compile")
    for rep in range(REPS):
        log(f"  (e) rep {rep + 1}/{REPS}: compile a 1,000-task pipeline")
        sample = run_process([PYTHON, str(BENCH / "child.py"), "compile", str(file)], env=env, cwd=work)
        series.add(sample)
    return {"series": series}


# (f) cloud cost -----------------------------------------------------------------------------------


def section_cloud() -> dict[str, Any]:
    """One run of each bundled pipeline on the emulated Step Functions: `cloud_cost.py` in its own process."""
    work = WORK / "cloud"
    work.mkdir(parents=True, exist_ok=True)
    output = work / "cloud_cost.json"
    started = time.perf_counter()
    done = subprocess.run(
        [PYTHON, str(BENCH / "cloud_cost.py"), "--json", str(output)],
        cwd=work,
        env=orchestrator_env(work / "orchestrator-home"),
        stdout=sys.stderr,  # its progress, a line per pipeline, goes to the bench's log
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench/cloud_cost.py: exit status {done.returncode}")
    runs = json.loads(output.read_text(encoding="utf-8"))
    return {"pipelines": runs, "seconds": time.perf_counter() - started}


# (g) execution state size ------------------------------------------------------------------------


def section_state() -> dict[str, Any]:
    """The largest execution state of runs made of many large outputs, on the emulated Step
    Functions: `state_size.py` in its own process."""
    work = WORK / "state"
    work.mkdir(parents=True, exist_ok=True)
    output = work / "state_size.json"
    started = time.perf_counter()
    done = subprocess.run(
        [PYTHON, str(BENCH / "state_size.py"), "--json", str(output)],
        cwd=work,
        env=orchestrator_env(work / "orchestrator-home"),
        stdout=sys.stderr,  # its table goes to the bench's log
    )
    if not output.exists():
        raise RuntimeError(f"bench/state_size.py: exit status {done.returncode}")
    runs = json.loads(output.read_text(encoding="utf-8"))
    return {"runs": runs, "seconds": time.perf_counter() - started}


# (h) the web UI's run list ------------------------------------------------------------------------


def section_ui() -> dict[str, Any]:
    """The run list of `orchestrator ui` over 10,000 runs: `ui_list.py` in its own process."""
    work = WORK / "ui"
    work.mkdir(parents=True, exist_ok=True)
    output = work / "ui_list.json"
    done = subprocess.run(
        [PYTHON, str(BENCH / "ui_list.py"), "--json", str(output)],
        cwd=work,
        env=orchestrator_env(work / "orchestrator-home"),
        stdout=sys.stderr,  # its table goes to the bench's log
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench/ui_list.py: exit status {done.returncode}")
    measured: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    return measured


# (i) LLM pipelines: cold start and a concurrent for_loop of LLM calls ---------------------------


def section_llm() -> dict[str, Any]:
    """A one-llm_task pipeline from a cold process and 1,000 LLM calls in a for_loop, against a
    local server with a fixed latency: `llm_speed.py` in its own process."""
    work = WORK / "llm"
    work.mkdir(parents=True, exist_ok=True)
    output = work / "llm_speed.json"
    started = time.perf_counter()
    done = subprocess.run(
        [PYTHON, str(BENCH / "llm_speed.py"), "--json", str(output)],
        cwd=work,
        env=orchestrator_env(work / "orchestrator-home"),
        stdout=sys.stderr,  # its tables go to the bench's log
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench/llm_speed.py: exit status {done.returncode}")
    results: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    results["seconds"] = time.perf_counter() - started
    return results


# main -------------------------------------------------------------------------------------------


def measure_sections(names: set[str]) -> dict[str, Any]:
    """Measure the named sections in `make bench`'s order: the timed ones, then the cloud cost."""
    for name in names:
        shutil.rmtree(WORK / name, ignore_errors=True)
    results: dict[str, Any] = {}
    if "overhead" in names:
        log("bench: Prefect venv (bench/.venv-prefect)")
        results["prefect"] = measure.ensure_prefect_venv(
            PREFECT_VENV, sys._base_executable, WORK / "prefect-install.log"
        )
        log("bench: (a) orchestration cost per task and memory, against Prefect (ephemeral API server)")
        results["overhead"] = section_overhead()
        log("bench: (a) cold start against Prefect with a dedicated API server")
        results["overhead"]["dedicated"] = section_dedicated(results["overhead"])
    for name, title, section in (
        ("scale", "(b) for_loop scale", section_scale),
        ("dag", "(c) scheduling quality", section_dag),
        ("lambda", "(d) Lambda cold start and layer size", section_lambda),
        ("compile", "(e) compile", section_compile),
        ("cloud", "(f) cloud cost per bundled pipeline (emulated Step Functions)", section_cloud),
        ("state", "(g) execution state size (emulated Step Functions)", section_state),
        ("ui", "(h) the web UI's run list over 10,000 runs", section_ui),
        ("llm", "(i) LLM pipelines: cold start and a concurrent for_loop of LLM calls", section_llm),
    ):
        if name in names:
            log(f"bench: {title}")
            results[name] = section()
    return results


def load_results() -> dict[str, Any]:
    """The measurements saved by the last run (all sections, or those it measured)."""
    with open(SAVED, "rb") as saved:
        results: dict[str, Any] = pickle.load(saved)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"measure only these sections ({', '.join(SECTIONS)}) and keep the others' last measurements",
    )
    which.add_argument(
        "--report-only", action="store_true", help="measure nothing: render again from the last measurements"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help="write the report here, not to bench/RESULTS.md (README.md and docs/cost.md are left alone)",
    )
    arguments = parser.parse_args(argv)
    if arguments.report_only:
        return publish(load_results(), arguments.output)
    started = time.perf_counter()
    only = [name for name in SECTIONS if name in (arguments.only or SECTIONS)]
    if arguments.only:
        results = load_results() if SAVED.exists() else {}
    else:
        shutil.rmtree(WORK, ignore_errors=True)
        results = {}
    WORK.mkdir(parents=True, exist_ok=True)
    log(
        f"bench: {REPS} repetitions per configuration; sections {', '.join(only)}; writing {arguments.output}"
    )
    results.update(measure_sections(set(only)))
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    seconds = time.perf_counter() - started
    if arguments.only and "meta" in results:  # completes the saved results of an earlier run
        results["meta"].setdefault("remeasured", []).append(
            {"sections": only, "date": date, "seconds": seconds}
        )
    else:
        results["meta"] = {
            "date": date,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "seconds": seconds,
            "reps": REPS,
            "load": os.getloadavg(),
            "only": only if arguments.only else None,
        }
    with open(SAVED, "wb") as saved:
        pickle.dump(results, saved)
    log(f"bench: measured in {seconds:.0f} s")
    return publish(results, arguments.output)


def publish(results: dict[str, Any], output: Path) -> int:
    """Write the report and print it; to bench/RESULTS.md, also the README's section and docs/cost.md."""
    text = report.render(results, (BENCH / "OPTIMISATIONS.md").read_text(encoding="utf-8"))
    output.write_text(text, encoding="utf-8")
    if output.resolve() == RESULTS:
        if all(name in results for name in report.README_SECTIONS):
            report.update_readme(ROOT / "README.md", report.readme_table(results))
        if "cloud" in results:
            cost = cloud_cost.render(results["cloud"]["pipelines"])
            (ROOT / "docs" / "cost.md").write_text(cost, encoding="utf-8")
    print(text)
    log(f"bench: wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
