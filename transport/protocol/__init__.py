"""The sans-IO core of the bus: frame codec and session state machine.

Nothing here imports anyio, ssl, socket or time: bytes and the current time go in, bytes, timers and
events come out. A test enforces it.
"""

from __future__ import annotations

__all__: list[str] = []
