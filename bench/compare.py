"""`make bench-compare BASE=<git ref>`: the engine's own workloads before and after a change.

A restructuring must not make Orchestrator slower. This checks out BASE (default: the last
commit) in a worktree under bench/.work, then runs each workload below on BASE's package and on
the working tree's, interleaved (one of each per round, BENCH_REPS rounds, default 5), in fresh
processes with new state folders, and prints the medians and their ratio. Both sides run the
same workload files and this tree's `bench/child.py`; only the `orchestrator` package differs.

    .venv/bin/python bench/compare.py                 # working tree against HEAD
    .venv/bin/python bench/compare.py --base 07c34bf  # against any commit
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import workloads  # noqa: E402
from measure import Series, log, run_process  # noqa: E402

WORK = BENCH / ".work" / "compare"
REPS = max(3, int(os.environ.get("BENCH_REPS", "5")))
PYTHON = sys.executable


def _base_tree(ref: str) -> Path:
    """BASE's files, checked out in a worktree of their own (made again each time)."""
    tree = WORK / "base"
    if tree.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
        shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref], cwd=ROOT, check=True)
    return tree


def _env(tree: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["ORCHESTRATOR_HOME"] = str(home)
    env["PYTHONPATH"] = str(tree / "shared")
    return env


def _workloads(work: Path) -> dict[str, list[str]]:
    """Label -> command line; every one prints what proves it ran (checked below)."""
    write = workloads.write
    chain_1 = write(work / "chain_1.yaml", workloads.chain_yaml(1))
    chain = write(work / "chain_2000.yaml", workloads.chain_yaml(2000))
    independent = write(work / "independent_2000.yaml", workloads.independent_yaml(2000))
    loop = write(work / "loop_10000.yaml", workloads.for_loop_yaml(10_000, 1))
    compiled = write(work / "compile_1000.yaml", workloads.compile_yaml(1000))
    cli = [PYTHON, "-m", "orchestrator", "run"]
    child = [PYTHON, str(BENCH / "child.py")]
    return {
        "1 task, from a cold process (CLI)": [*cli, str(chain_1), "--json"],
        "2,000-task chain (CLI)": [*cli, str(chain), "--json"],
        "2,000 independent tasks (CLI)": [*cli, str(independent), "--json"],
        "for_loop over 10,000 items": [*child, "run", str(loop)],
        "compile a 1,000-task pipeline": [*child, "compile", str(compiled)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base", default="HEAD", help="the git ref to compare with (default HEAD)")
    arguments = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    trees = {"base": _base_tree(arguments.base), "this": ROOT}
    commands = _workloads(WORK)
    series = {(label, side): Series(f"{label} ({side})") for label in commands for side in trees}
    homes = WORK / "homes"
    shutil.rmtree(homes, ignore_errors=True)
    for side, tree in trees.items():  # warm-up: byte-code caches
        run_process(commands["1 task, from a cold process (CLI)"], env=_env(tree, homes / side), cwd=WORK)
    for rep in range(REPS):
        for number, (label, command) in enumerate(commands.items()):
            for side, tree in trees.items():
                log(f"  round {rep + 1}/{REPS}: {label} ({side})")
                # a state folder of its own: a database grown by earlier runs is not measured
                home = homes / f"{side}-{rep}-{number}"
                sample = run_process(command, env=_env(tree, home), cwd=WORK)
                if '"succeeded"' not in sample.stdout and "compile" not in command:
                    raise RuntimeError(f"{label} ({side}) did not succeed: {sample.stdout[-500:]}")
                series[(label, side)].add(sample)
    lines = [
        f"Medians of {REPS} interleaved rounds, whole-process wall time; base = {arguments.base}.",
        "",
        "| workload | base | this tree | this / base |",
        "|---|---|---|---|",
    ]
    for label in commands:
        before, after = series[(label, "base")].wall, series[(label, "this")].wall
        lines.append(f"| {label} | {before:.3f} s | {after:.3f} s | {after / before:.2f} |")
    report = "\n".join(lines) + "\n"
    (WORK / "compare.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
