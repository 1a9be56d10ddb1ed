"""Take docs/images/ui-run.png: a run's page in `orchestrator ui`, in headless Chromium.

A small pipeline (a task that fails once and is retried after a wait, a for_loop, a parallel
group) runs in a fresh state folder; `orchestrator ui --port 0` serves it; Playwright opens the
run's page in Debian's Chromium, opens the loop's iterations and the retried task's details,
and saves the picture.

    PYTHONPATH=shared .venv/bin/python scripts/ui_screenshot.py [--output docs/images/ui-run.png]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = """
name: ui_tour
tasks:
  - name: fetch_rows
    type: python_task
    error_handling: {retry_count: 2, retry_delay: 1}
    script: |
      import time
      time.sleep(0.4)
      if context.update_shared_state("tries", lambda n: n + 1, 0) == 1:
          raise ConnectionError("the source did not answer in time")
      print("fetched 3 rows")
      return [{"id": 1, "text": "alpha"}, {"id": 2, "text": "beta"}, {"id": 3, "text": "gamma"}]
  - name: score_rows
    type: for_loop
    iterate_over: "{{ fetch_rows }}"
    item_variable: row
    max_concurrency: 3
    tasks:
      - name: score
        type: python_task
        script: |
          import time
          row = {{ row }}
          time.sleep(0.2 + 0.15 * row["id"])
          return len(row["text"])
  - name: report
    type: parallel_group
    depends_on: [score_rows]
    tasks:
      - name: total
        type: python_task
        script: |
          return sum(r["score"] for r in context.get_task_output("score_rows"))
      - name: longest
        type: python_task
        script: |
          import time
          time.sleep(0.3)
          return max(r["score"] for r in context.get_task_output("score_rows"))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images" / "ui-run.png")
    arguments = parser.parse_args()
    chromium = shutil.which("/usr/bin/chromium") or shutil.which("chromium")
    if chromium is None:
        print("Chromium is needed: apt-get install chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "ORCHESTRATOR_HOME": str(Path(folder) / "home")}
        pipeline = Path(folder) / "ui_tour.yaml"
        pipeline.write_text(PIPELINE, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", str(pipeline), "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        run_id = json.loads(done.stdout)["run_id"]
        server = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "ui", "--port", "0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stderr is not None
            found = re.search(r"http://127\.0\.0\.1:\d+/", server.stderr.readline())
            if not found:
                raise RuntimeError("orchestrator ui printed no URL")
            with sync_playwright() as driver:
                browser = driver.chromium.launch(executable_path=chromium)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"{found[0]}#/runs/{run_id}")
                page.locator("#graph svg").wait_for()
                page.locator('#timeline .row[data-path="score_rows"]').wait_for()
                opens = page.locator('#timeline button.toggle[data-path="score_rows"]')
                if opens.count():  # the loop's iterations, when the run document has them
                    opens.click()
                page.locator('#graph g.task[data-path="fetch_rows"]').click()
                page.locator("#details h2").wait_for()
                arguments.output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(arguments.output), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
            if server.stderr is not None:
                server.stderr.close()
    print(f"wrote {arguments.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
