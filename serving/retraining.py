"""The retraining sequence: fine-tune the served model on collected feedback and promote it.

One run:
  1. takes the store's retraining lock (a second run, on this machine or another, exits cleanly, saying so);
  2. snapshots the pending feedback for the served model, one correction per image (select), and stops,
     saying so, when there is too little;
  3. fine-tunes the served version (read out of its .mar) with finetune.candidate, on the corrections minus
     a kept-back share, replaying the model's own training data (the built-in set, or the image folder its
     checkpoint records, or --replay-data);
  4. scores candidate and served model on trusted data (the model's validation split, a gate folder when
     given) and on the kept-back corrections; finetune.gate decides, and a refused run marks the
     corrections it used rejected by it, so they are not tried again unless requeued;
  5. builds the .mar of version N+1 with the served archive's settings (the ONNX export is checked against
     PyTorch inside);
  6. promotes it (serving.torchserve.served): registers it, makes it the default, sends one live prediction,
     records it in the store; or, with publish, only records it (the replicas that follow the record load it);
  7. only then marks the snapshot consumed by this run;
  8. writes report.json and report.png into the run's folder.
Under torchrun, rank 0 runs the sequence and the other ranks only fine-tune beside it, on what it sends them
(Peers). A failure at any step leaves version N serving and the feedback pending. A run that built its archive
but could not promote it (TorchServe down) leaves pending.json behind: the next run promotes that archive
without training again. fail_at makes a run fail at a step, so tests can cause each fault.
"""

import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from croniter import croniter

from finetune import candidate, checkpoint, distributed, gate
from finetune.data import ImageFolder
from finetune.gate import GateConfig
from finetune.knowledge import TuneConfig
from serving import settings
from serving.feedback.store import FeedbackStore, Item, display_url, open_store
from serving.torchserve import archive, served
from serving.torchserve.client import TorchServeClient
from serving.torchserve.config import ServeConfig, Target

STEPS = ("snapshot", "finetune", "evaluate", "package", "register", "set_default", "live_check", "publish", "consume")


@dataclass
class RetrainConfig:
    target: Target = field(default_factory=Target)  # the TorchServe that serves the model
    model: str = settings.MODEL_NAME  # served model name
    store: str = field(default_factory=settings.feedback_store)
    model_store: str = settings.MODEL_STORE
    workdir: str = settings.RETRAIN_WORKDIR  # lock, run folders and reports
    min_feedback: int = 20  # fewest pending corrections (distinct images) worth a run
    holdout: float = 0.2  # share of the feedback kept back to check
    max_author_share: float = 0.5  # most of a run's corrections one author may make, when several sent some
    replay_data: str | None = None  # the model's training images, when not where its checkpoint says
    gate_data: str | None = None  # an image folder representative of real use: a second trusted check
    fail_at: str | None = None  # fail on purpose at this step (one of STEPS), for tests
    schedule: str | None = None  # a cron expression: keep running, one run per slot
    publish: bool = False  # promote by recording the archive in the store only: the replicas that follow load it
    tune: TuneConfig = field(default_factory=TuneConfig)
    gate: GateConfig = field(default_factory=GateConfig)


def for_services(cfg: ServeConfig, **options) -> RetrainConfig:
    """The job's configuration aimed at the TorchServe of cfg; options set any other field."""
    return RetrainConfig(target=cfg.target, model_store=str(cfg.model_store), **options)


class StepFailure(RuntimeError):
    """A step failed (or was made to fail); the served version and the feedback are untouched."""


def _corrections(items: list[Item]) -> list[candidate.Correction]:
    return [candidate.Correction(i.image, i.attention, i.label or i.predicted_label) for i in items]


@dataclass
class Selection:
    chosen: list[Item]  # one correction per image: the one a run trains and checks on
    superseded: list[Item]  # earlier corrections of the chosen images: they share the chosen one's fate
    held_back: list[Item]  # beyond an author's share: they stay pending for a later run
    conflicting_images: int  # images corrected differently (label or map) by different authors


