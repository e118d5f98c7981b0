"""The feedback store itself, on SQLite and on a real, throwaway PostgreSQL server (tests/conftest.py)."""

import io
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from old_stores import write_old_store
from PIL import Image

from serving import cli, settings
from serving.client import Client
from serving.feedback.server import FeedbackServer
from serving.feedback.store import (
    MIGRATIONS,
    POSTGRES_MIGRATIONS,
    SCHEMA_VERSION,
    ConflictError,
    Item,
    NotAuthorError,
    NotFoundError,
    PostgresStore,
    SQLiteStore,
    StateError,
    StoreUnavailable,
    display_url,
    open_store,
)
from serving.feedback.transfer import copy_store
from serving.torchserve.config import free_port


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def an_item(seed: int = 1, **fields) -> Item:
    attention = np.random.default_rng(seed).random((4, 6), dtype=np.float32)
    return Item(image=png(seed), attention=attention, **fields)


def count(store, table: str) -> int:
    return store._execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@pytest.fixture
def store(url):
    store = open_store(url)
    yield store
    store.close()


def test_submit_get_and_items_with_filters(store):
    a, a_created = store.submit(
        an_item(
            1,
            label="3",
            predicted_label="5",
            prediction_id="p1",
            model_name="abn",
            model_version="1",
            author="ana",
            idempotency_key="k1",
        )
    )
    assert a_created and len(a) == 32
    time.sleep(0.01)
    b, _ = store.submit(an_item(2, predicted_label="4", model_name="other"))
    got = store.get(a)
    assert got.image == png(1) and got.attention.dtype == np.float32
    assert np.array_equal(got.attention, an_item(1).attention)
    assert (
        got.label,
        got.predicted_label,
        got.prediction_id,
        got.model_name,
        got.model_version,
        got.author,
        got.idempotency_key,
        got.consumed_by,
    ) == ("3", "5", "p1", "abn", "1", "ana", "k1", None)
    assert abs(got.created - time.time()) < 60
    assert store.get("nope") is None
    assert [i.id for i in store.items()] == [a, b]
    assert [i.id for i in store.items(model_name="other")] == [b]
    assert [i.id for i in store.items(since=got.created + 1e-6)] == [b]
    quick = list(store.items(with_data=False))
    assert quick[0].image == b"" and quick[0].attention.shape == (0, 0)
    assert quick[0].image_sha256 == got.image_sha256 and quick[0].label == "3"
    store.mark_consumed([a], "run-1")
    assert [i.id for i in store.items(consumed=False)] == [b]
    assert [(i.id, i.consumed_by) for i in store.items(consumed=True)] == [(a, "run-1")]


def test_items_reads_page_after_page_in_order(store, monkeypatch):
    monkeypatch.setattr(type(store), "_PAGE", 3)
    ids = [store.submit(an_item(i, model_name="even" if i % 2 == 0 else "odd"))[0] for i in range(8)]
    assert [i.id for i in store.items()] == ids
    assert [i.id for i in store.items(model_name="even", with_data=False)] == ids[0::2]
    for item in store.items():  # the store is free to use between items
        store.mark_consumed([item.id], "run")
    assert store.stats()["by_state"] == {"consumed": 8}


def test_a_retry_returns_the_same_id_and_a_reused_key_with_any_other_payload_is_refused(store):
    first = store.submit(an_item(1, idempotency_key="same", label="3", author="ana"))
    again = store.submit(an_item(1, idempotency_key="same", label="3", author="ana"))
    assert first[1] and again == (first[0], False)
    other_map = an_item(1, idempotency_key="same", label="3", author="ana")
    other_map.attention[0, 0] = 1 - other_map.attention[0, 0]
    for changed, field in ((an_item(2, idempotency_key="same", label="3", author="ana"), "image"),
                           (an_item(1, idempotency_key="same", label="4", author="ana"), "label"),
                           (an_item(1, idempotency_key="same", label="3", author="bo"), "author"),
                           (other_map, "attention")):  # fmt: skip
        with pytest.raises(ConflictError, match=f"with a different {field}"):
            store.submit(changed)
    assert count(store, "feedback") == 1 and count(store, "images") == 1  # the refused image is not kept
    assert store.get(first[0]).label == "3" and np.array_equal(store.get(first[0]).attention, an_item(1).attention)


