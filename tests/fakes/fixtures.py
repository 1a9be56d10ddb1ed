"""Pytest fixtures that run the fake servers of `servers.py` for the length of one test.

Import them into a test module or a conftest: ``from fakes.fixtures import fake_openai``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .servers import FakeOpenAIServer, FakeSearchServer

__all__ = ["fake_openai", "fake_search"]


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A running `FakeOpenAIServer` that echoes the prompt unless scripted otherwise."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def fake_search() -> Iterator[FakeSearchServer]:
    """A running `FakeSearchServer` answering two results per query unless scripted otherwise."""
    with FakeSearchServer() as server:
        yield server
