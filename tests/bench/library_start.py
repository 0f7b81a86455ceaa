"""The start of model-sync's libraries alone: what an s3 -> oci job costs before it does anything of its own.

``python tests/bench/library_start.py`` imports what every model-sync run imports from its libraries (asyncio and
ssl, httpx, pydantic-settings, tenacity) and what an S3 side adds (aiobotocore, botocore, aiohttp), builds one
aiobotocore S3 client as ``job.s3.client`` does for a job, closes it, and exits. No settings are read, no request is
made. The process is set up as the ``model-sync`` script sets up its own (``job.launch``: modules loaded with the
cyclic collector paused, then frozen) and with ``job.tuning`` applied (the modules those libraries would import
and model-sync keeps out), so the figure is the libraries' share of model-sync's start, not what a plain import
of them costs.

The bench runs it next to an s3 -> oci run of an 8-byte model (``start/*`` rows): the difference between the two
is everything model-sync itself does in a start (its settings, its modules, the Model Registry and registry calls,
the push).
"""

from __future__ import annotations

import gc

gc.disable()
try:
    from job import tuning  # noqa: I001 - first: job/__init__.py applies job.tuning before httpx or botocore load

    import asyncio
    import ssl  # noqa: F401 - imported by every run (TLS to registries, S3, the Model Registry)

    import httpx  # noqa: F401
    import pydantic_settings  # noqa: F401
    import tenacity  # noqa: F401

    with tuning.unused_tls_defaults():
        import aiohttp  # noqa: F401
    from aiobotocore.session import get_session
finally:
    gc.freeze()
    gc.enable()


async def _client() -> None:
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ):
        pass


if __name__ == "__main__":
    asyncio.run(_client())
