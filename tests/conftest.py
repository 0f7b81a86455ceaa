"""Session fixtures shared by every test folder: real servers on 127.0.0.1 (see tests/servers/)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.standin.model_registry import ModelRegistryStandin

# The servers' session fixtures, and the hook that turns tests.servers.ServerUnavailable into a skip (a failure
# under CI=true).
pytest_plugins: list[str] = ["tests.servers.pytest_plugin"]


@pytest.fixture(scope="session")
def registry_standin() -> Iterator[ModelRegistryStandin]:
    """One stand-in for the whole session, on a free port of 127.0.0.1, no token required.

    It is shared: call ``registry_standin.reset()`` first in a test that needs an empty registry, ids
    starting at 1, an empty request log or no pending faults. Useful attributes: ``.url``
    (``http://127.0.0.1:PORT``), ``.api_url`` (plus ``/api/model_registry/v1alpha3``), ``.port``,
    ``.requests`` / ``.calls(method, path_regex)``, ``.fail_next(...)``, ``.delay_next(...)``,
    ``.require_token`` (set to a token to get 401s without it; set back to None after), ``.store.snapshot()``.
    """
    with ModelRegistryStandin() as standin:
        yield standin
