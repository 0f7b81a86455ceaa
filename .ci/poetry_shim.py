"""Run poetry's own CLI against an index that serves only the HTML simple API.

Poetry 2 asks PyPI for the PEP 691 JSON simple API and the per-release JSON API. The package
index this workplace (and its CI) reaches answers the first with HTML and the second with 404,
while pip, which reads the HTML simple API, works. This shim makes poetry's PyPI repository
read the HTML simple pages the way its LegacyRepository does (hashes from the links, metadata
from the wheels, fetched lazily with range requests), so `lock` and `install` behave as they
would against the full API, and the lock file is the one poetry writes for PyPI (no extra
source). On a machine with the full API the shim is harmless: the HTML route exists there too.

Usage: python .ci/poetry_shim.py <poetry arguments>     e.g. `python .ci/poetry_shim.py lock`
"""

from __future__ import annotations

import sys
from typing import Any

from poetry.console.application import main
from poetry.repositories.exceptions import PackageNotFoundError
from poetry.repositories.legacy_repository import LegacyRepository
from poetry.repositories.link_sources.html import HTMLPage
from poetry.repositories.pypi_repository import PyPiRepository


def _get_page(self: PyPiRepository, name: Any) -> HTMLPage:
    url = f"{self._base_url}simple/{name}/"
    response = self.session.get(url, raise_for_status=False, headers={"Accept": "text/html"})
    if response.status_code != 200:
        raise PackageNotFoundError(f"Package [{name}] not found.")
    return HTMLPage(response.url, response.text)


PyPiRepository._get_page = _get_page  # type: ignore[method-assign,assignment]
PyPiRepository._get_release_info = LegacyRepository._get_release_info  # type: ignore[method-assign]
PyPiRepository.find_links_for_package = LegacyRepository.find_links_for_package  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv = ["poetry", *sys.argv[1:]]
    sys.exit(main())
