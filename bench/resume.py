"""Benchmark: a large transfer that survives broken connections, and what each break costs.

A dict of float32 arrays goes site -> server over mutual TLS through a fault-injecting relay that
cuts the connection ``--cuts`` times at even intervals (default once, halfway). The site reconnects
and resumes; the session counts the object bytes it sent a second time. Ends with one JSON line:

    {"bench": "resume", "cuts": K, "mib": N, "resent_mib": ..., "window_mib": ...,
     "digest_ok": true, "seconds": ...}

Goal: ``resent_mib`` at most one flow-control window per cut.

Usage: python bench/resume.py [--mib N] [--cuts K] [--backend trio|asyncio]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import emit
from bench.transfer import make_model
from flrt.logs import configure_logging
from security.pki import Identity, Role, create_ca, identity_from_certificate
from security.tls import client_ssl_context, server_ssl_context
from transport.bus import Message, Node
from transport.errors import TransportError
from transport.protocol.session import SessionConfig
from transport.testing import FaultProxy, ProxyStats

MiB = 1024 * 1024


def _has_cuts(n: int, stats: ProxyStats) -> bool:
    return stats.cuts >= n


async def run(mib: int, cuts: int) -> dict[str, Any]:
    ca = create_ca("flrt-bench-ca")
    server_cred = ca.issue(Identity("server", "hub", Role.SERVER), hosts=["localhost"])
    site_cred = ca.issue(Identity("site-1", "org", Role.SITE))
    config = SessionConfig()
    model = make_model(mib)
    received: dict[str, Any] = {}
    digest_ok = False
    done = anyio.Event()

    async def sink(message: Message) -> None:
        nonlocal digest_ok
        assert message.object is not None
        try:
            received.update(await message.object.arrays())  # raises on a digest mismatch
            digest_ok = all(np.array_equal(received[k], v) for k, v in model.items())
        except TransportError:
            digest_ok = False
        done.set()

    async with Node("server", config=config) as server, Node("site-1", config=config) as site:
        server.register("sink", sink)
        port = await server.serve(
            server_ssl_context(server_cred, ca.cert_pem),
            lambda der: identity_from_certificate(der).name,
        )
        async with FaultProxy("127.0.0.1", port) as proxy:
            await site.connect(
                "127.0.0.1",
                proxy.port,
                client_ssl_context(site_cred, ca.cert_pem),
                server_hostname="localhost",
                backoff=(0.01, 0.1),
            )
            interval = mib * MiB // (cuts + 1)
            start = time.perf_counter()
            async with anyio.create_task_group() as tg:

                async def cutter() -> None:
                    for done_cuts in range(1, cuts + 1):
                        proxy.cut_after(interval, direction="up")
                        await proxy.wait_stats(functools.partial(_has_cuts, done_cuts))

                tg.start_soon(cutter)
                await site.tell("server/sink", None, arrays=model)
                await done.wait()
                tg.cancel_scope.cancel()
            seconds = time.perf_counter() - start
            session = site.link("server").session
            made = proxy.stats.cuts
        site.task_group.cancel_scope.cancel()
        server.task_group.cancel_scope.cancel()
    return {
        "bench": "resume",
        "cuts": made,
        "mib": mib,
        "resent_mib": round(session.resent_object_bytes / MiB, 2),
        "window_mib": round(config.object_window / MiB, 2),
        "digest_ok": digest_ok,
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--cuts", type=int, default=1)
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    args = parser.parse_args()
    configure_logging(console=None)
    emit(anyio.run(run, args.mib, args.cuts, backend=args.backend))


if __name__ == "__main__":
    main()
