"""What a later task reads of an earlier one's output is what the run document shows, on both
engines (issue 11, divergence 9): a secret the earlier task read, or a sensitive input, is `***`.

On AWS an output travels in the execution's state, so it must be redacted when its task
returns; the embedded engine used to hand later tasks the clear value. To use a secret in a
later task, read it there with `context.get_secret`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult, agreed_tasks

pytestmark = pytest.mark.slow

SECRET = "tok-3f9a61c2"
PASSPHRASE = "open-sesame-77"

PIPELINE = """
name: secret_outputs
input_variables:
  passphrase: {type: string, sensitive: true}
tasks:
  - name: login
    type: python_task
    script: |
      token = context.get_secret("api_token")
      return {"token": token, "header": "Bearer " + token, "phrase": inputs["passphrase"]}
  - name: by_template
    type: python_task
    script: |
      return {"token": "{{ login.token }}", "length": len("{{ login.token }}")}
  - name: by_context
    type: python_task
    depends_on: [login]
    script: |
      seen = context.get_task_output("login")
      fresh = len(context.get_secret("api_token"))
      return {"header": seen["header"], "phrase": seen["phrase"], "fresh": fresh}
"""


def test_later_tasks_read_secret_bearing_outputs_redacted_on_both_engines(
    run_on_both_engines: Callable[..., dict[str, CliResult]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a task that returns a secret it read and a sensitive input, and two that read it
    path = tmp_path / "secret_outputs.yaml"
    path.write_text(PIPELINE, encoding="utf-8")
    monkeypatch.setenv("ORCHESTRATOR_SECRET_API_TOKEN", SECRET)
    results = run_on_both_engines(path, "-i", f"passphrase={PASSPHRASE}")
    for result in results.values():
        assert SECRET not in result.stdout + result.stderr
        assert PASSPHRASE not in result.stdout + result.stderr
    documents = {engine: result.document() for engine, result in results.items()}

    # THEN both read `***`, and a task that reads the secret itself still has the value
    local, aws = documents["local"], documents["stepfunctions"]
    assert local["outputs"]["by_template"] == {"token": "***", "length": 3}
    assert local["outputs"]["by_context"] == {"header": "Bearer ***", "phrase": "***", "fresh": len(SECRET)}
    for key in ("status", "outputs", "error"):
        assert aws[key] == local[key], key
    assert agreed_tasks(aws) == agreed_tasks(local)
