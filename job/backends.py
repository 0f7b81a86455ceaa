"""One factory per backend: each builds its Source or Destination from the typed location and the engine's limits.

The pipeline picks the factory by the location's type, once; a backend never sees the whole ``JobConfig`` or
checks its location type again. Each backend module is imported only when its factory runs (aiobotocore alone costs
about 0.3 s of a job's start).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from job.config import JobConfig, OciLocation, PvcLocation, S3Location, UriLocation
from job.destinations.base import Destination
from job.errors import ConfigError
from job.sources.base import Source
from job.sources.filtered import FilteredSource

__all__ = ["check_available", "make_destination", "make_source"]


def _pvc_source(location: PvcLocation, config: JobConfig) -> Source:
    from job.sources.pvc import PvcSource

    return PvcSource(location.path)


def _s3_source(location: S3Location, config: JobConfig) -> Source:
    from job.sources.s3 import S3Source

    return S3Source(location, max_pool_connections=config.parallel_files * config.parallel_parts, retry=config.retry)


def _uri_source(location: UriLocation, config: JobConfig) -> Source:
    from job.http.settings import HttpSettings
    from job.readahead import ReadAhead
    from job.sources.uri import UriSource

    return UriSource(
        location,
        storage_path=config.storage_path,
        settings=HttpSettings.from_retry(config.retry),
        max_files=config.max_files,
        read_ahead=ReadAhead(config.parallel_reads, config.read_ahead),
    )


def _oci_source(location: OciLocation, config: JobConfig) -> Source:
    from job.readahead import ReadAhead
    from job.sources.oci import OciSource

    return OciSource(
        location,
        max_connections=2 * config.parallel_files * config.parallel_reads + 4,
        retry=config.retry,
        max_files=config.max_files,
        read_ahead=ReadAhead(config.parallel_reads, config.read_ahead),
    )


def _s3_destination(location: S3Location, config: JobConfig) -> Destination:
    from job.destinations.s3 import S3Destination

    return S3Destination(
        location,
        parallel_parts=config.parallel_parts,
        part_size=config.part_size,
        part_memory=config.part_memory,
        max_pool_connections=config.parallel_files * config.parallel_parts,
        retry=config.retry,
    )


def _oci_destination(location: OciLocation, config: JobConfig) -> Destination:
    from job.destinations.oci import OciDestination

    return OciDestination(
        location,
        storage_path=config.storage_path,
        max_connections=2 * config.parallel_files + 4,
        retry=config.retry,
        max_layers=location.max_layers,
        reserved_layers=1 if config.signing else 0,  # model.sig
    )


def _pvc_destination(location: PvcLocation, config: JobConfig) -> Destination:
    from job.destinations.pvc import PvcDestination
    from job.mounts import claim_uri

    uri = None
    if location.claim:
        uri = claim_uri(location.claim, location.path, mount_path=location.mount_path)
    return PvcDestination(location.path, uri=uri)


# Location type -> (the backend's module, for the availability check; its factory).
_SOURCES: dict[type, tuple[str, Callable[..., Source]]] = {
    PvcLocation: ("job.sources.pvc", _pvc_source),
    S3Location: ("job.sources.s3", _s3_source),
    UriLocation: ("job.sources.uri", _uri_source),
    OciLocation: ("job.sources.oci", _oci_source),
}
_DESTINATIONS: dict[type, tuple[str, Callable[..., Destination]]] = {
    S3Location: ("job.destinations.s3", _s3_destination),
    OciLocation: ("job.destinations.oci", _oci_destination),
    PvcLocation: ("job.destinations.pvc", _pvc_destination),
}


def make_source(config: JobConfig) -> Source:
    """The Source for ``config.source``, behind the include/exclude filter when globs are set."""
    _, factory = _SOURCES[type(config.source)]
    source = factory(config.source, config)
    if config.include or config.exclude:
        source = FilteredSource(source, config.include, config.exclude)
    return source


def make_destination(config: JobConfig) -> Destination:
    """The Destination for ``config.destination``."""
    _, factory = _DESTINATIONS[type(config.destination)]
    return factory(config.destination, config)


def check_available(config: JobConfig) -> None:
    """ConfigError when this build of model-sync lacks the backend a location needs (no network, no import)."""
    for side, table, location in (
        ("source", _SOURCES, config.source),
        ("destination", _DESTINATIONS, config.destination),
    ):
        module, _ = table[type(location)]
        if importlib.util.find_spec(module) is None:
            kind = type(location).__name__.removesuffix("Location").lower()
            raise ConfigError(f"{side}-type {kind} is not available in this version of model-sync")
