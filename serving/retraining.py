"""The retraining sequence: fine-tune the served model on collected feedback and promote it.

One run:
  1. takes a lock (a second run exits cleanly, saying so);
  2. snapshots the pending feedback for the served model (stops, saying so, when there is too little);
  3. fine-tunes the served version (read out of its .mar) with finetune.candidate, on the feedback minus a
     kept-back share, plus the model's own training data when it is a built-in set;
  4. evaluates candidate and served model on the same held-out data (the model's validation split when
     known, plus the kept-back feedback) and refuses to promote when accuracy falls by more than a margin;
  5. builds the .mar of version N+1 with the served archive's settings (the ONNX export is checked against
     PyTorch inside);
  6. promotes it (serving.torchserve.served): registers it, makes it the default, sends one live prediction;
  7. only then marks the snapshot consumed by this run;
  8. writes report.json and report.png into the run's folder.
A failure at any step leaves version N serving and the feedback pending. A run that built its archive
but could not promote it (TorchServe down) leaves pending.json behind: the next run promotes that archive
without training again. fail_at makes a run fail at a step, so tests can cause each fault.
"""

import fcntl
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from croniter import croniter

from finetune import candidate, checkpoint
from finetune.knowledge import TuneConfig
from serving import settings
from serving.feedback.store import Item, open_store
from serving.torchserve import archive, served
from serving.torchserve.client import TorchServeClient
from serving.torchserve.config import ServeConfig, Target

STEPS = ("snapshot", "finetune", "evaluate", "package", "register", "set_default", "live_check", "consume")


@dataclass
class RetrainConfig:
    target: Target = field(default_factory=Target)  # the TorchServe that serves the model
    model: str = settings.MODEL_NAME  # served model name
    store: str = field(default_factory=settings.feedback_store)
    model_store: str = settings.MODEL_STORE
    workdir: str = settings.RETRAIN_WORKDIR  # lock, run folders and reports
    min_feedback: int = 20  # fewest pending corrections worth a run
    holdout: float = 0.2  # share of the feedback kept back to check
    max_drop: float = 0.05  # largest fall of held-out accuracy that still promotes
    fail_at: str | None = None  # fail on purpose at this step (one of STEPS), for tests
    schedule: str | None = None  # a cron expression: keep running, one run per slot
    tune: TuneConfig = field(default_factory=TuneConfig)


def for_services(cfg: ServeConfig, **options) -> RetrainConfig:
    """The job's configuration aimed at the TorchServe of cfg; options set any other field."""
    return RetrainConfig(target=cfg.target, model_store=str(cfg.model_store), **options)


class StepFailure(RuntimeError):
    """A step failed (or was made to fail); the served version and the feedback are untouched."""


def _corrections(items: list[Item]) -> list[candidate.Correction]:
    return [candidate.Correction(i.image, i.attention, i.label or i.predicted_label) for i in items]


class Retrain:
    def __init__(self, cfg: RetrainConfig):
        self.cfg = cfg
        self.workdir = Path(cfg.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)  # corrections' images in its reports
        self.pending_path = self.workdir / "pending.json"
        self.id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.folder = self.workdir / self.id
        self.store = open_store(cfg.store)
        self.client = TorchServeClient(cfg.target, model=cfg.model)
        self.record = served.ServedRecord(cfg.model_store, cfg.model)
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
        version, archive_file = served.default_version(self.client, self.cfg.model)
        served_archive = Path(self.cfg.model_store) / archive_file
        parent = archive.checkpoint_of(served_archive)
        meta = checkpoint.read_metadata(parent)
        items = [
            i
            for i in self.store.items(consumed=False, model_name=self.cfg.model)
            if (i.label or i.predicted_label) in meta["classes"]
        ]
        self.report.update(served_version=version, pending_feedback=len(items))
        if len(items) < self.cfg.min_feedback:
            print(
                f"retrain: {len(items)} pending corrections for {self.cfg.model}, fewer than "
                f"--min-feedback {self.cfg.min_feedback}: nothing to do"
            )
            self.report["outcome"] = "too_little_feedback"
            return self.report
        order = np.random.default_rng(0).permutation(len(items))
        n_check = max(1, round(self.cfg.holdout * len(items)))
        check, tune = [items[i] for i in order[:n_check]], [items[i] for i in order[n_check:]]

        self.step("finetune")
        model, history = candidate.tune(parent, _corrections(tune), self.cfg.tune)

        self.step("evaluate")
        self.folder.mkdir(parents=True, exist_ok=True)
        figures = candidate.score(parent, model, _corrections(check), self.folder / "report.png")
        self.report.update(figures=figures, history=history, feedback_used=len(tune), feedback_checked=len(check))
        drop = figures["served"]["held_out"]["accuracy"] - figures["candidate"]["held_out"]["accuracy"]
        if drop > self.cfg.max_drop:
            self.report["outcome"] = "refused"
            print(
                f"retrain: not promoting: held-out accuracy falls by {drop:.4f}, more than --max-drop "
                f"{self.cfg.max_drop}"
            )
            return self._write()

        self.step("package")
        new_meta = checkpoint.next_version(
            meta,
            {
                "parent": meta["trained_on"],
                "finetuned_on": {"feedback": len(tune), "run": self.id, "config": asdict(self.cfg.tune)},
            },
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
            "feedback": [i.id for i in items],
            "report": self.report,
        }
        self.pending_path.write_text(json.dumps(pending, indent=2) + "\n")
        return self.promote(pending)

    def promote(self, pending: dict) -> dict:
        """Steps 6 and 7 for an archive that is built; pending.json goes once they are done."""
        self.id, self.report = pending["run"], pending["report"]
        self.folder = self.workdir / self.id
        consumed = 0

        def live_check_and_consume() -> None:
            nonlocal consumed
            self.step("live_check")
            sample = self.store.get(pending["feedback"][0])
            if sample is None:
                raise StepFailure(f"correction {pending['feedback'][0]} is no longer in the store")
            answer = self.client.predict(sample.image, model=self.cfg.model)
            if answer.model_version != pending["version"]:
                raise StepFailure(
                    f"the live prediction came from version {answer.model_version}, not {pending['version']}"
                )
            self.step("consume")
            consumed = self.store.mark_consumed(pending["feedback"], self.id)

        served.promote(
            self.client,
            self.record,
            pending["archive"],
            pending["version"],
            self.report["served_version"],
            live_check_and_consume,
            self.step,
        )
        self.report.update(outcome="promoted", promoted_version=pending["version"], consumed=consumed)
        self.pending_path.unlink()
        print(
            f"retrain: version {pending['version']} of {self.cfg.model} is the default; {consumed} corrections consumed"
        )
        return self._write()

    def _write(self) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "report.json").write_text(json.dumps(self.report, indent=2) + "\n")
        print(f"retrain: report in {self.folder / 'report.json'}")
        return self.report

    def close(self) -> None:
        self.client.close()
        self.store.close()


def run_once(cfg: RetrainConfig) -> dict | None:
    """One run under the lock; None when another run holds it."""
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(workdir / "retrain.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"retrain: another run holds {workdir / 'retrain.lock'}; leaving it to finish")
            return None
        job = Retrain(cfg)
        started = time.time()
        try:
            report = job.run()
            report["seconds"] = time.time() - started
            return report
        finally:
            job.close()


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
            print(f"retrain: run failed: {e}", flush=True)
