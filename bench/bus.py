"""Benchmark: the bus over mutual TLS on loopback.

Measures the round trip of a small ``ask`` (median and p99) and how many small one-way messages per
second a site can send to the server. The server runs in its own process, so each side has a core.
Ends with one JSON line per backend:

    {"bench": "bus", "backend": "trio", "ask_rtt_median_us": ..., "ask_rtt_p99_us": ..., "msgs_per_s": ...}

Usage: python bench/bus.py [--backend trio|asyncio] [--asks N] [--messages N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._pki import BenchPki
from bench._util import emit, percentile
from flrt.logs import configure_logging
from security.pki import identity_from_certificate
from transport.bus import Message, Node

BACKENDS = ("trio", "asyncio")


async def serve(folder: Path) -> None:
    """The server process: an echo actor and a counting sink; prints its port, runs until stdin closes."""
    count = 0

    async def echo(message: Message) -> Any:
        return message.body

    async def sink(message: Message) -> None:
        nonlocal count
        count += 1

    async def counted(message: Message) -> int:
        return count

    async with Node("server") as node:
        node.register("echo", echo)
        node.register("sink", sink, mailbox_size=1024)
        node.register("count", counted)
        port = await node.serve(
            BenchPki.server_context(folder), lambda der: identity_from_certificate(der).name
        )
        print(port, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)
        node.task_group.cancel_scope.cancel()


async def measure(folder: Path, port: int, asks: int, messages: int) -> dict[str, float]:
    async with Node("site-1") as node:
        await node.connect(
            "127.0.0.1",
            port,
            BenchPki.client_context(folder, "site-1"),
            server_hostname="localhost",
        )
        for _ in range(200):  # warm up
            await node.ask("server/echo", b"x" * 32, timeout=10)
        samples: list[float] = []
        for _ in range(asks):
            start = time.perf_counter()
            await node.ask("server/echo", b"x" * 32, timeout=10)
            samples.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(messages):
            await node.tell("server/sink", i)
        while (await node.ask("server/count", None, timeout=30)).body < messages + 0:
            pass
        elapsed = time.perf_counter() - start
        node.task_group.cancel_scope.cancel()
    return {
        "ask_rtt_median_us": round(percentile(samples, 50) * 1e6, 1),
        "ask_rtt_p99_us": round(percentile(samples, 99) * 1e6, 1),
        "msgs_per_s": round(messages / elapsed),
    }


def run_backend(backend: str, asks: int, messages: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        BenchPki(folder)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(folder), "--backend", backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            figures = anyio.run(measure, folder, port, asks, messages, backend=backend)
        finally:
            if server.stdin is not None:
                server.stdin.close()
            server.wait(timeout=30)
    return {"bench": "bus", "backend": backend, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=BACKENDS)
    parser.add_argument("--asks", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging(console=None)
    if args.serve is not None:
        anyio.run(serve, args.serve, backend=args.backend or "trio")
        return
    for backend in [args.backend] if args.backend else BACKENDS:
        emit(run_backend(backend, args.asks, args.messages))


if __name__ == "__main__":
    main()
