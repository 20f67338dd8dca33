"""One provisioned project per test session (tests copy nothing: nodes only read their kits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nodes._project import provision_project


@pytest.fixture(scope="session")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_project(tmp_path_factory.mktemp("project") / "ws")
