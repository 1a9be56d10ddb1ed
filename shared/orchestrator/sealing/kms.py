"""Sealing with AWS KMS: what deployments use (`ORCHESTRATOR_KMS_KEY_ID`)."""

from __future__ import annotations

import base64
import json
from typing import Any

from orchestrator.aws.clients import aws_client
from orchestrator.errors import ConfigError


class KmsSealer:
    """Envelope encryption: a KMS data key per value, bound to the pipeline and input by the
    encryption context, and the value encrypted with it (Fernet) so any size fits.

    The token is `<base64 encrypted data key>.<Fernet token>`. Opening needs `kms:Decrypt`
    only (the key id travels inside the encrypted data key); sealing needs
    `kms:GenerateDataKey` on `ORCHESTRATOR_KMS_KEY_ID`.
    """

    scheme = "kms"

    def __init__(self, key_id: str | None, client: Any = None) -> None:
        self._key_id = key_id
        self._client = client
        self._keys: dict[tuple[str, str, str], bytes] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws_client("kms")
        return self._client

    @staticmethod
    def _context(pipeline_id: str, name: str) -> dict[str, str]:
        return {"orchestrator:pipeline": pipeline_id, "orchestrator:input": name}

    def seal(self, pipeline_id: str, name: str, value: Any) -> str:
        from cryptography.fernet import Fernet

        if not self._key_id:
            raise ConfigError("sealing sensitive inputs needs ORCHESTRATOR_KMS_KEY_ID (a KMS key id or ARN)")
        response = self.client.generate_data_key(
            KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=self._context(pipeline_id, name)
        )
        fernet = Fernet(base64.urlsafe_b64encode(response["Plaintext"]))
        data = fernet.encrypt(json.dumps(value).encode()).decode()
        return base64.b64encode(response["CiphertextBlob"]).decode() + "." + data

    def unseal(self, pipeline_id: str, name: str, token: str) -> Any:
        from cryptography.fernet import Fernet, InvalidToken

        blob, _, data = token.partition(".")
        cache = (blob, pipeline_id, name)
        key = self._keys.get(cache)
        if key is None:
            response = self.client.decrypt(
                CiphertextBlob=base64.b64decode(blob), EncryptionContext=self._context(pipeline_id, name)
            )
            key = self._keys[cache] = base64.urlsafe_b64encode(response["Plaintext"])
        try:
            return json.loads(Fernet(key).decrypt(data.encode()))
        except InvalidToken:
            raise ConfigError(f"sealed input '{name}' is damaged") from None
