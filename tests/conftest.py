"""Shared fixtures: every async test runs on both AnyIO backends, trio first."""

from __future__ import annotations

import pytest


@pytest.fixture(
    params=[
        pytest.param("trio", id="trio"),
        pytest.param("asyncio", id="asyncio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend
