"""Which version of a model is served, promotion (the one way to change it), and following it.

The record is kept in the feedback store (table `served`: the archive of the
model store promoted last, and its version), so every replica that shares the
store and the model store sees the same one. `abn up` and `abn serve --follow`
serve the recorded archive when they start and follow the record while they
run (Follower): a change registers the new archive in their TorchServe, makes
it the default and unregisters the old version after a grace period.
Promotion through a TorchServe changes its default (the live state) and then
the record, in that order, so the record only ever names a version that
answered; publishing records an archive that the followers load.
"""

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from serving import settings
from serving.torchserve import archive
from serving.torchserve.client import TorchServeClient

logger = logging.getLogger(__name__)


class Records(Protocol):
    """What of the feedback store the record needs (serving.feedback.store.FeedbackStore has it)."""

    def served(self, model_name: str): ...  # an object with .archive and .version, or None

    def set_served(self, model_name: str, archive: str, version: str) -> None: ...


class ServedRecord:
    def __init__(self, records: Records, model_store: str | Path, name: str):
        self.records, self.model_store, self.name = records, Path(model_store), name

    def archive(self) -> Path | None:
        """The archive promoted last, when it is in the model store. A model store of an earlier release
        kept the record in a file, <name>.served: it still counts until the next promotion."""
        entry = self.records.served(self.name)
        legacy = self.model_store / f"{self.name}.served"
        if entry is not None:
            file_name = entry.archive
        elif legacy.exists():
            file_name = legacy.read_text().strip()
        else:
            return None
        path = self.model_store / file_name
        return path if path.exists() else None

    def write(self, archive: str, version: str) -> None:
        self.records.set_served(self.name, archive, version)


def default_version(client: TorchServeClient, name: str) -> tuple[str, str]:
    """(version, archive file name) of the version TorchServe serves by default."""
    description = client.describe(name)[0]
    return description["modelVersion"], description["modelUrl"]


def register(client: TorchServeClient, name: str, archive: str, version: str) -> None:
    """Register archive (a file of the model store) unless version is registered already."""
    if version not in {d["modelVersion"] for d in client.describe(name, "all")}:
        client.register(archive)


def promote(
    client: TorchServeClient,
    record: ServedRecord,
    archive: str,
    version: str,
    previous: str,
    check: Callable[[], None],
    step: Callable[[str], None] = lambda name: None,
) -> None:
    """Make archive (a file of the model store, holding version) the default of record's model: register it
    unless it is registered, set it as the default, run check (which raises to refuse it), then record it.
    When check raises, version previous is the default again. step(name) is called before each step
    ("register", "set_default"), for progress and for tests that make a step fail."""
    step("register")
    register(client, record.name, archive, version)
    step("set_default")
    client.set_default(record.name, version)
    try:
        check()
    except BaseException:
        client.set_default(record.name, previous)
        raise
    record.write(archive, version)


def earlier_version(model_store: str | Path, name: str, version: str) -> str | None:
    """The version a roll back from version goes to: the latest archive of name in model_store before it."""
    older = [v for v in archive.versions_in(model_store, name) if v < int(float(version))]
    return str(older[-1]) if older else None


def rollback(client: TorchServeClient, record: ServedRecord) -> tuple[str, str]:
    """Make the version before the served one the default again (registering its archive if need be) and
    record it, so that a restart (and every replica that follows the record) serves it too; (from, to)
    versions. The rolled-back archive stays in the model store: the next retraining run starts from what is
    served and numbers its version past every one."""
    version, _ = default_version(client, record.name)
    target = earlier_version(record.model_store, record.name, version)
    if target is None:
        raise ValueError(f"{record.name} serves version {version}; there is no earlier archive in {record.model_store}")
    promote(client, record, archive.archive_name(record.name, target), target, version, lambda: None)
    return version, target


class Follower:
    """Keeps a TorchServe serving what the record names, for each of models: every interval seconds it reads
    the record; when the record has changed since it last acted on it (or since start), it registers the
    archive, makes it the default, and unregisters the version it replaced grace seconds later (requests in
    flight on it finish). It follows changes of the record, not differences from TorchServe's default, so a
    promotion through this very TorchServe (default first, record after its check) is never undone in
    between. A failure (the store or TorchServe unreachable, an archive that does not load) is logged and
    tried again at the next interval; the old version serves meanwhile."""

    def __init__(
        self,
        client: TorchServeClient,
        records: Records,
        model_store: str | Path,
        models: list[str],
        interval: float = settings.FOLLOW_INTERVAL_S,
        grace: float = settings.FOLLOW_GRACE_S,
    ):
        self.client, self.records, self.models = client, records, models
        self.model_store, self.interval, self.grace = Path(model_store), interval, grace
        self._retire: list[tuple[float, str, str]] = []  # (when, model, version) to unregister
        self._seen: dict[str, tuple[str, str] | None] = {}  # model -> the record acted on last
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="served-follower", daemon=True)

    def start(self) -> None:
        """From the records as they are now: what TorchServe was started with."""
        for name in self.models:
            entry = self.records.served(name)
            self._seen[name] = (entry.archive, entry.version) if entry else None
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name in self.models:
                try:
                    self.follow(name)
                except Exception as e:  # the next interval tries again; what serves now goes on serving
                    logger.warning("following the served record of %s: %s", name, e)
            self._unregister_retired()

    def follow(self, name: str) -> bool:
        """One look at name's record; True when it changed what is served."""
        entry = self.records.served(name)
        if entry is None or (entry.archive, entry.version) == self._seen.get(name):
            return False
        if not (self.model_store / entry.archive).exists():
            raise FileNotFoundError(f"the record names {entry.archive}, which is not in {self.model_store}")
        version, _ = default_version(self.client, name)
        register(self.client, name, entry.archive, entry.version)
        self.client.set_default(name, entry.version)
        self._seen[name] = (entry.archive, entry.version)
        if version != entry.version:
            self._retire.append((time.monotonic() + self.grace, name, version))
        logger.info("%s: now serving version %s (%s), following the record", name, entry.version, entry.archive)
        return True

    def _unregister_retired(self) -> None:
        now, keep = time.monotonic(), []
        for when, name, version in self._retire:
            if when > now:
                keep.append((when, name, version))
                continue
            try:
                if default_version(self.client, name)[0] != version:  # it may have become the default again
                    self.client.unregister(name, version)
            except Exception as e:
                logger.warning("unregistering version %s of %s: %s", version, name, e)
        self._retire = keep
