"""``flrt provision``: the project CA and one signed startup kit per participant.

- ``flrt provision --example``: print a commented example ``project.toml``.
- ``flrt provision PROJECT.toml -o WORKSPACE [--seal] [--password-file FILE]``: create the workspace,
  or add the kits of new participants to it (existing keys and certificates are never touched).
- ``flrt provision revoke NAME -w WORKSPACE [--reason REASON]``: put a participant's certificate on
  the CA-signed revocation list.
- ``flrt provision list -w WORKSPACE``: show every participant ever issued and its state.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["register"]

_USAGE = """\
flrt provision PROJECT.toml -o WORKSPACE [--seal] [--password-file FILE]
       flrt provision --example
       flrt provision revoke NAME -w WORKSPACE [--reason REASON]
       flrt provision list -w WORKSPACE"""

#: The CRL reason codes that ``--reason`` accepts (:class:`cryptography.x509.ReasonFlags`).
_REASONS = (
    "affiliation-changed",
    "cessation-of-operation",
    "key-compromise",
    "superseded",
    "unspecified",
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "provision",
        allow_abbrev=False,  # `--password secret` must not be taken for --password-file
        help="create the project CA and one signed startup kit per participant",
        usage=_USAGE,
        description="Create the project CA and one signed startup kit per participant of "
        "PROJECT.toml in WORKSPACE. Run it again after adding participants: only their kits are "
        "created, every existing key and certificate is left as it is.",
        epilog="Start with `flrt provision --example > project.toml`.",
    )
    parser.add_argument(
        "args", nargs="*", metavar="PROJECT.toml", help="the project file (or: revoke NAME, list)"
    )
    parser.add_argument("--example", action="store_true", help="print an example project file")
    parser.add_argument("-o", "--output", type=Path, metavar="WORKSPACE", help="the workspace")
    parser.add_argument(
        "-w", "--workspace", type=Path, metavar="WORKSPACE", help="the workspace (revoke, list)"
    )
    parser.add_argument(
        "--seal", action="store_true", help="also write each new kit as a password-sealed file"
    )
    parser.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="read the sealing password from FILE's first line instead of asking",
    )
    parser.add_argument(
        "--reason", choices=_REASONS, default=None, help="why a certificate is revoked"
    )

    def fail(message: str) -> NoReturn:
        parser.error(message)

    def handler(args: argparse.Namespace) -> int:
        from flrt.cli._provision_run import handle  # security.provision loads only when it runs

        return handle(args, fail)

    parser.set_defaults(handler=handler)
