"""Past one machine: replicas that share a PostgreSQL store and a model store follow every promotion, a replica
that was down serves the recorded version when it comes back, and one retraining run at a time holds the
store's lock (a PostgreSQL advisory lock, released when its holder dies). Real `abn serve --follow` and
`abn retrain` processes, real TorchServe instances, a real PostgreSQL server."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import png

from finetune import candidate, checkpoint, decoy_digits, train
from finetune.knowledge import TuneConfig
from serving import settings
from serving.feedback.store import Item, open_store
from serving.torchserve import archive, served
from serving.torchserve.client import TorchServeClient
from serving.torchserve.config import ServeConfig
from serving.torchserve.served import ServedRecord

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17")
# From the end of a promotion to every replica answering with the new version: the replicas' follow
# interval, then registering the archive (loading its worker) and making it the default.
FOLLOW_BOUND_S = settings.FOLLOW_INTERVAL_S + 45
ABN = [sys.executable, "-m", "serving.cli"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A model store holding version 1 of a small decoy-digits model."""
    folder = tmp_path_factory.mktemp("model")
    train.train(train.TrainConfig(out=str(folder / "run"), epochs=2))
    archive.build(folder / "run" / "checkpoint.pt", folder / "store", name="abn")
    return folder / "store"


def add_corrections(url: str, mar: Path, count: int) -> None:
    """count corrections of training images, as an expert would send them: the digit's pixels to attend."""
    split = decoy_digits.build("train")
    meta = checkpoint.read_metadata(archive.checkpoint_of(mar))
    store = open_store(url)
    try:
        for i in range(count):
            label = meta["classes"][int(split.labels[i])]
            mask = (split.masks[i, 0].numpy() > 0).astype("float32")
            store.submit(Item(png(split.images[i, 0].numpy()), mask, label=label, model_name="abn", author=f"e{i % 3}"))
    finally:
        store.close()


