"""Benchmark: moving a large model over mutual TLS on loopback, against stdlib ``ssl``.

A dict of float32 arrays (default 1 GiB in all) goes site -> server, then server -> site, with flrt
on each AnyIO backend. In the same run, the same bytes go over blocking stdlib ``ssl`` sockets (TLS
1.3, the same certificates) as the baseline. Sender and receiver are separate processes, fresh for
every transfer, so the receiver's peak RSS is its own. Ends with one JSON line per backend:

    {"bench": "transfer", "backend": ..., "mib": ..., "flrt_mb_s": ..., "ssl_mb_s": ...,
     "ratio": ..., "receiver_peak_rss_mib": ..., "ssl_sha256_mb_s": ..., ...}

``flrt_mb_s`` and ``ssl_mb_s`` are the means of the two directions (MB = 10**6 bytes);
``receiver_peak_rss_mib`` is the larger of the two flrt receivers.

``ssl_sha256_mb_s`` is the same stdlib baseline with the one piece of work the object protocol
requires on top of moving bytes: the sender computes the SHA-256 of what it sends, the receiver of
what it receives (as flrt does, once per side). ``ssl_sha256_mb_s / ssl_mb_s`` is the most any
implementation of the protocol could reach against the plain baseline on this machine, before
it even keeps what it receives (the plain baseline decrypts into one reused 1 MiB buffer; a real
receiver fills fresh arrays, whose first touch is measured here as 0.25 to 1.4 GB/s).

``ssl_busy_cores`` (and ``ssl_sha256_busy_cores``, ``flrt_busy_cores``) is how many of the
machine's ``cores`` were busy during the transfer, from ``/proc/stat`` (so: a quiet machine). When
the plain baseline already keeps them all busy, the digest cannot hide in idle time, on another
thread or not: ``ssl_sha256_ratio`` is then a ceiling, not just a reference.

``flrt_mb_s`` is each receiver's first object, received into fresh memory. On the same
connection, the same object then goes again: ``warm_flrt_mb_s`` (and ``warm_ratio`` against the
same baseline) is that second transfer, received into the mapping the first one left in the
node's pool, which is what a node receiving a model every round sees from the second round on.

Usage: python bench/transfer.py [--mib N] [--backend trio|asyncio]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._pki import BenchPki
from bench._util import CpuClock, emit, peak_rss_mib
from flrt.logs import configure_logging
from security.pki import identity_from_certificate
from transport.bus import Message, Node, Reply

BACKENDS = ("trio", "asyncio")
MiB = 1024 * 1024
ARRAYS = 8


def make_model(mib: int) -> dict[str, npt.NDArray[Any]]:
    """``mib`` MiB of float32 in ``ARRAYS`` arrays, filled so the pages are really there."""
    per = mib * MiB // 4 // ARRAYS
    return {f"layer{i}": np.full(per, float(i), dtype=np.float32) for i in range(ARRAYS)}


def _timeout(mib: int) -> float:
    return 60.0 + mib / 20  # generous: never the thing being measured


# -- flrt --------------------------------------------------------------------------------------


async def flrt_server(folder: Path, direction: str, mib: int) -> None:
    model = make_model(mib) if direction == "down" else None

    async def sink(message: Message) -> float:
        assert message.object is not None
        arrays = await message.object.arrays()
        assert len(arrays) == ARRAYS
        return peak_rss_mib()

    async def source(message: Message) -> Reply:
        assert model is not None
        return Reply(None, arrays=model)

    async with Node("server", keep_idle_receive_bytes=_keep_idle(mib)) as node:
        node.register("sink", sink)
        node.register("source", source)
        port = await node.serve(
            BenchPki.server_context(folder), lambda der: identity_from_certificate(der).name
        )
        print(port, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)
        node.task_group.cancel_scope.cancel()


async def flrt_site(folder: Path, port: int, direction: str, mib: int) -> dict[str, float]:
    """Two transfers on one connection: the first into fresh memory, the second into the
    receive mapping the first left behind (what a site or server receiving a model every round
    sees)."""
    model = make_model(mib) if direction == "up" else None
    async with Node("site-1", keep_idle_receive_bytes=_keep_idle(mib)) as node:
        await node.connect(
            "127.0.0.1",
            port,
            BenchPki.client_context(folder, "site-1"),
            server_hostname="localhost",
        )
        seconds: list[float] = []
        receiver_rss = 0.0
        cpu = CpuClock()
        busy: list[float] = []
        for _attempt in ("cold", "warm"):
            cpu.start()
            start = time.perf_counter()
            if direction == "up":
                reply = await node.ask("server/sink", None, arrays=model, timeout=_timeout(mib))
                receiver_rss = max(receiver_rss, float(reply.body))
            else:
                reply = await node.ask("server/source", None, timeout=_timeout(mib))
                assert reply.object is not None
                arrays = await reply.object.arrays()
                assert len(arrays) == ARRAYS
                receiver_rss = max(receiver_rss, peak_rss_mib())
                del arrays  # its mapping goes back to the node's pool
            seconds.append(time.perf_counter() - start)
            busy.append(cpu.stop())
            del reply
        node.task_group.cancel_scope.cancel()
    return {
        "seconds": seconds[0],
        "warm_seconds": seconds[1],
        "receiver_rss": receiver_rss,
        "busy_cores": busy[0],
    }


def _keep_idle(mib: int) -> int:
    """Idle receive memory a node keeps: one object, so the second transfer reuses it."""
    return mib * MiB + MiB


# -- stdlib ssl baseline -----------------------------------------------------------------------


def ssl_server(folder: Path, direction: str, mib: int, digest: bool) -> None:
    context = BenchPki.server_context(folder)
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    raw, _ = listener.accept()
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as flrt's sockets
    with context.wrap_socket(raw, server_side=True) as conn:
        if direction == "up":
            _receive(conn, mib * MiB, digest)
            conn.sendall(b"k")
        else:
            conn.recv(1)
            _send(conn, make_model(mib), digest)
    listener.close()


def ssl_site(folder: Path, port: int, direction: str, mib: int, digest: bool) -> dict[str, float]:
    context = BenchPki.client_context(folder, "site-1")
    model = make_model(mib) if direction == "up" else None
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as flrt's sockets
        conn.do_handshake()
        cpu = CpuClock()
        cpu.start()
        start = time.perf_counter()
        if model is not None:
            _send(conn, model, digest)
            conn.recv(1)
        else:
            conn.sendall(b"g")
            _receive(conn, mib * MiB, digest)
        seconds = time.perf_counter() - start
        busy = cpu.stop()
    return {"seconds": seconds, "receiver_rss": peak_rss_mib(), "busy_cores": busy}


def _send(conn: ssl.SSLSocket, model: dict[str, npt.NDArray[Any]], digest: bool) -> None:
    hasher = hashlib.sha256()
    for array in model.values():
        flat: Any = array.reshape(-1).view(np.uint8)
        view = memoryview(flat)
        if not digest:
            conn.sendall(view)
            continue
        for start in range(0, len(view), MiB):  # hash each piece just before it goes
            piece = view[start : start + MiB]
            hasher.update(piece)
            conn.sendall(piece)


def _receive(conn: ssl.SSLSocket, total: int, digest: bool) -> None:
    buffer = bytearray(MiB)
    view = memoryview(buffer)
    hasher = hashlib.sha256()
    while total:
        n = conn.recv_into(view, min(total, MiB))
        if not n:
            raise ConnectionError("baseline sender closed early")
        if digest:
            hasher.update(view[:n])
        total -= n


# -- orchestration -----------------------------------------------------------------------------


def run_pair(kind: str, folder: Path, direction: str, mib: int, backend: str) -> dict[str, float]:
    common = ["--folder", str(folder), "--direction", direction, "--mib", str(mib)]
    common += ["--backend", backend]
    server = subprocess.Popen(
        [sys.executable, __file__, "--role", f"{kind}-server", *common],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        site = subprocess.run(
            [sys.executable, __file__, "--role", f"{kind}-site", "--port", port, *common],
            capture_output=True,
            text=True,
            check=True,
            timeout=_timeout(mib) * 2,
        )
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=60)
    figures: dict[str, float] = json.loads(site.stdout.strip().splitlines()[-1])
    return figures


def measure(backend: str, mib: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        BenchPki(folder)
        flrt = [run_pair("flrt", folder, d, mib, backend) for d in ("up", "down")]
        base = [run_pair("ssl", folder, d, mib, backend) for d in ("up", "down")]
        hashed = [run_pair("sslh", folder, d, mib, backend) for d in ("up", "down")]
    size_mb = mib * MiB / 1e6
    flrt_mb_s = sum(size_mb / r["seconds"] for r in flrt) / 2
    warm_mb_s = sum(size_mb / r["warm_seconds"] for r in flrt) / 2
    ssl_mb_s = sum(size_mb / r["seconds"] for r in base) / 2
    ssl_sha256_mb_s = sum(size_mb / r["seconds"] for r in hashed) / 2
    return {
        "bench": "transfer",
        "backend": backend,
        "mib": mib,
        "flrt_mb_s": round(flrt_mb_s, 1),
        "ssl_mb_s": round(ssl_mb_s, 1),
        "ratio": round(flrt_mb_s / ssl_mb_s, 3),
        "receiver_peak_rss_mib": round(max(r["receiver_rss"] for r in flrt), 1),
        "up_mb_s": round(size_mb / flrt[0]["seconds"], 1),
        "down_mb_s": round(size_mb / flrt[1]["seconds"], 1),
        "ssl_sha256_mb_s": round(ssl_sha256_mb_s, 1),
        "ssl_sha256_ratio": round(ssl_sha256_mb_s / ssl_mb_s, 3),
        "warm_flrt_mb_s": round(warm_mb_s, 1),
        "warm_ratio": round(warm_mb_s / ssl_mb_s, 3),
        "cores": os.cpu_count(),
        "ssl_busy_cores": round(sum(r["busy_cores"] for r in base) / 2, 2),
        "ssl_sha256_busy_cores": round(sum(r["busy_cores"] for r in hashed) / 2, 2),
        "flrt_busy_cores": round(sum(r["busy_cores"] for r in flrt) / 2, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--backend", choices=BACKENDS)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--direction", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging(console=None)
    backend = args.backend or "trio"
    if args.role == "flrt-server":
        anyio.run(flrt_server, args.folder, args.direction, args.mib, backend=backend)
    elif args.role == "flrt-site":
        figures = anyio.run(
            flrt_site, args.folder, args.port, args.direction, args.mib, backend=backend
        )
        print(json.dumps(figures), flush=True)
    elif args.role in ("ssl-server", "sslh-server"):
        ssl_server(args.folder, args.direction, args.mib, digest=args.role == "sslh-server")
    elif args.role in ("ssl-site", "sslh-site"):
        digest = args.role == "sslh-site"
        figures = ssl_site(args.folder, args.port, args.direction, args.mib, digest)
        print(json.dumps(figures), flush=True)
    else:
        for name in [args.backend] if args.backend else BACKENDS:
            emit(measure(name, args.mib))


if __name__ == "__main__":
    main()
