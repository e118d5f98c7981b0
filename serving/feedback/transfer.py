"""Moving corrections out of a store: into another store (copy_store), or into an image folder (export_folder)."""

import io
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from serving.feedback.store import ConflictError, FeedbackStore, SQLiteStore, is_plain_name, open_store


def copy_store(source: FeedbackStore, target: FeedbackStore) -> dict:
    """Copy every item of source into target as it is: id, created time, consumed_by, idempotency key, image
    and map. Ids the target holds already are skipped, but for their state: one that a retraining run consumed
    in the source since the last copy is marked consumed in the target too. So a copy can be run again, after
    an interruption or to catch up before switching stores. {"copied", "skipped", "marked_consumed"}."""
    present = {item.id: item.consumed_by for item in target.items(with_data=False)}
    total = source.stats()["total"]
    copied = skipped = marked = 0
    with tqdm(total=total, unit="item", desc="copying feedback", disable=total < 1000) as progress:
        for item in source.items(with_data=False):
            if item.id in present:
                skipped += 1
                if item.consumed_by and present[item.id] is None:
                    marked += target.mark_consumed([item.id], item.consumed_by)
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
    return {"copied": copied, "skipped": skipped, "marked_consumed": marked}


def export_folder(store: FeedbackStore, out: str | Path, consumed: bool | None = None, model_name: str = "") -> dict:
    """Write items as an image folder plus a maps folder, the format `abn train` and `abn finetune` read:
    out/images/<class>/<id>.<ext> (the bytes as submitted) and out/maps/<class>/<id>.png. The class is the
    corrected label, else the predicted one; items with neither are left out and counted, and so are items
    whose class is no plain folder name (a store written before the service checked names), so that nothing
    is written outside out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)  # the experts' images: their owner's only, when made here
    written, skipped, unsafe = 0, 0, 0
    for item in store.items(consumed=consumed, model_name=model_name):
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
        Image.fromarray((item.attention * 255).round().astype(np.uint8)).save(out / "maps" / cls / f"{item.id}.png")
        written += 1
    return {"out": str(out), "written": written, "skipped_without_class": skipped, "refused_unsafe_class": unsafe}


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
