"""A site's SCAFFOLD control variate ``c_i``, kept between rounds in the job's scratch directory."""

from __future__ import annotations

from pathlib import Path

from flrt.errors import IncompatibleWeightsError
from flrt.model import check_compatible, load_weights, save_weights
from flrt.tasks import Weights

__all__ = ["load_control_variate", "save_control_variate"]

_FILE = "scaffold_c_local.safetensors"


def load_control_variate(scratch: Path, c: Weights) -> Weights | None:
    """The site's ``c_i`` from an earlier round, or ``None`` (zeros) in its first round.

    A stored ``c_i`` that does not match the server's ``c`` (another model) is ignored: the site
    starts again from zeros rather than mixing two models.
    """
    path = scratch / _FILE
    if not path.exists():
        return None
    stored = load_weights(path)
    try:
        check_compatible(c, stored)
    except IncompatibleWeightsError:
        return None
    return stored


def save_control_variate(scratch: Path, c_local: Weights) -> None:
    """Keep ``c_i`` for the next round (atomically, so a crash leaves the old or the new one)."""
    scratch.mkdir(parents=True, exist_ok=True)
    save_weights(scratch / _FILE, c_local, {"content": "scaffold site control variate"})