def test_images_are_stored_once(store):
    for value in (0.1, 0.2, 0.3):
        store.submit(Item(image=png(7), attention=np.full((4, 4), value, np.float32)))
    store.submit(an_item(8))
    assert count(store, "images") == 2 and count(store, "feedback") == 4


def test_stats_shape_and_counts(store):
    empty = {"by_author": {}, "confirmations": 0, "pending_images": 0, "conflicting_images": 0}
    assert store.stats() == {"total": 0, "by_state": {}, "by_label": {}, "by_model_version": {}, **empty}
    ids = [
        store.submit(an_item(1, label="3", model_name="abn", model_version="1", author="ana"))[0],
        store.submit(an_item(2, predicted_label="3", model_name="abn", model_version="2", confirmed=True))[0],
        store.submit(an_item(3, label="4", predicted_label="3", model_name="other", author="ana"))[0],
    ]
    store.mark_consumed(ids[:1], "run-1")
    stats = store.stats()
    assert stats == {
        "total": 3,
        "by_state": {"consumed": 1, "pending": 2},
        "by_label": {"3": 2, "4": 1},
        "by_model_version": {"abn:1": 1, "abn:2": 1, "other:": 1},
        "by_author": {"": 1, "ana": 2},
        "confirmations": 1,
        "pending_images": 2,
        "conflicting_images": 0,
    }
    assert list(stats["by_model_version"]) == ["abn:1", "abn:2", "other:"]
    assert store.stats("abn") == {
        "total": 2,
        "by_state": {"consumed": 1, "pending": 1},
        "by_label": {"3": 2},
        "by_model_version": {"abn:1": 1, "abn:2": 1},
        "by_author": {"": 1, "ana": 1},
        "confirmations": 1,
        "pending_images": 1,
        "conflicting_images": 0,
    }
    assert store.stats("abn", author="ana") == {
        "total": 1,
        "by_state": {"consumed": 1},
        "by_label": {"3": 1},
        "by_model_version": {"abn:1": 1},
        "by_author": {"ana": 1},
        "confirmations": 0,
        "pending_images": 0,
        "conflicting_images": 0,
    }
    assert store.stats(author="bo")["total"] == 0


def test_the_decided_pixels_and_a_confirmation_round_trip_compactly(store):
    partial = np.zeros((4, 6), bool)
    partial[1:3, 2:5] = True  # a stroke
    stroke = store.submit(an_item(1, decided=partial, idempotency_key="stroke"))[0]
    whole = store.submit(an_item(2, decided=np.ones((4, 6), bool)))[0]
    old = store.submit(an_item(3))[0]  # no mask: every pixel decided, as before masks
    confirmed = store.submit(an_item(4, confirmed=True))[0]
    got = store.get(stroke)
    assert got.decided.dtype == bool and np.array_equal(got.decided, partial) and not got.confirmed
    assert store.get(whole).decided is None and store.get(old).decided is None  # all decided: stored as none
    assert store.get(confirmed).confirmed and store.get(confirmed).decided is None
    assert [np.array_equal(i.decided, partial) if i.decided is not None else None for i in store.items()] == [
        True, None, None, None]  # fmt: skip
    assert all(i.decided is None for i in store.items(with_data=False))  # a listing reads no mask
    sizes = store._execute("SELECT LENGTH(decided) FROM feedback ORDER BY seq").fetchall()
    assert [row[0] for row in sizes] == [3, None, None, None]  # 24 pixels in 3 bytes
    # the mask is part of what an idempotency key vouches for
    assert store.submit(an_item(1, decided=partial.copy(), idempotency_key="stroke")) == (stroke, False)
    with pytest.raises(ConflictError, match="with a different decided"):
        store.submit(an_item(1, decided=~partial, idempotency_key="stroke"))
    with pytest.raises(ConflictError, match="with a different confirmed"):
        store.submit(an_item(1, decided=partial, confirmed=True, idempotency_key="stroke"))
    with pytest.raises(ValueError, match="decided: a"):
        store.submit(an_item(5, decided=np.ones((6, 4), bool)))


