"""Fixtures for every test: compiled-program caches and the default decision history live in temporary
directories, never in the user's home."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

_REDIRECTED = ("CELVERN_CACHE_DIR", "XDG_STATE_HOME")


@pytest.fixture(autouse=True, scope="session")
def user_directories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in _REDIRECTED}
    os.environ["CELVERN_CACHE_DIR"] = str(tmp_path_factory.mktemp("celvern-cache"))
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    os.environ.pop("CELVERN_HISTORY", None)
    yield
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
