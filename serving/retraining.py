"""The retraining sequence: fine-tune the served model on collected feedback and promote it.

One run:
  1. takes the store's retraining lock (a second run, on this machine or another, stops, saying so);
  2. snapshots the pending feedback for the served model, one correction per image, each author's weighted
     (select), says what it takes, how it weighs it and what it leaves and why, and stops, saying so, when
     there is too little;
  3. fine-tunes the served version (read out of its .mar) with finetune.candidate, on the corrections minus
     a kept-back share, replaying the model's own training data (the built-in set, or the image folder its
     checkpoint records, or --replay-data);
  4. scores candidate and served model on trusted data (the model's validation split, a gate folder when
     given) and on the kept-back corrections; finetune.gate decides, and a refused run marks the
     corrections it used rejected by it, with the criterion that refused them, so they are not tried again
     unless requeued;
  5. builds the .mar of version N+1 with the served archive's settings (the ONNX export is checked against
     PyTorch inside);
  6. promotes it (serving.torchserve.served): registers it, makes it the default, sends one live prediction,
     records it in the store; or, with publish, only records it (the replicas that follow the record load it);
  7. only then marks the snapshot consumed by this run, into the version it promoted;
  8. writes report.json and report.png into the run's folder, runs/retrain/<run>/: a run that stops early
     writes {"outcome": "stopped", "reason": ...} there, one that fails {"outcome": "failed", "reason": ...}.
dry_run says what the next run would do, without the lock, training or writing anything.
Under torchrun, rank 0 runs the sequence and the other ranks only fine-tune beside it, on what it sends them
(Peers). A failure at any step leaves version N serving and the feedback pending. A run that built its archive
but could not promote it (TorchServe down) leaves pending.json behind: the next run promotes that archive
without training again. fail_at makes a run fail at a step, so tests can cause each fault.
"""

import json
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
from serving.feedback.store import FeedbackStore, Item, Run, StoreUnavailable, display_url, open_store
from serving.torchserve import archive, served
from serving.torchserve.client import NOT_UP, TorchServeClient
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


def _corrections(items: list[Item], weights: dict[str, float]) -> list[candidate.Correction]:
    return [
        candidate.Correction(
            i.image, i.attention, i.label or i.predicted_label, decided=i.decided, weight=weights[i.author]
        )
        for i in items
    ]


def author_weights(images: Counter[str], max_author_share: float, min_feedback: int) -> dict[str, float]:
    """How hard each author's corrections pull (author -> weight in (0, 1]), from the images each corrected.

    Nothing is held back for an author's share: one expert's many corrections and a colleague's single one all
    go into the run. Where several authors sent corrections, an author with more than max_author_share of the
    run's images has each weighted max(cap, min_feedback) / n, with cap = max_author_share / (1 -
    max_author_share) * (the others' images), the count at which they would make up max_author_share; the others
    weigh 1. So nobody pulls harder than the larger of their share and a minimal run's worth (min_feedback), and
    a colleague's correction never shrinks a run. One author alone: all weigh 1."""
    total = sum(images.values())
    weights = dict.fromkeys(images, 1.0)
    if len(images) < 2 or max_author_share >= 1:
        return weights
    for author, n in images.items():
        if n > max_author_share * total:
            cap = max_author_share / (1 - max_author_share) * (total - n)
            weights[author] = min(1.0, max(cap, min_feedback) / n)
    return weights


@dataclass
class Selection:
    pending_images: int  # distinct images among the pending corrections: what `abn feedback stats` counts
    chosen: list[Item]  # one correction per image: the one a run trains and checks on
    superseded: list[Item]  # earlier corrections of the chosen images: they share the chosen one's fate
    unknown_class: list[Item]  # every correction of the images whose latest names a class the model lacks
    conflicting_images: int  # images corrected differently (label or map) by different authors
    weights: dict[str, float]  # author -> the weight of each of their chosen corrections (author_weights)

    def images_of(self) -> Counter[str]:
        """Chosen images per author."""
        return Counter(i.author for i in self.chosen)