def test_an_author_withdraws_a_pending_correction_and_nothing_uses_it(store):
    ids = [store.submit(an_item(i, author="ana" if i < 3 else "bo", model_name="abn"))[0] for i in range(4)]
    withdrawn = store.withdraw(ids[0], "ana")
    assert (withdrawn.id, withdrawn.state, withdrawn.reason) == (ids[0], "withdrawn", "withdrawn by its author")
    assert withdrawn.image == b"" and withdrawn.withdrawn is not None
    assert [i.id for i in store.items(consumed=False)] == ids[1:] == [i.id for i in store.items(state="pending")]
    assert store.ids_of(rejected=False) == ids[1:] and store.ids_of(rejected=True) == []
    assert [i.id for i in store.items(state="withdrawn")] == ids[:1]
    assert [i.state for i in store.items(author="ana")] == ["withdrawn", "pending", "pending"]
    stats = store.stats()
    assert stats["by_state"] == {"pending": 3, "withdrawn": 1} and stats["pending_images"] == 3
    # a run that read it before it was withdrawn neither consumes nor rejects it
    assert store.mark_consumed(ids[:2], "run-1", "2") == 1 and store.mark_rejected(ids[:1], "run-1") == 0
    assert store.get(ids[0]).state == "withdrawn" and store.get(ids[1]).state == "consumed"
    with pytest.raises(NotAuthorError, match=f"correction {ids[2]} is ana's, not bo's: only its author"):
        store.withdraw(ids[2], "bo")
    with pytest.raises(StateError, match=f"{ids[1]} is consumed by run run-1, no longer pending"):
        store.withdraw(ids[1], "ana")
    with pytest.raises(StateError, match="is withdrawn, no longer pending"):
        store.withdraw(ids[0], "ana")
    store.mark_rejected(ids[3:], "operator", "a test image")
    with pytest.raises(StateError, match="is rejected by operator, no longer pending"):
        store.withdraw(ids[3], "bo")
    with pytest.raises(NotFoundError, match="id: no feedback 'nope'"):
        store.withdraw("nope", "ana")
    assert store.get(ids[2]).state == "pending"  # the refusals changed nothing


def test_each_state_says_why_and_a_consumed_correction_names_the_version_it_went_into(store):
    ids = [store.submit(an_item(i, author="ana"))[0] for i in range(4)]
    assert store.set_reason(ids[:2], "held back: kept to check the run") == 2
    assert [i.reason for i in store.items()] == ["held back: kept to check the run"] * 2 + ["", ""]
    assert store.mark_consumed(ids[:1], "run-1", "3") == 1
    assert store.mark_rejected(ids[1:3], "run-1", "attention on ignore pixels rose") == 2
    assert store.set_reason(ids, "not pending any more") == 1  # only the pending one
    got = {i.id: i for i in store.items()}
    assert (got[ids[0]].state, got[ids[0]].promoted_version, got[ids[0]].reason) == ("consumed", "3", "")
    assert (got[ids[1]].rejected_by, got[ids[1]].reason) == ("run-1", "attention on ignore pixels rose")
    assert got[ids[3]].reason == "not pending any more"
    assert store.requeue(ids[1:2]) == 1
    assert (store.get(ids[1]).state, store.get(ids[1]).reason) == ("pending", "")


