"""The feedback service, for real: a gRPC server on loopback in front of a SQLite file."""

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import dds
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from finetune.data import ImageFolder
from handlers import wire
from handlers.stubs.abn.v1 import feedback_pb2, feedback_pb2_grpc
from handlers.stubs.abn.v1.prediction_pb2 import AttentionMap
from serving import cli, settings
from serving.client import Client
from serving.feedback import experts
from serving.feedback.client import FeedbackClient
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.store import MIGRATIONS, SCHEMA_VERSION, Item, SQLiteStore
from serving.feedback.transfer import export_folder
from serving.torchserve.config import free_port

CLASSES = {"abn": [str(d) for d in range(10)], "other": [str(d) for d in range(10)]}


def png(seed: int, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def a_map(h=16, w=16, value=0.5) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = value
    return m


@pytest.fixture
def service(tmp_path):
    store = SQLiteStore(tmp_path / "feedback.db")
    token = write_token(tmp_path / "token")
    server = FeedbackServer(store, "127.0.0.1:0", token, classes=CLASSES)
    port = server.port
    client = Client(feedback_target=f"127.0.0.1:{port}", feedback_token_file=tmp_path / "token")
    yield {"client": client, "store": store, "port": port, "token": token, "path": tmp_path / "feedback.db"}
    client.close()
    server.stop(grace=5)
    store.close()


def test_token_file_is_private_and_kept(tmp_path):
    token = write_token(tmp_path / "t")
    assert len(token) >= 32 and oct((tmp_path / "t").stat().st_mode & 0o777) == "0o600"
    assert write_token(tmp_path / "t") == token


def test_submit_get_list_round_trip(service):
    client = service["client"]
    image, m = png(1), a_map()
    answer = client.submit_feedback(
        image, m, label="3", author="ana", model_name="abn", model_version="1", idempotency_key="k1"
    )
    assert answer.created and len(answer.id) == 32
    got = client.get_feedback(answer.id)
    assert got.image == image and np.array_equal(wire.map_from_proto(got.attention), m)
    assert (got.label, got.author, got.model_name, got.model_version) == ("3", "ana", "abn", "1")
    assert got.state == feedback_pb2.FEEDBACK_STATE_PENDING and got.consumed_by == ""
    assert got.created_time.seconds > 0
    second = client.submit_feedback(png(2), a_map(8, 8), label="4", model_name="other")
    listed = list(client.list_feedback())
    assert [f.id for f in listed] == [answer.id, second.id]
    assert [f.id for f in client.list_feedback(model_name="other")] == [second.id]
    quick = list(client.list_feedback(metadata_only=True))
    assert quick[0].image == b"" and quick[0].image_sha256 == got.image_sha256
    later = list(client.list_feedback(since=got.created_time.ToNanoseconds() / 1e9 + 1e-6))
    assert [f.id for f in later] == [second.id]
    service["store"].mark_consumed([answer.id], "run-1")
    assert [f.id for f in client.list_feedback(pending=True)] == [second.id]
    assert client.get_feedback(answer.id).consumed_by == "run-1"
    stats = client.feedback_stats()
    assert stats.total == 2
    assert {c.key: c.count for c in stats.by_state} == {"pending": 1, "consumed": 1}
    assert {c.key: c.count for c in stats.by_label} == {"3": 1, "4": 1}
    assert {c.key: c.count for c in stats.by_model_version} == {"abn:1": 1, "other:": 1}


def test_the_decided_pixels_and_a_confirmation_go_through_the_service_as_sent(service):
    client, store = service["client"], service["store"]
    stroke = np.zeros((16, 16), bool)
    stroke[2:5, 3:12] = True
    painted = client.submit_feedback(png(1), a_map(), decided=stroke, label="3", model_name="abn").id
    confirmed = client.submit_feedback(png(2), a_map(), confirmed=True, model_name="abn", predicted_label="4").id
    whole = client.submit_feedback(png(3), a_map(), decided=np.ones((16, 16), bool)).id
    old = client.submit_feedback(png(4), a_map()).id  # a client from before masks: every pixel decided
    got = client.get_feedback(painted)
    assert np.array_equal(wire.mask_from_bytes(got.decided, (16, 16)), stroke) and not got.confirmed
    assert set(got.decided) == {0, 1} and len(got.decided) == 256
    assert store.get(painted).decided.sum() == stroke.sum()
    assert client.get_feedback(confirmed).confirmed and client.get_feedback(confirmed).decided == b""
    assert [client.get_feedback(i).decided for i in (whole, old)] == [b"", b""]
    assert [store.get(i).decided for i in (confirmed, whole, old)] == [None, None, None]
    assert all(f.decided == b"" for f in client.list_feedback(metadata_only=True))
    stats = client.feedback_stats()
    assert stats.confirmations == 1 and {c.key: c.count for c in stats.by_author} == {"": 4}


def test_an_expert_withdraws_their_own_pending_correction_and_no_one_elses(service):
    admin, store = service["client"].feedback, service["store"]
    ana, bo = (admin.with_token(experts.add(store, name)) for name in ("ana", "bo"))
    first, second, third = (ana.submit(png(i), a_map(), label="3", model_name="abn").id for i in range(3))
    theirs = bo.submit(png(9), a_map(), confirmed=True).id
    store.mark_consumed([second], "run-1", "2")

    def refused(call, code: grpc.StatusCode, words: str) -> None:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == code and words in e.value.details(), e.value.details()

    refused(lambda: bo.withdraw(first), grpc.StatusCode.PERMISSION_DENIED, f"{first} is ana's, not bo's")
    refused(lambda: admin.withdraw(first, author="bo"), grpc.StatusCode.PERMISSION_DENIED, "only its author")
    refused(lambda: admin.withdraw(first), grpc.StatusCode.INVALID_ARGUMENT, "author: name the correction's author")
    refused(lambda: ana.withdraw(second), grpc.StatusCode.FAILED_PRECONDITION, "is consumed by run run-1")
    refused(lambda: ana.withdraw("nope"), grpc.StatusCode.NOT_FOUND, "id: no feedback 'nope'")
    assert store.get(first).state == "pending"  # no refusal changed it
    withdrawn = ana.withdraw(first)
    assert withdrawn.id == first and withdrawn.state == feedback_pb2.FEEDBACK_STATE_WITHDRAWN
    assert withdrawn.reason == "withdrawn by its author" and withdrawn.image == b""
    refused(lambda: ana.withdraw(first), grpc.StatusCode.FAILED_PRECONDITION, "is withdrawn, no longer pending")
    assert admin.withdraw(third, author="ana").state == feedback_pb2.FEEDBACK_STATE_WITHDRAWN  # for its author
    assert [i.id for i in store.items(consumed=False)] == [theirs]  # what retraining would take

    # "My corrections": an expert's token lists and counts that expert's own only, in every state
    mine = list(ana.list(metadata_only=True))
    assert [(f.id, f.state) for f in mine] == [
        (first, feedback_pb2.FEEDBACK_STATE_WITHDRAWN),
        (second, feedback_pb2.FEEDBACK_STATE_CONSUMED),
        (third, feedback_pb2.FEEDBACK_STATE_WITHDRAWN),
    ]
    assert mine[1].consumed_by == "run-1" and mine[1].promoted_version == "2"
    refused(lambda: list(ana.list(author="bo")), grpc.StatusCode.PERMISSION_DENIED, "'ana''s own corrections only")
    counted = ana.stats()
    assert counted.total == 3 and {c.key: c.count for c in counted.by_author} == {"ana": 3}
    assert {c.key: c.count for c in counted.by_state} == {"consumed": 1, "withdrawn": 2}
    everyone = admin.stats()
    assert {c.key: c.count for c in everyone.by_author} == {"ana": 3, "bo": 1} and everyone.confirmations == 1
    assert admin.stats(author="bo").total == 1 and [f.id for f in admin.list(author="bo")] == [theirs]
    state = feedback_pb2.ListFeedbackRequest(state=feedback_pb2.FEEDBACK_STATE_WITHDRAWN)
    listed = admin._stub.ListFeedback(state, metadata=admin._metadata, timeout=10)
    assert [r.feedback.id for r in listed] == [first, third]


def test_a_retry_with_the_same_key_stores_nothing_new(service):
    client, store = service["client"], service["store"]
    first = client.submit_feedback(png(1), a_map(), idempotency_key="same")
    again = client.submit_feedback(png(1), a_map(), idempotency_key="same")
    assert first.id == again.id and first.created and not again.created
    assert store.stats()["total"] == 1
    with pytest.raises(grpc.RpcError) as e:
        client.submit_feedback(png(2), a_map(), idempotency_key="same")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS and "different image" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:  # the same image with another label: not a retry either
        client.submit_feedback(png(1), a_map(), idempotency_key="same", label="7", model_name="abn")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS and "different label, model_name" in e.value.details()
    assert store.stats()["total"] == 1


def test_images_are_stored_once(service):
    client = service["client"]
    for i in range(3):
        client.submit_feedback(png(7), a_map(value=0.1 * (i + 1)))
    db = sqlite3.connect(service["path"])
    assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 1
    assert db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 3


def test_sixteen_threads_lose_nothing(service):
    client, store = service["client"], service["store"]
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: client.submit_feedback(png(i), a_map(), idempotency_key=f"t{i}").id, range(160)))
    assert len(set(ids)) == 160
    assert {item.id for item in store.items(with_data=False)} == set(ids)


