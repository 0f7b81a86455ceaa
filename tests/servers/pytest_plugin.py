"""The pytest side of tests/servers: a session fixture per server, and what a server that cannot start does to a test.

``tests/conftest.py`` loads this module (``pytest_plugins``); the server modules themselves do not import pytest,
so the demo and the benchmark use them as plain code.

A helper that cannot start its server raises :class:`tests.servers.ServerUnavailable`. The hook wrappers below turn
it, raised while a test's fixtures are set up or while the test runs, into pytest's skip on a developer machine
and, under ``CI=true`` (:func:`tests.servers.in_ci`), into a failure without a traceback (an error when it happens
in setup): a green CI must mean the tests that need real servers ran. The outcome is the one ``pytest.skip`` /
``pytest.fail(..., pytrace=False)`` called by the helper gave before: same message, "<what> is not available:
<why>", same location (the test, for a fixture's skip).

Fixtures (all session scoped): ``seaweedfs_s3``, ``moto_s3`` (:mod:`tests.servers.s3`); ``base_layout``,
``registry_plain``, ``registry_htpasswd``, ``registry_token`` (:mod:`tests.servers.registry`); ``http_server``
(:mod:`tests.servers.http`); ``forward_proxy`` (:mod:`tests.servers.proxy`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.servers import ServerUnavailable, in_ci, server_unavailable
from tests.servers.http import HttpTestServer, http_servers
from tests.servers.proxy import ForwardProxy, tinyproxy
from tests.servers.registry import BUSYBOX, Registry, _with_base, build_base_layout, distribution
from tests.servers.s3 import S3Server, moto_server, seaweedfs

# --- ServerUnavailable: skip, or fail in CI ----------------------------------------------------------------------


def _outcome(exc: ServerUnavailable, *, in_fixture: bool) -> BaseException:
    """What ``pytest.skip(message)`` or, under CI=true, ``pytest.fail(message, pytrace=False)`` would have raised.

    A skip is reported where ``exc`` was raised, or at the test when a fixture raised it (as pytest reports a
    fixture's own skip, so that the summary says which test was skipped).
    """
    message = str(exc)
    if in_ci():
        outcome: BaseException = pytest.fail.Exception(message, pytrace=False)
    else:
        outcome = pytest.skip.Exception(message, _use_item_location=in_fixture)
    return outcome.with_traceback(exc.__traceback__)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """A server a fixture needs is unavailable: skip the test (fail it in CI)."""
    try:
        return (yield)
    except ServerUnavailable as exc:
        raise _outcome(exc, in_fixture=True) from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A server or tool the test body needs is unavailable: skip the test (fail it in CI)."""
    try:
        return (yield)
    except ServerUnavailable as exc:
        raise _outcome(exc, in_fixture=False) from None


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def seaweedfs_s3() -> Iterator[S3Server]:
    """One SeaweedFS for the whole session (buckets ``src`` and ``dst``); tests use fresh buckets."""
    with seaweedfs() as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Server]:
    """One moto server for the whole session (bucket ``dst``); tests use fresh buckets."""
    with moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def base_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox base image as an OCI layout (tags ``latest`` and ``multi``)."""
    if not BUSYBOX.is_file():
        server_unavailable("the busybox base image", f"{BUSYBOX} is missing (apt-get install busybox-static)")
    folder = tmp_path_factory.mktemp("base-layout")
    build_base_layout(folder)
    return folder


@pytest.fixture(scope="session")
def registry_plain(base_layout: Path) -> Iterator[Registry]:
    """distribution over plain http without auth, with the base images pushed."""
    with distribution("plain") as registry:
        yield _with_base(registry, base_layout)


@pytest.fixture(scope="session")
def registry_htpasswd(base_layout: Path) -> Iterator[Registry]:
    """distribution over https (self-signed) with a bcrypt htpasswd login, with the base images pushed."""
    with distribution("htpasswd") as registry:
        yield _with_base(registry, base_layout)


@pytest.fixture(scope="session")
def registry_token(base_layout: Path) -> Iterator[Registry]:
    """distribution over https with bearer tokens from :class:`~tests.servers.registry.TokenServer`, with the base
    images pushed."""
    with distribution("token") as registry:
        yield _with_base(registry, base_layout)


@pytest.fixture(scope="session")
def http_server() -> Iterator[HttpTestServer]:
    """The two local http servers for the whole session (see :mod:`tests.servers.http`)."""
    with http_servers() as server:
        yield server


@pytest.fixture(scope="session")
def forward_proxy() -> Iterator[ForwardProxy]:
    """One tinyproxy for the session; call ``clear()`` before a test reads ``requests()``."""
    with tinyproxy() as proxy:
        yield proxy
