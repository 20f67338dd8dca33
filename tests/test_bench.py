"""The benchmarks still run and end with the JSON line their docstrings promise.

Tiny sizes, no figure asserted but the ones that are facts rather than timings (a digest that
matched, a byte count): speed is measured by running ``bench/`` on a quiet machine, never here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout[-3000:]
    return [json.loads(line) for line in lines]


def numbers(figures: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = figures[key]
        assert isinstance(value, int | float), (key, value)
        assert value >= 0, (key, value)


def test_transfer_reports_both_directions_against_ssl_and_the_busy_cores() -> None:
    (figures,) = run_bench("transfer.py", "--mib", "8", "--backend", "trio")
    assert figures["bench"] == "transfer"
    assert figures["backend"] == "trio"
    assert figures["mib"] == 8
    numbers(
        figures,
        "flrt_mb_s",
        "ssl_mb_s",
        "ratio",
        "receiver_peak_rss_mib",
        "ssl_sha256_mb_s",
        "warm_ratio",
        "ssl_busy_cores",
        "flrt_busy_cores",
    )
    assert 0 <= figures["ssl_busy_cores"] <= figures["cores"] + 0.01


def test_resume_cuts_and_still_delivers_the_right_digest() -> None:
    (figures,) = run_bench("resume.py", "--mib", "16", "--cuts", "2")
    assert figures["bench"] == "resume"
    assert figures["cuts"] == 2
    assert figures["digest_ok"] is True
    numbers(figures, "resent_mib", "window_mib")


def test_bus_reports_latency_and_throughput() -> None:
    (figures,) = run_bench("bus.py", "--backend", "asyncio", "--asks", "50", "--messages", "500")
    assert figures["bench"] == "bus"
    assert figures["backend"] == "asyncio"
    numbers(figures, "ask_rtt_median_us", "ask_rtt_p99_us", "msgs_per_s")


def test_rounds_reports_round_time_memory_and_a_warm_ssl_baseline() -> None:
    (figures,) = run_bench("rounds.py", "--sites", "2", "--model-mib", "0.05", "--rounds", "3")
    assert figures["bench"] == "rounds"
    assert figures["sites"] == 2
    numbers(
        figures,
        "median_round_s",
        "server_peak_rss_mib",
        "site_peak_rss_mib",
        "ssl_baseline_s",
        "ratio",
        "floor_s",
        "floor_ratio",
        "cpu_ms_per_round",
        "server_cpu_ms_per_round",
        "ssl_cpu_ms",
        "ssl_server_cpu_ms",
        "floor_cpu_ms",
        "floor_server_cpu_ms",
    )
    assert figures["backend"] == "trio"
    assert figures["ssl_baseline_s"] > 0
    assert figures["floor_s"] > 0
    assert figures["cpu_ms_per_round"] > figures["server_cpu_ms_per_round"] > 0
    assert figures["floor_cpu_ms"] > figures["floor_server_cpu_ms"] > 0


def test_provision_reports_kits() -> None:
    (figures,) = run_bench("provision.py", "--sites", "3")
    assert figures["bench"] == "provision"
    numbers(figures, "participants", "seconds", "kit_kib_median")
