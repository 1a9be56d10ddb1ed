"""Local secrets: `ORCHESTRATOR_SECRET_<NAME>` in the environment, then a secrets file."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from orchestrator.errors import ConfigError


class LocalSecrets:
    """Secrets from the environment first, then `secrets.yaml` under the state folder (mode 0600)."""

    def __init__(self, file: Path | None = None, environ: dict[str, str] | None = None) -> None:
        self._file = file
        self._environ = os.environ if environ is None else environ
        self._from_file: dict[str, str] | None = None

    def get(self, name: str) -> str | None:
        variable = "ORCHESTRATOR_SECRET_" + name.upper().replace("-", "_").replace("/", "_")
        if variable in self._environ:
            return self._environ[variable]
        return self._file_secrets().get(name)

    def in_file(self) -> dict[str, str]:
        """The secrets of the secrets file, by name (those of the environment are not listed)."""
        return dict(self._file_secrets())

    def _file_secrets(self) -> dict[str, str]:
        if self._from_file is None:
            self._from_file = {}
            if self._file is not None and self._file.is_file():
                mode = self._file.stat().st_mode & 0o777
                if mode & 0o077:
                    raise ConfigError(
                        f"{self._file}: secrets file is readable by others (mode {mode:o}); "
                        f"run: chmod 600 {self._file}"
                    )
                loaded = yaml.safe_load(self._file.read_text(encoding="utf-8")) or {}
                if not isinstance(loaded, dict):
                    raise ConfigError(f"{self._file}: must map secret names to values")
                self._from_file = {str(k): str(v) for k, v in loaded.items()}
        return self._from_file