class Replica:
    """`abn serve --follow` in its own process, on free loopback ports."""

    def __init__(self, folder: Path, model_store: Path, store_url: str):
        self.cfg = ServeConfig.on_free_ports(folder, model_store, {})
        self.store_url, self.process = store_url, None

    def start(self) -> "Replica":
        c = self.cfg
        ports = {"--port": c.grpc_inference_port, "--management-port": c.grpc_management_port,
                 "--http-port": c.http_inference_port, "--http-management-port": c.http_management_port,
                 "--metrics-port": c.metrics_port}  # fmt: skip
        command = [*ABN, "serve", "--follow", "--store", self.store_url, "--models", "abn=abn.v1.mar",
                   "--model-store", str(c.model_store), "--workdir", str(c.workdir),
                   *(str(x) for pair in ports.items() for x in pair)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.process.stdout:
            if line.startswith("TorchServe answers"):
                return self
        raise AssertionError(f"abn serve --follow ended with {self.process.wait()}")

    def version(self) -> str:
        with TorchServeClient(self.cfg.target) as client:
            return client.predict(png(decoy_digits.build("test").images[0, 0].numpy()), model="abn").model_version

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


def wait_for_version(replicas: list[Replica], version: str) -> float:
    """Seconds until every replica answers with version; fails after FOLLOW_BOUND_S."""
    started = time.monotonic()
    waiting = set(range(len(replicas)))
    while waiting and time.monotonic() - started < FOLLOW_BOUND_S:
        waiting = {i for i in waiting if replicas[i].version() != version}
        time.sleep(0.5)
    assert not waiting, f"replicas {waiting} do not serve version {version} after {FOLLOW_BOUND_S} s"
    return time.monotonic() - started


def served_version(url: str) -> str | None:
    store = open_store(url)
    try:
        entry = store.served("abn")
        return entry.version if entry else None
    finally:
        store.close()


def retrain(url: str, model_store: Path, workdir: Path, *options: str, **popen) -> subprocess.Popen:
    command = [*ABN, "retrain", "--publish", "--store", url, "--model-store", str(model_store),
               "--workdir", str(workdir), "--max-drop", "1", "--attention-tolerance", "1", *options]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_replicas_follow_a_promotion_and_a_replica_that_was_down_serves_the_record_when_back(
    model, postgres_url, tmp_path
):
    shared = tmp_path / "models"
    shutil.copytree(model, shared)
    replicas = [Replica(tmp_path / f"serve{i}", shared, postgres_url) for i in range(2)]
    try:
        for r in replicas:
            r.start()
        assert [r.version() for r in replicas] == ["1", "1"]
        add_corrections(postgres_url, shared / "abn.v1.mar", 30)

        job = retrain(postgres_url, shared, tmp_path / "retrain", "--min-feedback", "10", "--epochs", "1")
        out, _ = job.communicate(timeout=600)
        assert job.returncode == 0 and "version 2 of abn is recorded as served" in out, out
        print(f"promotion to both replicas: {wait_for_version(replicas, '2'):.1f} s")

        # replica 1 is down while version 1 is made the default again through replica 0, and serves it once back
        replicas[1].stop()
        target = replicas[0].cfg.target
        rollback = [*ABN, "rollback", "--store", postgres_url, "--model-store", str(shared), "--key-file",
                    str(target.key_file), "--inference", target.inference, "--management", target.management,
                    "--management-url", target.management_url]  # fmt: skip
        subprocess.run(rollback, capture_output=True, text=True, check=True)
        assert served_version(postgres_url) == "1"
        assert replicas[1].start().version() == "1" and replicas[0].version() == "1"

        # a promotion through a replica that follows: its default changes before the record, and the replica
        # must not put the recorded version back in between (its check here outlasts a follow interval)
        def slow_check() -> None:
            time.sleep(settings.FOLLOW_INTERVAL_S + 2)
            assert replicas[0].version() == "2"

        store = open_store(postgres_url)
        try:
            with TorchServeClient(replicas[0].cfg.target) as client:
                served.promote(client, ServedRecord(store, shared, "abn"), "abn.v2.mar", "2", "1", slow_check)
        finally:
            store.close()
        assert served_version(postgres_url) == "2"
        wait_for_version(replicas, "2")
    finally:
        for r in replicas:
            r.stop()


def test_one_retraining_run_at_a_time_across_processes_and_a_killed_holder_frees_the_lock(
    model, postgres_url, tmp_path
):
    shared = tmp_path / "models"
    shutil.copytree(model, shared)
    store = open_store(postgres_url)
    store.set_served("abn", "abn.v1.mar", "1")
    store.close()
    add_corrections(postgres_url, shared / "abn.v1.mar", 30)
    # a run long enough to be caught holding the lock: it says so before it fine-tunes
    holder = retrain(postgres_url, shared, tmp_path / "a", "--min-feedback", "10", "--epochs", "200")
    try:
        for line in holder.stdout:
            if line.rstrip().endswith(": finetune"):
                break
        else:
            raise AssertionError(f"the first run ended with {holder.wait()}")
        second = retrain(postgres_url, shared, tmp_path / "b", "--min-feedback", "10")
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 0 and "another run holds the retraining lock" in out, out
        holder.kill()  # -9: no chance to release anything itself
        holder.wait()
        third = retrain(postgres_url, shared, tmp_path / "c", "--min-feedback", "1000")
        out, _ = third.communicate(timeout=120)
        assert third.returncode == 0 and "fewer than --min-feedback 1000" in out, out  # it took the lock
    finally:
        holder.kill()
        holder.wait()


def test_a_retraining_run_under_torchrun_fine_tunes_on_two_ranks_and_rank_0_alone_promotes(model, tmp_path):
    shared = tmp_path / "models"
    shutil.copytree(model, shared)
    url = str(tmp_path / "feedback.db")
    store = open_store(url)
    store.set_served("abn", "abn.v1.mar", "1")
    store.close()
    add_corrections(url, shared / "abn.v1.mar", 30)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "serving.cli", "retrain", "--publish", "--store", url, "--model-store", str(shared),
               "--workdir", str(tmp_path / "retrain"), "--max-drop", "1", "--attention-tolerance", "1",
               "--min-feedback", "10", "--epochs", "1"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("is recorded as served") == 1  # rank 0 alone promotes
    assert served_version(url) == "2" and (shared / "abn.v2.mar").exists()
    assert len([p for p in (tmp_path / "retrain").iterdir() if p.is_dir()]) == 1  # one run folder, rank 0's
    # both processes fine-tuned, each on its half of the epoch: the corrections, repeated, beside the replay
    report = json.loads(next((tmp_path / "retrain").glob("*/report.json")).read_text())
    replay = len(candidate.own_data(checkpoint.read_metadata(archive.checkpoint_of(shared / "abn.v1.mar")))[0])
    used = report["feedback_used"]
    epoch = used * candidate.repeats(used, replay, TuneConfig().correction_share) + replay
    assert [h["images"] for h in report["history"]] == [[-(-epoch // 2)] * 2]  # DistributedSampler pads to halves
