"""The retraining job: fine-tune the served model on collected feedback and promote it.

One run:
  1. takes a lock (a second run exits cleanly, saying so);
  2. snapshots the pending feedback for the served model (stops, saying so, when there is too little);
  3. fine-tunes the served version (read out of its .mar) with finetune.knowledge and its defaults, on the
     feedback minus a kept-back share, plus the model's own training data when it is a built-in set;
  4. evaluates candidate and served model on the same held-out data (the model's validation split when
     known, plus the kept-back feedback) and refuses to promote when accuracy falls by more than a margin;
  5. builds the .mar of version N+1 (the ONNX export is checked against PyTorch inside);
  6. registers it in TorchServe, makes it the default and sends one live prediction to it;
  7. only then marks the snapshot consumed by this run;
  8. writes report.json and report.png into the run's folder.
A failure at any step leaves version N serving and the feedback pending. A run that built its archive
but could not promote it (TorchServe down) leaves pending.json behind: the next run promotes that archive
without training again. `--fail-at STEP` makes a run fail at that step, so tests can cause each fault.
"""

import argparse
import fcntl
import json
import time
import zipfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from finetune import checkpoint, data, knowledge
from finetune.data import TensorSet
from finetune.evaluate import evaluate, predict
from finetune.images import image_tensor, open_image, resize_map
from finetune.visualize import map_rows
from serving import client, package, settings

STEPS = ("snapshot", "finetune", "evaluate", "package", "register", "set_default", "live_check", "consume")


class StepFailure(RuntimeError):
    """A step failed (or was made to fail); the served version and the feedback are untouched."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("retraining")
    g.add_argument("--model", default="abn", help="served model name")
    settings.add_store_argument(g)
    g.add_argument("--model-store", default="runs/model_store", help="TorchServe's model store")
    g.add_argument("--workdir", default="runs/retrain", help="lock, run folders and reports")
    client.add_arguments(g)
    g.add_argument("--min-feedback", type=int, default=20, help="fewest pending corrections worth a run")
    g.add_argument("--holdout", type=float, default=0.2, help="share of the feedback kept back to check")
    g.add_argument("--max-drop", type=float, default=0.05,
                   help="largest fall of held-out accuracy that still promotes")
    g.add_argument("--fail-at", choices=STEPS, help="fail on purpose at this step (for tests)")
    g.add_argument("--schedule", help='a cron expression, e.g. "0 3 * * *": keep running, one run per slot')
    knowledge.add_arguments(parser)


def for_services(cfg, **options) -> argparse.Namespace:
    """The job's arguments, at their defaults, aimed at the TorchServe of cfg (a serving.torchserve.ServeConfig);
    options override any of them by attribute name, e.g. store="runs/other.db"."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    args.__dict__.update(model_store=str(cfg.model_store), key_file=str(cfg.key_file), inference=cfg.inference_target,
                         management=cfg.management_target, management_url=cfg.http_management_url, **options)
    return args


def _feedback_set(items: list, meta: dict) -> TensorSet:
    size = tuple(meta["input_size"])
    images = torch.stack([image_tensor(open_image(i.image), size) for i in items])
    labels = torch.tensor([meta["classes"].index(i.label or i.predicted_label) for i in items])
    maps = torch.stack([resize_map(torch.from_numpy(i.attention)[None], size) for i in items])
    return TensorSet(images, labels, maps)


def _own_data(meta: dict) -> tuple[TensorSet | None, TensorSet | None]:
    """The served model's training and validation splits, when it was trained on a built-in set."""
    source = meta["trained_on"]
    while "parent" in source:  # a fine-tuned model: its ancestor was trained on the data
        source = source["parent"]
    if source.get("data") not in data.BUILTIN:
        return None, None
    args = argparse.Namespace(decoy=source.get("decoy") or "glyph", decoy_size=source.get("decoy_size"),
                              clean=source.get("decoy") is None, data_seed=source.get("data_seed", 0))
    size = tuple(meta["input_size"])
    train, val = (data.builtin_split(args, split, size) for split in ("train", "val"))
    train.has_map[:] = False  # its object masks are not corrections
    val.has_map[:] = False
    return train, val


