"""What the suites share: a real, throwaway PostgreSQL server, and inputs that broke the services once.

The session's server: $ABN_TEST_POSTGRES_URL when set (a fresh database is made in it per test, and dropped),
else one started here from the server binaries (initdb, pg_ctl) in a temporary folder and removed afterwards;
without either, the PostgreSQL tests are skipped. A test that stops and starts a server (an outage) makes
its own PostgresServer.
"""

import glob
import os
import shutil
import struct
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from serving.torchserve.config import free_port


def dds() -> bytes:
    """A DDS file whose pixel format Pillow does not implement: it raises NotImplementedError on opening."""
    header = b"DDS " + struct.pack("<IIIIIII", 124, 0x1007, 4, 4, 16, 0, 1) + bytes(44)
    header += struct.pack("<II4sIIIII", 32, 0x4, b"DX10", 0, 0, 0, 0, 0) + struct.pack("<IIIII", 0x1000, 0, 0, 0, 0)
    return header + struct.pack("<IIIII", 1, 3, 0, 1, 0) + bytes(16)


def find_initdb() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    path = found[-1] if found else shutil.which("initdb")
    return Path(path) if path else None


def with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path=f"/{name}").geturl()


class PostgresServer:
    """A PostgreSQL server of its own, in a temporary folder, on a free loopback port; stop() and start() it
    to cause an outage."""

    def __init__(self):
        initdb = find_initdb()
        if initdb is None:
            pytest.skip("no PostgreSQL server binaries (initdb): install postgresql or set ABN_TEST_POSTGRES_URL")
        # PostgreSQL will not run as root: then the server runs as the postgres user, owning a folder outside
        # pytest's (which only root may enter).
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.folder = Path(tempfile.mkdtemp(prefix="abn-postgres-"))
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        self.data, self.port = self.folder / "data", free_port()
        self.pg_ctl = [*self.as_user, str(initdb.parent / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60"]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run(
            [
                *self.as_user,
                str(initdb),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.start()

    def start(self) -> None:
        # fsync off: a throwaway server need not survive a crash, and it makes CREATE DATABASE quick
        subprocess.run(
            [
                *self.pg_ctl,
                "-l",
                str(self.folder / "log"),
                "-o",
                f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -F",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.pg_ctl, "-m", mode, "stop"], capture_output=True, timeout=60)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """A URL of a PostgreSQL server on which the tests may create databases."""
    if os.environ.get("ABN_TEST_POSTGRES_URL"):
        yield os.environ["ABN_TEST_POSTGRES_URL"]
        return
    server = PostgresServer()
    try:
        yield server.url
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database for one test, dropped after it."""
    name = f"abn_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield with_database(postgres_server, name)
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