def _old_store(url: str, path) -> list[str]:
    """A store as the version before masks and withdrawals left it: four migrations, one correction."""
    columns = "id, image_sha256, map_height, map_width, map_values, label, author, created"
    row = ("old-1", "sha-1", 4, 6, np.ones((4, 6), "<f4").tobytes(), "3", "ana", time.time())
    insert = f"INSERT INTO feedback ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    write_old_store(url, path, 4, [("INSERT INTO images VALUES (?, ?)", ("sha-1", png(1))), (insert, row)])
    return ["old-1"]


def test_an_old_store_is_upgraded_in_place_and_its_corrections_decided_every_pixel(url, tmp_path):
    (old_id,) = _old_store(url, tmp_path / "feedback.db")
    store = open_store(url)
    version = (
        store._execute("PRAGMA user_version")
        if isinstance(store, SQLiteStore)
        else store._execute("SELECT version FROM abn_schema")
    ).fetchone()[0]
    assert version == SCHEMA_VERSION
    old = store.get(old_id)
    assert (old.state, old.decided, old.confirmed, old.reason, old.promoted_version) == ("pending", None, False, "", "")
    assert old.image == png(1) and old.attention.shape == (4, 6)
    new = store.submit(an_item(2, decided=np.eye(4, 6, dtype=bool), author="bo"))[0]
    assert np.array_equal(store.get(new).decided, np.eye(4, 6, dtype=bool))
    assert store.withdraw(old_id, "ana").state == "withdrawn"
    assert store.stats()["by_author"] == {"ana": 1, "bo": 1}
    store.close()


def test_rejected_corrections_are_set_aside_until_requeued(store):
    ids = [store.submit(an_item(i, author="ana" if i < 2 else "bo", model_name="abn"))[0] for i in range(4)]
    # one image corrected twice, differently, by two authors: a conflict; the same again by one: none
    store.submit(an_item(0, author="bo", label="7", model_name="abn"))
    assert store.stats()["pending_images"] == 4 and store.stats()["conflicting_images"] == 1
    assert store.mark_rejected(store.ids_of(rejected=False, author="ana"), "run-1") == 2
    store.mark_consumed(ids[3:], "run-2")
    assert store.mark_rejected(ids[3:], "run-3") == 0  # consumed stays consumed
    assert store.stats()["by_state"] == {"consumed": 1, "pending": 2, "rejected": 2}
    assert [i.id for i in store.items(consumed=False)] == [ids[2], store.ids_of(rejected=False)[-1]]
    rejected = list(store.items(rejected=True))
    assert [(i.id, i.rejected_by) for i in rejected] == [(ids[0], "run-1"), (ids[1], "run-1")]
    assert store.ids_of(rejected=True, rejected_by="run-1") == ids[:2] and store.ids_of(True, "bo") == []
    assert store.requeue(ids[:1]) == 1 and store.requeue(ids[:1]) == 0
    assert store.stats()["by_state"] == {"consumed": 1, "pending": 3, "rejected": 1}


def test_mark_consumed_counts_only_pending_items(store):
    ids = [store.submit(an_item(i))[0] for i in range(3)]
    assert store.mark_consumed(ids[:2], "run-1") == 2
    assert store.mark_consumed(ids + ["unknown"], "run-2") == 1
    assert [store.get(i).consumed_by for i in ids] == ["run-1", "run-1", "run-2"]
    assert store.mark_consumed([], "run-3") == 0


def test_sixteen_threads_lose_nothing(store):
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: store.submit(an_item(i, idempotency_key=f"t{i}")), range(160)))
    assert len({feedback_id for feedback_id, _ in answers}) == 160 and all(created for _, created in answers)
    assert {item.id for item in store.items(with_data=False)} == {feedback_id for feedback_id, _ in answers}

    start = threading.Barrier(16)  # sixteen submissions of one item with one key, at the same moment

    def same(_):
        start.wait()
        return store.submit(an_item(999, idempotency_key="once"))

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(same, range(16)))
    assert len({feedback_id for feedback_id, _ in answers}) == 1
    assert sorted(created for _, created in answers) == [False] * 15 + [True]
    assert count(store, "feedback") == 161


