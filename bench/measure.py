"""Process-level measurement: wall time, peak RSS, medians; the Prefect venv and API server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Sample:
    wall: float
    peak_rss_kb: int  # the process itself and (the largest of) what it waited for: wait4's ru_maxrss
    own_rss_kb: int  # the process alone, sampled every 50 ms (0 when not sampled)
    tree_rss_kb: int  # the process and all its descendants, summed, sampled every 50 ms
    returncode: int
    stdout: str
    stderr: str


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def _processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{entry}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
            found.append((int(entry), int(fields[1]), int(fields[2])))
    return found


def tree_rss_kb(pid: int) -> tuple[int, int]:
    """RSS of a process alone, and of it with all its descendants."""
    children: dict[int, list[int]] = {}
    for child, parent, _ in _processes():
        children.setdefault(parent, []).append(child)
    own = _rss_kb(pid)
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        total += _rss_kb(current)
        pending += children.get(current, [])
    return own, total


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid, _, group in _processes():
        if group != pgid:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def run_process(
    argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 600.0, sample: bool = False
) -> Sample:
    """Run one process to its end; `sample` also samples its RSS (and its descendants')."""
    out_path = cwd / ".stdout"
    err_path = cwd / ".stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        peaks = {"own": 0, "tree": 0}
        done = threading.Event()

        def sampler_loop() -> None:
            while not done.is_set():
                own, tree = tree_rss_kb(process.pid)
                peaks["own"] = max(peaks["own"], own)
                peaks["tree"] = max(peaks["tree"], tree)
                done.wait(0.05)

        sampler = threading.Thread(target=sampler_loop, daemon=True)
        if sample:
            sampler.start()
        killer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
        killer.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        killer.cancel()
        done.set()
        if sample:
            sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
    return Sample(
        wall,
        int(usage.ru_maxrss),
        peaks["own"],
        max(peaks["tree"], peaks["own"]),
        process.returncode,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
    )


def median(values: list[float]) -> float:
    return float(statistics.median(values))


@dataclass
class Series:
    """Repeated samples of one configuration."""

    label: str
    samples: list[Sample] = field(default_factory=list)
    extra: list[dict[str, float]] = field(default_factory=list)

    def add(self, sample: Sample, **extra: float) -> None:
        if sample.returncode != 0:
            raise RuntimeError(
                f"{self.label}: exit status {sample.returncode}\n"
                f"{sample.stderr[-3000:]}\n{sample.stdout[-500:]}"
            )
        self.samples.append(sample)
        self.extra.append(extra)

    @property
    def wall(self) -> float:
        return median([s.wall for s in self.samples])

    @property
    def peak_rss_mb(self) -> float:
        return median([s.peak_rss_kb for s in self.samples]) / 1024

    @property
    def own_rss_mb(self) -> float:
        return median([s.own_rss_kb for s in self.samples]) / 1024

    @property
    def tree_rss_mb(self) -> float:
        return median([s.tree_rss_kb for s in self.samples]) / 1024

    def extra_median(self, key: str) -> float:
        return median([e[key] for e in self.extra if key in e])

    def child_json(self, key: str) -> float:
        """Median of a number the child printed as its last JSON line."""
        return median([float(json.loads(s.stdout.strip().splitlines()[-1])[key]) for s in self.samples])


# Prefect -----------------------------------------------------------------------------------

PREFECT_SPEC = "prefect>=3,<4"


def ensure_prefect_venv(venv: Path, base_python: str, log: Path) -> dict[str, str]:
    """Create the Prefect venv if missing; returns what was done and how long it took."""
    stamp = venv / ".bench-installed.json"
    if stamp.exists():
        info = json.loads(stamp.read_text())
        info["created_now"] = "no (reused; install time recorded when it was created)"
        return dict(info)
    started = time.perf_counter()
    subprocess.run([base_python, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    with open(log, "w") as output:
        subprocess.run([*pip, "--upgrade", "pip"], check=True, stdout=output, stderr=output)
        subprocess.run([*pip, PREFECT_SPEC], check=True, stdout=output, stderr=output)
    seconds = time.perf_counter() - started
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import prefect; print(prefect.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    info = {"install_seconds": f"{seconds:.1f}", "prefect_version": version, "spec": PREFECT_SPEC}
    stamp.write_text(json.dumps(info))
    info["created_now"] = "yes"
    return info


def prefect_env(home: Path, api_url: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_LOGGING_LEVEL": "WARNING",  # no INFO line per task run on the console
            "PREFECT_LOGGING_TO_API_ENABLED": "false",  # do not ship logs to the API
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",  # no dashboard
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        }
    )
    if api_url is None:
        env["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
    else:
        env["PREFECT_API_URL"] = api_url
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrefectServer:
    process: subprocess.Popen[bytes]
    api_url: str

    @property
    def pgid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.pgid)

    def wait_idle(self, *, quiet: float = 0.05, window: float = 1.0, limit: float = 120.0) -> float:
        """Wait until the server uses less than `quiet` CPU seconds per `window`; the wait in s."""
        started = time.perf_counter()
        previous = self.cpu_seconds()
        while time.perf_counter() - started < limit:
            time.sleep(window)
            current = self.cpu_seconds()
            if current - previous < quiet:
                break
            previous = current
        return time.perf_counter() - started


@contextlib.contextmanager
def prefect_server(venv: Path, home: Path, log: Path) -> Iterator[PrefectServer]:
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = prefect_env(home, None)
    env.pop("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(venv / "bin" / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    server = PrefectServer(process, f"http://127.0.0.1:{port}/api")
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited: see {log}")
            try:
                with urllib.request.urlopen(server.api_url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start in time: see {log}")
            time.sleep(0.25)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pgid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pgid, signal.SIGKILL)
            process.wait()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
