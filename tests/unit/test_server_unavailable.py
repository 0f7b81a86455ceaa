"""A server that cannot start skips the tests that need it on a developer machine and fails them under ``CI=true``.

The server helpers raise :class:`tests.servers.ServerUnavailable` (they do not import pytest); the hook wrappers
of :mod:`tests.servers.pytest_plugin` make the outcome. Each case runs a small test file in a pytest of its own
(``pytester``) with that plugin loaded: the error raised by a fixture, by a session fixture two tests share, and by
a test body.
"""

from __future__ import annotations

import pytest

from tests.servers import ServerUnavailable, server_unavailable

pytest_plugins = ["pytester"]

TESTS = """
import pytest

from tests.servers import server_unavailable


@pytest.fixture
def missing():
    server_unavailable("the fixture's server", "it is not installed")


@pytest.fixture(scope="session")
def shared():
    server_unavailable("the session's server", "it did not start")
    yield


def test_fixture(missing):
    pass


def test_session_one(shared):
    pass


def test_session_two(shared):
    pass


def test_body():
    server_unavailable("the body's tool", "not on PATH")


def test_unaffected():
    pass
"""

MESSAGES = [
    "*the fixture's server is not available: it is not installed*",
    "*the session's server is not available: it did not start*",
    "*the body's tool is not available: not on PATH*",
]


def run(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makepyfile(TESTS)
    return pytester.runpytest(
        "-p", "tests.servers.pytest_plugin", "-p", "no:asyncio", "-p", "no:cacheprovider", "-rsfE"
    )


def test_the_error_carries_the_message() -> None:
    with pytest.raises(ServerUnavailable, match=r"^SeaweedFS is not available: no weed$") as caught:
        server_unavailable("SeaweedFS", "no weed")
    assert isinstance(caught.value, RuntimeError)


def test_skipped_on_a_developer_machine(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = run(pytester)
    result.assert_outcomes(passed=1, skipped=4)
    # a fixture's skip is reported at the test (as pytest reports a fixture's own pytest.skip); a body's where raised
    module = "test_skipped_on_a_developer_machine.py"
    result.stdout.fnmatch_lines_random(
        [
            f"SKIPPED [[]1[]] {module}:*: the fixture's server is not available: it is not installed",
            f"SKIPPED [[]1[]] {module}:*: the session's server is not available: it did not start",
            f"SKIPPED [[]1[]] {module}:*: the session's server is not available: it did not start",
            "SKIPPED [[]1[]] *tests/servers/__init__.py:*: the body's tool is not available: not on PATH",
        ]
    )


def test_failed_in_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    result = run(pytester)
    # raised in a fixture: an error at setup; raised in the test body: a failure
    result.assert_outcomes(passed=1, failed=1, errors=3)
    result.stdout.fnmatch_lines_random(MESSAGES)
    # pytrace=False: the message alone, as pytest.fail(message, pytrace=False) reports it; no traceback, no chain
    result.stdout.no_fnmatch_line("*raise ServerUnavailable*")
    result.stdout.no_fnmatch_line("*direct cause*")