def set_schema_version(store, version: int) -> None:
    if isinstance(store, SQLiteStore):
        store._execute(f"PRAGMA user_version={version}")
    else:
        store._execute("UPDATE abn_schema SET version = ?", (version,))


def test_the_schema_is_versioned_and_a_newer_one_is_refused(url):
    store = open_store(url)
    version = (
        store._execute("PRAGMA user_version")
        if isinstance(store, SQLiteStore)
        else store._execute("SELECT version FROM abn_schema")
    ).fetchone()[0]
    assert version == SCHEMA_VERSION == len(MIGRATIONS) == len(POSTGRES_MIGRATIONS)
    store.submit(an_item(1))
    store.close()
    store = open_store(url)  # opening a current store again migrates nothing and keeps the items
    assert store.stats()["total"] == 1
    set_schema_version(store, SCHEMA_VERSION + 1)
    store.close()
    with pytest.raises(RuntimeError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this program's"):
        open_store(url)


def test_both_databases_have_the_same_tables_and_columns(tmp_path, postgres_url):
    lite, postgres = SQLiteStore(tmp_path / "f.db"), PostgresStore(postgres_url)
    for table in ("images", "feedback"):
        lite_columns = [row[1] for row in lite._execute(f"PRAGMA table_info({table})")]
        postgres_columns = [
            row[0]
            for row in postgres._execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                (table,),
            )
        ]
        assert lite_columns == postgres_columns and len(lite_columns) > 1
    lite.close()
    postgres.close()


def test_open_store_picks_the_store_by_url(tmp_path, postgres_url):
    for url in (f"sqlite:///{tmp_path / 'a.db'}", str(tmp_path / "b.db")):
        store = open_store(url)
        assert isinstance(store, SQLiteStore) and store.path.exists()
        store.close()
    for url in (postgres_url, postgres_url.replace("postgresql://", "postgres://", 1)):
        store = open_store(url)
        assert isinstance(store, PostgresStore) and store.stats()["total"] == 0
        store.close()
    with pytest.raises(ValueError) as e:
        open_store("mysql://user:secret@host/db")
    assert "sqlite:///" in str(e.value) and "postgresql://" in str(e.value) and "secret" not in str(e.value)


def test_an_unreachable_postgres_server_is_named_quickly():
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(RuntimeError) as e:
        open_store(f"postgresql://ana:s3cret@127.0.0.1:{port}/feedback?connect_timeout=3")
    assert time.monotonic() - started < 10
    message = str(e.value)
    assert f"127.0.0.1:{port}" in message and "'feedback'" in message and "s3cret" not in message


