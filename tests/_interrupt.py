"""Starting ``flrt`` (or any command) from the source tree with its output piped, as an operator's
terminal does, ready for Ctrl-C (SIGINT) if asked."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

__all__ = ["ROOT", "interruptible", "piped"]

ROOT = Path(__file__).resolve().parent.parent


def piped(command: list[str], *, ctrl_c: bool = False) -> subprocess.Popen[str]:
    """``command`` started in the source tree (on ``PYTHONPATH``), no input, its output piped as
    text; ``ctrl_c``: ready for Ctrl-C, as an operator's terminal is."""
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C reaches it even when the tests run in a shell's background (SIGINT ignored).
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if ctrl_c else None,
    )


def interruptible(command: list[str]) -> subprocess.Popen[str]:
    """``command`` started as an operator's terminal does, its output piped, ready for Ctrl-C."""
    return piped(command, ctrl_c=True)