@pytest.mark.parametrize(
    "change,code,message",
    [
        (dict(image=b""), "INVALID_ARGUMENT", "image is empty"),
        (dict(image=b"not an image"), "INVALID_ARGUMENT", "image cannot be decoded"),
        (dict(attention=None), "INVALID_ARGUMENT", "attention: missing"),
        (dict(attention=wire.map_to_proto(np.full((4, 4), np.nan))), "INVALID_ARGUMENT", "values must be finite"),
        (dict(attention=wire.map_to_proto(np.full((4, 4), -0.5))), "INVALID_ARGUMENT", "values must lie in [0, 1]"),
        (dict(attention=wire.map_to_proto(np.ones((1, 1)))), "INVALID_ARGUMENT", "between 2 and 1024, got 1x1"),
        (dict(attention=wire.map_to_proto(np.ones((1025, 1025)))), "INVALID_ARGUMENT", "got 1025x1025"),
        (
            dict(attention=AttentionMap(height=4, width=4, values=[0.5] * 3)),
            "INVALID_ARGUMENT",
            "4x4 map needs 16 values, got 3",
        ),
        (dict(attention=wire.map_to_proto(np.ones((4, 8)))), "INVALID_ARGUMENT", "aspect ratio"),
        (dict(label="cat", model_name="abn"), "INVALID_ARGUMENT", "label: 'cat' is not a class of model 'abn'"),
        (dict(label="cat"), "INVALID_ARGUMENT", "model_name: empty, but label is 'cat': name the model it is a class"),
        (dict(predicted_label="3"), "INVALID_ARGUMENT", "model_name: empty, but predicted_label is '3'"),
        (dict(author="x" * 300), "INVALID_ARGUMENT", "author: longer than 256"),
        (dict(author="ana\x00"), "INVALID_ARGUMENT", "author: control characters are not accepted"),
        (dict(label="../x"), "INVALID_ARGUMENT", "label: '../x' is not a plain name"),
        (dict(label="/abs/path"), "INVALID_ARGUMENT", "label: '/abs/path' is not a plain name"),
        (dict(predicted_label=".."), "INVALID_ARGUMENT", "predicted_label: '..' is not a plain name"),
        (dict(model_name="a\\b"), "INVALID_ARGUMENT", "model_name: 'a\\\\b' is not a plain name"),
        (dict(model_name="elsewhere"), "INVALID_ARGUMENT", "model_name: 'elsewhere' is not a model this service"),
        (dict(model_version="v2; drop"), "INVALID_ARGUMENT", "model_version: 'v2; drop' is not a version"),
        (dict(image=dds()), "INVALID_ARGUMENT", "image cannot be decoded"),
        # a_map() is 16 x 16: the mask of decided pixels has one byte per value
        (dict(decided=bytes(256)), "INVALID_ARGUMENT", "decided: the correction decides no pixel: paint at least"),
        (dict(decided=b"\x01" * 16), "INVALID_ARGUMENT", "decided: one byte per value of the 16x16 map (256 bytes)"),
        (dict(decided=b"\x01" + bytes(255), confirmed=True), "INVALID_ARGUMENT", "decided: a confirmation"),
    ],
)
def test_bad_input_is_rejected_and_nothing_is_written(service, change, code, message):
    client, store = service["client"], service["store"]
    stub = feedback_pb2_grpc.FeedbackServiceStub(grpc.insecure_channel(f"127.0.0.1:{service['port']}"))
    request = feedback_pb2.SubmitFeedbackRequest(
        image=png(1), attention=wire.map_to_proto(a_map()), idempotency_key="bad"
    )
    for k, v in change.items():
        if v is None:
            request.ClearField(k)
        elif k == "attention":
            request.attention.CopyFrom(v)
        else:
            setattr(request, k, v)
    with pytest.raises(grpc.RpcError) as e:
        stub.SubmitFeedback(request, metadata=[("authorization", f"Bearer {service['token']}")], timeout=30)
    assert e.value.code() == getattr(grpc.StatusCode, code)
    assert message in e.value.details()
    assert store.stats()["total"] == 0
    assert sqlite3.connect(service["path"]).execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0
    assert client.submit_feedback(png(1), a_map()).created  # still serving


