"""How many local steps a round asks of an example trainer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["local_steps"]


def local_steps(
    params: Mapping[str, Any], *, default: int, num_samples: int, batch_size: int | None
) -> int:
    """The round's number of gradient steps.

    ``params["local_steps"]`` if the workflow sets it, else ``params["local_epochs"]`` passes over
    the site's data (one step per epoch for full-batch training, ``batch_size is None``; otherwise
    ``ceil(num_samples / batch_size)`` steps per epoch), else the trainer's ``default``.
    Raises :class:`ValueError` for a count below one.
    """
    if "local_steps" in params:
        steps = int(params["local_steps"])
    elif params.get("local_epochs") is not None:
        epochs = int(params["local_epochs"])
        per_epoch = 1 if batch_size is None else max(math.ceil(num_samples / batch_size), 1)
        steps = epochs * per_epoch
    else:
        steps = default
    if steps < 1:
        raise ValueError(f"a round needs at least one local step, got {steps}")
    return steps
