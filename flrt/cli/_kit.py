"""``flrt kit``: verify, open and seal startup kits (what each runs is in :mod:`flrt.cli._kit_run`).

Every command's parser is built whichever command runs, so this module imports only
:mod:`argparse`: the kit, seal and password code (and ``cryptography``, ``tarfile`` and
``getpass`` with them) load when a ``kit`` command is called, not in every site or server process.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _verify(args: argparse.Namespace) -> int:
    from flrt.cli._kit_run import verify

    return verify(args)


def _open(args: argparse.Namespace) -> int:
    from flrt.cli._kit_run import open_kit

    return open_kit(args)


def _seal(args: argparse.Namespace) -> int:
    from flrt.cli._kit_run import seal

    return seal(args)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "kit",
        help="verify, open or seal a startup kit",
        description="Verify, open or seal a startup kit made by `flrt provision`.",
    )
    commands = parser.add_subparsers(dest="kit_command", metavar="ACTION", required=True)

    verify = commands.add_parser(
        "verify",
        help="check a kit's signature, chain and dates and show what it holds",
        description="Check the CA signature over every signed file, the certificate chain and its "
        "dates, and show who the kit is for.",
    )
    verify.add_argument("kit", type=Path, metavar="KIT", help="the kit folder")
    verify.add_argument(
        "--ca-fingerprint",
        metavar="SHA256",
        help="the project CA's SHA-256 fingerprint as Lead IT gave it (colons optional)",
    )
    verify.set_defaults(handler=_verify)

    open_ = commands.add_parser(
        "open",
        allow_abbrev=False,  # `--password secret` must not be taken for --password-file
        help="open a sealed kit into a new folder",
        description="Decrypt a sealed kit, verify it, and write it to a new folder. A wrong "
        "password or a damaged archive leaves nothing behind.",
    )
    open_.add_argument("archive", type=Path, metavar="ARCHIVE", help="the sealed .flrtkit file")
    open_.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    open_.add_argument("--password-file", type=Path, metavar="FILE")
    open_.add_argument("--ca-fingerprint", metavar="SHA256")
    open_.set_defaults(handler=_open)

    seal = commands.add_parser(
        "seal",
        allow_abbrev=False,
        help="seal a kit into one password-protected file",
        description="Write a kit folder as one file encrypted with a password (Argon2id and "
        "AES-256-GCM).",
    )
    seal.add_argument("kit", type=Path, metavar="KIT")
    seal.add_argument("-o", "--output", type=Path, required=True, metavar="ARCHIVE")
    seal.add_argument("--password-file", type=Path, metavar="FILE")
    seal.set_defaults(handler=_seal)