def _conflicting(corrections: list[Item]) -> bool:
    """Different authors corrected one image differently (label or map)."""
    answers = {(i.label or i.predicted_label, i.attention.tobytes()) for i in corrections}
    return len({i.author for i in corrections}) > 1 and len(answers) > 1


def select(items: list[Item], max_author_share: float) -> Selection:
    """An image counts once: of its pending corrections (oldest first), the latest wins, whoever made it, so an
    expert's second thought replaces the first and copies add nothing. Where several authors sent
    corrections, none makes up more than max_author_share of the chosen ones: each author's latest are kept."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.image_sha256, []).append(item)
    chosen = [g[-1] for g in groups.values()]
    conflicts = sum(
        1
        for g in groups.values()
        if len({i.author for i in g}) > 1
        and len({(i.label or i.predicted_label, i.attention.tobytes()) for i in g}) > 1
    )
    held: list[Item] = []
    counts = Counter(i.author for i in chosen)
    while len(counts) > 1 and max_author_share < 1:
        author, n = counts.most_common(1)[0]
        others = len(chosen) - n
        if n <= max_author_share * (n + others):
            break
        cap = max(1, math.floor(max_author_share / (1 - max_author_share) * others))
        theirs = [i for i in chosen if i.author == author]
        held += theirs[: n - cap]  # their oldest
        chosen = [i for i in chosen if i.author != author] + theirs[n - cap :]
        counts[author] = cap
    held_ids = {i.id for i in held}
    superseded = [i for g in groups.values() for i in g[:-1] if g[-1].id not in held_ids]
    return Selection(sorted(chosen, key=lambda i: i.created), superseded, held, conflicts)


class Peers:
    """The other ranks of a torchrun job, from rank 0's side: each waits for one message, the fine-tuning job
    (parent checkpoint, corrections) or None when this run does not fine-tune. Nothing to do in one process."""

    def __init__(self, world: distributed.World):
        self.world, self.sent = world, False

    def send(self, job: tuple[bytes, list[candidate.Correction]] | None) -> None:
        if not self.sent:
            distributed.broadcast(job, self.world)
            self.sent = True

    def done(self) -> None:
        self.send(None)


def tune_beside(cfg: RetrainConfig, world: distributed.World) -> None:
    """A rank other than 0: fine-tune with rank 0 when it sends a job (its share of each batch), then end."""
    job = distributed.broadcast(None, world)
    if job is not None:
        parent, corrections = job
        replay, _ = candidate.own_data(checkpoint.read_metadata(parent), cfg.replay_data)
        candidate.tune(parent, corrections, cfg.tune, replay, world)


class Retrain:
    def __init__(self, cfg: RetrainConfig, store: FeedbackStore, peers: Peers):
        self.cfg = cfg
        self.peers = peers
        self.workdir = Path(cfg.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)  # corrections' images in its reports
        self.pending_path = self.workdir / "pending.json"
        self.id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.folder = self.workdir / self.id
        self.store = store
        self.client = None if cfg.publish else TorchServeClient(cfg.target, model=cfg.model)
        self.record = served.ServedRecord(store, cfg.model_store, cfg.model)
        self.report: dict = {"run": self.id, "model": cfg.model, "steps": [], "outcome": None}

    def step(self, name: str) -> None:
        self.report["steps"].append(name)
        print(f"retrain {self.id}: {name}", flush=True)
        if self.cfg.fail_at == name:
            raise StepFailure(f"failing at step {name!r} as asked by --fail-at")

    def run(self) -> dict:
        """One run; the report (its outcome: promoted, refused, too_little_feedback, or an exception)."""
        if self.pending_path.exists():
            return self.promote(json.loads(self.pending_path.read_text()))
        self.step("snapshot")
        version, served_archive = self._served()
        parent = archive.checkpoint_of(served_archive)
        meta = checkpoint.read_metadata(parent)
        pending_items = [
            i
            for i in self.store.items(consumed=False, model_name=self.cfg.model)
            if (i.label or i.predicted_label) in meta["classes"]
        ]
        chosen = select(pending_items, self.cfg.max_author_share)
        items = chosen.chosen
        used = [i.id for i in items + chosen.superseded]
        self.report.update(
            served_version=version,
            pending_feedback=len(pending_items),
            distinct_images=len(items),
            superseded=len(chosen.superseded),
            held_back_by_author_share=len(chosen.held_back),
            conflicting_images=chosen.conflicting_images,
        )
        if len(items) < self.cfg.min_feedback:
            print(
                f"retrain: {len(items)} corrected images pending for {self.cfg.model}, fewer than "
                f"--min-feedback {self.cfg.min_feedback}: nothing to do"
            )
            self.report["outcome"] = "too_little_feedback"
            return self.report
        order = np.random.default_rng(0).permutation(len(items))
        n_check = max(1, round(self.cfg.holdout * len(items)))
        check, tune = [items[i] for i in order[:n_check]], [items[i] for i in order[n_check:]]
        replay, own_val = candidate.own_data(meta, self.cfg.replay_data)
        trusted = {"validation split": own_val}
        if self.cfg.gate_data:
            trusted["gate folder"] = ImageFolder(self.cfg.gate_data, tuple(meta["input_size"]), classes=meta["classes"])

        self.step("finetune")
        job = (parent, _corrections(tune))
        self.peers.send(job)
        model, history = candidate.tune(*job, self.cfg.tune, replay, self.peers.world)

        self.step("evaluate")
        self.folder.mkdir(parents=True, exist_ok=True)
        figures = candidate.score(parent, model, _corrections(check), trusted, self.folder / "report.png")
        verdict = gate.judge(figures, list(trusted), self.cfg.gate)
        for c in verdict["criteria"]:
            print(f"retrain: {'pass' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}", flush=True)
        for name in trusted:
            del figures[name]["correct"]  # per-image lists: the criteria hold their summary
        self.report.update(
            figures=figures, gate=verdict, history=history, feedback_used=len(tune), feedback_checked=len(check)
        )
        if not verdict["promote"]:
            rejected = self.store.mark_rejected(used, self.id)
            self.report.update(outcome="refused", rejected=rejected)
            print(
                f"retrain: not promoting: {verdict['decided_by']} failed; {rejected} corrections marked rejected by "
                f"run {self.id} (abn feedback requeue --run {self.id} puts them back)"
            )
            return self._write()

        self.step("package")
        # past every archive of the model, so a version rolled back from is never reused
        number = max([int(meta["version"]), *archive.versions_in(self.cfg.model_store, self.cfg.model)]) + 1
        new_meta = checkpoint.next_version(
            meta,
            {
                "parent": meta["trained_on"],
                "finetuned_on": {"feedback": len(tune), "run": self.id, "config": asdict(self.cfg.tune)},
                "replayed_on": {
                    "data": self.cfg.replay_data or candidate.trained_on(meta).get("data"),
                    "images": len(replay),
                },
            },
            number,
        )
        checkpoint.save(self.folder / "checkpoint.pt", model, new_meta)
        # served as version N is: same backend, batching and workers
        mar = archive.build(
            self.folder / "checkpoint.pt",
            self.cfg.model_store,
            archive.settings_of(served_archive),
            name=self.cfg.model,
        )
        pending = {
            "run": self.id,
            "archive": mar.name,
            "version": str(new_meta["version"]),
            "feedback": used,
            "report": self.report,
        }
        self.pending_path.write_text(json.dumps(pending, indent=2) + "\n")
        return self.promote(pending)

    def _served(self) -> tuple[str, Path]:
        """The served version and its archive: as TorchServe says, or as recorded when publishing."""
        if self.client is not None:
            version, archive_file = served.default_version(self.client, self.cfg.model)
            return version, Path(self.cfg.model_store) / archive_file
        entry, path = self.store.served(self.cfg.model), self.record.archive()
        if entry is None or path is None:
            raise StepFailure(
                f"the store records no served archive of {self.cfg.model} in {self.cfg.model_store}: start a "
                "replica with `abn serve --follow --models NAME=ARCHIVE` once, which records it"
            )
        return entry.version, path

    def promote(self, pending: dict) -> dict:
        """Steps 6 and 7 for an archive that is built; pending.json goes once they are done."""
        self.id, self.report = pending["run"], pending["report"]
        self.folder = self.workdir / self.id
        consumed = 0
        client = self.client
        if client is None:
            self.step("publish")
            self.record.write(pending["archive"], pending["version"])
            self.step("consume")
            consumed = self.store.mark_consumed(pending["feedback"], self.id)
            return self._promoted(pending, consumed, "recorded as served; the replicas that follow load it")

        def live_check_and_consume() -> None:
            nonlocal consumed
            self.step("live_check")
            sample = self.store.get(pending["feedback"][0])
            if sample is None:
                raise StepFailure(f"correction {pending['feedback'][0]} is no longer in the store")
            answer = client.predict(sample.image, model=self.cfg.model)
            if answer.model_version != pending["version"]:
                raise StepFailure(
                    f"the live prediction came from version {answer.model_version}, not {pending['version']}"
                )
            self.step("consume")
            consumed = self.store.mark_consumed(pending["feedback"], self.id)

        served.promote(
            client,
            self.record,
            pending["archive"],
            pending["version"],
            self.report["served_version"],
            live_check_and_consume,
            self.step,
        )
        return self._promoted(pending, consumed, "the default")

    def _promoted(self, pending: dict, consumed: int, how: str) -> dict:
        self.report.update(outcome="promoted", promoted_version=pending["version"], consumed=consumed)
        self.pending_path.unlink()
        print(f"retrain: version {pending['version']} of {self.cfg.model} is {how}; {consumed} corrections consumed")
        return self._write()

    def _write(self) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "report.json").write_text(json.dumps(self.report, indent=2) + "\n")
        print(f"retrain: report in {self.folder / 'report.json'}")
        return self.report

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def run_once(cfg: RetrainConfig) -> dict | None:
    """One run under the store's retraining lock (a PostgreSQL advisory lock, or a file lock beside a SQLite
    file); None when another run holds it, and on the ranks other than 0 under torchrun."""
    world = distributed.start()
    try:
        if not world.is_main:
            tune_beside(cfg, world)
            return None
        peers = Peers(world)
        try:
            return _run_locked(cfg, peers)
        finally:
            peers.done()
    finally:
        distributed.stop()


def _run_locked(cfg: RetrainConfig, peers: Peers) -> dict | None:
    store = open_store(cfg.store)
    try:
        with store.exclusive("retrain") as held:
            if not held:
                print(
                    f"retrain: another run holds the retraining lock of {display_url(cfg.store)}; leaving it to finish"
                )
                return None
            job = Retrain(cfg, store, peers)
            started = time.time()
            try:
                report = job.run()
                report["seconds"] = time.time() - started
                return report
            finally:
                job.close()
    finally:
        store.close()


def run_on_schedule(cfg: RetrainConfig) -> None:
    """A run at every slot of the cron expression, until stopped; a failed run waits for the next slot."""
    slots = croniter(cfg.schedule, datetime.now(UTC))
    while True:
        slot = slots.get_next(datetime)
        print(f"retrain: next run at {slot.isoformat()}", flush=True)
        time.sleep(max(0.0, (slot - datetime.now(UTC)).total_seconds()))
        try:
            run_once(cfg)
        except Exception as e:  # the schedule goes on; the run's state is safe by construction
            if distributed.World.from_env().distributed:
                raise  # the other ranks may be waiting in a collective: end the whole job instead
            print(f"retrain: run failed: {e}", flush=True)
