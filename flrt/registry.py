"""The server's registry of sites: who is connected, when each was last heard from, and how each
has answered so far (on time, late, failed).

The registry knows every site of the project (from the server kit's participant list), connected or
not. Connection changes come from the node (:meth:`SiteRegistry.connected`,
:meth:`SiteRegistry.disconnected`); every message from a site refreshes its ``last_seen``. Round
outcomes (:meth:`SiteRegistry.record`) build each site's :class:`~flrt.workflows.SiteHistory`,
which sampling uses to prefer reliable sites; the histories are saved to
``<workspace>/registry.json`` so they survive a restart: at once after a quiet spell, else at most
once per ``save_interval`` seconds (a rewrite costs the server's event loop half a millisecond, a
fast job runs dozens of rounds a second), and whenever the server calls :meth:`SiteRegistry.flush`
(a job ended, the server stops). The file is advisory, and a crash may lose the last second; the
temporary copy a crash leaves while it is rewritten is removed at the next start.

Waiting: :meth:`SiteRegistry.wait_changed` returns at the next connection change, so a job can wait
for its sites without polling.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from flrt._durable import atomic_write, remove_stale_copies
from flrt.workflows.quorum import SiteOutcome
from flrt.workflows.sampling import SiteHistory

__all__ = ["SiteRecord", "SiteRegistry"]


@dataclass(frozen=True, slots=True)
class SiteRecord:
    """One site as the server sees it. Times are wall-clock seconds since the epoch."""

    name: str
    organisation: str = ""
    connected: bool = False
    connected_since: float | None = None
    last_seen: float | None = None
    connections: int = 0
    history: SiteHistory = field(default_factory=SiteHistory)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "organisation": self.organisation,
            "connected": self.connected,
            "connected_since": self.connected_since,
            "last_seen": self.last_seen,
            "connections": self.connections,
            "history": self.history.to_dict(),
            "reliability": round(self.history.reliability, 4),
        }


class SiteRegistry:
    """Every known site's connection state and reliability history (see the module docstring).

    ``sites`` maps each site of the project to its organisation; ``path`` keeps the histories,
    rewritten at most once per ``save_interval`` seconds.
    """

    def __init__(
        self, sites: Mapping[str, str], path: Path | None = None, *, save_interval: float = 1.0
    ) -> None:
        self.path = path
        self.save_interval = save_interval
        self._saved_at = -math.inf  # time.monotonic() of the last save
        self._unsaved = False
        self._sites = {name: SiteRecord(name, org) for name, org in sorted(sites.items())}
        self._changed = anyio.Event()
        if path is not None:  # what a server killed while it rewrote the file left
            remove_stale_copies(path.parent, path.name)
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                saved = json.loads(path.read_bytes())
                for name, entry in saved.get("sites", {}).items():
                    if name in self._sites:
                        self._sites[name] = replace(
                            self._sites[name],
                            history=SiteHistory.from_dict(entry["history"]),
                            last_seen=entry.get("last_seen"),
                        )

    # ------------------------------------------------------------------ queries

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self._sites)

    def __contains__(self, site: object) -> bool:
        return site in self._sites

    def get(self, site: str) -> SiteRecord:
        return self._sites[site]

    def is_connected(self, site: str) -> bool:
        record = self._sites.get(site)
        return record is not None and record.connected

    def available(self) -> frozenset[str]:
        """The sites connected now."""
        return frozenset(name for name, r in self._sites.items() if r.connected)

    def history(self) -> dict[str, SiteHistory]:
        return {name: r.history for name, r in self._sites.items()}

    def snapshot(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self._sites.values()]

    async def wait_changed(self) -> None:
        """Wait for the next change of any site's connection."""
        await self._changed.wait()

    # ------------------------------------------------------------------ updates

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def connected(self, site: str, *, now: float | None = None) -> bool:
        """``site`` is connected; returns ``True`` if that is news."""
        record = self._sites.get(site)
        if record is None or record.connected:
            return False
        now = time.time() if now is None else now
        self._sites[site] = replace(
            record,
            connected=True,
            connected_since=now,
            last_seen=now,
            connections=record.connections + 1,
        )
        self._notify()
        return True

    def disconnected(self, site: str, *, now: float | None = None) -> bool:
        """``site`` is no longer connected; returns ``True`` if that is news."""
        record = self._sites.get(site)
        if record is None or not record.connected:
            return False
        now = time.time() if now is None else now
        self._sites[site] = replace(record, connected=False, connected_since=None, last_seen=now)
        self._notify()
        return True

    def heard_from(self, site: str, *, now: float | None = None) -> None:
        record = self._sites.get(site)
        if record is not None:
            self._sites[site] = replace(record, last_seen=time.time() if now is None else now)

    def record(self, outcomes: Mapping[str, SiteOutcome]) -> None:
        """Add one round's outcomes to the sites' histories (and save them)."""
        for site, outcome in outcomes.items():
            record = self._sites.get(site)
            if record is not None:
                self._sites[site] = replace(record, history=record.history.record(outcome))
        self._unsaved = True
        if time.monotonic() - self._saved_at >= self.save_interval:
            self.save()

    def flush(self) -> None:
        """Save the histories if :meth:`record` left something unsaved."""
        if self._unsaved:
            self.save()

    def save(self) -> None:
        self._unsaved = False
        self._saved_at = time.monotonic()
        if self.path is None:
            return
        data = {
            "sites": {
                name: {"history": r.history.to_dict(), "last_seen": r.last_seen}
                for name, r in self._sites.items()
            }
        }
        with contextlib.suppress(OSError):  # advisory: never stop a job for it, nor fsync per round
            atomic_write(
                self.path, (json.dumps(data, sort_keys=True) + "\n").encode(), durable=False
            )
