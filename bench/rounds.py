"""Benchmark: federated rounds of a real server and N real sites over mutual TLS on loopback.

A project is provisioned into a temporary folder; the server and N sites run as separate processes
(``python -m flrt server start`` / ``site start``); this process submits, as the project admin, a
FedAvg job of R + 1 rounds whose trainer returns the global model plus a little noise
(:class:`flrt.examples.noise.NoiseTrainer`, an M MiB float32 model in 4 arrays), every site in
every round. The job's ``memory_budget_mb`` (``--budget-mib``) is one model (at least 64 MiB):
the server receives one large update at a time, many small ones at once. A round's time is the
time between two consecutive checkpoints: sending the model out, training, streaming the updates
back into the aggregator, the server step and the atomic checkpoint. The first round (trainer
loading, first connections' warm-up) is not counted.

In the same run, stdlib ``ssl`` sockets (TLS 1.3, the same certificates, ``TCP_NODELAY`` as flrt's)
move the same bytes: the model out to N site processes and back, every transfer at once, as in a
round, R + 1 times over the same connections; the baseline is the median of the last R, as the
round time is the median of warm rounds. (Without ``TCP_NODELAY``, Nagle's algorithm and delayed
acknowledgements made a 0.4 MB exchange take 15 to 60 ms instead of about 9.) The peak RSS of the
server and of the largest site are read from ``/proc/<pid>/status`` (VmHWM) before they stop.

A second baseline, the *floor*, does only the byte work a round cannot do without, over the very
stream flrt's links use (:class:`transport._sslsocket.SSLSocketStream` on the same AnyIO backend):
the server sends the model and its SHA-256 digest (computed once) to every site at once; each
site receives it, checks the digest, adds the noise trainer's noise, and sends the result back with
its digest; the server receives each, checks it, folds it into a running weighted sum and writes
the new model durably (write, fsync, rename, fsync of the folder). Bytes are hashed, and updates
folded, a piece at a time as they arrive, while still in the cache; every buffer is reused from
round to round. No framing, acknowledgement, resumption, flow control, job state, metrics or logs:
it bounds the *work* of any async implementation of the round, not its schedule (each site's
exchange is one plain sequence; with 100 MiB models flrt overlaps them better and beats it). It
matters for small models, where per-message costs dominate. ``floor_ratio`` is flrt's median round
over the floor's median, measured in the same run.

It also reports the processor time both spend: ``cpu_ms_per_round``, the user and system time of
the server and every site from the end of the first round to the end of the job, per round, and
``ssl_cpu_ms`` and ``floor_cpu_ms``, that of the baselines' processes per warm exchange, and the
server's share of each (``server_cpu_ms_per_round``, ``floor_server_cpu_ms``). With more processes
than cores (9 on 2 here) the round is bound by the total divided by the cores, and by the server's
share (one thread does it), whatever the scheduling.

Ends with one JSON line::

    {"bench": "rounds", "sites": N, "model_mib": M, "median_round_s": ..., "server_peak_rss_mib":
     ..., "site_peak_rss_mib": ..., "ssl_baseline_s": ..., "ratio": ..., "floor_s": ...,
     "floor_ratio": ..., "cpu_ms_per_round": ..., "server_cpu_ms_per_round": ..., "ssl_cpu_ms":
     ..., "floor_cpu_ms": ..., "floor_server_cpu_ms": ...}

Usage: python bench/rounds.py --sites N --model-mib M --rounds R [--backend trio|asyncio]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._util import emit  # noqa: E402
from flrt._durable import atomic_file  # noqa: E402
from flrt.admin import AdminClient  # noqa: E402
from flrt.examples.noise import add_noise  # noqa: E402
from flrt.logs import configure_logging  # noqa: E402
from security.kit import load_kit  # noqa: E402
from security.project import parse_project  # noqa: E402
from security.provision import provision  # noqa: E402
from security.tls import client_ssl_context_from_kit, server_ssl_context_from_kit  # noqa: E402
from transport._sslsocket import (  # noqa: E402
    SSLSocketStream,
    accept_socket,
    listen_socket,
)

MiB = 1024 * 1024
ADMIN = "bench@example.org"
ARRAYS = 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def project(sites: int, port: int) -> str:
    lines = [
        '[project]\nname = "bench"',
        '[[organisations]]\nname = "Hub"',
        '[server]\norganisation = "Hub"\nhosts = ["localhost", "127.0.0.1"]',
        f"port = {port}",
    ]
    lines += [f'[[sites]]\nname = "site-{i}"\norganisation = "Hub"' for i in range(1, sites + 1)]
    lines.append(f'[[admins]]\nname = "{ADMIN}"\norganisation = "Hub"\nrole = "project_admin"')
    return "\n".join(lines) + "\n"


def job(sites: int, mib: float, rounds: int, budget_mib: float) -> str:
    return f"""\