def select(items: list[Item], classes: list[str] | None, max_author_share: float, min_feedback: int) -> Selection:
    """An image counts once, as the store's stats count it (per model and image): of its pending corrections
    (oldest first) the latest wins, whoever made it, so an expert's second thought replaces the first and
    copies add nothing. An image whose latest correction names a class the model lacks (classes; None: not
    known) is left pending. Each author's chosen corrections are weighted by author_weights."""
    groups: dict[tuple[str, str], list[Item]] = {}
    for item in items:
        groups.setdefault((item.model_name, item.image_sha256), []).append(item)
    chosen, superseded, unknown = [], [], []
    for group in groups.values():
        latest = group[-1]
        if classes is not None and (latest.label or latest.predicted_label) not in classes:
            unknown += group
        else:
            chosen.append(latest)
            superseded += group[:-1]
    conflicts = sum(
        1
        for g in groups.values()
        if len({i.author for i in g}) > 1
        and len({(i.label or i.predicted_label, i.attention.tobytes()) for i in g}) > 1
    )
    weights = author_weights(Counter(i.author for i in chosen), max_author_share, min_feedback)
    return Selection(len(groups), sorted(chosen, key=lambda i: i.created), superseded, unknown, conflicts, weights)


def split(items: list[Item], holdout: float) -> tuple[list[Item], list[Item]]:
    """(kept back to check, to fine-tune on): a fixed random share holdout of the chosen corrections."""
    order = np.random.default_rng(0).permutation(len(items))
    n_check = max(1, round(holdout * len(items))) if items else 0
    return [items[i] for i in order[:n_check]], [items[i] for i in order[n_check:]]


def selection_figures(selection: Selection) -> dict:
    """The selection's counts, as report.json and the dry run give them."""
    return {
        "pending_images": selection.pending_images,
        "distinct_images": len(selection.chosen),
        "superseded": len(selection.superseded),
        "unknown_class_images": len({i.image_sha256 for i in selection.unknown_class}),
        "conflicting_images": selection.conflicting_images,
        "authors": {
            author: {"images": n, "weight": selection.weights[author]}
            for author, n in sorted(selection.images_of().items())
        },
    }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def describe(selection: Selection, cfg: RetrainConfig, version: str | None) -> list[str]:
    """What a run takes from the store, how it weighs it, and what it leaves pending and why, in lines."""
    lines = [
        f"{_count(selection.pending_images, 'corrected image')} pending for {cfg.model} (what `abn feedback stats` "
        "calls pending_images)"
    ]
    if selection.chosen:
        authors = ", ".join(
            f"{author or '(no author)'} {n} (weight {selection.weights[author]:.2f})"
            for author, n in sorted(selection.images_of().items())
        )
        check, tune = split(selection.chosen, cfg.holdout)
        lines.append(
            f"takes {len(selection.chosen)}: {len(tune)} to fine-tune on, {len(check)} kept back to check "
            f"(--holdout {cfg.holdout}); images and weight per author: {authors}"
        )
        weighted = sorted(a for a, w in selection.weights.items() if w < 1)
        if weighted:
            lines.append(
                f"{', '.join(weighted)}: more than --max-author-share {cfg.max_author_share} of the images, so each of "
                "their corrections pulls only as hard as its weight (none is held back)"
            )
    if selection.superseded:
        lines.append(
            f"{_count(len(selection.superseded), 'earlier correction')} of the same images superseded by the latest, "
            "sharing its fate"
        )
    if selection.unknown_class:
        names = sorted({i.label or i.predicted_label for i in selection.unknown_class})
        images = len({i.image_sha256 for i in selection.unknown_class})
        lines.append(
            f"leaves {_count(images, 'image')} pending: the latest correction names a class that version {version} "
            f"of {cfg.model} lacks ({', '.join(names)})"
        )
    if selection.conflicting_images:
        lines.append(
            f"{_count(selection.conflicting_images, 'image')} corrected differently by different authors: the latest "
            "correction of each counts"
        )
    return lines


def too_little(selection: Selection, cfg: RetrainConfig) -> str:
    """Why a run on this selection stops before fine-tuning; "" when it goes on."""
    n = len(selection.chosen)
    if n >= cfg.min_feedback:
        return ""
    return f"{_count(n, 'corrected image')} to take for {cfg.model}, fewer than --min-feedback {cfg.min_feedback}"


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


