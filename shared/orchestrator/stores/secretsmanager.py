"""Secrets from AWS Secrets Manager through Powertools parameters (cached for five minutes)."""

from __future__ import annotations

from typing import Any

SECRET_PREFIX = "orchestrator/"
CACHE_SECONDS = 300


class SecretsManagerSecrets:
    """`get_secret("name")` reads the secret `orchestrator/name`; None when there is none."""

    def __init__(self, provider: Any = None) -> None:
        self._provider = provider

    def _secrets_provider(self) -> Any:
        if self._provider is None:
            from aws_lambda_powertools.utilities.parameters import SecretsProvider

            self._provider = SecretsProvider()
        return self._provider

    def get(self, name: str) -> str | None:
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        try:
            value = self._secrets_provider().get(SECRET_PREFIX + name, max_age=CACHE_SECONDS)
        except GetParameterError:
            return None
        return None if value is None else str(value)
