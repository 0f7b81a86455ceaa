"""Cleanup that must finish: run a step to its end, bounded in time, even while the caller is being cancelled.

The engine aborts the destination and closes both ends with it; the intents restore an artifact they set PENDING
with it. A second SIGTERM during cleanup does not cut the cleanup short: the cancellation is reported back, and
the caller re-raises it once cleanup is over. A failed or timed-out step is logged, never raised over the error
that caused the cleanup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from job.streams import describe

__all__ = ["Cleanup", "run_to_end"]


@dataclass(frozen=True, slots=True)
class Cleanup:
    """How a cleanup step ended."""

    done: bool
    """It completed."""
    interrupted: bool
    """A cancellation arrived while it ran: the caller re-raises ``CancelledError`` when its cleanup is over."""


async def run_to_end(
    step: Callable[[], Awaitable[None]], what: str, seconds: float, *, log: logging.Logger, level: int = logging.WARNING
) -> Cleanup:
    """Run ``step`` to its end within ``seconds``, shielded from cancellation; log (at ``level``) and never raise
    its failure: "<what> did not complete: timed out after N s" or "...: <cause>"."""

    async def bounded() -> None:
        async with asyncio.timeout(seconds):
            await step()

    task = asyncio.create_task(bounded(), name=what)
    interrupted = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # the loop is shutting down: nothing left to wait for
                log.log(level, "%s did not complete: it was cancelled", what)
                return Cleanup(done=False, interrupted=True)
            interrupted = True
        except Exception:  # noqa: S110 - examined below
            pass
    error = task.exception()
    if error is None:
        return Cleanup(done=True, interrupted=interrupted)
    cause = f"timed out after {seconds:.0f} s" if isinstance(error, TimeoutError) else describe(error)
    log.log(level, "%s did not complete: %s", what, cause)
    return Cleanup(done=False, interrupted=interrupted)
