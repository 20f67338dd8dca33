"""Lead IT hands each kit over and may delete its copy, the server's included; a later run
still writes the server's participant list and revocation list where it tells Lead IT to copy
them from (``kits/<server>/trust/``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from cryptography import x509

from security.kit import load_kit
from security.project import parse_project
from security.provision import open_workspace, provision, revoke
from tests.security.conftest import SMALL_PROJECT, with_site


def _handed_over(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace whose server kit was moved to the server: (workspace, the server's kit)."""
    ws = tmp_path / "ws"
    provision(parse_project(SMALL_PROJECT), ws)
    server = tmp_path / "on-the-server"
    shutil.move(ws / "kits" / "server", server)
    return ws, server


def _copy_trust(ws: Path, server: Path) -> None:
    """What the report tells Lead IT to do: copy kits/server/trust/ to the server's kit."""
    shutil.copytree(ws / "kits" / "server" / "trust", server / "trust", dirs_exist_ok=True)


def test_a_new_site_reaches_a_server_whose_kit_was_handed_over(tmp_path: Path) -> None:
    ws, server = _handed_over(tmp_path)
    result = provision(parse_project(with_site(SMALL_PROJECT, "site-c")), ws)
    assert result.created == ("site-c",)
    _copy_trust(ws, server)
    participants = load_kit(server).participants
    assert participants is not None
    assert "site-c" in participants


def test_a_revocation_reaches_a_server_whose_kit_was_handed_over(tmp_path: Path) -> None:
    ws, server = _handed_over(tmp_path)
    result = revoke(ws, "site-a", reason=x509.ReasonFlags.key_compromise)
    assert ws / "kits" / "server" / "trust" / "crl.pem" in result.crl_files
    _copy_trust(ws, server)
    crl = load_kit(server).crl
    assert crl is not None
    serial = open_workspace(ws).entries["site-a"].serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