def _new_run(workdir: Path) -> tuple[str, Path]:
    """A run's id (its start, to the second) and its folder, made here so that no other run (one that found the
    lock held in the same second) writes into it."""
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)  # corrections' images in its reports
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        run = stamp if n == 1 else f"{stamp}-{n}"
        try:
            (workdir / run).mkdir(mode=0o700)
            return run, workdir / run
        except FileExistsError:
            continue
    raise StepFailure(f"{workdir} holds 999 runs started at {stamp}")


def _write_report(folder: Path, report: dict) -> dict:
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"retrain: report in {folder / 'report.json'}", flush=True)
    return report


def _stopped(run: str, folder: Path, reason: str, report: dict) -> dict:
    """A run that stops early: it says why, on the console and in its report.json, with what it found."""
    print(f"retrain: stopped: {reason}", flush=True)
    return _write_report(folder, {**report, "run": run, "outcome": "stopped", "reason": reason})


def _plain_error(e: BaseException) -> str:
    details = getattr(e, "details", None)  # a gRPC error: its status's message, not its class
    return (details() if callable(details) else None) or str(e) or type(e).__name__


def served_archive(cfg: RetrainConfig, client: TorchServeClient | None, store: FeedbackStore) -> tuple[str, Path]:
    """The served version and its archive: as TorchServe says, or as the store records when publishing."""
    if client is not None:
        try:
            version, archive_file = served.default_version(client, cfg.model)
        except NOT_UP as e:
            raise StepFailure(
                f"TorchServe at {cfg.target.management} does not say which version of {cfg.model} it serves "
                f"({_plain_error(e)}): start it (abn up), or retrain with --publish for replicas that follow the store"
            ) from None
        return version, Path(cfg.model_store) / archive_file
    entry, path = store.served(cfg.model), served.ServedRecord(store, cfg.model_store, cfg.model).archive()
    if entry is None or path is None:
        raise StepFailure(
            f"the store records no served archive of {cfg.model} in {cfg.model_store}: start a "
            "replica with `abn serve --follow --models NAME=ARCHIVE` once, which records it"
        )
    return entry.version, path


