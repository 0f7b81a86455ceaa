"""The ``model-sync`` console script: :func:`job.__main__.main`, with garbage collection paused while it loads.

Loading the modules a run needs (pydantic, httpx, the settings models) allocates several hundred thousand
objects that live as long as the process, and the cyclic collector walked them all again and again as they
came: about 170 collections in every start (README, Performance, has what they cost). They are loaded with the
collector off, then frozen (moved where collections never look) and the collector turned back on, so
that the transfer's garbage is collected as before. What is alive when the transfer starts is frozen too
(``job.tuning.one_job``), and everything at the end, before the interpreter's own last collection.
"""

from __future__ import annotations

import gc
from typing import NoReturn

__all__ = ["main"]


def main() -> NoReturn:
    """Console script ``model-sync``."""
    gc.disable()
    try:
        from job.__main__ import main as run
        from job.tuning import one_job
    finally:
        gc.freeze()
        gc.enable()
    one_job()
    try:
        run()
    finally:
        gc.freeze()  # the interpreter's collection at exit then walks nothing: the process is ending
