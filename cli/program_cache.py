"""Compiled CEL programs kept on disk between runs of `celvern apply` and `celvern test`.

Why this module exists: compiling a policy library (a few thousand expressions with their inlined variables)
takes longer than evaluating it against hundreds of manifests, and CI runs the same policies again and again. The
engine asks an injected `engine.cel.environment.ProgramCache` before compiling; this is the disk implementation:
one file per expression under `$CELVERN_CACHE_DIR` (default `$XDG_CACHE_HOME/celvern` or `~/.cache/celvern`), in a
directory named after a fingerprint of the engine's own code and the CEL runtime's version, so that an upgrade (or
an edited checkout) never reads programs compiled by other code. Writes are atomic (temporary file, then rename);
every failure is ignored, since the cache is only an optimisation. `CELVERN_NO_CACHE=1` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import os
import tempfile
from pathlib import Path

import engine

ENGINE_ROOT = Path(engine.__file__).resolve().parent
MAX_ENTRY_BYTES = 4 * 1024 * 1024


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("celvern", "cel-expr-python"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            digest.update(f"{name}={importlib.metadata.version(name)}\0".encode())
    for source in sorted(ENGINE_ROOT.rglob("*.py")):
        digest.update(str(source.relative_to(ENGINE_ROOT)).encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:20]


def default_directory() -> Path:
    configured = os.environ.get("CELVERN_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "celvern"


class DiskProgramCache:
    """`ProgramCache` over files: `<directory>/programs-<fingerprint>/<key[:2]>/<key>`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @functools.cached_property
    def root(self) -> Path:
        """Computed on first use: commands that compile nothing never read the engine's sources."""
        return self.directory / f"programs-{_fingerprint()}"

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except OSError:
            return None

    def put(self, key: str, value: bytes) -> None:
        if len(value) > MAX_ENTRY_BYTES:
            return
        try:
            path = self._path(key)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(handle, "wb") as stream:
                    stream.write(value)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError:
            return


def configured_cache() -> DiskProgramCache | None:
    """The cache the environment asks for: None when `CELVERN_NO_CACHE` is set (to anything but 0 or empty)."""
    if os.environ.get("CELVERN_NO_CACHE", "") not in ("", "0"):
        return None
    return DiskProgramCache(default_directory())
