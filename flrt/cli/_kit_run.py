"""What ``flrt kit`` runs (see :mod:`flrt.cli._kit` for its arguments): verify, open and seal kits.

- ``flrt kit verify KIT [--ca-fingerprint SHA256]``: check the signature, chain and dates and print
  what the kit holds.
- ``flrt kit open ARCHIVE -o DIR [--password-file FILE] [--ca-fingerprint SHA256]``: open a sealed
  kit into a new folder (nothing is left behind if the password is wrong).
- ``flrt kit seal KIT -o ARCHIVE [--password-file FILE]``: seal a kit into one file.

Passwords are asked on the terminal (twice when sealing) or read from ``--password-file``; they
are never accepted on the command line, where other users of the machine could read them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from pathlib import Path

from security.errors import SealError, SealPasswordError
from security.kit import LOCAL_DIR, Kit, load_kit
from security.seal import open_sealed_kit, seal_kit

__all__ = ["describe_kit", "open_kit", "read_password", "seal", "verify"]

_EXPIRY_WARNING = dt.timedelta(days=30)


def _interactive() -> bool:
    return sys.stdin.isatty()


def read_password(password_file: Path | None, *, confirm: bool, what: str) -> bytes:
    """The password from ``password_file`` (first line), or asked on the terminal.

    Raises :class:`SealError` if neither is possible, :class:`SealPasswordError` if the two entries
    differ or the password is empty.
    """
    if password_file is not None:
        try:
            text = password_file.read_bytes()
        except OSError as exc:
            raise SealError(
                f"password file {password_file} cannot be read: {exc.strerror or exc}"
            ) from None
        password = text.split(b"\n", 1)[0].removesuffix(b"\r")
    else:
        if not _interactive():
            raise SealError("no terminal to ask for the password on; use --password-file FILE")
        first = getpass.getpass(f"Password for {what}: ")
        if confirm and getpass.getpass("Repeat the password: ") != first:
            raise SealPasswordError("the two passwords differ")
        password = first.encode("utf-8")
    if not password:
        raise SealPasswordError("the password is empty")
    return password


def describe_kit(kit: Kit, *, now: dt.datetime | None = None) -> list[str]:
    """Human-readable lines about a verified kit (no secrets)."""
    now = now or dt.datetime.now(dt.UTC)
    identity, config, cert = kit.identity, kit.config, kit.certificate
    left = cert.not_valid_after_utc - now
    expiry = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC (in {left.days} days)"
    ca_name = kit.ca_certificate.subject.rfc4514_string()
    servers = ", ".join(f"{host}:{port}" for host, port in config.server_addresses)
    lines = [
        f"kit {kit.path}: signature, chain and dates OK",
        f"  name           {identity.name}",
        f"  organisation   {identity.organisation}",
        f"  role           {identity.role.value}",
        f"  project        {config.project}",
        f"  certificate    serial {cert.serial_number:x}",
        f"  valid from     {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
        f"  expires        {expiry}",
        f"  CA             {ca_name}",
        f"  CA SHA-256     {kit.ca_fingerprint}",
        f"  server         {servers}"
        + (" (listens here)" if identity.role.value == "server" else ""),
        f"  signed files   startup/: {', '.join(kit.signed_files)} (signed {kit.signed_at})",
    ]
    local = kit.path / LOCAL_DIR
    if local.is_dir():
        names = sorted(p.name for p in local.iterdir())
        lines.append(f"  local policies {', '.join(names) or 'none'} (site-owned, not signed)")
    if kit.participants is not None:
        revoked = len(list(kit.crl)) if kit.crl is not None else 0
        lines.append(
            f"  trust          {len(kit.participants)} participants, {revoked} revoked certificates"
        )
    if left < _EXPIRY_WARNING:
        lines.append(
            f"warning: the certificate expires in {left.days} days; ask Lead IT for a new kit"
        )
    return lines


def verify(args: argparse.Namespace) -> int:
    kit = load_kit(args.kit, ca_fingerprint=args.ca_fingerprint)
    print("\n".join(describe_kit(kit)))
    if args.ca_fingerprint is None:
        print(
            "note: compare the CA SHA-256 with the one Lead IT gave you, or pass --ca-fingerprint"
        )
    return 0


def open_kit(args: argparse.Namespace) -> int:
    password = read_password(args.password_file, confirm=False, what=str(args.archive))
    kit = open_sealed_kit(args.archive, args.output, password, ca_fingerprint=args.ca_fingerprint)
    print("\n".join(describe_kit(kit)))
    return 0


def seal(args: argparse.Namespace) -> int:
    load_kit(args.kit)  # refuse a broken kit before asking for a password
    password = read_password(args.password_file, confirm=True, what=f"sealing {args.kit}")
    archive = seal_kit(args.kit, args.output, password)
    print(f"sealed {args.kit} into {archive}; send the password over another channel")
    return 0