name = "bench-rounds"
[workflow]
name = "fedavg"
rounds = {rounds}
sites_per_round = {sites}
min_sites = {sites}
seed = 1
[workflow.params]
memory_budget_mb = {budget_mib}
[trainer]
spec = "flrt.examples.noise:NoiseTrainer"
[trainer.args]
size_mib = {mib}
num_arrays = {ARRAYS}
noise_scale = 0.01
"""


def cpu_seconds(pid: int) -> float:
    """User plus system time of process ``pid`` and its threads so far, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- flrt ----------------------------------------------------------------------------------------


class Processes:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        out = (self.root / f"{name}.out").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "flrt", *args, "--quiet"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def run_flrt(
    root: Path, kits: Path, sites: int, mib: float, rounds: int, budget_mib: float, backend: str
) -> dict[str, Any]:
    procs = Processes(root)
    procs.start(
        "server",
        "server",
        "start",
        str(kits / "server"),
        "--workspace",
        str(root / "server"),
        "--host",
        "127.0.0.1",
        "--site-wait",
        "300",
        "--backend",
        backend,
    )
    for i in range(1, sites + 1):
        name = f"site-{i}"
        procs.start(
            name,
            *("site", "start", str(kits / name)),
            *("--workspace", str(root / name), "--backend", backend),
        )
    try:
        folder = root / "job"
        folder.mkdir()
        (folder / "job.toml").write_text(job(sites, mib, rounds + 1, budget_mib))
        timeout = 120 + rounds * (5 + sites * mib / 20)
        pids = [proc.pid for proc in procs.procs.values()]
        async with AdminClient(kits / ADMIN, timeout=60, connect_timeout=60) as admin:
            job_id = await admin.submit(folder)
            metrics = root / "server" / "jobs" / job_id / "metrics.jsonl"
            first: list[float] = []
            stop = threading.Event()
            watcher = threading.Thread(
                target=cpu_at_first_checkpoint, args=(metrics, pids, first, stop)
            )
            watcher.start()
            try:
                done = await admin.wait(job_id, timeout=timeout)
            finally:
                stop.set()
                watcher.join()
            if done["status"] != "finished":
                raise RuntimeError(f"the benchmark job ended {done['status']}: {done['reason']}")
            if not first:
                raise RuntimeError("the first round's checkpoint was not seen")
        cpu_per_round = (sum(map(cpu_seconds, pids)) - first[0]) / rounds
        server_cpu_per_round = (cpu_seconds(pids[0]) - first[1]) / rounds
        server_rss = peak_rss_mib(procs.procs["server"].pid)
        site_rss = max(peak_rss_mib(procs.procs[f"site-{i}"].pid) for i in range(1, sites + 1))
    finally:
        procs.stop()
    return {
        "job_id": job_id,
        "server_peak_rss_mib": server_rss,
        "site_peak_rss_mib": site_rss,
        "cpu_s_per_round": cpu_per_round,
        "server_cpu_s_per_round": server_cpu_per_round,
    }


def cpu_at_first_checkpoint(
    metrics: Path, pids: list[int], out: list[float], stop: threading.Event
) -> None:
    """Append to ``out`` the processor time of ``pids``, then that of the first (the server), once
    the job's first checkpoint is in ``metrics`` (looked at every millisecond: a round of a small
    model takes a few dozen)."""
    while not stop.wait(0.001):
        try:
            if b'"checkpoint"' in metrics.read_bytes():
                out.append(sum(map(cpu_seconds, pids)))
                out.append(cpu_seconds(pids[0]))
                return
        except FileNotFoundError:
            pass


def round_times(root: Path, job_id: str) -> list[float]:
    """The time between consecutive checkpoints of the job, from the server's metrics."""
    lines = (root / "server" / "jobs" / job_id / "metrics.jsonl").read_text().splitlines()
    checkpoints = [e["time"] for e in map(json.loads, lines) if e["event"] == "checkpoint"]
    return [b - a for a, b in itertools.pairwise(checkpoints)]


# -- stdlib ssl baseline -------------------------------------------------------------------------


