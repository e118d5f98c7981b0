"""How the feedback service fails: each error maps to one status, health follows the store, and a correction
sent again after an outage is stored once. Against real servers: a PostgreSQL server that is stopped and
started again, and a SQLite database that refuses a write."""

import io
import logging
import sqlite3
import time

import grpc
import numpy as np
import pytest
from conftest import postgres_or_skip
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from handlers import wire
from handlers.stubs.abn.v1 import feedback_pb2, feedback_pb2_grpc
from serving import settings
from serving.feedback.client import FeedbackClient
from serving.feedback.server import FeedbackServer
from serving.feedback.store import PostgresStore, SQLiteStore, open_store

PROBE_S = 0.5  # the health probe's interval in these tests


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def request(seed: int, key: str) -> feedback_pb2.SubmitFeedbackRequest:
    return feedback_pb2.SubmitFeedbackRequest(
        image=png(seed), attention=wire.map_to_proto(np.ones((4, 4))), label="3", idempotency_key=key
    )


def health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


def wait_for_health(port: int, status: int, within: float) -> float:
    """Seconds until the health check answers status; fails after within seconds."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if health(port) == status:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(
        f"health did not become {health_pb2.HealthCheckResponse.ServingStatus.Name(status)} within {within} s"
    )


@pytest.fixture
def outage_server():
    server = postgres_or_skip()
    yield server
    server.remove()


def test_a_paused_postgres_fails_calls_fast_and_everything_serves_again_when_it_resumes(outage_server):
    """SIGSTOP: connections stay open and nothing answers, so nothing on the server's side ends a wait. A call
    that reached the store ends UNAVAILABLE after the store's answer deadline (not the caller's), health says
    NOT_SERVING after the probe's deadline, calls from then on are refused at once, and after SIGCONT everything
    serves again with the correction sent again stored once."""
    store = PostgresStore(outage_server.url, answer_deadline=3.0)
    service = FeedbackServer(store, "127.0.0.1:0", probe_interval=PROBE_S, probe_deadline=2.0)
    stub = feedback_pb2_grpc.FeedbackServiceStub(grpc.insecure_channel(f"127.0.0.1:{service.port}"))
    try:
        assert stub.SubmitFeedback(request(1, "before"), timeout=30).created
        outage_server.pause()
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            stub.SubmitFeedback(request(2, "during"), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
        assert time.monotonic() - started < 3.0 + 3  # the answer deadline, far from the call's 30 s
        wait_for_health(service.port, health_pb2.HealthCheckResponse.NOT_SERVING, within=2.0 + PROBE_S * 4)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            stub.GetFeedbackStats(feedback_pb2.GetFeedbackStatsRequest(), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 1.0  # refused without waiting on the store
        outage_server.pause(resume=True)
        wait_for_health(
            service.port, health_pb2.HealthCheckResponse.SERVING, within=settings.STORE_CONNECT_TIMEOUT_S + 5
        )
        first = stub.SubmitFeedback(request(2, "during"), timeout=30)
        again = stub.SubmitFeedback(request(2, "during"), timeout=30)
        assert again.id == first.id and not again.created
        assert stub.GetFeedbackStats(feedback_pb2.GetFeedbackStatsRequest(), timeout=30).total == 2
    finally:
        outage_server.pause(resume=True)
        service.stop(grace=1)
        store.close()


def test_health_and_statuses_follow_a_postgres_outage_and_a_resent_correction_is_stored_once(outage_server):
    store = open_store(outage_server.url)
    service = FeedbackServer(store, "127.0.0.1:0", probe_interval=PROBE_S)
    stub = feedback_pb2_grpc.FeedbackServiceStub(grpc.insecure_channel(f"127.0.0.1:{service.port}"))
    try:
        assert health(service.port) == health_pb2.HealthCheckResponse.SERVING
        assert stub.SubmitFeedback(request(1, "before"), timeout=30).created

        outage_server.stop()
        with pytest.raises(grpc.RpcError) as e:  # the first call after the outage finds it
            stub.SubmitFeedback(request(2, "during"), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        message = e.value.details()
        assert "retry" in message and str(outage_server.port) not in message and "127.0.0.1" not in message
        wait_for_health(service.port, health_pb2.HealthCheckResponse.NOT_SERVING, within=PROBE_S * 4)
        with pytest.raises(grpc.RpcError) as e:  # every call, reads too, while it lasts
            stub.GetFeedbackStats(feedback_pb2.GetFeedbackStatsRequest(), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE

        outage_server.start()  # no restart of the service
        wait_for_health(service.port, health_pb2.HealthCheckResponse.SERVING, within=PROBE_S * 4 + 10)
        # the caller sends the refused correction again, with its key: stored once
        first = stub.SubmitFeedback(request(2, "during"), timeout=30)
        again = stub.SubmitFeedback(request(2, "during"), timeout=30)
        assert first.created and not again.created and again.id == first.id
        with FeedbackClient(f"127.0.0.1:{service.port}") as client:
            assert client.submit(png(3), np.ones((4, 4), np.float32), idempotency_key="after").created
            assert client.stats().total == 3
    finally:
        service.stop(grace=1)
        store.close()


def test_the_client_retries_while_the_service_is_unavailable_and_stores_once(outage_server, caplog):
    store = open_store(outage_server.url)
    service = FeedbackServer(store, "127.0.0.1:0", probe_interval=PROBE_S)
    try:
        outage_server.stop()
        with FeedbackClient(f"127.0.0.1:{service.port}", retries=3) as client:
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="serving.feedback.server"):
                with pytest.raises(grpc.RpcError) as e:
                    client.submit(png(1), np.ones((4, 4), np.float32), idempotency_key="k")
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            attempts = [
                r for r in caplog.records if r.getMessage().startswith("/abn.v1.FeedbackService/SubmitFeedback")
            ]
            assert len(attempts) == 3  # the service refused three tries of the one submission
            assert time.monotonic() - started >= 0.5 + 1.0  # it waited before each of its two retries
            outage_server.start()
            wait_for_health(service.port, health_pb2.HealthCheckResponse.SERVING, within=PROBE_S * 4 + 10)
            assert client.submit(png(1), np.ones((4, 4), np.float32), idempotency_key="k").created
            assert not client.submit(png(1), np.ones((4, 4), np.float32), idempotency_key="k").created
            assert client.stats().total == 1
    finally:
        service.stop(grace=1)
        store.close()


def test_an_unforeseen_error_is_internal_with_no_detail_and_logged(tmp_path, caplog):
    """A database that refuses the write for a reason of its own (here a trigger) is our fault, not the
    caller's: INTERNAL, an incident id to quote, no SQL or trace; the log has the whole story."""
    store = SQLiteStore(tmp_path / "feedback.db")
    with sqlite3.connect(tmp_path / "feedback.db") as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON feedback BEGIN SELECT RAISE(ABORT, 'no inserts'); END")
    service = FeedbackServer(store, "127.0.0.1:0")
    stub = feedback_pb2_grpc.FeedbackServiceStub(grpc.insecure_channel(f"127.0.0.1:{service.port}"))
    try:
        with caplog.at_level(logging.ERROR, logger="serving.feedback.server"):
            with pytest.raises(grpc.RpcError) as e:
                stub.SubmitFeedback(request(1, "k"), timeout=30)
        assert e.value.code() == grpc.StatusCode.INTERNAL
        message = e.value.details()
        assert "incident" in message
        assert "no inserts" not in message and "INSERT" not in message and "Traceback" not in message
        incident = message.split("incident ")[1].split(",")[0]
        logged = [r for r in caplog.records if incident in r.getMessage()]
        assert logged and logged[0].exc_info and "no inserts" in str(logged[0].exc_info[1])
        # the service goes on: reads work, and the write once the fault is gone
        assert stub.GetFeedbackStats(feedback_pb2.GetFeedbackStatsRequest(), timeout=30).total == 0
        with sqlite3.connect(tmp_path / "feedback.db") as db:
            db.execute("DROP TRIGGER refuse")
        assert stub.SubmitFeedback(request(1, "k"), timeout=30).created
        assert health(service.port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        service.stop(grace=1)
        store.close()
