"""Moving corrections out of a store: into another store (copy_store), or into an image folder (export_folder)."""

import io
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.progress import track
from serving.feedback.store import ConflictError, FeedbackStore, Item, SQLiteStore, is_plain_name, open_store


def copy_store(source: FeedbackStore, target: FeedbackStore) -> dict:
    """Copy every item of source into target as it is: id, created time, state, idempotency key, image, map
    and mask. Ids the target holds already are skipped, but for their state: one that a retraining run consumed
    (or a run or an operator rejected, or its author withdrew) in the source since the last copy is marked so in
    the target too, by whom, why and when as in the source. So a copy can be run again, after an interruption or
    to catch up before switching stores. {"copied", "skipped", "marked_consumed", "marked_rejected",
    "marked_withdrawn"}."""
    present = {item.id: item.state for item in target.items(with_data=False)}
    total = source.stats()["total"]
    copied = skipped = marked = rejected = withdrawn = 0
    with track(total=total, unit="item", desc="copying feedback", disable=total < 1000) as progress:
        for item in source.items(with_data=False):
            if item.id in present:
                skipped += 1
                if item.consumed_by and present[item.id] != "consumed":
                    marked += target.mark_consumed([item.id], item.consumed_by, item.promoted_version)
                elif item.state == "rejected" and present[item.id] == "pending":
                    rejected += target.mark_rejected([item.id], item.rejected_by or "", item.reason)
                elif item.state == "withdrawn" and present[item.id] == "pending":
                    target.withdraw(item.id, item.author, at=item.withdrawn)
                    withdrawn += 1
            else:
                full = source.get(item.id)
                if full is None:  # deleted since it was listed
                    continue
                stored, created = target.restore(full)
                if stored != item.id:
                    raise ConflictError(
                        f"item {item.id}: its idempotency_key {item.idempotency_key!r} is taken "
                        f"in the target by {stored}"
                    )
                copied += created
            progress.update()
    return {
        "copied": copied,
        "skipped": skipped,
        "marked_consumed": marked,
        "marked_rejected": rejected,
        "marked_withdrawn": withdrawn,
    }


def export_folder(
    store: FeedbackStore, out: str | Path, consumed: bool | None = None, model_name: str = "", author: str = ""
) -> dict:
    """Write items as an image folder plus a maps folder, the format `abn train` and `abn finetune` read:
    out/images/<class>/<id>.<ext> (the bytes as submitted) and out/maps/<class>/<id>.png (transparent where the
    expert decided nothing). The class is the corrected label, else the predicted one; items with neither are
    left out and counted, and so are items whose class is no plain folder name (a store written before the
    service checked names), so that nothing is written outside out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)  # the experts' images: their owner's only, when made here
    written, skipped, unsafe = 0, 0, 0
    for item in store.items(consumed=consumed, model_name=model_name, author=author):
        cls = item.label or item.predicted_label
        if not cls:
            skipped += 1
            continue
        if not is_plain_name(cls) or not (out / "images" / cls).resolve().is_relative_to(out.resolve()):
            unsafe += 1
            continue
        ext = (Image.open(io.BytesIO(item.image)).format or "png").lower()
        for folder in ("images", "maps"):
            (out / folder / cls).mkdir(parents=True, exist_ok=True)
        (out / "images" / cls / f"{item.id}.{ext}").write_bytes(item.image)
        _map_picture(item).save(out / "maps" / cls / f"{item.id}.png")
        written += 1
    return {"out": str(out), "written": written, "skipped_without_class": skipped, "refused_unsafe_class": unsafe}


def _map_picture(item: Item) -> Image.Image:
    """A correction's map as the folder format holds it: grey, white = attend; when the expert left pixels
    undecided, an alpha channel that is transparent there ("don't care")."""
    grey = (item.attention * 255).round().astype(np.uint8)
    if item.decided is None:
        return Image.fromarray(grey)
    return Image.fromarray(np.stack([grey, item.decided.astype(np.uint8) * 255], axis=-1), "LA")


def backup(store_url: str, out: str | Path) -> None:
    """A consistent copy of a SQLite store into the new file out, while the service goes on writing."""
    if Path(out).exists():
        raise ValueError(f"{out} exists: a backup goes into a new file")
    store = open_store(store_url, create=False)
    try:
        if not isinstance(store, SQLiteStore):
            raise ValueError("backup copies a SQLite store; back up PostgreSQL with pg_dump")
        store.backup(out)
    finally:
        store.close()