def test_the_message_limit_is_the_services_and_the_clients_one_setting(service):
    """Over a raw channel that would send anything, the service itself refuses a message above the limit; just
    under it, the message reaches validation. The client refuses to send what the service would refuse."""
    limit = settings.FEEDBACK_MAX_MESSAGE_BYTES
    metadata = [("authorization", f"Bearer {service['token']}")]
    with grpc.insecure_channel(f"127.0.0.1:{service['port']}", options=[("grpc.max_send_message_length", -1)]) as raw:
        stub = feedback_pb2_grpc.FeedbackServiceStub(raw)
        attention = wire.map_to_proto(a_map())
        for size, code in (
            (limit + 1024, grpc.StatusCode.RESOURCE_EXHAUSTED),
            (limit - 64 * 1024, grpc.StatusCode.INVALID_ARGUMENT),
        ):
            request = feedback_pb2.SubmitFeedbackRequest(image=b"\x00" * size, attention=attention)
            with pytest.raises(grpc.RpcError) as e:
                stub.SubmitFeedback(request, metadata=metadata, timeout=60)
            assert e.value.code() == code, (size, e.value.details())
        assert "image cannot be decoded" in e.value.details()  # under the limit, it was read
    with pytest.raises(grpc.RpcError) as e:
        service["client"].submit_feedback(b"\x00" * (limit + 1024), a_map())
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "Sent message larger than max" in e.value.details()
    assert service["store"].stats()["total"] == 0


