"""What a sealer is: it seals one sensitive input of a pipeline into a token, and opens it.

A sealed value travels as `{"sealed": <token>, "by": <scheme>}`; the scheme names the sealer
that opens it (`local` or `kms`).
"""

from __future__ import annotations

from typing import Any, Protocol

SEALED_KEY = "sealed"
SEALED_BY_KEY = "by"


class Sealer(Protocol):
    """Encrypts one sensitive input of a pipeline into a token, bound to the pipeline and
    input, and opens it again."""

    scheme: str

    def seal(self, pipeline_id: str, name: str, value: Any) -> str: ...

    def unseal(self, pipeline_id: str, name: str, token: str) -> Any: ...


def is_sealed(value: Any) -> bool:
    """Whether a value is a sealed envelope."""
    return (
        isinstance(value, dict)
        and set(value) == {SEALED_KEY, SEALED_BY_KEY}
        and isinstance(value[SEALED_KEY], str)
        and isinstance(value[SEALED_BY_KEY], str)
    )
