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
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from job.backends import check_available, make_destination, make_source
from job.config import JobConfig, OciLocation
from job.destinations.base import Destination
from job.engine.progress import ProgressReporter
from job.engine.transfer import TransferResult, TransferSettings, transfer
from job.errors import ConfigError, Terminated
from job.intents import IntentResult, IntentSpec, run_intent, validate_spec
from job.model import Committed
from job.model_registry.client import ModelRegistryClient
from job.oci.reference import parse_reference
from job.settings.metadata import ModelMetadata, load_metadata
from job.settings.names import setting_name
from job.sources.base import Source

log = logging.getLogger(__name__)

T = TypeVar("T")

STOP_SHARE_TRANSFER = 0.35
"""Share of ``stop_timeout`` that aborting the uploads and closing the clients may take after SIGTERM."""
STOP_SHARE_REGISTRY = 0.45
"""Share of ``stop_timeout`` that restoring the registry's artifact may take after SIGTERM (what is left
is for unwinding; :func:`run_until_terminated`'s caller exits hard at ``stop_timeout``)."""

SourceFactory = Callable[[JobConfig], Source]
DestinationFactory = Callable[[JobConfig], Destination]


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
    check_available(config)
    check_references(config)
    return Plan(config=config, spec=spec, transfer_settings=transfer_settings(config))


def transfer_settings(config: JobConfig) -> TransferSettings:
    """The engine's settings from the job's: files at once, the listing bound, retries, the stop budget."""
    return TransferSettings(
        parallel_files=config.parallel_files,
        max_files=config.max_files,
        retry=config.retry,
        stop_cleanup_timeout=max(0.5, config.stop_timeout * STOP_SHARE_TRANSFER),
    )


def check_references(config: JobConfig) -> None:
    """Parse every image reference as the OCI backends will, so a bad one exits 2 before the registry is touched."""
    references = []
    if isinstance(config.source, OciLocation):
        references.append(("source_oci_uri", config.source.reference))
    if isinstance(config.destination, OciLocation):
        references.append(("destination_oci_uri", config.destination.reference))
        if config.destination.base_image:
            references.append(("destination_oci_base_image", config.destination.base_image))
    for field, reference in references:
        try:
            parse_reference(reference)
        except ConfigError as exc:
            raise ConfigError(f"invalid setting {setting_name(field)}: {exc}") from None


async def move_model(
    plan: Plan,
    source_factory: SourceFactory = make_source,
    destination_factory: DestinationFactory = make_destination,
) -> TransferResult:
    """Create the backends and stream every file from source to destination."""
    source = source_factory(plan.config)
    destination = destination_factory(plan.config)
    epilogue = None
    if plan.config.signing is not None:
        from job.signing.epilogue import ModelSigner

        epilogue = ModelSigner(plan.config.signing)
    return await transfer(source, destination, plan.transfer_settings, progress=ProgressReporter(), epilogue=epilogue)


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
    client = registry or ModelRegistryClient.for_registry(reg, plan.config.retry)
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
    return await until_terminated(
        lambda: sync(plan),
        stop_timeout=plan.config.stop_timeout,
        on_sigterm=on_sigterm,
        what="before the model was recorded",
    )


async def until_terminated(
    work: Callable[[], Awaitable[T]],
    *,
    stop_timeout: float,
    on_sigterm: Callable[[], None] | None = None,
    what: str = "before the model was in place",
) -> T:
    """Await ``work()`` with SIGTERM turned into its cancellation; then raise ``Terminated``."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = asyncio.Event()

    def handle_sigterm() -> None:
        if terminated.is_set():
            log.warning("SIGTERM received again: still cleaning up")
            return
        log.warning("SIGTERM received: stopping the transfer and cleaning up (at most %.0f s)", stop_timeout)
        terminated.set()
        if on_sigterm is not None:
            on_sigterm()
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, handle_sigterm)
    try:
        return await work()
    except asyncio.CancelledError:
        if terminated.is_set():
            raise Terminated(f"stopped by SIGTERM (pod deletion or node drain) {what}") from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
