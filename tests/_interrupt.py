"""Starting ``flrt`` as an operator's terminal does, ready for Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

__all__ = ["ROOT", "interruptible"]

ROOT = Path(__file__).resolve().parent.parent


def interruptible(command: list[str]) -> subprocess.Popen[str]:
    """``command`` started as an operator's terminal does, its output piped, ready for Ctrl-C."""
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C reaches it even when the tests run in a shell's background (SIGINT ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
