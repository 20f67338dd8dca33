"""What ``flrt provision`` runs: create or extend a workspace, revoke a participant, list them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from cryptography import x509

from flrt.cli._kit_run import read_password
from security.errors import ProjectFileError, WorkspaceError
from security.kit import TRUST_DIR
from security.project import EXAMPLE_PROJECT, parse_project
from security.provision import (
    KITS_DIR,
    ProvisionResult,
    open_workspace,
    provision,
    revoke,
)

__all__ = ["handle"]


def _report(result: ProvisionResult, project_name: str, server: str) -> None:
    ws = result.workspace
    print(f"workspace {ws}" + (" (new project CA)" if result.first_run else ""))
    print(f"project CA SHA-256 fingerprint: {result.ca_fingerprint}")
    for name in result.created:
        print(f"  created   {name:<36} {KITS_DIR}/{name}")
    if result.unchanged:
        print(
            f"  unchanged {len(result.unchanged)} participants (keys, certificates and kits untouched)"
        )
    for name in result.readmitted:
        print(f"  readmitted {name}: back in the server's participant list (same kit)")
    for name in result.revoked:
        print(
            f"warning: {name} is in the project file but its certificate was revoked; it gets no "
            "new kit: add the participant under a new name",
            file=sys.stderr,
        )
    for name in result.removed:
        print(
            f"warning: {name} is no longer in the project file: its kit stays in {KITS_DIR}/{name} "
            "and it is dropped from the server's participant list (refused once the server loads "
            f"it); to lock its key out for good run: flrt provision revoke {name} -w {ws}",
            file=sys.stderr,
        )
    for archive in result.sealed:
        print(f"  sealed    {archive}")
    if not result.first_run and (result.created or result.removed or result.readmitted):
        print(
            f"the server's participant list changed: copy {ws / KITS_DIR / server / TRUST_DIR}/ "
            "to the server's kit and restart it"
        )
    if not (result.created or result.removed or result.readmitted):
        print(f"nothing to do: every participant of {project_name} already has a kit")
    else:
        print(
            "hand each kit (or sealed file) to its owner, send sealed-kit passwords over another "
            "channel, and read them the CA fingerprint above so they can check it"
        )


def _provision(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> int:
    if len(args.args) != 1:
        fail("give one project file: flrt provision PROJECT.toml -o WORKSPACE")
    if args.output is None:
        fail("say where the workspace goes: -o WORKSPACE")
    if args.workspace is not None or args.reason is not None:
        fail("-w and --reason belong to `flrt provision revoke`")
    if args.password_file is not None and not args.seal:
        fail("--password-file is only used with --seal")
    path = Path(args.args[0])
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ProjectFileError(path, None, f"cannot be read: {exc.strerror or exc}") from None
    try:
        project = parse_project(text.decode("utf-8"), path)
    except UnicodeDecodeError:
        raise ProjectFileError(path, None, "is not UTF-8 text") from None
    password = (
        read_password(args.password_file, confirm=True, what="the sealed kits")
        if args.seal
        else None
    )
    try:
        result = provision(project, args.output, project_text=text, seal_password=password)
    except OSError as exc:  # a full disk, a folder this user may not write
        raise WorkspaceError(args.output, f"cannot be written: {exc.strerror or exc}") from None
    _report(result, project.name, project.server.name)
    return 0


def _revoke(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> int:
    if len(args.args) != 2:
        fail("give one name: flrt provision revoke NAME -w WORKSPACE")
    if args.workspace is None:
        fail("say which workspace: -w WORKSPACE")
    if args.output is not None or args.seal or args.password_file is not None:
        fail("-o, --seal and --password-file do not apply to revoke")
    name = args.args[1]
    reason = x509.ReasonFlags[(args.reason or "unspecified").replace("-", "_")]
    try:
        result = revoke(args.workspace, name, reason=reason)
    except OSError as exc:
        raise WorkspaceError(args.workspace, f"cannot be written: {exc.strerror or exc}") from None
    state = "was already revoked" if result.already_revoked else "revoked"
    print(f"{name} {state} (serial {result.serial_number:x}); CRL number {result.crl_number}:")
    for file in result.crl_files:
        print(f"  {file}")
    print(
        "copy the server kit's trust/crl.pem to the running server and restart it; the CRL is "
        "signed by the CA, so the kit itself needs no new signature"
    )
    return 0


def _list(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> int:
    if len(args.args) != 1 or args.workspace is None:
        fail("usage: flrt provision list -w WORKSPACE")
    ws = open_workspace(args.workspace)
    print(f"project {ws.project}, CA {ws.ca.name}")
    for name, entry in sorted(ws.entries.items(), key=lambda item: (item[1].role.value, item[0])):
        print(
            f"  {name:<36} {entry.role.value:<14} {entry.organisation:<24} "
            f"{entry.status:<8} expires {entry.not_after[:10]}"
        )
    return 0


def handle(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> int:
    """Run ``flrt provision``; ``fail`` reports a usage error (the parser's ``error``)."""
    if args.example:
        if args.args or args.output or args.workspace or args.seal:
            fail("--example takes no other arguments")
        sys.stdout.write(EXAMPLE_PROJECT)
        return 0
    if not args.args:
        fail("give a project file, or --example")
    if args.args[0] == "revoke":
        return _revoke(args, fail)
    if args.args[0] == "list":
        return _list(args, fail)
    return _provision(args, fail)