def test_get_of_an_unknown_id(service):
    client = service["client"]
    with pytest.raises(grpc.RpcError) as e:
        client.get_feedback("nope")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:  # an echoed value stays short: 100 KB would overflow the trailers
        client.get_feedback("x" * 100_000)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and len(e.value.details()) < 200


def test_an_invalid_since_is_the_callers_mistake(service):
    stub = feedback_pb2_grpc.FeedbackServiceStub(grpc.insecure_channel(f"127.0.0.1:{service['port']}"))
    request = feedback_pb2.ListFeedbackRequest()
    request.since.seconds = 10**15
    with pytest.raises(grpc.RpcError) as e:
        list(stub.ListFeedback(request, metadata=[("authorization", f"Bearer {service['token']}")], timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("since:")


def test_a_list_of_an_unknown_state_is_the_callers_mistake(service):
    stub = feedback_pb2_grpc.FeedbackServiceStub(grpc.insecure_channel(f"127.0.0.1:{service['port']}"))
    with pytest.raises(grpc.RpcError) as e:
        list(
            stub.ListFeedback(
                feedback_pb2.ListFeedbackRequest(state=99),
                metadata=[("authorization", f"Bearer {service['token']}")],
                timeout=10,
            )
        )
    assert (
        e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details() == "state: 99 is not a FeedbackState"
    )


def test_an_experts_withdrawal_naming_another_author_is_refused_as_a_listing_is(service):
    """An expert's token acts for its expert only: naming someone else is refused, not quietly replaced."""
    admin, store = service["client"].feedback, service["store"]
    ana = admin.with_token(experts.add(store, "ana"))
    mine = ana.submit(png(1), a_map(), label="3", model_name="abn").id
    for call in (lambda: ana.withdraw(mine, author="bo"), lambda: list(ana.list(author="bo"))):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert e.value.details() == "author: an expert's token acts on 'ana''s own corrections only"
    assert store.get(mine).state == "pending"
    assert ana.withdraw(mine, author="ana").state == feedback_pb2.FEEDBACK_STATE_WITHDRAWN  # naming oneself is fine


def test_a_call_without_the_token_is_refused_but_health_and_reflection_answer(service):
    with grpc.insecure_channel(f"127.0.0.1:{service['port']}") as channel:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        for metadata in ([], [("authorization", "Bearer wrong")]):
            with pytest.raises(grpc.RpcError) as e:
                stub.GetFeedbackStats(feedback_pb2.GetFeedbackStatsRequest(), metadata=metadata, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:
                list(stub.ListFeedback(feedback_pb2.ListFeedbackRequest(), metadata=metadata, timeout=10))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="abn.v1.FeedbackService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    buf = Path(sys.executable).parent / "buf"
    listed = subprocess.run(
        [
            str(buf),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--list-methods",
            f"http://127.0.0.1:{service['port']}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "abn.v1.FeedbackService/SubmitFeedback" in listed.stdout, listed.stderr


def test_export_writes_the_format_train_reads(service, tmp_path):
    client = service["client"]
    client.submit_feedback(png(1, (40, 20)), a_map(8, 16), label="3", model_name="abn")
    left = np.zeros((16, 16), bool)
    left[:, :8] = True  # the expert decided the left half only
    client.submit_feedback(png(2), a_map(), predicted_label="5", model_name="abn", decided=left)
    client.submit_feedback(png(3), a_map())  # no class at all: left out
    summary = export_folder(service["store"], tmp_path / "out")
    assert summary["written"] == 2 and summary["skipped_without_class"] == 1
    folder = ImageFolder(tmp_path / "out" / "images", (32, 32), tmp_path / "out" / "maps")
    assert folder.classes == ["3", "5"] and folder.map_count == 2
    whole, half = sorted((folder[i] for i in range(2)), key=lambda item: int(item["label"]))
    assert whole["decided"].min() == 1  # no mask: every pixel decided
    assert half["decided"][..., :16].min() == 1 and half["decided"][..., 16:].max() == 0


def test_export_never_writes_outside_its_folder(tmp_path):
    """Corrections stored before names were checked (here: written into the store directly) are left out."""
    store = SQLiteStore(tmp_path / "feedback.db")
    for label in ("../escaped", "/abs/escaped", "ok"):
        store.submit(Item(image=png(1), attention=a_map(), label=label))
    summary = export_folder(store, tmp_path / "a" / "out")
    store.close()
    assert summary["written"] == 1 and summary["refused_unsafe_class"] == 2
    assert sorted(p.name for p in (tmp_path / "a" / "out" / "images").iterdir()) == ["ok"]
    assert not (tmp_path / "a" / "out" / "escaped").exists() and not Path("/abs").exists()


def test_feedback_commands(service, tmp_path, capsys):
    service["client"].submit_feedback(png(1), a_map(), label="3", model_name="abn", author="ana")
    assert cli.main(["feedback", "stats", "--store", str(service["path"])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["by_label"] == {"3": 1} and printed["by_author"] == {"ana": 1} and printed["confirmations"] == 0
    assert (
        cli.main(
            ["feedback", "export", "--store", str(service["path"]), "--out", str(tmp_path / "x"), "--state", "pending"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["written"] == 1
    assert len(list((tmp_path / "x" / "maps" / "3").glob("*.png"))) == 1


def test_feedback_list_and_withdraw_commands(service, capsys):
    client, store = service["client"], service["store"]
    ana = [client.submit_feedback(png(i), a_map(), label="3", model_name="abn", author="ana").id for i in range(3)]
    bo = client.submit_feedback(png(5), a_map(), confirmed=True, model_name="abn", author="bo").id
    store.mark_consumed(ana[:1], "run-1", "2")
    store.mark_rejected(ana[1:2], "run-2", "attention on ignore pixels rose")
    path = str(service["path"])
    assert cli.main(["feedback", "withdraw", "--store", path, "--id", ana[2], "--author", "bo"]) == 2
    assert "only its author may withdraw it" in capsys.readouterr().err
    assert cli.main(["feedback", "withdraw", "--store", path, "--id", ana[0], "--author", "ana"]) == 2
    assert "is consumed by run run-1, no longer pending" in capsys.readouterr().err
    assert cli.main(["feedback", "withdraw", "--store", path, "--id", "nope", "--author", "ana"]) == 2
    assert "no feedback 'nope'" in capsys.readouterr().err
    assert cli.main(["feedback", "withdraw", "--store", path, "--id", ana[2], "--author", "ana"]) == 0
    assert f"{ana[2]} withdrawn" in capsys.readouterr().out
    assert cli.main(["feedback", "list", "--store", path, "--author", "ana"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ana
    assert lines[0].endswith("consumed by run-1, promoted as version 2")
    assert lines[1].endswith("rejected by run-2: attention on ignore pixels rose")
    assert lines[2].endswith("withdrawn: withdrawn by its author")
    assert cli.main(["feedback", "list", "--store", path, "--author", "bo"]) == 0
    assert f"{bo}  bo  abn:  confirmed  pending" in capsys.readouterr().out
    assert cli.main(["feedback", "stats", "--store", path, "--author", "ana"]) == 0
    assert json.loads(capsys.readouterr().out)["by_state"] == {"consumed": 1, "rejected": 1, "withdrawn": 1}


def test_schema_is_versioned_and_a_newer_one_is_refused(tmp_path):
    SQLiteStore(tmp_path / "s.db").close()
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this program's"):
        SQLiteStore(tmp_path / "s.db")


def test_the_store_syncs_each_commit_to_disk(tmp_path):
    """The kill test below cannot tell a synced commit from one in the OS's cache (a killed process leaves the
    cache to the kernel), so the setting that makes OK mean on disk is read back from the store's own
    connection: synchronous is per connection, and another one would show SQLite's default."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        assert store._execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def test_every_acknowledged_submission_survives_sigkill(tmp_path):
    port, db_path = free_port(), tmp_path / "feedback.db"
    command = [
        sys.executable,
        "-m",
        "serving.cli",
        "feedback",
        "serve",
        "--store",
        str(db_path),
        "--address",
        f"127.0.0.1:{port}",
        "--token-file",
        str(tmp_path / "token"),
        "--feedback-metrics-port",
        "0",  # none: a fixed port could be taken
    ]

    def start():
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert b"feedback service on" in process.stdout.readline()
        return process

    server = start()
    # one try per submission: the first refusal means the server is gone
    client = FeedbackClient(f"127.0.0.1:{port}", tmp_path / "token", timeout=10, retries=1)
    acknowledged, lock, stop = [], threading.Lock(), threading.Event()

    def load(worker: int):
        for i in range(10_000):
            if stop.is_set():
                return
            try:
                answer = client.submit(png(worker * 10_000 + i), a_map(), idempotency_key=f"{worker}-{i}")
            except grpc.RpcError:
                return  # the server is gone
            with lock:
                acknowledged.append(answer.id)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(server.pid, signal.SIGKILL)  # in the middle of the load
    server.wait()
    stop.set()
    for t in threads:
        t.join(30)
    client.close()
    assert len(acknowledged) >= 200

    server = start()  # restarted on the same file
    try:
        store = SQLiteStore(db_path)
        assert store.integrity() == "ok"
        stored = {item.id for item in store.items(with_data=False)}
        assert set(acknowledged) <= stored
        store.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def test_tls_when_a_certificate_and_key_are_given(tmp_path):
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    store = SQLiteStore(tmp_path / "f.db")
    tls = ((tmp_path / "cert.pem").read_bytes(), (tmp_path / "key.pem").read_bytes())
    server = FeedbackServer(store, "127.0.0.1:0", token="secret", tls=tls)
    port = server.port
    (tmp_path / "token").write_text("secret")
    try:
        client = Client(
            feedback_target=f"localhost:{port}",
            feedback_token_file=tmp_path / "token",
            feedback_ca=tmp_path / "cert.pem",
            timeout=10,
        )
        assert client.submit_feedback(png(1), a_map()).created
        client.close()
        plain = Client(feedback_target=f"127.0.0.1:{port}", feedback_token_file=tmp_path / "token", timeout=5)
        with pytest.raises(grpc.RpcError) as e:  # a plaintext client cannot talk to a TLS server
            plain.feedback_stats()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        plain.close()
    finally:
        server.stop(grace=5)
        store.close()
