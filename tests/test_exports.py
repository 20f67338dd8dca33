"""Every public module declares ``__all__``, and every exported name exists."""

from __future__ import annotations

import importlib
import importlib.resources
import pkgutil
from types import ModuleType

import pytest

PACKAGES = ("flrt", "transport", "security")


def _public_modules() -> list[str]:
    names: list[str] = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            leaf = info.name.rsplit(".", 1)[-1]
            if any(part.startswith("_") for part in info.name.split(".")[1:]):
                continue
            if leaf == "__main__":
                continue
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _public_modules())
def test_public_module_declares_all(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    missing = [item for item in exported if not hasattr(module, item)]
    assert missing == []


def test_packages_ship_py_typed() -> None:
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        assert package.__file__ is not None
        assert (importlib.resources.files(package_name) / "py.typed").is_file()
