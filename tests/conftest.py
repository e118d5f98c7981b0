"""What the suites share: a real, throwaway PostgreSQL server, images, and inputs that broke the services once.

The session's server: $ABN_TEST_POSTGRES_URL when set (a fresh database is made in it per test, and dropped),
else one started here from the server binaries (initdb, pg_ctl) in a temporary folder and removed afterwards;
without either, the PostgreSQL tests are skipped. A test that stops and starts a server (an outage) makes
its own PostgresServer.
"""

import os
import struct
import uuid

import psycopg
import pytest

from bench.load import png  # noqa: F401  (the suites import it from here)
from bench.postgres import PostgresServer, with_database


def dds() -> bytes:
    """A DDS file whose pixel format Pillow does not implement: it raises NotImplementedError on opening."""
    header = b"DDS " + struct.pack("<IIIIIII", 124, 0x1007, 4, 4, 16, 0, 1) + bytes(44)
    header += struct.pack("<II4sIIIII", 32, 0x4, b"DX10", 0, 0, 0, 0, 0) + struct.pack("<IIIII", 0x1000, 0, 0, 0, 0)
    return header + struct.pack("<IIIII", 1, 3, 0, 1, 0) + bytes(16)


# In CI a skip is a test that did not run: only these reasons (the GPU CI may or may not have) may skip.
CI_SKIPS = ("needs a CUDA GPU", "needs TensorRT's libraries", "checks the refusal on a machine without a GPU")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not os.environ.get("CI") or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not any(allowed in reason for allowed in CI_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where only skips for {CI_SKIPS} are allowed: {reason}"


def postgres_or_skip() -> PostgresServer:
    try:
        return PostgresServer()
    except FileNotFoundError as e:
        pytest.skip(f"{e} or set ABN_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def postgres_server():
    """A URL of a PostgreSQL server on which the tests may create databases."""
    if os.environ.get("ABN_TEST_POSTGRES_URL"):
        yield os.environ["ABN_TEST_POSTGRES_URL"]
        return
    server = postgres_or_skip()
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


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    """The URL of a new, empty store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("postgres_url")
