"""Issue 13: a task that hits its timeout stops: no more CPU, no more writes, on both engines.

The attack is a stubborn script: it spins, writes the cache on every turn and swallows every
exception, `BaseException` included. After its `TaskTimeout` (and that of its retry), a task
after it watches whether the spinning goes on (a counter in the process) and whether the
cache still changes.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest

from conftest import run_in_a_process
from orchestrator.runtime.attempt import Attempt, AttemptStopped

STUBBORN = """\
name: stubborn
tasks:
  - name: spin
    type: python_task
    timeout: 0.5
    error_handling:
      retry_count: 1
      retry_delay: 0
      on_failure: continue_with_degraded_service
    script: |
      import builtins
      builtins.spin_count = 0
      while True:
          try:
              while True:
                  builtins.spin_count += 1
                  context.set_cache('spin', builtins.spin_count)
                  context.set_shared_state('spin', builtins.spin_count)
          except BaseException:
              pass
  - name: watch
    type: python_task
    depends_on: [spin]
    script: |
      import builtins, time
      time.sleep(0.5)
      first = [builtins.spin_count, context.get_cache('spin'), context.get_shared_state('spin')]
      time.sleep(0.5)
      return [first, [builtins.spin_count, context.get_cache('spin'), context.get_shared_state('spin')]]
"""


@pytest.mark.parametrize("engine", ["local", "stepfunctions"])
def test_a_timed_out_task_stops_spinning_and_writing(tmp_path: Path, engine: str) -> None:
    # GIVEN the stubborn spinning task with a 0.5 s timeout and one retry
    path = tmp_path / "stubborn.yaml"
    path.write_text(STUBBORN, encoding="utf-8")
    # WHEN it runs
    code, document, stderr = run_in_a_process(tmp_path / "home", path, "--engine", engine)
    # THEN both attempts timed out and the run went on
    assert code == 0, stderr
    spin = document["tasks"]["spin"]
    assert (spin["status"], spin["attempts"], spin["error"]["type"]) == ("failed", 2, "TaskTimeout")
    # AND after that nothing of it ran or wrote any more: its counter and cache stood still,
    # and its state writes, never committed, are not there
    first, second = document["outputs"]["watch"]
    assert first == second
    assert first[0] > 0
    assert first[2] is None


def test_a_stopped_attempt_can_write_nothing() -> None:
    # GIVEN an attempt that is stopped before it writes
    attempt = Attempt()
    attempt.stop()
    # WHEN it tries to write, or to run
    # THEN both are refused
    for _ in range(100):
        if attempt.stopped:
            break
        threading.Event().wait(0.01)
    with pytest.raises(AttemptStopped), attempt.writing():
        pass
    with pytest.raises(AttemptStopped):
        attempt.run(lambda: None)


def test_a_late_stop_never_lands_in_the_next_job_of_the_thread() -> None:
    # GIVEN one thread running 300 short attempts, each stopped as it ends
    outcomes: list[str] = []

    def jobs() -> None:
        for _ in range(300):
            attempt = Attempt()
            try:
                attempt.run(lambda a=attempt: (a.stop(), sum(range(2000)))[1])
            except AttemptStopped:
                outcomes.append("stopped")
            else:
                outcomes.append("done")
            # WHEN the thread goes on with work of its own
            try:
                sum(range(20000))
            except AttemptStopped:
                outcomes.append("LEAKED")

    # (with no garbage-collector callbacks: hypothesis, imported by other tests of this
    # process, installs one, and a stop arriving while it runs would be lost inside it)
    callbacks = list(gc.callbacks)
    gc.callbacks.clear()
    try:
        worker = threading.Thread(target=jobs)
        worker.start()
        worker.join(60)
    finally:
        gc.callbacks.extend(callbacks)
    # THEN a stop only ever ended its own attempt
    assert not worker.is_alive()
    assert "LEAKED" not in outcomes
    assert len(outcomes) == 300