def test_copy_store_keeps_ids_state_images_and_maps_and_a_second_copy_skips_all(tmp_path, postgres_url):
    source = SQLiteStore(tmp_path / "source.db")
    for i in range(5):
        source.submit(
            an_item(
                i % 3,
                label=str(i),
                model_name="abn",
                model_version=str(i),
                idempotency_key=f"k{i}" if i % 2 else "",
                decided=np.eye(4, 6, dtype=bool) if i == 2 else None,
                confirmed=i == 3,
                author="ana",
            )
        )
    first = [item.id for item in source.items()]
    source.mark_consumed(first[:2], "run-1", "2")
    source.set_reason(first[2:3], "held back")
    source.withdraw(first[4], "ana")
    target = open_store(postgres_url)
    nothing = {"marked_consumed": 0, "marked_rejected": 0, "marked_withdrawn": 0}
    assert copy_store(source, target) == {"copied": 5, "skipped": 0, **nothing}
    copied = list(target.items())
    for a, b in zip(source.items(), copied, strict=True):  # in the same order, every field equal
        for name in ("attention", "decided"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and y is None) or (np.array_equal(x, y) and x.shape == y.shape)
            setattr(a, name, None), setattr(b, name, None)
        assert a == b
    assert [item.state for item in copied] == ["consumed", "consumed", "pending", "pending", "withdrawn"]
    assert copied[0].promoted_version == "2" and copied[2].reason == "held back" and copied[3].confirmed
    assert [item.consumed_by for item in copied] == ["run-1", "run-1", None, None, None]
    assert count(target, "images") == 3 and target.stats() == source.stats()
    retry = an_item(1, label="1", model_name="abn", model_version="1", idempotency_key="k1", author="ana")
    assert target.submit(retry) == (first[1], False)  # its keys came along

    late = source.submit(an_item(10, author="bo"))[0]
    target.restore(source.get(late))
    source.withdraw(late, "bo")  # an author withdrew one that had been copied,
    source.submit(an_item(9))  # one more since, as if the first copy had been interrupted,
    source.mark_consumed(first[2:4], "run-2")  # and a retraining run consumed two meanwhile
    assert copy_store(source, target) == {
        "copied": 1,
        "skipped": 6,
        **nothing,
        "marked_consumed": 2,
        "marked_withdrawn": 1,
    }
    assert copy_store(source, target) == {"copied": 0, "skipped": 7, **nothing}
    states = [(i.consumed_by, i.promoted_version, i.state) for i in target.items(with_data=False)]
    assert states == [("run-1", "2", "consumed")] * 2 + [("run-2", "", "consumed")] * 2 + [
        (None, "", "withdrawn"), (None, "", "withdrawn"), (None, "", "pending")]  # fmt: skip
    assert [item.id for item in target.items(with_data=False)] == [item.id for item in source.items()]
    source.close()
    target.close()


def test_copy_store_carries_rejections_and_withdrawals_as_they_were(tmp_path, url):
    """Whether an item was rejected or withdrawn before the first copy or between two: the target holds who
    rejected it and why, and when its author withdrew it (not when it was copied)."""
    source, target = SQLiteStore(tmp_path / "source.db"), open_store(url)
    ids = [source.submit(an_item(i, author="ana"))[0] for i in range(4)]
    source.mark_rejected(ids[:1], "20260101T000000Z", "attention on the kept-back corrections fell")
    source.withdraw(ids[1], "ana")
    assert copy_store(source, target)["copied"] == 4
    source.mark_rejected(ids[2:3], "operator bo", "the image is blurred")
    source.withdraw(ids[3], "ana")
    caught_up = copy_store(source, target)

    def fields(store) -> list[tuple]:
        return [(i.id, i.state, i.rejected_by, i.reason, i.withdrawn) for i in store.items(with_data=False)]

    assert fields(target) == fields(source)
    assert [state for _, state, *_ in fields(target)] == ["rejected", "withdrawn", "rejected", "withdrawn"]
    assert caught_up == {"copied": 0, "skipped": 4, "marked_consumed": 0, "marked_rejected": 1, "marked_withdrawn": 1}
    source.close()
    target.close()


def test_copy_store_refuses_an_item_whose_key_the_target_gave_to_another(tmp_path):
    source, target = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "t.db")
    source.submit(an_item(1, idempotency_key="k"))
    other, _ = target.submit(an_item(1, idempotency_key="k"))
    with pytest.raises(ConflictError, match=f"taken in the target by {other}"):
        copy_store(source, target)
    source.close()
    target.close()


