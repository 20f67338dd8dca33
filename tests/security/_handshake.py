"""A TLS handshake between two contexts over memory BIOs: no sockets, no threads, deterministic."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class Handshake:
    server_peer_der: bytes | None
    client_peer_der: bytes | None
    version: str | None


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, *, server_hostname: str = "fl.example.org"
) -> Handshake:
    """Run a full handshake; raise the first :class:`ssl.SSLError` either side reports."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    done = {"s": False, "c": False}
    for _ in range(50):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
        moved = c_out.pending + s_out.pending
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()) and moved == 0:
            break
    else:  # pragma: no cover - a hung handshake is a test failure, not a hang
        raise AssertionError("handshake did not finish")
    # TLS 1.3: the server verifies the client's certificate after the client thinks it is done, so
    # exchange one byte each way to surface a late rejection on the client side.
    c.write(b"x")
    s_in.write(c_out.read())
    assert s.read(1) == b"x"
    s.write(b"y")
    c_in.write(s_out.read())
    assert c.read(1) == b"y"
    return Handshake(
        server_peer_der=s.getpeercert(binary_form=True),
        client_peer_der=c.getpeercert(binary_form=True),
        version=c.version(),
    )
