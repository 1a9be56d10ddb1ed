"""Sealing with a local key: Fernet, with a key file in the state folder.

What the embedded engine uses for encryption at rest (`security.encrypt_variables`: the
sensitive inputs of a run's resume record), and what the in-process stepfunctions engine and
the tests seal execution inputs with. The key is created on first use as `key` in the state
folder with mode 0600.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError, StateFolderError


def _key(home: Path) -> bytes:
    """The state folder's key, made when missing; a `StateFolderError` when it cannot be used."""
    from cryptography.fernet import Fernet

    path = home / "key"
    try:
        if not path.exists():
            home.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(Fernet.generate_key())
        key = path.read_bytes().strip()
        Fernet(key)
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path}: the encryption key is readable by others; run: chmod 600 {path}")
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        raise StateFolderError(
            f"{path}: the key that seals sensitive inputs cannot be used ({reason}): restore it, or move it "
            "aside and a new one is made (runs sealed with the old one can then not be resumed)"
        ) from None
    return key


def seal(values: dict[str, Any], home: Path) -> str:
    """Encrypt a mapping of sensitive values into an opaque token."""
    from cryptography.fernet import Fernet

    token: bytes = Fernet(_key(home)).encrypt(json.dumps(values).encode())
    return token.decode()


def unseal(token: str, home: Path) -> dict[str, Any]:
    """The mapping `seal` encrypted; a clear error when the key changed."""
    from cryptography.fernet import Fernet, InvalidToken

    try:
        loaded: dict[str, Any] = json.loads(Fernet(_key(home)).decrypt(token.encode()))
    except InvalidToken:
        raise ConfigError(
            f"cannot decrypt sensitive values: {home / 'key'} is not the key they were sealed with"
        ) from None
    return loaded


class LocalSealer:
    """Fernet with the state folder's key: for the in-process stepfunctions engine and tests.

    On Lambda every container has its own `/tmp`, so a value sealed by one function cannot be
    opened by another: deployments set `ORCHESTRATOR_KMS_KEY_ID` and get `KmsSealer`.
    """

    scheme = "local"

    def __init__(self, home: Path) -> None:
        self._home = home

    def seal(self, pipeline_id: str, name: str, value: Any) -> str:
        return seal({"pipeline": pipeline_id, "input": name, "value": value}, self._home)

    def unseal(self, pipeline_id: str, name: str, token: str) -> Any:
        opened = unseal(token, self._home)
        if opened.get("pipeline") != pipeline_id or opened.get("input") != name:
            raise ConfigError(f"sealed input '{name}' was sealed for another pipeline or input")
        return opened.get("value")
