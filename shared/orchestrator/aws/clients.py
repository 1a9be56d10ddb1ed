"""boto3 clients, one per service and process (Lambda reuses them across invocations)."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def aws_client(service: str) -> Any:
    """A boto3 client, one per service and process (Lambda reuses it across invocations)."""
    import boto3  # type: ignore[import-untyped, unused-ignore]

    return boto3.client(service)