def test_a_backup_taken_while_a_writer_runs_is_whole_and_restores(tmp_path, capsys):
    live = SQLiteStore(tmp_path / "live.db")
    stop = threading.Event()
    written = 0
    progress = threading.Condition()

    def write():
        nonlocal written
        while not stop.is_set():
            live.submit(an_item(written % 50))
            with progress:
                written += 1
                progress.notify_all()

    def until_written(n: int) -> None:
        with progress:
            assert progress.wait_for(lambda: written >= n, timeout=60), f"the writer wrote {written} of {n}"

    writer = threading.Thread(target=write)
    writer.start()
    backup = tmp_path / "backup.db"
    try:
        until_written(20)  # the writer runs before the backup starts
        committed = written  # items whose submit returned: the backup must hold them
        assert cli.main(["feedback", "backup", "--store", str(tmp_path / "live.db"), "--out", str(backup)]) == 0
        until_written(written + 20)  # and still runs after it ends
    finally:
        stop.set()
        writer.join()
    assert oct(backup.stat().st_mode & 0o777) == "0o600"  # a copy of every image and author
    assert cli.main(["feedback", "backup", "--store", str(tmp_path / "live.db"), "--out", str(backup)]) == 2
    assert "exists" in capsys.readouterr().err
    saved = SQLiteStore(backup)
    assert saved.integrity() == "ok" and committed <= saved.stats()["total"] < live.stats()["total"] == written
    saved_ids = [i.id for i in saved.items(with_data=False)]
    assert saved_ids == [i.id for i in live.items(with_data=False)][: len(saved_ids)]  # a prefix: a snapshot
    # restoring into an empty store by copying gives back every saved item, as it was
    assert cli.main(["feedback", "copy", "--from", str(backup), "--to", f"sqlite:///{tmp_path / 'new.db'}"]) == 0
    restored = SQLiteStore(tmp_path / "new.db")
    assert [i.id for i in restored.items(with_data=False)] == saved_ids and restored.stats() == saved.stats()
    for store in (live, saved, restored):
        store.close()


def test_reading_commands_refuse_a_store_that_is_not_there(tmp_path, capsys):
    missing = str(tmp_path / "typo.db")
    for command in (
        ["feedback", "stats", "--store", missing],
        ["feedback", "backup", "--store", missing, "--out", str(tmp_path / "b.db")],
        ["feedback", "copy", "--from", missing, "--to", str(tmp_path / "c.db")],
    ):
        assert cli.main(command) == 2
        assert f"no feedback store at {missing}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was made


def test_printed_urls_hide_the_password():
    assert display_url("postgresql://ana:s3cret@db:5432/f") == "postgresql://ana:***@db:5432/f"
    assert display_url("postgresql://ana@db/f") == "postgresql://ana@db/f"
    assert display_url("runs/feedback.db") == "runs/feedback.db"


def test_backup_of_a_postgres_store_points_to_pg_dump(tmp_path, postgres_url, capsys):
    assert cli.main(["feedback", "backup", "--store", postgres_url, "--out", str(tmp_path / "b.db")]) == 2
    assert "pg_dump" in capsys.readouterr().err


def test_the_feedback_service_runs_on_postgres_by_changing_one_variable(tmp_path, postgres_url, monkeypatch):
    """ABN_FEEDBACK_STORE moves every command's default store: the service stores there, stats reads it."""
    monkeypatch.setenv("ABN_FEEDBACK_STORE", postgres_url)
    args = cli.build_parser().parse_args(["feedback", "serve", "--address", "127.0.0.1:0", "--no-token"])
    assert args.store == postgres_url
    store = open_store(args.store)
    server = FeedbackServer(store, "127.0.0.1:0")
    with Client(feedback_target=f"127.0.0.1:{server.port}") as client:
        answer = client.submit_feedback(
            png(1), np.ones((2, 2), np.float32), label="3", model_name="abn", idempotency_key="pg-1"
        )
        assert answer.created and client.get_feedback(answer.id).label == "3"
    server.stop(grace=1)
    store.close()
    assert cli.build_parser().parse_args(["feedback", "stats"]).store == postgres_url
    check = open_store(postgres_url)
    assert check.stats()["total"] == 1 and check.get(answer.id).idempotency_key == "pg-1"
    check.close()


