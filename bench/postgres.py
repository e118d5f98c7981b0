"""A throwaway PostgreSQL server for tests and benchmarks, started from the server binaries (Debian's
postgresql package) in a temporary folder, on a free loopback port."""

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from serving.torchserve.config import free_port


def find_initdb() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    path = found[-1] if found else shutil.which("initdb")
    return Path(path) if path else None


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def with_database(url: str, name: str) -> str:
    """url with its database replaced by name."""
    return urlsplit(url)._replace(path=f"/{name}").geturl()


class PostgresServer:
    """A PostgreSQL server of its own, in a temporary folder, on a free loopback port; stop() and start() it
    to cause an outage."""

    def __init__(self):
        initdb = find_initdb()
        if initdb is None:
            raise FileNotFoundError("no PostgreSQL server binaries (initdb): install postgresql")
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

    def postmaster_pid(self) -> int | None:
        """The server's main process (its backends are its children), while it runs."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pause(self, resume: bool = False) -> None:
        """SIGSTOP the server and its backends (a hung machine: connections stay open, nothing answers), or
        SIGCONT them."""
        pid = self.postmaster_pid()
        assert pid is not None, "the server is not running"
        children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == pid]
        for p in [pid, *(int(c.name) for c in children)]:
            try:
                os.kill(p, signal.SIGCONT if resume else signal.SIGSTOP)
            except ProcessLookupError:  # a backend that ended since the listing
                pass

    def remove(self) -> None:
        if self.postmaster_pid() is not None:
            self.pause(resume=True)  # a paused server would not stop
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
