"""The review queue and the experts: in the store (SQLite and a real PostgreSQL), and through a real feedback
service over gRPC, with experts' tokens."""

import io
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import dds
from PIL import Image

from handlers import wire
from handlers.stubs.abn.v1 import review_pb2
from handlers.stubs.abn.v1.prediction_pb2 import ClassScore, Prediction
from serving import cli, protos, review
from serving.feedback import experts
from serving.feedback.client import FeedbackClient
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.store import ClaimError, Item, NotFoundError, ReviewEntry, SQLiteStore, open_store, token_hash

CLASSES = {"abn": [str(d) for d in range(10)]}


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def prediction(p1: float, p2: float, label: str = "3") -> Prediction:
    m = np.random.default_rng(0).random((8, 8), dtype=np.float32)
    return Prediction(
        prediction_id="p",
        model_name="abn",
        model_version="1",
        scores=[
            ClassScore(index=int(label), label=label, probability=p1),
            ClassScore(index=1, label="1", probability=p2),
        ],
        attention=wire.map_to_proto(m),
    )


def entry(seed: int, priority: float, label: str = "3") -> ReviewEntry:
    return ReviewEntry(png(seed), prediction(0.5, 0.3, label).SerializeToString(), "abn", label, priority, "test")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = open_store(url)
    yield store
    store.close()


# ---- the store


def test_experts_are_kept_by_the_hash_of_their_token(store):
    token = experts.add(store, "ana")
    assert store.expert_for(token_hash(token)) == "ana" and store.expert_for(token_hash("guess")) is None
    assert token not in repr(store._execute("SELECT * FROM experts").fetchall())  # only its hash is stored
    with pytest.raises(ValueError, match="exists already"):
        experts.add(store, "ana")
    for bad in ("", "a/b", "..", " ana", "x" * 300):
        with pytest.raises(ValueError, match="plain name"):
            experts.add(store, bad)
    experts.add(store, "bo")
    assert [e.name for e in store.experts()] == ["ana", "bo"]
    experts.remove(store, "ana")
    assert store.expert_for(token_hash(token)) is None
    with pytest.raises(ValueError, match="no expert named"):
        experts.remove(store, "ana")


def test_the_queue_orders_claims_skips_and_closes(store):
    ids = [store.add_review(entry(i, p, label)) for i, (p, label) in enumerate([(0.2, "3"), (0.9, "3"), (0.5, "5")])]
    assert all(created for _, created in ids)
    assert store.add_review(entry(1, 0.1)) == (ids[1][0], False)  # the same image waits once per model
    assert [e.priority for e in store.review_items()] == [0.9, 0.5, 0.2]
    assert [e.priority for e in store.review_items(label="3")] == [0.9, 0.2]
    assert [e.priority for e in store.review_items(limit=2)] == [0.9, 0.5]
    assert store.review_items(model_name="other") == []

    first = store.claim_review("ana")
    assert first.priority == 0.9 and first.image == png(1) and first.claimed_by == "ana"
    assert [e.priority for e in store.review_items(viewer="bo")] == [0.5, 0.2]  # held by ana: bo does not see it
    assert store.claim_review("bo").priority == 0.5
    with pytest.raises(ClaimError, match="claimed by 'ana'"):
        store.claim_review("bo", first.id)

    store.release_review(first.id, "ana")  # skip: bo gets it next, ana is not offered it again
    assert store.claim_review("ana").priority == 0.2
    assert store.claim_review("ana") is None
    assert store.claim_review("bo", first.id).id == first.id

    # a correction closes the item only for the expert who holds it
    with pytest.raises(ClaimError, match="claimed by 'bo', not 'ana'"):
        store.submit(Item(image=png(1), attention=np.ones((4, 4), np.float32), author="ana", review_id=first.id))
    fid, _ = store.submit(Item(image=png(1), attention=np.ones((4, 4), np.float32), author="bo", review_id=first.id))
    assert store.review_item(first.id).feedback_id == fid
    assert first.id not in [e.id for e in store.review_items(viewer="bo")]
    with pytest.raises(ClaimError, match="closed already"):
        store.claim_review("bo", first.id)
    with pytest.raises(NotFoundError):
        store.claim_review("bo", "nope")
    assert store.add_review(entry(1, 0.1))[1]  # once closed, the image may be queued again