def test_the_answer_deadline_follows_the_urls_statement_timeout(postgres_url):
    """A URL that lets statements run longer than the default: a statement past the default answer deadline,
    within the URL's statement_timeout, is answered rather than cut off as a server that does not answer."""
    slow = settings.STORE_ANSWER_DEADLINE_S + 1
    store = PostgresStore(f"{postgres_url}?options=-c%20statement_timeout%3D{(slow + 10) * 1000}")
    other = PostgresStore(f"{postgres_url}?options=-c%20search_path%3Dpublic")  # options that set no timeout
    try:
        assert store._execute("SELECT pg_sleep(?), 'answered'", (slow,)).fetchone()[1] == "answered"
        assert other._execute("SHOW statement_timeout").fetchone()[0] == f"{settings.STORE_STATEMENT_TIMEOUT_S}s"
    finally:
        store.close()
        other.close()


def test_the_lock_connection_keeps_alive_on_both_sides(postgres_url, monkeypatch):
    """The connection that holds exclusive()'s lock sends nothing for a whole retraining run: TCP keepalive, on
    this side (libpq) and on the server's, notices within a minute that the other side was cut off, so the server
    ends the session and releases the lock, and this side stops relying on it."""
    store = PostgresStore(postgres_url)
    opened = []
    connect = store._connect
    monkeypatch.setattr(store, "_connect", lambda: opened.append(connect()) or opened[-1])
    try:
        with store.exclusive("retrain") as held:
            assert held
            [lock] = opened
            with socket.socket(fileno=os.dup(lock.fileno())) as sock:
                ours = [
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    *(
                        sock.getsockopt(socket.IPPROTO_TCP, o)
                        for o in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
                    ),
                ]
            assert ours == [1, 30, 10, 3]
            theirs = lock.execute(
                "SELECT setting FROM pg_settings WHERE name IN ('tcp_keepalives_idle', 'tcp_keepalives_interval', "
                "'tcp_keepalives_count') ORDER BY name"
            ).fetchall()
            assert [int(v) for (v,) in theirs] == [3, 30, 10]  # count, idle, interval
    finally:
        store.close()


def test_a_sqlite_store_is_readable_by_its_owner_only(tmp_path):
    store = SQLiteStore(tmp_path / "feedback.db")
    store.submit(an_item(1))
    files = [tmp_path / name for name in ("feedback.db", "feedback.db-wal", "feedback.db-shm")]
    assert [oct(p.stat().st_mode & 0o777) for p in files] == ["0o600"] * 3
    for p in files:  # as an earlier version left them, while open (so that -wal and -shm are there)
        p.chmod(0o644)
    SQLiteStore(tmp_path / "feedback.db").close()
    assert [oct(p.stat().st_mode & 0o777) for p in files] == ["0o600"] * 3
    store.close()


def test_one_bad_submission_fails_alone_among_those_written_with_it(tmp_path):
    """SQLite's one writer commits many submissions in one transaction: a conflict, or an item the store
    cannot write, fails that submission only, whichever others share its transaction."""
    store = SQLiteStore(tmp_path / "feedback.db")
    taken = store.submit(an_item(0, idempotency_key="taken"))[0]
    malformed = an_item(98)
    malformed.attention = np.ones(5, np.float32)  # one-dimensional: the store cannot write it
    bad = {40: an_item(99, idempotency_key="taken"), 80: malformed}  # another image under a taken key
    items = [bad.get(i) or an_item(i % 30 + 1, idempotency_key=f"g{i}") for i in range(120)]

    def submit(item):
        try:
            return store.submit(item)
        except Exception as e:
            return e

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(submit, items))
    assert isinstance(answers[40], ConflictError) and isinstance(answers[80], Exception)
    good = [a for i, a in enumerate(answers) if i not in bad]
    assert all(isinstance(a, tuple) and a[1] for a in good), [a for a in good if not isinstance(a, tuple)]
    assert count(store, "feedback") == 119 and store.get(taken).idempotency_key == "taken"
    store.close()
    with pytest.raises(StoreUnavailable):  # after close, refused at once, never left waiting
        store.submit(an_item(1))
