"""Which sealer, and a run's inputs with their sensitive values sealed or opened."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.sealing.base import SEALED_BY_KEY, SEALED_KEY, Sealer, is_sealed
from orchestrator.sealing.kms import KmsSealer
from orchestrator.sealing.local import LocalSealer
from orchestrator.settings import AwsSettings, Settings, aws_settings, lambda_settings


def sealer_for(scheme: str, settings: Settings | None = None, aws: AwsSettings | None = None) -> Sealer:
    """The sealer of a scheme: `kms` (deployments) or `local` (the in-process engine, tests)."""
    if scheme == KmsSealer.scheme:
        return KmsSealer((aws or aws_settings()).kms_key_id)
    if scheme == LocalSealer.scheme:
        return LocalSealer((settings or lambda_settings()).home)
    raise ConfigError(f"unknown sealing scheme '{scheme}'")


def default_sealer(settings: Settings | None = None, aws: AwsSettings | None = None) -> Sealer:
    """KMS when `ORCHESTRATOR_KMS_KEY_ID` is set or on Lambda (which then insists on it), else local."""
    aws = aws or aws_settings()
    if aws.kms_key_id or aws.on_lambda:
        return KmsSealer(aws.kms_key_id)
    return LocalSealer((settings or lambda_settings()).home)


def seal_inputs(
    pipeline_id: str, inputs: Mapping[str, Any], names: set[str], sealer: Sealer
) -> dict[str, Any]:
    """Inputs with each of `names` replaced by `{"sealed": token, "by": scheme}`.

    Empty values (None, "") stay as they are: they hide nothing, and a pipeline whose
    sensitive inputs default to "" keeps running where no key is configured.
    """
    sealed: dict[str, Any] = {}
    for name, value in inputs.items():
        if name in names and value not in (None, "") and not is_sealed(value):
            sealed[name] = {SEALED_KEY: sealer.seal(pipeline_id, name, value), SEALED_BY_KEY: sealer.scheme}
        else:
            sealed[name] = value
    return sealed


def open_inputs(
    pipeline_id: str, inputs: Mapping[str, Any], sealer: Sealer | None = None
) -> tuple[dict[str, Any], set[str]]:
    """Inputs with sealed values opened, and the names that were sealed."""
    opened: dict[str, Any] = {}
    names: set[str] = set()
    sealers: dict[str, Sealer] = {sealer.scheme: sealer} if sealer is not None else {}
    for name, value in inputs.items():
        if not is_sealed(value):
            opened[name] = value
            continue
        scheme = value[SEALED_BY_KEY]
        if scheme not in sealers:
            sealers[scheme] = sealer_for(scheme)
        opened[name] = sealers[scheme].unseal(pipeline_id, name, value[SEALED_KEY])
        names.add(name)
    return opened, names