def test_the_listing_can_show_only_what_open_next_would_offer(store):
    """A skipped item is hidden from its skipper's listing and count; one put aside (opening another) is not."""
    ids = [store.add_review(entry(i, p, label))[0] for i, (p, label) in enumerate([(0.9, "3"), (0.5, "5"), (0.2, "3")])]
    assert store.review_offered("ana") == 3 and store.review_offered("ana", label="3") == 2
    store.claim_review("ana", ids[0])
    store.release_review(ids[0], "ana")  # a skip
    held = store.claim_review("ana")
    assert held.id == ids[1]
    assert [e.id for e in store.review_items(viewer="ana")] == ids
    assert [e.id for e in store.review_items(viewer="ana", hide_skipped=True)] == ids[1:]  # held, and the next
    assert store.review_offered("ana") == 1 and store.review_offered("bo") == 2  # ana holds one, skipped one
    store.release_review(held.id, "ana", skip=False)  # put aside for another item: offered again
    assert store.review_offered("ana") == 2
    assert store.claim_review("ana").id == ids[1]


def test_an_expired_lease_puts_the_item_back(store):
    now = [1_000_000.0]
    store.clock = lambda: now[0]  # the leases' clock, moved by hand: no waiting, no race with a busy machine
    rid, _ = store.add_review(entry(0, 0.5))
    assert store.claim_review("ana", lease_s=60).lease_until == 1_000_060.0
    now[0] += 59.9
    assert store.claim_review("bo") is None and store.review_offered("bo") == 0
    assert [e.id for e in store.review_items(viewer="bo")] == []
    now[0] += 0.2  # the lease lapsed: the item is offered and listed to others again
    assert store.review_offered("bo") == 1 and [e.id for e in store.review_items(viewer="bo")] == [rid]
    assert store.claim_review("bo").id == rid
    with pytest.raises(ClaimError, match="your claim expired and another expert took it"):
        store.submit(Item(image=png(0), attention=np.ones((4, 4), np.float32), author="ana", review_id=rid))


def test_experts_racing_for_the_queue_never_share_an_item(store):
    for i in range(40):
        store.add_review(entry(i, float(i)))
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda n: [store.claim_review(f"e{n}") for _ in range(5)], range(8)))
    ids = [c.id for batch in claims for c in batch]
    assert len(ids) == 40 and len(set(ids)) == 40


# ---- the service, over gRPC


@pytest.fixture
def service(tmp_path):
    store = SQLiteStore(tmp_path / "feedback.db")
    token = write_token(tmp_path / "token")
    server = FeedbackServer(store, "127.0.0.1:0", token, classes=CLASSES)
    target = f"127.0.0.1:{server.port}"
    admin = FeedbackClient(target, tmp_path / "token")
    yield {"admin": admin, "store": store, "target": target, "token_file": tmp_path / "token"}
    admin.close()
    server.stop(grace=5)
    store.close()


def test_an_experts_token_signs_their_corrections(service, monkeypatch):
    store, admin = service["store"], service["admin"]
    ana = admin.with_token(experts.add(store, "ana"))
    assert ana.caller() == "ana" and admin.caller() == ""
    rid = admin.add_review(png(1), prediction(0.5, 0.4), priority=0.9, reason="uncertain").id

    item = ana.claim()
    assert item.id == rid and item.claimed_by == "ana" and item.state == review_pb2.REVIEW_STATE_CLAIMED
    assert item.image == png(1) and item.prediction.attention.height == 8
    assert wire.map_from_proto(item.prediction.attention).shape == (8, 8)
    # the author is the token's expert, whatever the request says; a retry after success is answered as one
    first = ana.submit(png(1), np.ones((8, 8), np.float32), author="mallory", review_id=rid, idempotency_key="k1")
    again = ana.submit(png(1), np.ones((8, 8), np.float32), author="mallory", review_id=rid, idempotency_key="k1")
    fid = first.id
    assert first.created and (again.id, again.created) == (fid, False)
    assert admin.get(fid).author == "ana"
    # an expert's token corrects, works the queue and lists their own corrections; reading any correction or
    # filling the queue needs more
    assert [f.id for f in ana.list()] == [fid] and ana.stats().total == 1
    for call in (lambda: ana.get(fid), lambda: ana.add_review(png(3), prediction(0.5, 0.4), 1.0)):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert admin.review_item(rid).state == review_pb2.REVIEW_STATE_DONE
    assert admin.review_items() == []

    # the service token claims for the expert it names, and must name one
    admin.add_review(png(2), prediction(0.5, 0.4), priority=0.5)
    with pytest.raises(grpc.RpcError) as e:
        admin.claim()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expert" in e.value.details()
    assert admin.claim(expert="bo").claimed_by == "bo"

    # a removed expert's token stops working (after the cache's few seconds)
    experts.remove(store, "ana")
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            ana.caller()
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        time.sleep(0.5)
    else:
        pytest.fail("a removed expert's token still works")


