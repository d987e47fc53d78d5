"""Fixtures for every test: compiled-program caches live in a temporary directory, never in the user's home."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def program_cache_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    previous = os.environ.get("CELVERN_CACHE_DIR")
    os.environ["CELVERN_CACHE_DIR"] = str(tmp_path_factory.mktemp("celvern-cache"))
    yield
    if previous is None:
        os.environ.pop("CELVERN_CACHE_DIR", None)
    else:
        os.environ["CELVERN_CACHE_DIR"] = previous
