"""Fixtures for the webhook tests: a real PostgreSQL server for the decision history's shared store.

The server is started once per test session from the OS package's binaries (`apt-get install postgresql`), in a
temporary directory, on a free loopback port, with durability switched off (the data is thrown away) so that it
starts in about a second. PostgreSQL refuses to run as root, so as root (CI containers) the server commands run as
the `postgres` OS user. In CI (`CI=true`) missing binaries fail the run: a skipped PostgreSQL test would otherwise
pass the gate without testing the shared store.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

MISSING = "PostgreSQL server binaries not installed (apt-get install postgresql)"
DATABASE = "celvern_test"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _server_binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout: /usr/lib/postgresql/<major>/bin)."""
    found = [Path(initdb).parent for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [directory for directory in found if (directory / "pg_ctl").exists()]
    if not found:
        return None

    def major(directory: Path) -> tuple[int, str]:
        name = directory.parent.name
        return (int(name), name) if name.isdigit() else (0, name)

    return max(found, key=major)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run(command: list[str], as_postgres: bool) -> subprocess.CompletedProcess[str]:
    if as_postgres:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A libpq URL of an empty database on a PostgreSQL server that lives for the test session."""
    binaries = _server_binaries()
    if binaries is None:
        if _in_ci():
            pytest.fail(f"{MISSING}; CI=true, so the PostgreSQL tests must run (.ci/run installs the package)")
        pytest.skip(MISSING)
    as_postgres = os.geteuid() == 0
    # Not pytest's tmp_path: its parents are private to root, and the server may run as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="celvern-postgres-"))
    data = base / "data"
    started = False
    try:
        if as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(base, account.pw_uid, account.pw_gid)
        initdb = _run(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            as_postgres,
        )
        if initdb.returncode != 0:
            pytest.fail(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        settings = (
            f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={base} -c fsync=off -c synchronous_commit=off"
            " -c full_page_writes=off -c shared_buffers=16MB -c max_connections=40"
        )
        port = 0
        for _attempt in range(3):  # the free port may be taken between probing and binding
            port = _free_port()
            start = _run(
                [
                    str(binaries / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(base / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {port} {settings}",
                    "start",
                ],
                as_postgres,
            )
            if start.returncode == 0:
                started = True
                break
        if not started:
            log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
            pytest.fail(f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{log}")

        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {DATABASE}")
        yield f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], as_postgres)
        with contextlib.suppress(OSError):
            shutil.rmtree(base)
