"""The S3 protocol: one client per endpoint with its error mapping and retries, and multipart parts.

aiohttp (under aiobotocore) is imported here first, without loading CA certificates into two default TLS
contexts it makes at import and aiobotocore never verifies with (``job.tuning`` says why).
"""

from job.tuning import unused_tls_defaults

with unused_tls_defaults():
    import aiohttp  # noqa: F401
