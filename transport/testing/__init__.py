"""transport.testing: tools for testing and benchmarking code that talks over TCP.

:class:`FaultProxy` sits between a client and a server on loopback and cuts, stalls, throttles or
refuses connections on command, counting every byte it forwards (:class:`ProxyStats`).
"""

from __future__ import annotations

from transport.testing.proxy import Direction, FaultProxy, ProxyStats

__all__ = ["Direction", "FaultProxy", "ProxyStats"]