class Retrain:
    def __init__(self, cfg: RetrainConfig, store: FeedbackStore, peers: Peers):
        self.cfg = cfg
        self.peers = peers
        self.workdir = Path(cfg.workdir)
        self.pending_path = self.workdir / "pending.json"
        self.id, self.folder = _new_run(self.workdir)
        self.store = store
        self.client = None if cfg.publish else TorchServeClient(cfg.target, model=cfg.model)
        self.record = served.ServedRecord(store, cfg.model_store, cfg.model)
        self.report: dict = {"run": self.id, "model": cfg.model, "steps": [], "outcome": None}
        self.used: list[str] = []  # the corrections it took past the snapshot: recorded with the run

    def step(self, name: str) -> None:
        self.report["steps"].append(name)
        print(f"retrain {self.id}: {name}", flush=True)
        if self.cfg.fail_at == name:
            raise StepFailure(f"failing at step {name!r} as asked by --fail-at")

    def run(self) -> dict:
        """One run; the report (its outcome: promoted, refused, stopped (with its reason), or an exception)."""
        if self.pending_path.exists():
            self.folder.rmdir()  # this run only promotes the one that built the archive, in that one's folder
            return self.promote(json.loads(self.pending_path.read_text()))
        self.step("snapshot")
        version, served_mar = served_archive(self.cfg, self.client, self.store)
        parent = archive.checkpoint_of(served_mar)
        meta = checkpoint.read_metadata(parent)
        pending_items = list(self.store.items(consumed=False, model_name=self.cfg.model))
        selection = select(pending_items, meta["classes"], self.cfg.max_author_share, self.cfg.min_feedback)
        for line in describe(selection, self.cfg, version):
            print(f"retrain: {line}", flush=True)
        items = selection.chosen
        used = [i.id for i in items + selection.superseded]
        self.report.update(served_version=version, pending_feedback=len(pending_items), **selection_figures(selection))
        if selection.unknown_class:
            names = ", ".join(meta["classes"])
            self.store.set_reason(
                [i.id for i in selection.unknown_class],
                f"its class is not one of version {version} of {self.cfg.model}'s ({names})",
            )
        reason = too_little(selection, self.cfg)
        if reason:
            self.store.set_reason(used, f"waiting for more: {reason}")
            return self._stopped(reason)
        self.used = used
        check, tune = split(items, self.cfg.holdout)
        replay, own_val = candidate.own_data(meta, self.cfg.replay_data)
        trusted = {"validation split": own_val}
        if self.cfg.gate_data:
            trusted["gate folder"] = ImageFolder(self.cfg.gate_data, tuple(meta["input_size"]), classes=meta["classes"])

        self.step("finetune")
        job = (parent, _corrections(tune, selection.weights))
        self.peers.send(job)
        model, history = candidate.tune(*job, self.cfg.tune, replay, self.peers.world)

        self.step("evaluate")
        check_corrections = _corrections(check, selection.weights)
        figures = candidate.score(parent, model, check_corrections, trusted, self.folder / "report.png")
        verdict = gate.judge(figures, list(trusted), self.cfg.gate)
        for c in verdict["criteria"]:
            print(
                f"retrain: {'pass' if c['passed'] else 'FAIL'}  {c['name']} (saw {c['samples']}): {c['detail']}",
                flush=True,
            )
        for name in trusted:
            del figures[name]["correct"]  # per-image lists: the criteria hold their summary
        self.report.update(
            figures=figures, gate=verdict, history=history, feedback_used=len(tune), feedback_checked=len(check)
        )
        if not verdict["promote"]:
            refusing = next(c for c in verdict["criteria"] if c["name"] == verdict["decided_by"])
            why = f"refused by run {self.id}: {refusing['name']} failed ({refusing['detail']})"
            rejected = self.store.mark_rejected(used, self.id, why)
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
            archive.settings_of(served_mar),
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

    def promote(self, pending: dict) -> dict:
        """Steps 6 and 7 for an archive that is built; pending.json goes once they are done."""
        self.id, self.report, self.used = pending["run"], pending["report"], pending["feedback"]
        self.folder = self.workdir / self.id
        consumed = 0
        client = self.client
        if client is None:
            self.step("publish")
            self.record.write(pending["archive"], pending["version"])
            self.step("consume")
            consumed = self.store.mark_consumed(pending["feedback"], self.id, pending["version"])
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
            consumed = self.store.mark_consumed(pending["feedback"], self.id, pending["version"])

        try:
            served.promote(
                client,
                self.record,
                pending["archive"],
                pending["version"],
                self.report["served_version"],
                live_check_and_consume,
                self.step,
            )
        except NOT_UP as e:
            raise StepFailure(
                f"TorchServe at {self.cfg.target.management} did not take {pending['archive']} "
                f"({_plain_error(e)}): the archive is kept, and the next run promotes it without training again"
            ) from None
        return self._promoted(pending, consumed, "the default")

    def _promoted(self, pending: dict, consumed: int, how: str) -> dict:
        self.report.update(outcome="promoted", promoted_version=pending["version"], consumed=consumed)
        self.pending_path.unlink()
        print(f"retrain: version {pending['version']} of {self.cfg.model} is {how}; {consumed} corrections consumed")
        return self._write()

    def _stopped(self, reason: str) -> dict:
        self.report = _stopped(self.id, self.folder, reason, self.report)
        return self.report

    def failed(self, e: BaseException) -> None:
        """A step failed: the report says which and why (the exception goes on to the caller)."""
        self.report.update(outcome="failed", reason=_plain_error(e))
        if self.folder.is_dir():
            self._write()

    def _write(self) -> dict:
        return _write_report(self.folder, self.report)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def run_once(cfg: RetrainConfig) -> dict | None:
    """One run under the store's retraining lock (a PostgreSQL advisory lock, or a file lock beside a SQLite
    file); None when another run holds it (that run writes a report saying so), and on the ranks other than 0
    under torchrun."""
    world = distributed.start(device=cfg.tune.device)
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
                run, folder = _new_run(Path(cfg.workdir))
                stopped = _stopped(
                    run,
                    folder,
                    f"another run holds the retraining lock of {display_url(cfg.store)}; leaving it to finish",
                    {"model": cfg.model},
                )
                _record(store, stopped, time.time())
                return None
            job = Retrain(cfg, store, peers)
            started = time.time()
            try:
                report = job.run()
                report["seconds"] = time.time() - started
                return report
            except Exception as e:
                job.failed(e)
                raise
            finally:
                _record(store, job.report, started, job.folder / "report.png", job.used)
                job.close()
    finally:
        store.close()


