"""Which version of a model is served, and promotion: the one way to change it.

The record is one file per model in the model store, <name>.served, naming the
archive promoted last; `abn up` serves that archive when it starts, so a
restart serves what was promoted. Promotion changes TorchServe's default (the
live state) and then the record, in that order, so the record only ever
names a version that answered.
"""

from collections.abc import Callable
from pathlib import Path

from serving.torchserve import archive
from serving.torchserve.client import TorchServeClient


class ServedRecord:
    def __init__(self, model_store: str | Path, name: str):
        self.model_store, self.name = Path(model_store), name
        self.path = self.model_store / f"{name}.served"

    def archive(self) -> Path | None:
        """The archive promoted last, when it is still in the model store."""
        if not self.path.exists():
            return None
        archive = self.model_store / self.path.read_text().strip()
        return archive if archive.exists() else None

    def write(self, archive: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(archive + "\n")
        tmp.replace(self.path)


def default_version(client: TorchServeClient, name: str) -> tuple[str, str]:
    """(version, archive file name) of the version TorchServe serves by default."""
    description = client.describe(name)[0]
    return description["modelVersion"], description["modelUrl"]


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
    if version not in {d["modelVersion"] for d in client.describe(record.name, "all")}:
        client.register(archive)
    step("set_default")
    client.set_default(record.name, version)
    try:
        check()
    except BaseException:
        client.set_default(record.name, previous)
        raise
    record.write(archive)


def rollback(client: TorchServeClient, record: ServedRecord) -> tuple[str, str]:
    """Make the version before the served one the default again (registering its archive if need be) and
    record it, so that a restart serves it too; (from, to) versions. The rolled-back archive stays in the
    model store: the next retraining run starts from what is served and numbers its version past every one."""
    version, _ = default_version(client, record.name)
    older = [v for v in archive.versions_in(record.model_store, record.name) if v < int(float(version))]
    if not older:
        raise ValueError(f"{record.name} serves version {version}; there is no earlier archive in {record.model_store}")
    target = str(older[-1])
    promote(client, record, archive.archive_name(record.name, target), target, version, lambda: None)
    return version, target
