"""The web UI in a real headless browser (Chromium, driven by Playwright): a run followed live
on its page, and hostile or secret values in a run that must reach the page only as text, or
not at all.

Chromium is the distribution's (`apt-get install chromium`) and Playwright comes with the dev
extras: these tests skip without them, except in CI, where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes.pipelines import FAILS_ONCE

pytestmark = pytest.mark.slow

try:
    import playwright.sync_api as playwright_api
except ImportError:  # the dev extras install it; CI must have it
    if os.environ.get("CI"):
        raise
    pytest.skip("playwright is not installed: pip install -e '.[dev]'", allow_module_level=True)


def chromium() -> str:
    """The Chromium executable: /usr/bin/chromium, else `chromium` on PATH; skip without it
    (fail in CI)."""
    for candidate in ("/usr/bin/chromium", "chromium"):
        found = shutil.which(candidate)
        if found:
            return found
    message = "Chromium not found at /usr/bin/chromium nor on PATH: apt-get install chromium"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium()
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("dialog", lambda dialog: errors.append(f"a dialog opened: {dialog.message}"))
    yield opened
    context.close()
    assert errors == []


@pytest.fixture
def ui_url(tmp_path: Path) -> Iterator[str]:
    """`orchestrator ui --port 0` on this test's state folder; the URL it printed."""
    server = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "ui", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    line = server.stderr.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+/", line)
    assert found, line
    yield found[0]
    server.send_signal(signal.SIGINT)  # Ctrl-C stops it cleanly
    assert server.wait(30) == 0
    server.stderr.close()


def _start_run(path: Path, *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(path), "--json", *arguments],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


GATED = """
name: gated
input_variables:
  gates: {type: string}
tasks:
  - name: first
    type: python_task
    script: |
      import os, time
      while not os.path.exists("{{ gates }}/one"):
          time.sleep(0.02)
      return "one"
  - name: second
    type: python_task
    depends_on: [first]
    script: |
      import os, time
      while not os.path.exists("{{ gates }}/two"):
          time.sleep(0.02)
      return "two"
"""


