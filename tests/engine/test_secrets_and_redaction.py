"""Issue 3 / SPEC sections 2 and 8: secrets and sensitive inputs never appear in plain text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO, CliResult

Cli = Callable[..., CliResult]
Write = Callable[..., Path]

SECRET = "S3cr3t-Pa55-w0rd"
SENSITIVE = "K3y-Value-98765"

LEAKY = """
name: leaky
security:
  encrypt_variables: {encrypt}
  sensitive_variables: [api_key]
input_variables:
  api_key: {{type: string}}
  note: {{type: string, default: ok}}
tasks:
  - name: leak
    type: python_task
    script: |
      secret = context.get_secret("database_password")
      key = "{{{{ api_key }}}}"
      print("secret is", secret, "and key is", key)
      context.set_shared_state("leaked", {{"s": secret, "k": key}})
      context.set_cache("leaked", [secret, key])
      context.set_task_cache("leaked", secret)
      context.log_audit_event({{"secret": secret, "key": key}})
      storage["leak"] = secret + key
      return {{"secret": secret, "key": key, "both": f"{{secret}}-{{key}}"}}
  - name: fail_loud
    type: python_task
    error_handling: {{on_failure: continue_with_degraded_service}}
    script: |
      raise ValueError("the secret is " + context.get_secret("database_password") + " and {{{{ api_key }}}}")
  - name: cached_echo
    type: python_task
    cache_key: "echo"
    script: return "{{{{ api_key }}}}"
outputs:
  echo: "{{{{ leak.both }}}} {{{{ api_key }}}}"
"""


def _every_byte_under(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


@pytest.mark.parametrize("encrypt", [True, False])
def test_a_pipeline_that_tries_to_leak_leaks_nothing(
    write_pipeline: Write, tmp_path: Path, cli: Cli, encrypt: bool
) -> None:
    # GIVEN a secret in the environment and a sensitive input, and a pipeline that puts both
    # into outputs, errors, prints, state, caches, storage and the audit log
    path = write_pipeline(LEAKY.format(encrypt=str(encrypt).lower()))
    env = dict(os.environ, ORCHESTRATOR_SECRET_DATABASE_PASSWORD=SECRET)
    # WHEN it runs as a user would
    process = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(path), "--json", "-i", f"api_key={SENSITIVE}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    # THEN it ran (degraded by design) and shows *** where the values would be
    assert process.returncode == 0, process.stderr
    document = json.loads(process.stdout)
    assert document["status"] == "degraded"
    assert document["outputs"]["leak"] == {"secret": "***", "key": "***", "both": "***-***"}
    assert document["tasks"]["fail_loud"]["error"]["message"].startswith("the secret is *** and ***")
    assert document["result"] == {"echo": "***-*** ***"}
    assert "[leak] secret is *** and key is ***" in process.stderr
    # AND not one byte written anywhere holds either value
    home = Path(os.environ["ORCHESTRATOR_HOME"])
    shown = cli("runs", "show", document["run_id"]).stdout + cli("audit").stdout
    for value in (SECRET, SENSITIVE):
        assert value not in process.stdout and value not in process.stderr
        assert value not in shown
        assert value.encode() not in _every_byte_under(home)
    assert '"***"' in cli("audit").stdout


def test_sealed_sensitive_inputs_come_back_on_resume(write_pipeline: Write, cli: Cli) -> None:
    """encrypt_variables: the resume record keeps sensitive inputs, encrypted with a 0600 key."""
    path = write_pipeline(
        """
        name: sealed
        security: {encrypt_variables: true}
        input_variables:
          token: {type: string, sensitive: true}
        tasks:
          - name: fails_first
            type: python_task
            script: |
              if context.update_shared_state("tries", lambda n: n + 1, 0) == 1:
                  raise RuntimeError("first run fails")
              return len("{{ token }}")
        """
    )
    failed = cli("run", path, "--json", "-i", f"token={SENSITIVE}").document()
    assert failed["status"] == "failed"
    key = Path(os.environ["ORCHESTRATOR_HOME"]) / "key"
    assert key.stat().st_mode & 0o777 == 0o600
    resumed = cli("resume", failed["run_id"], "--json").document()
    assert resumed["status"] == "succeeded"
    assert resumed["outputs"]["fails_first"] == len(SENSITIVE)


def test_unsealed_sensitive_inputs_must_be_given_again(write_pipeline: Write, cli: Cli) -> None:
    path = write_pipeline(
        """
        name: unsealed
        input_variables:
          token: {type: string, sensitive: true}
        tasks:
          - name: fails_first
            type: python_task
            script: |
              if context.update_shared_state("tries", lambda n: n + 1, 0) == 1:
                  raise RuntimeError("first run fails")
              return "{{ token }}" == "abc"
        """
    )
    failed = cli("run", path, "--json", "-i", "token=abc").document()
    missing = cli("resume", failed["run_id"])
    assert missing.code == 2
    assert "input 'token' is required" in missing.stderr
    resumed = cli("resume", failed["run_id"], "--json", "-i", "token=abc").document()
    assert resumed["outputs"]["fails_first"] is True


def test_missing_secret_is_a_clear_task_error(write_pipeline: Write, cli: Cli) -> None:
    path = write_pipeline(
        """
        name: no_secret
        tasks:
          - name: needs
            type: python_task
            error_handling: {retry_count: 3, retry_delay: 0}
            script: return context.get_secret("stripe-key")
        """
    )
    document = cli("run", path, "--json").document()
    assert document["error"]["type"] == "SecretNotFound"
    assert "ORCHESTRATOR_SECRET_STRIPE_KEY" in document["error"]["message"]
    assert document["tasks"]["needs"]["attempts"] == 1


def test_secrets_file_must_be_private(write_pipeline: Write, cli: Cli) -> None:
    home = Path(os.environ["ORCHESTRATOR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    secrets = home / "secrets.yaml"
    secrets.write_text("api: from-file\n")
    path = write_pipeline(
        "name: s\ntasks:\n  - name: a\n    type: python_task\n    script: return context.get_secret('api')\n"
    )
    secrets.chmod(0o644)
    loose = cli("run", path, "--json")
    assert loose.code == 1
    assert loose.document()["error"]["type"] == "ConfigError"
    assert f"chmod 600 {secrets}" in loose.document()["error"]["message"]
    secrets.chmod(0o600)
    assert cli("run", path, "--json").document()["outputs"]["a"] == "***"