class Retrain:
    def __init__(self, args: argparse.Namespace):
        from serving.feedback_store import open_store

        self.args = args
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pending_path = self.workdir / "pending.json"
        self.id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.folder = self.workdir / self.id
        self.store = open_store(args.store)
        self.client = client.Client(args.inference, args.key_file, args.management_url, model=args.model,
                             management_target=args.management)
        self.report: dict = {"run": self.id, "model": args.model, "steps": [], "outcome": None}

    def step(self, name: str) -> None:
        self.report["steps"].append(name)
        print(f"retrain {self.id}: {name}", flush=True)
        if self.args.fail_at == name:
            raise StepFailure(f"failing at step {name!r} as asked by --fail-at")

    def served(self) -> tuple[dict, Path, bytes]:
        """The default version's description, its archive, and its checkpoint's bytes read out of the archive."""
        description = self.client.describe(self.args.model)[0]
        archive = Path(self.args.model_store) / description["modelUrl"]
        with zipfile.ZipFile(archive) as z:
            return description, archive, z.read("checkpoint.pt")

    def run(self) -> dict:
        """One run; the report (its outcome: promoted, refused, too_little_feedback, or an exception)."""
        if self.pending_path.exists():
            return self.promote(json.loads(self.pending_path.read_text()))
        self.step("snapshot")
        description, served_archive, parent_bytes = self.served()
        model, meta = checkpoint.load(parent_bytes)
        items = [i for i in self.store.items(consumed=False, model_name=self.args.model)
                 if (i.label or i.predicted_label) in meta["classes"]]
        self.report.update(served_version=description["modelVersion"], pending_feedback=len(items))
        if len(items) < self.args.min_feedback:
            print(f"retrain: {len(items)} pending corrections for {self.args.model}, fewer than "
                  f"--min-feedback {self.args.min_feedback}: nothing to do")
            self.report["outcome"] = "too_little_feedback"
            return self.report
        rng = np.random.default_rng(0)
        order = rng.permutation(len(items))
        n_check = max(1, round(self.args.holdout * len(items)))
        check, tune = [items[i] for i in order[:n_check]], [items[i] for i in order[n_check:]]
        own_train, own_val = _own_data(meta)

        self.step("finetune")
        tune_set = _feedback_set(tune, meta)
        served_model, _ = checkpoint.load(parent_bytes)
        cfg = knowledge.config_from(self.args)
        history = knowledge.fine_tune(model, ConcatDataset([tune_set] + ([own_train] if own_train else [])),
                                      meta["mean"], meta["std"], cfg)

        self.step("evaluate")
        check_set = _feedback_set(check, meta)
        held_out = ConcatDataset([check_set] + ([own_val] if own_val else []))
        figures = {name: {"held_out": evaluate(m, held_out, meta["mean"], meta["std"]),
                          "check_feedback": evaluate(m, check_set, meta["mean"], meta["std"])}
                   for name, m in (("served", served_model), ("candidate", model))}
        self.report.update(figures=figures, history=history, feedback_used=len(tune), feedback_checked=len(check))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._figure(served_model, model, check_set, meta)
        drop = figures["served"]["held_out"]["accuracy"] - figures["candidate"]["held_out"]["accuracy"]
        if drop > self.args.max_drop:
            self.report["outcome"] = "refused"
            print(f"retrain: not promoting: held-out accuracy falls by {drop:.4f}, more than --max-drop "
                  f"{self.args.max_drop}")
            return self._write()

        self.step("package")
        new_meta = checkpoint.next_version(meta, {"parent": meta["trained_on"], "finetuned_on": {
            "feedback": len(tune), "run": self.id, "config": asdict(cfg)}})
        checkpoint.save(self.folder / "checkpoint.pt", model, new_meta)
        # served as version N is: same backend, batching and workers
        mar = package.build(self.folder / "checkpoint.pt", self.args.model_store, name=self.args.model,
                            **package.settings_of(served_archive))
        pending = {"run": self.id, "archive": mar.name, "version": str(new_meta["version"]),
                   "feedback": [i.id for i in items], "report": self.report}
        self.pending_path.write_text(json.dumps(pending, indent=2) + "\n")
        return self.promote(pending)

    def promote(self, pending: dict) -> dict:
        """Steps 6 and 7 for an archive that is built; pending.json goes once they are done."""
        self.id, self.report = pending["run"], pending["report"]
        self.folder = self.workdir / self.id
        self.step("register")
        versions = {d["modelVersion"] for d in self.client.describe(self.args.model, "all")}
        if pending["version"] not in versions:
            self.client.register(pending["archive"])
        self.step("set_default")
        self.client.set_default(self.args.model, pending["version"])
        try:
            self.step("live_check")
            sample = self.store.get(pending["feedback"][0])
            answer = self.client.predict(sample.image, model=self.args.model)
            if answer.model_version != pending["version"]:
                raise StepFailure(f"the live prediction came from version {answer.model_version}, "
                                  f"not {pending['version']}")
            self.step("consume")
            consumed = self.store.mark_consumed(pending["feedback"], self.id)
        except BaseException:
            self.client.set_default(self.args.model, self.report["served_version"])  # version N serves again
            raise
        self.report.update(outcome="promoted", promoted_version=pending["version"], consumed=consumed)
        package.record_served(self.args.model_store, self.args.model, pending["archive"])
        self.pending_path.unlink()
        print(f"retrain: version {pending['version']} of {self.args.model} is the default; "
              f"{consumed} corrections consumed")
        return self._write()

    def _figure(self, before, after, check_set: TensorSet, meta: dict, count: int = 6) -> None:
        n = min(count, len(check_set))
        images = check_set.images[:n]
        _, maps_before = predict(before, images, meta["mean"], meta["std"])
        _, maps_after = predict(after, images, meta["mean"], meta["std"])
        rows = [(images[i], [None, maps_before[i], check_set.maps[i], maps_after[i]]) for i in range(n)]
        map_rows(rows, ["image", "served map", "corrected map", "candidate map"], self.folder / "report.png")

    def _write(self) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "report.json").write_text(json.dumps(self.report, indent=2) + "\n")
        print(f"retrain: report in {self.folder / 'report.json'}")
        return self.report

    def close(self) -> None:
        self.client.close()
        self.store.close()


def run_once(args: argparse.Namespace) -> dict | None:
    """One run under the lock; None when another run holds it."""
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "retrain.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"retrain: another run holds {workdir / 'retrain.lock'}; leaving it to finish")
            return None
        job = Retrain(args)
        started = time.time()
        try:
            report = job.run()
            report["seconds"] = time.time() - started
            return report
        finally:
            job.close()


def run_on_schedule(args: argparse.Namespace) -> None:
    """A run at every slot of the cron expression, until stopped; a failed run waits for the next slot."""
    from croniter import croniter

    slots = croniter(args.schedule, datetime.now(timezone.utc))
    while True:
        slot = slots.get_next(datetime)
        print(f"retrain: next run at {slot.isoformat()}", flush=True)
        time.sleep(max(0.0, (slot - datetime.now(timezone.utc)).total_seconds()))
        try:
            run_once(args)
        except Exception as e:  # the schedule goes on; the run's state is safe by construction
            print(f"retrain: run failed: {e}", flush=True)
