"""Exception groups at the edge of the node objects.

A node (:class:`~transport.bus.Node`) owns a task group, and AnyIO task groups wrap what leaves
them in an :class:`ExceptionGroup`. When the only thing in the group is the exception the caller's
own code raised inside ``async with`` (an :class:`~flrt.errors.AdminError`, say), the caller should
get that exception back as it was raised, not wrapped.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType

__all__ = ["close_unwrapped", "only_exception", "unwrapped"]


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


async def close_unwrapped(
    stack: AsyncExitStack,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> bool | None:
    """Close ``stack`` (a node's ``__aexit__``), re-raising the caller's own exception as it was
    raised rather than inside a one-member group."""
    try:
        return await stack.__aexit__(exc_type, exc, tb)
    except BaseExceptionGroup as group:
        error = unwrapped(group, exc)
        if error is group:
            raise
        raise error from None