def run_record(report: dict, started: float, ended: float) -> Run:
    """What the store records of a run, from its report (an outcome still None: the run was interrupted)."""
    verdict = report.get("gate")
    return Run(
        run=report["run"],
        model_name=report["model"],
        started=started,
        ended=ended,
        outcome=report.get("outcome") or "failed",
        decided_by=verdict["decided_by"] if verdict else "",
        reason=report.get("reason", "") or ("" if report.get("outcome") else "interrupted"),
        gate=verdict,
        corrections_used=report.get("feedback_used", 0),
        corrections_kept_back=report.get("feedback_checked", 0),
        served_version=report.get("served_version") or "",
        version=report.get("promoted_version", ""),
    )


def _record(
    store: FeedbackStore, report: dict, started: float, image: Path | None = None, feedback: list[str] | None = None
) -> None:
    """The run recorded in the store, where the feedback service's metrics and the editor's Models page read it,
    with its report image (so a page on another machine shows it) and the corrections it took; a store that cannot
    take it now costs only the record."""
    png = image.read_bytes() if image is not None and image.exists() else None
    try:
        store.record_run(run_record(report, started, time.time()), png, feedback or [])
    except StoreUnavailable as e:
        print(f"retrain: run {report['run']} is not recorded in the store: {e}", flush=True)


NOT_PENDING = {  # the states a run takes nothing from, in the dry run's words
    "withdrawn": "corrections withdrawn by their authors",
    "rejected": "rejected by a run or an operator (`abn feedback requeue` puts them back)",
    "consumed": "consumed by earlier runs",
}


def dry_run(cfg: RetrainConfig) -> dict:
    """What the next run would do, printed and returned (the figures a run reports, plus "stop": why it would
    stop before fine-tuning, "" when it would go on), without taking the lock, training or writing anything."""
    store = open_store(cfg.store, create=False)
    client = None if cfg.publish else TorchServeClient(cfg.target, model=cfg.model)
    say: list[str] = []
    try:
        pending_path = Path(cfg.workdir) / "pending.json"
        if pending_path.exists():
            pending = json.loads(pending_path.read_text())
            say.append(
                f"the next run promotes {pending['archive']} (version {pending['version']}, built by run "
                f"{pending['run']} on {len(pending['feedback'])} corrections), without training again"
            )
        version, classes, stop = None, None, ""
        try:
            version, path = served_archive(cfg, client, store)
            classes = checkpoint.read_metadata(archive.checkpoint_of(path))["classes"]
            say.append(f"version {version} of {cfg.model} is served ({path.name})")
        except StepFailure as e:
            stop = "no served version"
            say.append(f"{stop}: {e}; the counts below take every class")
        selection = select(
            list(store.items(consumed=False, model_name=cfg.model)), classes, cfg.max_author_share, cfg.min_feedback
        )
        say += describe(selection, cfg, version)
        by_state = store.stats(cfg.model)["by_state"]
        left = [f"{by_state[state]} {words}" for state, words in NOT_PENDING.items() if by_state.get(state)]
        if left:
            say.append(f"not counted: {'; '.join(left)}")
        stop = stop or too_little(selection, cfg)
        say.append(f"a run would stop: {stop}" if stop else "a run would fine-tune, judge and promote on these")
        for line in say:
            print(f"retrain --dry-run: {line}", flush=True)
        return {
            "model": cfg.model,
            "served_version": version,
            **selection_figures(selection),
            "by_state": by_state,
            "stop": stop,
        }
    finally:
        if client is not None:
            client.close()
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