def ssl_server(kit: Path, port_file: Path, sites: int, nbytes: int, exchanges: int) -> None:
    """Accept ``sites`` TLS connections; ``exchanges`` times, send each ``nbytes`` and receive
    ``nbytes`` back from each, all at once; print the seconds of each exchange (first byte sent to
    last byte received) as one JSON list."""
    context = server_ssl_context_from_kit(load_kit(kit))
    listener = socket.create_server(("127.0.0.1", 0))
    port_file.write_text(str(listener.getsockname()[1]))
    conns = []
    for _ in range(sites):
        raw, _ = listener.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as flrt's sockets
        conns.append(context.wrap_socket(raw, server_side=True))
    for conn in conns:
        conn.recv(1)  # each client says it is ready
    payload = memoryview(bytearray(os.urandom(1024)) * (nbytes // 1024 + 1))[:nbytes]

    def exchange(conn: Any) -> None:
        conn.sendall(payload)
        receive(conn, nbytes)

    seconds = []
    cpu = [time.process_time()]
    for _ in range(exchanges):
        start = time.perf_counter()
        threads = [threading.Thread(target=exchange, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time())
    print(json.dumps({"seconds": seconds, "cpu": cpu}), flush=True)
    for conn in conns:
        conn.close()


def ssl_client(kit: Path, port: int, nbytes: int, exchanges: int) -> None:
    context = client_ssl_context_from_kit(load_kit(kit))
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as flrt's sockets
        conn.sendall(b"r")
        buffer = bytearray(nbytes)
        view = memoryview(buffer)
        cpu = [time.process_time()]
        for _ in range(exchanges):
            got = 0
            while got < nbytes:
                n = conn.recv_into(view[got:], min(nbytes - got, MiB))
                if not n:
                    raise ConnectionError("the baseline server closed early")
                got += n
            conn.sendall(buffer)
            cpu.append(time.process_time())
        conn.recv(1)
    print(json.dumps(cpu), flush=True)


def receive(conn: Any, total: int) -> None:
    buffer = bytearray(MiB)
    view = memoryview(buffer)
    while total:
        n = conn.recv_into(view, min(total, MiB))
        if not n:
            raise ConnectionError("a baseline client closed early")
        total -= n


def run_baseline(
    role: str,
    root: Path,
    kits: Path,
    sites: int,
    nbytes: int,
    exchanges: int,
    *extra: str,
) -> tuple[list[float], float, float]:
    """Run the ``role`` baseline (``ssl`` or ``floor``): its server and one client process per
    site. Returns the seconds of each of ``exchanges`` exchanges over the same connections, and
    the processor seconds all its processes, and its server alone, spent per exchange after the
    first."""
    port_file = root / f"{role}-port"
    me = [sys.executable, str(Path(__file__).resolve())]
    server = subprocess.Popen(
        [
            *me,
            *("--role", f"{role}-server", "--kit", str(kits / "server")),
            *("--port-file", str(port_file), "--sites", str(sites), "--bytes", str(nbytes)),
            *("--exchanges", str(exchanges), *extra),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError(f"the {role} baseline server did not start")
        time.sleep(0.01)
    port = port_file.read_text()
    clients = [
        subprocess.Popen(
            [
                *me,
                *("--role", f"{role}-client", "--kit", str(kits / f"site-{i}")),
                *("--port", port, "--bytes", str(nbytes), "--exchanges", str(exchanges), *extra),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(1, sites + 1)
    ]
    out, _ = server.communicate(timeout=600)
    report = json.loads(out.strip().splitlines()[-1])
    # Each process's time from the end of its first exchange to the end of its last.
    cpu = server_cpu = report["cpu"][-1] - report["cpu"][1]
    for client in clients:
        client_out, _ = client.communicate(timeout=60)
        marks = json.loads(client_out.strip().splitlines()[-1])
        cpu += marks[-1] - marks[1]
    seconds: list[float] = report["seconds"]
    counted = max(exchanges - 1, 1)
    return seconds, cpu / counted, server_cpu / counted


# -- the floor: a round's unavoidable byte work over flrt's own TLS stream ------------------------

_DIGEST = 32  # bytes of the SHA-256 digest that follows a model
_PIECE = 1 << 20  # bytes hashed (and folded) while they are still in the cache


def floor_arrays(nbytes: int) -> list[np.ndarray]:
    """Fresh float32 arrays for an ``nbytes`` model, split as the noise trainer splits it."""
    count = nbytes // 4
    sizes = [count // ARRAYS + (1 if i < count % ARRAYS else 0) for i in range(ARRAYS)]
    return [np.empty(size, dtype=np.float32) for size in sizes]


def _bytes(array: np.ndarray) -> memoryview:
    return array.data.cast("B")


def _pieces(arrays: list[np.ndarray]) -> Iterator[tuple[int, slice, memoryview]]:
    """Each array's bytes in pieces of at most :data:`_PIECE`: (array index, its elements, bytes)."""
    for index, array in enumerate(arrays):
        whole = _bytes(array)
        for start in range(0, len(whole), _PIECE):
            view = whole[start : start + _PIECE]
            yield index, slice(start // 4, (start + len(view)) // 4), view


def _digest(arrays: list[np.ndarray]) -> bytes:
    hasher = hashlib.sha256()
    for array in arrays:
        hasher.update(_bytes(array))
    return hasher.digest()


async def _floor_send(
    stream: SSLSocketStream, arrays: list[np.ndarray], digest: bytes | None = None
) -> None:
    """Send ``arrays`` and then their digest: ``digest`` if it was computed once for many peers,
    else hashed piece by piece as they go."""
    hasher = hashlib.sha256()
    for _index, _elements, view in _pieces(arrays):
        if digest is None:
            hasher.update(view)
        await stream.send(view)
    await stream.send(hasher.digest() if digest is None else digest)


async def _receive_exactly(stream: SSLSocketStream, view: memoryview) -> None:
    got = 0
    while got < len(view):
        got += await stream.receive_into(view[got:])


async def _floor_receive(
    stream: SSLSocketStream,
    arrays: list[np.ndarray],
    fold: Callable[[int, slice], None] | None = None,
) -> None:
    """Receive a model into ``arrays`` (reused from round to round: the floor pays for no fresh
    memory), hashing each piece as it lands and passing it to ``fold``; then check the digest."""
    hasher = hashlib.sha256()
    for index, elements, view in _pieces(arrays):
        await _receive_exactly(stream, view)
        hasher.update(view)
        if fold is not None:
            fold(index, elements)
    digest = bytearray(_DIGEST)
    await _receive_exactly(stream, memoryview(digest))
    if digest != hasher.digest():
        raise RuntimeError("the floor baseline received a model whose digest does not match")


def floor_server(
    kit: Path, port_file: Path, sites: int, nbytes: int, exchanges: int, backend: str
) -> None:
    """Accept ``sites`` TLS connections; ``exchanges`` rounds of: the model to every site at once,
    every update back into buffers reused from round to round, folded into a weighted sum, the
    new model written durably. Prints the seconds of each round and the processor time after each
    as JSON."""

    async def serve() -> dict[str, list[float]]:
        context = server_ssl_context_from_kit(load_kit(kit))
        listener = listen_socket("127.0.0.1", 0)
        port_file.write_text(str(listener.getsockname()[1]))  # noqa: ASYNC240 (before any peer)
        streams = []
        for _ in range(sites):
            raw = await accept_socket(listener)
            streams.append(await SSLSocketStream.handshake(raw, context, server_side=True))
        listener.close()
        model = floor_arrays(nbytes)
        for array in model:
            array[:] = 1.0
        buffers = [floor_arrays(nbytes) for _ in streams]
        folder = port_file.parent
        seconds: list[float] = []
        cpu = [time.process_time()]
        for _ in range(exchanges):
            start = time.perf_counter()
            sums = [np.zeros(array.size, dtype=np.float64) for array in model]
            digest = _digest(model)  # once for every site, as flrt does
            async with anyio.create_task_group() as group:
                for stream, held in zip(streams, buffers, strict=True):
                    group.start_soon(
                        _floor_exchange, stream, model, digest, held, sums, 1.0 / sites
                    )
            for old, sum_ in zip(model, sums, strict=True):
                np.add(old, sum_, out=old, casting="unsafe")
            with atomic_file(folder / "model.bin") as out:  # fsynced, renamed, folder fsynced
                for array in model:
                    out.write(_bytes(array))
            seconds.append(time.perf_counter() - start)
            cpu.append(time.process_time())
        for stream in streams:
            await stream.aclose()
        return {"seconds": seconds, "cpu": cpu}

    print(json.dumps(anyio.run(serve, backend=backend)), flush=True)


async def _floor_exchange(
    stream: SSLSocketStream,
    model: list[np.ndarray],
    digest: bytes,
    buffers: list[np.ndarray],
    sums: list[np.ndarray],
    weight: float,
) -> None:
    """The model to one site and its update back, each piece folded into ``sums`` with
    ``weight`` as it arrives."""

    def fold(index: int, elements: slice) -> None:
        piece = buffers[index][elements]
        piece -= model[index][elements]  # float32, as the noise trainer's arrays
        piece *= weight
        sums[index][elements] += piece

    await _floor_send(stream, model, digest)
    await _floor_receive(stream, buffers, fold)


def floor_client(kit: Path, port: int, nbytes: int, exchanges: int, backend: str) -> None:
    """Dial the floor server; ``exchanges`` times receive the model, add the noise trainer's
    noise, send it back. Prints the processor time after each exchange as JSON."""

    async def serve() -> list[float]:
        context = client_ssl_context_from_kit(load_kit(kit))
        raw = await SSLSocketStream.open_tcp("127.0.0.1", port)
        stream = await SSLSocketStream.handshake(
            raw, context, server_side=False, server_hostname="localhost"
        )
        rng = np.random.default_rng(1)
        model, update = floor_arrays(nbytes), floor_arrays(nbytes)
        cpu = [time.process_time()]
        for _ in range(exchanges):
            await _floor_receive(stream, model)
            for array, out in zip(model, update, strict=True):
                add_noise(array, 0.01, rng, out=out)
            await _floor_send(stream, update)
            cpu.append(time.process_time())
        await stream.aclose()
        return cpu

    print(json.dumps(anyio.run(serve, backend=backend)), flush=True)


# -- orchestration -------------------------------------------------------------------------------


def measure(sites: int, mib: float, rounds: int, budget_mib: float, backend: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flrt-bench-rounds-") as tmp:
        root = Path(tmp)
        text = project(sites, free_port())
        provision(parse_project(text), root / "ws")
        kits = root / "ws" / "kits"
        figures = anyio.run(
            run_flrt, root, kits, sites, mib, rounds, budget_mib, backend, backend="trio"
        )
        median = statistics.median(round_times(root, figures["job_id"]))
        # The model as the noise trainer builds it: 4 float32 arrays of size_mib in all.
        nbytes = max(int(mib * MiB) // 4, ARRAYS) * 4
        # As many exchanges as counted rounds, over the same connections: the median of warm
        # exchanges against the median of warm rounds (one cold exchange was noise, up to 3x).
        seconds, ssl_cpu, ssl_server_cpu = run_baseline(
            "ssl", root, kits, sites, nbytes, rounds + 1
        )
        baseline = statistics.median(seconds[1:])
        seconds, floor_cpu, floor_server_cpu = run_baseline(
            "floor", root, kits, sites, nbytes, rounds + 1, "--backend", backend
        )
        floor = statistics.median(seconds[1:])
    return {
        "bench": "rounds",
        "sites": sites,
        "model_mib": mib,
        "backend": backend,
        "median_round_s": round(median, 4),
        "server_peak_rss_mib": round(figures["server_peak_rss_mib"], 1),
        "site_peak_rss_mib": round(figures["site_peak_rss_mib"], 1),
        "ssl_baseline_s": round(baseline, 4),
        "ratio": round(median / baseline, 2),
        "floor_s": round(floor, 4),
        "floor_ratio": round(median / floor, 2),
        "cpu_ms_per_round": round(figures["cpu_s_per_round"] * 1000, 1),
        "server_cpu_ms_per_round": round(figures["server_cpu_s_per_round"] * 1000, 1),
        "ssl_cpu_ms": round(ssl_cpu * 1000, 1),
        "ssl_server_cpu_ms": round(ssl_server_cpu * 1000, 1),
        "floor_cpu_ms": round(floor_cpu * 1000, 1),
        "floor_server_cpu_ms": round(floor_server_cpu * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--model-mib", type=float, default=0.4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--budget-mib",
        type=float,
        default=None,
        help="the job's memory_budget_mb: updates received at once (default: one model, min 64)",
    )
    parser.add_argument(
        "--backend",
        choices=("trio", "asyncio"),
        default="trio",
        help="the event loop of the server, the sites and the floor (default: trio)",
    )
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--kit", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--exchanges", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "ssl-server":
        ssl_server(args.kit, args.port_file, args.sites, args.bytes, args.exchanges)
    elif args.role == "ssl-client":
        ssl_client(args.kit, args.port, args.bytes, args.exchanges)
    elif args.role == "floor-server":
        floor_server(args.kit, args.port_file, args.sites, args.bytes, args.exchanges, args.backend)
    elif args.role == "floor-client":
        floor_client(args.kit, args.port, args.bytes, args.exchanges, args.backend)
    else:
        configure_logging(console=None)
        budget = args.budget_mib if args.budget_mib is not None else max(64.0, args.model_mib)
        emit(measure(args.sites, args.model_mib, args.rounds, budget, args.backend))


if __name__ == "__main__":
    main()
