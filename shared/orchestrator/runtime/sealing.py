"""Encryption at rest for sensitive values (`security.encrypt_variables`): Fernet, local key file.

The key is created on first use as `key` in the state folder with mode 0600. On AWS the same
role is played by KMS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError


def _key(home: Path) -> bytes:
    from cryptography.fernet import Fernet

    path = home / "key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(Fernet.generate_key())
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path}: the encryption key is readable by others; run: chmod 600 {path}")
    return path.read_bytes().strip()


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
