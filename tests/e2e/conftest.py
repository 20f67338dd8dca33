"""End-to-end tests: every node a separate process, real mutual TLS on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e._cluster import Cluster


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # the nodes are processes; the test's own loop only drives the admin client


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        codes = cluster.stop()
        assert all(code == 0 for code in codes.values()), {
            name: (code, cluster.output(name)[-2000:]) for name, code in codes.items() if code
        }
