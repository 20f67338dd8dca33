"""A site's SCAFFOLD control variate ``c_i``, kept between rounds in the job's scratch directory.

A round may be trained twice: a server that restarts resumes from its last checkpoint and asks
again for the round it was in, which the site may have trained already. Training it again must
start from the same ``c_i`` as the first time, or the job ends with another model than a run that
never stopped. So each round's ``c_i`` is kept under the round's number
(``scaffold_c_local-000007.safetensors``, the last few rounds' only), a task starts from the
newest one of an earlier round, and ``scaffold_c_local.safetensors`` is a copy of the newest, for
people and tools that look.
"""

from __future__ import annotations

import re
from pathlib import Path

from flrt.errors import IncompatibleWeightsError
from flrt.model import check_compatible, load_weights, save_weights
from flrt.tasks import Weights

__all__ = ["load_control_variate", "save_control_variate"]

_FILE = "scaffold_c_local.safetensors"
_ROUND_FILE = re.compile(r"scaffold_c_local-(\d+)\.safetensors")
#: How many rounds' ``c_i`` are kept: a server resumes from its last checkpoint, or from the one
#: before when the last is damaged, so a site may be asked again for one of its last two rounds.
_KEEP = 3


def _round_file(scratch: Path, round: int) -> Path:
    return scratch / f"scaffold_c_local-{round:06d}.safetensors"


def _stored_rounds(scratch: Path) -> list[int]:
    """The rounds whose ``c_i`` is kept in ``scratch``, oldest first."""
    if not scratch.is_dir():
        return []
    found = (_ROUND_FILE.fullmatch(path.name) for path in scratch.iterdir())
    return sorted(int(match[1]) for match in found if match is not None)


def load_control_variate(scratch: Path, c: Weights, *, round: int) -> Weights | None:
    """The site's ``c_i`` as it was before ``round`` (stored by the newest earlier round it
    trained), or ``None`` (zeros) when it trained no earlier round.

    A stored ``c_i`` that does not match the server's ``c`` (another model) is ignored: the site
    starts again from zeros rather than mixing two models.
    """
    earlier = [r for r in _stored_rounds(scratch) if r < round]
    if not earlier:
        return None
    stored = load_weights(_round_file(scratch, earlier[-1]))
    try:
        check_compatible(c, stored)
    except IncompatibleWeightsError:
        return None
    return stored


def save_control_variate(scratch: Path, c_local: Weights, *, round: int) -> None:
    """Keep ``c_i`` as trained in ``round`` (atomically, so a crash leaves the old or the new
    one), and forget those of all but the last few rounds."""
    scratch.mkdir(parents=True, exist_ok=True)
    metadata = {"content": "scaffold site control variate", "round": str(round)}
    save_weights(_round_file(scratch, round), c_local, metadata)
    save_weights(scratch / _FILE, c_local, metadata)
    rounds = _stored_rounds(scratch)
    for old in rounds[: max(0, len(rounds) - _KEEP)]:
        _round_file(scratch, old).unlink(missing_ok=True)
