"""The job as one function: plan (no network), then move the bytes inside the registry intent.

``plan_job`` finishes everything that can be checked without a server (metadata, the intent's
required ids, that the source and destination types have a backend), so a wrong config exits 2
before any connection. ``sync`` then opens the Model Registry client and runs the intent, which
calls back into :func:`move_model` at the moment the bytes may move (after its preflight checks).
Backends are created inside that callback, so nothing connects to storage before the registry
said yes.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from job.config import JobConfig, OciLocation, PvcLocation, S3Location, UriLocation
from job.destinations.base import Destination
from job.engine.progress import ProgressReporter
from job.engine.transfer import TransferResult, TransferSettings, transfer
from job.errors import ConfigError, Terminated
from job.intents import IntentResult, IntentSpec, run_intent, validate_spec
from job.model import Committed
from job.model_registry.client import ModelRegistryClient
from job.settings.metadata import ModelMetadata, load_metadata
from job.sources.base import Source
from job.sources.filtered import FilteredSource

log = logging.getLogger(__name__)

STOP_SHARE_TRANSFER = 0.35
"""Share of ``stop_timeout`` that aborting the uploads and closing the clients may take after SIGTERM."""
STOP_SHARE_REGISTRY = 0.45
"""Share of ``stop_timeout`` that restoring the registry's artifact may take after SIGTERM (what is left
is for unwinding; :func:`run_until_terminated`'s caller exits hard at ``stop_timeout``)."""

SourceFactory = Callable[[JobConfig], Source]
DestinationFactory = Callable[[JobConfig], Destination]

# Backend classes by location type and side, imported only when used (aioboto3 alone costs ~0.3 s).
_SOURCES: dict[type[Any], str] = {
    PvcLocation: "job.sources.pvc:PvcSource",
    S3Location: "job.sources.s3:S3Source",
    UriLocation: "job.sources.uri:UriSource",
    OciLocation: "job.sources.oci:OciSource",
}
_DESTINATIONS: dict[type[Any], str] = {
    S3Location: "job.destinations.s3:S3Destination",
    OciLocation: "job.destinations.oci:OciDestination",
}


def _backend(table: dict[type[Any], str], location: object, side: str) -> Any:
    module_name, _, class_name = table[type(location)].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        kind = type(location).__name__.removesuffix("Location").lower()
        raise ConfigError(f"{side}-type {kind} is not available in this version of model-sync") from None
    return getattr(module, class_name)


def make_source(config: JobConfig) -> Source:
    """The Source for ``config.source``; each backend's ``from_config`` maps the settings it needs."""
    cls = _backend(_SOURCES, config.source, "source")
    source: Source = cls.from_config(config)
    if config.include or config.exclude:
        source = FilteredSource(source, config.include, config.exclude)
    return source


def make_destination(config: JobConfig) -> Destination:
    """The Destination for ``config.destination``."""
    cls = _backend(_DESTINATIONS, config.destination, "destination")
    destination: Destination = cls.from_config(config)
    return destination


@dataclass(frozen=True, slots=True)
class Plan:
    """A config that passed every check that needs no server."""

    config: JobConfig
    spec: IntentSpec
    transfer_settings: TransferSettings


def plan_job(config: JobConfig) -> Plan:
    """Load the metadata, check the intent's needs and the backends' availability. ConfigError only."""
    metadata: ModelMetadata | None = load_metadata(config.metadata_path) if config.metadata_path else None
    spec = IntentSpec(
        intent=config.intent,
        model_id=config.model_id,
        model_version_id=config.model_version_id,
        model_artifact_id=config.model_artifact_id,
        metadata=metadata,
        job_id=config.job_id,
        author=config.registry.author,
    )
    validate_spec(spec)
    _backend(_SOURCES, config.source, "source")
    _backend(_DESTINATIONS, config.destination, "destination")
    settings = TransferSettings(
        parallel_files=config.parallel_files,
        parallel_parts=config.parallel_parts,
        part_size=config.part_size,
        retry=config.retry,
        stop_cleanup_timeout=max(0.5, config.stop_timeout * STOP_SHARE_TRANSFER),
    )
    return Plan(config=config, spec=spec, transfer_settings=settings)


async def move_model(
    plan: Plan,
    source_factory: SourceFactory = make_source,
    destination_factory: DestinationFactory = make_destination,
) -> TransferResult:
    """Create the backends and stream every file from source to destination."""
    source = source_factory(plan.config)
    destination = destination_factory(plan.config)
    result = await transfer(source, destination, plan.transfer_settings, progress=ProgressReporter())
    return result


async def sync(
    plan: Plan,
    *,
    source_factory: SourceFactory = make_source,
    destination_factory: DestinationFactory = make_destination,
    registry: ModelRegistryClient | None = None,
) -> IntentResult:
    """Run the intent around the transfer; returns what the termination message reports."""
    moved: list[TransferResult] = []

    async def do_transfer() -> Committed:
        result = await move_model(plan, source_factory, destination_factory)
        moved.append(result)
        return result.committed

    reg = plan.config.registry
    client = registry or ModelRegistryClient(
        reg.base_url,
        token=reg.token.get_secret_value() if reg.token else None,
        token_file=reg.token_file,
        verify=reg.verify,
        author=reg.author,
        retry=plan.config.retry,
        api_version=reg.api_version,
    )
    stop_cleanup = max(0.5, plan.config.stop_timeout * STOP_SHARE_REGISTRY)
    async with client:
        result = await run_intent(plan.spec, client, do_transfer, stop_cleanup_timeout=stop_cleanup)
    if moved:
        done = moved[0]
        rate = done.bytes / done.seconds / 1e6 if done.seconds > 0 else 0.0
        log.info(
            "done: %d files, %d bytes in %.1f s (%.1f MB/s) -> %s%s",
            done.files,
            done.bytes,
            done.seconds,
            rate,
            result.uri,
            f" @ {result.digest}" if result.digest else "",
            extra={
                "files": done.files,
                "bytes": done.bytes,
                "seconds": round(done.seconds, 3),
                "mb_per_s": round(rate, 1),
                "uri": result.uri,
                "digest": result.digest,
            },
        )
    return result


async def run_until_terminated(plan: Plan, *, on_sigterm: Callable[[], None] | None = None) -> IntentResult:
    """``sync`` with SIGTERM turned into cancellation: cleanup runs, then ``Terminated`` is raised.

    The cleanup is bounded by shares of ``config.stop_timeout`` (uploads aborted first, then the registry
    restored); ``on_sigterm`` runs once when the signal arrives, e.g. to arm a hard deadline.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = asyncio.Event()

    def handle_sigterm() -> None:
        if terminated.is_set():
            log.warning("SIGTERM received again: still cleaning up")
            return
        log.warning(
            "SIGTERM received: stopping the transfer and cleaning up (at most %.0f s)", plan.config.stop_timeout
        )
        terminated.set()
        if on_sigterm is not None:
            on_sigterm()
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, handle_sigterm)
    try:
        return await sync(plan)
    except asyncio.CancelledError:
        if terminated.is_set():
            raise Terminated("stopped by SIGTERM (pod deletion or node drain) before the model was recorded") from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