def test_a_run_page_follows_the_run_live(
    page: Any, ui_url: str, write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    expect = playwright_api.expect
    # GIVEN a run whose two tasks each wait for a file the test writes
    gates = tmp_path / "gates"
    gates.mkdir()
    run = _start_run(write_pipeline(GATED, name="gated"), "-i", f"gates={gates}")
    try:
        # WHEN the run list shows it running and its row is opened
        page.goto(ui_url)
        row = page.locator("#runs tbody tr[data-status=running]")
        expect(row).to_have_count(1)
        row.locator("a").click()

        # THEN its page shows it running: the first task running in graph and timeline, the
        # second not started
        first = page.locator('#graph g.task[data-path="first"]')
        second = page.locator('#graph g.task[data-path="second"]')
        first_bars = page.locator('#timeline .bar[data-task="first"]')
        second_bars = page.locator('#timeline .bar[data-task="second"]')
        expect(page.locator("#run-status")).to_have_text("running")
        expect(first).to_have_attribute("data-status", "running")
        expect(second).to_have_attribute("data-status", "not_run")
        expect(first_bars).to_have_count(1)
        expect(first_bars).to_have_attribute("data-status", "running")
        expect(second_bars).to_have_count(0)

        # WHEN the first gate opens, THEN the first task succeeds and the second runs
        (gates / "one").touch()
        expect(first).to_have_attribute("data-status", "succeeded")
        expect(first_bars).to_have_attribute("data-status", "succeeded")
        expect(second).to_have_attribute("data-status", "running")
        expect(second_bars).to_have_attribute("data-status", "running")
        expect(page.locator("#run-status")).to_have_text("running")

        # WHEN the second opens, THEN the run ends succeeded, every box and bar too
        (gates / "two").touch()
        expect(page.locator("#run-status")).to_have_text("succeeded")
        expect(second).to_have_attribute("data-status", "succeeded")
        expect(second_bars).to_have_attribute("data-status", "succeeded")
        expect(page.locator('#timeline .row[data-path="second"]')).to_have_attribute(
            "data-status", "succeeded"
        )

        # AND a click on a task shows its output
        first.click()
        expect(page.locator("#details section[data-section=output] pre")).to_have_text("one")
    finally:
        (gates / "one").touch()
        (gates / "two").touch()
        run.communicate(timeout=60)
    assert run.returncode == 0


HOSTILE = """
name: hostile
input_variables:
  password: {type: string, sensitive: true}
tasks:
  - name: shout
    type: python_task
    script: |
      marks = "<img src=x onerror=\\"window.pwned=1\\"><script>window.pwned=2</script>'\\""
      print("printed", marks, "{{ password }}", context.get_secret("api_key"))
      return {"html": marks, "password": "{{ password }}", "secret": context.get_secret("api_key")}
  - name: breaks
    type: python_task
    depends_on: [shout]
    script: |
      raise RuntimeError("<b id=bold>bold</b> " + context.get_secret("api_key") + " {{ password }}")
"""


def test_hostile_values_are_text_and_secrets_never_reach_the_page(
    page: Any,
    ui_url: str,
    write_pipeline: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expect = playwright_api.expect
    # GIVEN a failed run whose output, print and error hold markup, a secret and a sensitive input
    secret, password = "s3cr3t-VALUE-4242", "pa55-WORD-9191"
    monkeypatch.setenv("ORCHESTRATOR_SECRET_API_KEY", secret)
    run = _start_run(write_pipeline(HOSTILE, name="hostile"), "-i", f"password={password}")
    run.communicate(timeout=60)
    assert run.returncode == 1

    # WHEN its page is opened and each task's details are shown
    page.goto(ui_url)
    page.locator("#runs tbody tr a").first.click()
    expect(page.locator("#run-status")).to_have_text("failed")
    seen = [page.content()]
    for task in ("shout", "breaks"):
        page.locator(f'#graph g.task[data-path="{task}"]').click()
        expect(page.locator("#details h2")).to_have_text(task)
        seen.append(page.content())
        seen.append(page.locator("body").inner_text())

    # THEN the markup is shown as text, never run or parsed, and neither value is anywhere
    page.locator('#graph g.task[data-path="shout"]').click()
    expect(page.locator("#details")).to_contain_text("<script>window.pwned=2</script>")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#details img, #details script, #bold").count() == 0
    expect(page.locator("#run-error")).to_contain_text("<b id=bold>bold</b>")
    for text in seen:
        for value in (secret, password):
            assert value not in text
            assert value[:8] not in text and value[-8:] not in text


def _attempt(number: int, status: str, start: str, end: str, **more: Any) -> dict[str, Any]:
    seconds = (int(end[17:19]) - int(start[17:19])) * 1.0
    return {
        "attempt": number,
        "fallback": False,
        "status": status,
        "started_at": f"2026-11-26T03:00:{start[17:19]}.000Z",
        "ended_at": f"2026-11-26T03:00:{end[17:19]}.000Z",
        "duration": seconds,
        "error": None,
        "printed": [],
        "llm_calls": [],
        **more,
    }


def _record(status: str, attempts: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {
        "status": status,
        "attempts": len(attempts),
        "error": None,
        "started_at": attempts[0]["started_at"] if attempts else None,
        "ended_at": attempts[-1]["ended_at"] if attempts else None,
        "duration": None,
        "inputs": None,
        "attempt_log": attempts,
        **more,
    }


LLM_CALL = {"model": "gpt-x", "tokens_in": 12, "tokens_out": 34, "latency": 1.5}


def _step(index: int) -> dict[str, Any]:
    start, end = f"2026-11-26T03:00:{8 + index:02}.000Z", f"2026-11-26T03:00:{9 + index:02}.000Z"
    return _attempt(1, "succeeded", start, end, printed=[f"iteration {index}"])


def _spec_shaped_run() -> dict[str, Any]:
    """A finished run document with the telemetry fields of docs/ui.md: a task retried after a
    wait, an LLM task, and a loop of two iterations."""
    t = "2026-11-26T03:00:{:02}.000Z".format
    fetch = _record(
        "succeeded",
        [
            _attempt(1, "failed", t(1), t(2), error={"type": "TimeoutError", "message": "slow <server>"}),
            _attempt(2, "succeeded", t(5), t(6), printed=["fetched 3 rows", "<i>done</i>"]),
        ],
        inputs={"url": "https://example.org/<x>"},
    )
    ask = _record(
        "succeeded",
        [_attempt(1, "succeeded", t(6), t(8), llm_calls=[LLM_CALL])],
        inputs={"model": "gpt-x", "prompt": "Summarise"},
    )
    iterations = [
        {"key": str(index), "tasks": {"step": _record("succeeded", [_step(index)])}} for index in range(2)
    ]
    loop = _record("succeeded", [], children=iterations, started_at=t(8), ended_at=t(10), duration=2.0)
    return {
        "run_id": "spec-shaped",
        "pipeline": "shaped",
        "status": "succeeded",
        "engine": "stepfunctions",
        "user": "tester",
        "started_at": t(0),
        "ended_at": t(10),
        "duration": 10.0,
        "outputs": {"fetch": [1, 2, 3], "ask": "a summary", "loop": ["a", "b"]},
        "tasks": {"fetch": fetch, "ask": ask, "loop": loop},
        "result": None,
        "error": None,
    }


def test_the_timeline_shows_attempts_waits_iterations_and_details(page: Any, ui_url: str) -> None:
    from orchestrator.settings import load_settings
    from orchestrator.stores.factory import open_stores

    expect = playwright_api.expect
    # GIVEN a recorded run shaped as the run document's telemetry fields say (no pipeline file)
    open_stores(load_settings(), "memory").runs.save(_spec_shaped_run())

    # WHEN its page is opened
    page.goto(ui_url + "#/runs/spec-shaped")

    # THEN there is no graph, and a timeline with both attempts of `fetch` and the wait between
    expect(page.locator("#graph")).to_contain_text("No graph")
    expect(page.locator('#timeline .bar[data-task="fetch"]')).to_have_count(2)
    expect(page.locator('#timeline .bar[data-task="fetch"][data-status=failed]')).to_have_count(1)
    expect(page.locator('#timeline .row[data-path="fetch"] .wait')).to_have_count(1)
    expect(page.locator("#run-facts")).to_contain_text("stepfunctions")

    # AND the loop's iterations open, each with its task
    expect(page.locator('#timeline .row[data-path="loop/[0]/step"]')).to_have_count(0)
    page.locator('#timeline button.toggle[data-path="loop"]').click()
    expect(page.locator('#timeline .row[data-path="loop/[1]/step"] .bar')).to_have_count(1)

    # AND a click shows a task's inputs, output, attempts with their errors and printed lines
    page.locator('#timeline .row[data-path="fetch"] a.task-name').click()
    details = page.locator("#details")
    expect(details).to_contain_text("https://example.org/<x>")
    expect(details).to_contain_text("TimeoutError: slow <server>")
    expect(details).to_contain_text("<i>done</i>")
    expect(details.locator(".attempt")).to_have_count(2)
    page.locator('#timeline .row[data-path="loop/[1]/step"] a.task-name').click()
    expect(details).to_contain_text("iteration 1")
    page.locator('#timeline .row[data-path="ask"] a.task-name').click()
    expect(details).to_contain_text("gpt-x: 12 tokens in, 34 out")


def test_a_failed_run_is_resumed_from_its_page(
    page: Any, ui_url: str, write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    expect = playwright_api.expect
    # GIVEN a run that failed
    run = _start_run(write_pipeline(FAILS_ONCE, name="flaky"), "-i", f"flag={tmp_path / 'flag'}")
    run.communicate(timeout=60)
    assert run.returncode == 1

    # WHEN its page's Resume button is pressed
    page.goto(ui_url)
    page.locator("#runs tbody tr[data-status=failed] a").click()
    expect(page.locator("#run-status")).to_have_text("failed")
    box = page.locator('#graph g.task[data-path="fails_once"]')
    expect(box).to_have_attribute("data-status", "failed")
    page.locator("#resume").click()

    # THEN the page follows the resumed run to its end: the failed task succeeds
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
    expect(box).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#resume")).to_be_hidden()
    page.locator('#timeline .row[data-path="fails_once"] a.task-name').click()
    expect(page.locator("#details section[data-section=output] pre")).to_have_text("done")
