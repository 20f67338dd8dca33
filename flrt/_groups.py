"""Exception groups at the edge of the node objects.

A node (:class:`~transport.bus.Node`) owns a task group, and AnyIO task groups wrap what leaves
them in an :class:`ExceptionGroup`. When the only thing in the group is the exception the caller's
own code raised inside ``async with`` (an :class:`~flrt.errors.AdminError`, say), the caller should
get that exception back as it was raised, not wrapped.
"""

from __future__ import annotations

__all__ = ["only_exception", "unwrapped"]


def only_exception(error: BaseException) -> BaseException:
    """The single exception inside (nested) one-member groups, or ``error`` itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def unwrapped(
    group: BaseExceptionGroup[BaseException], raised: BaseException | None
) -> BaseException:
    """What to raise instead of ``group``: ``raised`` if the group holds nothing else."""
    if raised is not None and only_exception(group) is raised:
        return raised
    return group