def test_queue_errors_are_statuses_a_person_can_act_on(service):
    store, admin = service["store"], service["admin"]
    ana = admin.with_token(experts.add(store, "ana"))
    bo = admin.with_token(experts.add(store, "bo"))

    def code(call):
        with pytest.raises(grpc.RpcError) as e:
            call()
        return e.value.code(), e.value.details()

    assert code(lambda: ana.claim())[0] == grpc.StatusCode.NOT_FOUND
    bad = prediction(0.5, 0.4)
    assert code(lambda: admin.add_review(dds(), bad, 1.0))[0] == grpc.StatusCode.INVALID_ARGUMENT
    no_scores = Prediction(model_name="abn")
    assert "scores" in code(lambda: admin.add_review(png(1), no_scores, 1.0))[1]
    other = prediction(0.5, 0.4)
    other.model_name = "nope"
    assert "not a model this service knows" in code(lambda: admin.add_review(png(1), other, 1.0))[1]
    assert "finite" in code(lambda: admin.add_review(png(1), prediction(0.5, 0.4), float("nan")))[1]

    rid = admin.add_review(png(1), prediction(0.5, 0.4), 1.0).id
    ana.claim(rid)
    status, message = code(lambda: ana.submit(png(2), np.ones((8, 8), np.float32), review_id=rid))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and "not review item" in message  # another image
    status, message = code(lambda: bo.claim(rid))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and "claimed by 'ana'" in message
    status, message = code(lambda: bo.submit(png(1), np.ones((8, 8), np.float32), review_id=rid))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and "claimed by 'ana', not 'bo'" in message
    assert code(lambda: bo.release(rid))[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert code(lambda: bo.release("missing"))[0] == grpc.StatusCode.NOT_FOUND
    assert store.stats()["total"] == 0  # nothing refused was stored
    ana.release(rid, keep_offering=True)  # put aside, not skipped: ana is offered it again
    listing = ana.review_listing(hide_skipped=True)
    assert [i.id for i in listing.items] == [rid] and listing.offered == 1
    ana.claim(rid)
    ana.release(rid)  # a skip: hidden from ana's listing, offered to bo
    listing = ana.review_listing(hide_skipped=True)
    assert list(listing.items) == [] and listing.offered == 0
    assert bo.review_listing(hide_skipped=True).offered == 1
    assert bo.claim().id == rid

    wrong = admin.with_token("not-a-token")
    assert code(lambda: wrong.review_items())[0] == grpc.StatusCode.UNAUTHENTICATED


def test_expert_and_review_commands(service, tmp_path, capsys):
    store_url = str(tmp_path / "feedback.db")
    assert cli.main(["experts", "add", "ana", "--store", store_url]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert service["admin"].with_token(token).caller() == "ana"
    assert cli.main(["experts", "list", "--store", store_url]) == 0
    assert '"name": "ana"' in capsys.readouterr().out
    assert cli.main(["experts", "add", "ana", "--store", store_url]) == 2
    assert cli.main(["experts", "remove", "ana", "--store", store_url]) == 0
    assert cli.main(["experts", "remove", "ana", "--store", store_url]) == 2


def test_priorities_put_the_least_certain_first():
    assert review.margin(prediction(0.5, 0.45))[0] > review.margin(prediction(0.9, 0.05))[0]
    # the words fit the figures: "uncertain" only when the top two are close
    assert review.margin(prediction(0.5, 0.45))[1] == "uncertain: 3 50% or 1 45%"
    assert review.margin(prediction(0.7, 0.2))[1] == "probably 3: 70%, then 1 20%"
    assert review.margin(prediction(0.9, 0.05))[1] == "confident: 3 90%"
    flat, peaked = prediction(0.5, 0.4), prediction(0.5, 0.4)
    flat.attention.CopyFrom(wire.map_to_proto(np.full((8, 8), 0.5, np.float32)))
    peaked.attention.CopyFrom(wire.map_to_proto(np.eye(8, dtype=np.float32)))
    assert review.entropy(flat)[0] == pytest.approx(1.0) and review.entropy(peaked)[0] < 0.7


def test_protos_keep_released_clients_working():
    """buf breaking against the last released API (proto/released.binpb, `buf build proto -o` at a release)."""
    buf = Path(sys.executable).parent / "buf"
    result = subprocess.run(
        [str(buf), "breaking", "proto", "--against", "proto/released.binpb"],
        cwd=protos.REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
