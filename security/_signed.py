"""Detached ECDSA signatures over canonical JSON documents (kit manifests, participant lists).

A document is stored as two files: ``NAME.json`` holds the canonical JSON bytes (sorted keys, no
insignificant white space, UTF-8, one trailing newline) and ``NAME.sig`` the base64 of the DER
ECDSA-SHA256 signature over exactly those bytes. Verifying the bytes as stored, rather than
re-serialising a parsed object, means no two JSON libraries ever have to agree on a canonical form.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["canonical_json", "sign", "verify"]


def canonical_json(payload: dict[str, Any]) -> bytes:
    return (
        json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8"
        )
        + b"\n"
    )


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """The ``.sig`` file content for ``data``: base64 DER signature and a newline."""
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))) + b"\n"


def verify(public_key: ec.EllipticCurvePublicKey, data: bytes, signature_file: bytes) -> bool:
    """True if ``signature_file`` (as written by :func:`sign`) is a valid signature over ``data``."""
    try:
        signature = base64.b64decode(signature_file.strip(), validate=True)
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
