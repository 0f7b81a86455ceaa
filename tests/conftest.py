"""Session fixtures shared by every test folder: real servers on 127.0.0.1 (see tests/servers/)."""

from __future__ import annotations

# Each server kind registers its fixtures from its own module.
pytest_plugins: list[str] = ["tests.servers.s3", "tests.servers.registry", "tests.servers.http"]
