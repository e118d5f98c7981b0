"""Prometheus metrics, for real: a feedback service and the editor's gateway on loopback, with their /metrics
scraped over HTTP after real traffic and read with prometheus_client's own parser; retraining runs recorded
in the store by the retraining job's own code; the Grafana dashboard's queries against what is scraped."""

import dataclasses
import io
import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from old_stores import write_old_store
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from finetune import gate
from handlers import wire
from handlers.stubs.abn.v1.prediction_pb2 import ClassScore, Prediction
from serving import cli, retraining, services, settings
from serving.client import Client
from serving.editor.gateway import EditorConfig, EditorServer
from serving.feedback import experts
from serving.feedback.client import FeedbackClient
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.store import (
    SCHEMA_VERSION,
    ReviewEntry,
    Run,
    SQLiteStore,
    StoreUnavailable,
    open_store,
)
from serving.torchserve.config import free_port

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {"abn": [str(d) for d in range(10)], "other": [str(d) for d in range(10)]}
START = 1_000_000.0  # the review leases' clock, moved by hand


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def prediction() -> Prediction:
    scores = [ClassScore(index=3, label="3", probability=0.5), ClassScore(index=1, label="1", probability=0.4)]
    return Prediction(model_name="abn", model_version="1", scores=scores, attention=wire.map_to_proto(np.ones((8, 8))))


def scrape(port: int) -> tuple[dict, str]:
    """{(sample name, frozenset of its labels): value} of what /metrics answers, and the text itself."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return samples, text


def of(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: dict, name: str) -> dict:
    """Every sample of name: {frozenset of labels: value}."""
    return {labels: value for (n, labels), value in samples.items() if n == name}


@pytest.fixture
def stack(tmp_path):
    """A feedback service with its metrics on a free port, and the editor's gateway in front of it (TorchServe is
    not needed for the queue: its client only connects when asked to predict)."""
    store = SQLiteStore(tmp_path / "feedback.db")
    now = [START]
    store.clock = lambda: now[0]
    server = FeedbackServer(store, "127.0.0.1:0", write_token(tmp_path / "token"), classes=CLASSES, metrics_port=0)
    target = f"127.0.0.1:{server.port}"
    admin = FeedbackClient(target, tmp_path / "token")
    gateway_client = Client(target=f"127.0.0.1:{free_port()}", feedback_target=target)
    editor = EditorServer(EditorConfig(address="127.0.0.1:0", feedback=target, classes=CLASSES), gateway_client)
    yield {"store": store, "now": now, "server": server, "admin": admin, "editor": editor, "root": tmp_path}
    editor.stop()
    gateway_client.close()
    admin.close()
    server.stop(grace=5)
    store.close()


def a_verdict(served: list[int], candidate: list[int]) -> dict:
    """The gate's verdict, as retraining records it, on figures of this shape: accuracy on a validation split
    (per image, 1 = right) and attention on the Ignore pixels of eight kept-back corrections, 0.2 -> 0.1."""
    kept = {
        "served": {"ignore_attention": [0.2] * 8, "attend_attention": [None] * 8, "accuracy": 1.0},
        "candidate": {"ignore_attention": [0.1] * 8, "attend_attention": [None] * 8, "accuracy": 1.0},
    }
    figures = {"validation split": {"correct": {"served": served, "candidate": candidate}}, "check_feedback": kept}
    return gate.judge(figures, ["validation split"], gate.GateConfig())


def record_judged_runs(store) -> dict:
    """A refused run of abn (accuracy 1.0 -> 0.5 on 20 images) and a promoted one of other, recorded as the job
    records them (retraining.run_record); abn's verdict."""
    refused = a_verdict([1] * 20, [1] * 10 + [0] * 10)
    report = {"run": "20250101T030000Z", "model": "abn", "outcome": "refused", "served_version": "1",
              "feedback_used": 16, "feedback_checked": 4, "gate": refused}  # fmt: skip
    store.record_run(retraining.run_record(report, 100.0, 160.0))
    promoted = {"run": "20250101T040000Z", "model": "other", "outcome": "promoted", "served_version": "3",
                "promoted_version": "4", "feedback_used": 30, "feedback_checked": 8,
                "gate": a_verdict([1] * 20, [1] * 20)}  # fmt: skip
    store.record_run(retraining.run_record(promoted, 200.0, 290.0))
    return refused


def test_the_feedback_service_counts_submissions_the_queue_the_store_and_every_run(stack):
    store, now, admin = stack["store"], stack["now"], stack["admin"]
    ana, bo = (admin.with_token(experts.add(store, name)) for name in ("ana", "bo"))
    r1, r2, r3, r4 = (admin.add_review(png(i), prediction(), priority=1 - i / 10).id for i in (1, 2, 3, 4))

    # the queue: claims, a skip, a release that is not a skip, a claim closed by a correction, a lease that lapses
    assert ana.claim().id == r1
    ana.release(r1)  # a skip: ana is not offered r1 again
    assert ana.claim().id == r2
    ana_fid = ana.submit(
        png(2), np.ones((8, 8), np.float32), label="3", model_name="abn", review_id=r2, idempotency_key="a1"
    ).id
    assert not ana.submit(
        png(2), np.ones((8, 8), np.float32), label="3", model_name="abn", review_id=r2, idempotency_key="a1"
    ).created
    assert ana.claim().id == r3
    ana.release(r3, keep_offering=True)  # put aside, not skipped
    assert bo.claim().id == r1
    now[0] += settings.REVIEW_LEASE_S + 1  # bo's lease on r1 lapses
    assert ana.claim().id == r3  # under a live lease; r4 waits; r2 is done

    # corrections of two models by four authors, and two refusals
    carol = [admin.submit(png(10 + i), np.ones((8, 8), np.float32), label="4", author="carol", model_name="abn").id
             for i in range(2)]  # fmt: skip
    admin.submit(png(20), np.ones((8, 8), np.float32), label="7", author="dan", model_name="other")
    bo.submit(png(21), np.ones((8, 8), np.float32), label="1", model_name="abn")
    with pytest.raises(grpc.RpcError) as refused:
        admin.submit(png(22), np.ones((8, 8), np.float32), label="cat", model_name="abn")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as refused:
        admin.with_token("not a token").submit(png(23), np.ones((8, 8), np.float32))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    store.mark_consumed(carol[:1], "run-a", "2")
    store.mark_rejected(carol[1:], "run-b", "refused")
    ana.withdraw(ana_fid)

    # runs: two judged ones written as the job writes them, then two by the job itself, which fails and stops
    verdict = record_judged_runs(store)
    cfg = retraining.RetrainConfig(store=str(store.path), workdir=str(stack["root"] / "retrain"), publish=True)
    with pytest.raises(retraining.StepFailure):
        retraining.run_once(dataclasses.replace(cfg, fail_at="snapshot"))
    with store.exclusive("retrain"):  # another run holds the lock: this one stops at once
        assert retraining.run_once(cfg) is None

    samples, _ = scrape(stack["server"].metrics_port)
    # calls and submissions, as they happened
    assert series(samples, "abn_feedback_submissions_total") == {
        frozenset({"outcome": "stored", "code": "OK"}.items()): 5,
        frozenset({"outcome": "duplicate", "code": "OK"}.items()): 1,
        frozenset({"outcome": "refused", "code": "INVALID_ARGUMENT"}.items()): 1,
        frozenset({"outcome": "refused", "code": "UNAUTHENTICATED"}.items()): 1,
    }
    feedback_service, review_service = "abn.v1.FeedbackService", "abn.v1.ReviewService"
    calls = {(dict(k)["method"], dict(k)["code"]): v for k, v in series(samples, "abn_feedback_requests_total").items()}
    assert calls[("SubmitFeedback", "OK")] == 6 and calls[("AddReviewItem", "OK")] == 4
    assert calls[("ClaimReviewItem", "OK")] == 5 and calls[("ReleaseReviewItem", "OK")] == 2
    assert calls[("WithdrawFeedback", "OK")] == 1
    assert of(samples, "abn_feedback_request_seconds_count", service=feedback_service, method="SubmitFeedback") == 8
    assert of(samples, "abn_feedback_request_seconds_count", service=review_service, method="ClaimReviewItem") == 5
    assert of(samples, "abn_review_claims_total") == 5 and of(samples, "abn_review_skips_total") == 1
    # the store: every statement timed; each submission that reached it committed in a group of its own
    assert all(
        of(samples, "abn_store_statement_seconds_count", statement=s) > 0 for s in ("select", "insert", "update")
    )
    assert of(samples, "abn_store_commit_group_size_count") == 6 and of(samples, "abn_store_commit_group_size_sum") == 6
    # what the store holds, counted at the scrape
    assert of(samples, "abn_store_up") == 1
    corrections = {
        (dict(k)["model"], dict(k)["state"]): v for k, v in series(samples, "abn_feedback_corrections").items()
    }
    assert corrections == {
        ("abn", "pending"): 1, ("abn", "consumed"): 1, ("abn", "rejected"): 1, ("abn", "withdrawn"): 1,
        ("other", "pending"): 1, ("other", "consumed"): 0, ("other", "rejected"): 0, ("other", "withdrawn"): 0,
    }  # fmt: skip
    authors = {dict(k)["author"]: v for k, v in series(samples, "abn_feedback_author_corrections").items()}
    assert authors == {"ana": 1, "bo": 1, "carol": 2, "dan": 1}
    assert of(samples, "abn_review_queue_depth", model="abn") == 2  # r4 waiting, r1 whose lease lapsed
    assert of(samples, "abn_review_claimed", model="abn") == 1  # r3
    assert of(samples, "abn_review_expired_leases", model="abn") == 1  # r1
    # every run, from the store
    runs = {(dict(k)["model"], dict(k)["outcome"]): v for k, v in series(samples, "abn_retrain_runs_total").items()}
    assert {k: v for k, v in runs.items() if v} == {("abn", "refused"): 1, ("abn", "failed"): 1, ("abn", "stopped"): 1,
                                                    ("other", "promoted"): 1}  # fmt: skip
    last = {dict(k)["model"]: dict(k) for k in series(samples, "abn_retrain_last_run_info")}
    assert last["abn"]["outcome"] == "stopped" and "holds the retraining lock" in last["abn"]["decided_by"]
    assert (last["other"]["outcome"], last["other"]["served_version"], last["other"]["version"]) == (
        "promoted",
        "3",
        "4",
    )
    outcome = {
        (dict(k)["model"], dict(k)["outcome"]): v for k, v in series(samples, "abn_retrain_last_run_outcome").items()
    }
    assert {k for k, v in outcome.items() if v == 1} == {("abn", "stopped"), ("other", "promoted")}
    assert sum(outcome.values()) == 2
    assert of(samples, "abn_retrain_last_run_end_timestamp_seconds", model="other") == 290.0
    assert of(samples, "abn_retrain_last_run_duration_seconds", model="other") == 90.0
    assert of(samples, "abn_retrain_last_run_corrections", model="other", use="used") == 30
    assert of(samples, "abn_retrain_last_run_corrections", model="other", use="kept_back") == 8
    # the gate's figures of each model's latest judged run: abn's refused one, as candidate minus served
    accuracy, attention = "accuracy on validation split", "attention on ignore pixels of kept-back corrections"
    fell = next(c for c in verdict["criteria"] if c["name"] == accuracy)
    assert verdict["decided_by"] == accuracy
    assert of(samples, "abn_retrain_gate_served", model="abn", criterion=accuracy) == 1.0
    assert of(samples, "abn_retrain_gate_candidate", model="abn", criterion=accuracy) == 0.5
    assert of(samples, "abn_retrain_gate_change", model="abn", criterion=accuracy) == -0.5
    assert of(samples, "abn_retrain_gate_change_low", model="abn", criterion=accuracy) == -fell["interval"][1]
    assert of(samples, "abn_retrain_gate_change_high", model="abn", criterion=accuracy) == -fell["interval"][0] < 0
    assert of(samples, "abn_retrain_gate_passed", model="abn", criterion=accuracy) == 0
    assert of(samples, "abn_retrain_gate_samples", model="abn", criterion=accuracy) == 20
    assert of(samples, "abn_retrain_gate_change", model="abn", criterion=attention) == pytest.approx(-0.1)
    assert of(samples, "abn_retrain_gate_passed", model="abn", criterion=attention) == 1
    assert of(samples, "abn_retrain_gate_passed", model="other", criterion=accuracy) == 1
    nothing = "attention on attend pixels of kept-back corrections"  # no correction decided Attend pixels
    assert of(samples, "abn_retrain_gate_samples", model="abn", criterion=nothing) == 0
    assert of(samples, "abn_retrain_gate_served", model="abn", criterion=nothing) is None
    assert of(samples, "abn_retrain_gate_end_timestamp_seconds", model="abn") == 160.0


def test_the_runs_the_job_records_say_what_happened(stack):
    store, root = stack["store"], stack["root"]
    cfg = retraining.RetrainConfig(
        store=str(store.path), workdir=str(root / "retrain"), publish=True, fail_at="snapshot"
    )
    with pytest.raises(retraining.StepFailure):
        retraining.run_once(cfg)
    (run,) = store.runs("abn")
    report = json.loads((root / "retrain" / run.run / "report.json").read_text())
    assert (run.outcome, run.reason, report["outcome"]) == ("failed", report["reason"], "failed")
    assert "failing at step 'snapshot'" in run.reason and run.started <= run.ended and run.gate is None
    verdict = record_judged_runs(store)
    assert [r.outcome for r in store.runs()] == ["failed", "refused", "promoted"]
    judged = store.last_runs(judged=True)
    assert [(r.model_name, r.outcome) for r in judged] == [("abn", "refused"), ("other", "promoted")]
    assert judged[0].gate == verdict and judged[0].decided_by == "accuracy on validation split"
    assert (judged[0].corrections_used, judged[0].corrections_kept_back, judged[0].served_version) == (16, 4, "1")
    assert [(r.model_name, r.outcome) for r in store.last_runs()] == [("abn", "refused"), ("other", "promoted")]


def test_a_scrape_answers_while_the_store_does_not(stack, monkeypatch):
    """The counters still answer; the figures read from the store are left out, and abn_store_up says so."""
    stack["admin"].submit(png(1), np.ones((8, 8), np.float32), model_name="abn")

    def unreachable():
        raise StoreUnavailable("the database is gone")

    monkeypatch.setattr(stack["store"], "tally", unreachable)
    samples, _ = scrape(stack["server"].metrics_port)
    assert of(samples, "abn_store_up") == 0
    assert of(samples, "abn_feedback_submissions_total", outcome="stored", code="OK") == 1
    assert not series(samples, "abn_feedback_corrections")
    monkeypatch.undo()
    assert of(scrape(stack["server"].metrics_port)[0], "abn_store_up") == 1


def call(url: str, method: str, path: str, body: dict | None = None, cookie: str = "", json_type: bool = True):
    headers = {"Content-Type": "application/json"} if json_type else {"Content-Type": "text/plain"}
    if cookie:
        headers["Cookie"] = cookie
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_the_editor_counts_requests_by_route_and_status_and_its_claims_reach_the_service(stack):
    store, admin = stack["store"], stack["admin"]
    token = experts.add(store, "bo")
    rid = admin.add_review(png(1), prediction(), priority=0.5).id
    url = f"http://127.0.0.1:{stack['editor'].port}"

    assert call(url, "GET", "/")[0] == 200  # the sign-in page
    assert call(url, "POST", "/api/session", {"token": "nobody's"})[0] == 401
    status, headers, _ = call(url, "POST", "/api/session", {"token": token})
    assert status == 204
    cookie = headers["Set-Cookie"].split(";")[0]
    assert [call(url, "GET", "/api/me", cookie=cookie)[0] for _ in range(2)] == [200, 200]
    status, _, body = call(url, "POST", "/api/queue/next", {}, cookie)
    assert status == 200 and json.loads(body)["id"] == rid
    assert call(url, "POST", f"/api/queue/{rid}/skip", {}, cookie)[0] == 204
    assert call(url, "POST", "/api/queue/next", {}, cookie)[0] == 404  # bo skipped the only item
    assert call(url, "GET", "/api/queue")[0] == 401  # no session: refused before any route
    assert call(url, "POST", "/api/queue/next", {}, cookie, json_type=False)[0] == 415
    assert call(url, "GET", "/static/nothing.js")[0] == 404
    assert call(url, "GET", "/no/such/page")[0] == 404

    samples, _ = scrape(stack["editor"].port)
    requests = {tuple(dict(k)[n] for n in ("route", "method", "status")): v
                for k, v in series(samples, "abn_editor_requests_total").items()}  # fmt: skip
    assert requests == {
        ("/", "GET", "200"): 1,
        ("/api/session", "POST", "401"): 1,
        ("/api/session", "POST", "204"): 1,
        ("/api/me", "GET", "200"): 2,
        ("/api/queue/next", "POST", "200"): 1,
        ("/api/queue/{review_id}/skip", "POST", "204"): 1,
        ("/api/queue/next", "POST", "404"): 1,
        ("unknown", "GET", "401"): 1,
        ("unknown", "POST", "415"): 1,
        ("/static/{name}", "GET", "404"): 1,
        ("unknown", "GET", "404"): 1,
    }
    assert of(samples, "abn_editor_request_seconds_count", route="/api/me", method="GET") == 2
    assert of(scrape(stack["editor"].port)[0], "abn_editor_requests_total", route="/metrics", method="GET",
              status="200") == 1  # fmt: skip
    # the expert's claim and skip in the editor are the feedback service's too
    feedback, _ = scrape(stack["server"].metrics_port)
    assert of(feedback, "abn_review_claims_total") == 1 and of(feedback, "abn_review_skips_total") == 1
    assert of(feedback, "abn_feedback_requests_total", service="abn.v1.ReviewService", method="ClaimReviewItem",
              code="NOT_FOUND") == 1  # fmt: skip


def test_a_metrics_port_that_is_taken_stops_the_service_before_it_starts(tmp_path, capsys, monkeypatch):
    def started():
        raise AssertionError("the service started")

    monkeypatch.setattr(services, "wait_for_stop", started)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = ["feedback", "serve", "--address", "127.0.0.1:0", "--no-token", "--store", str(tmp_path / "f.db")]
        assert cli.main([*command, "--feedback-metrics-port", str(port)]) == 2
    assert f"the metrics could not listen on 127.0.0.1:{port} (is the port taken?)" in capsys.readouterr().err


# ---- deployment: the dashboard and the scrape configuration


def names_in(text: str) -> tuple[set[str], set[str]]:
    """What text exposes: the names of its families, and every name a query may use (theirs and their samples')."""
    families = list(text_string_to_metric_families(text))
    return {f.name for f in families}, {name for f in families for name in (f.name, *(s.name for s in f.samples))}


def test_the_dashboard_shows_every_metric_and_asks_only_for_metrics_the_services_expose(stack):
    record_judged_runs(stack["store"])  # so that every figure of a run is there
    stack["admin"].submit(png(2), np.ones((8, 8), np.float32), model_name="abn", author="ana")
    call(f"http://127.0.0.1:{stack['editor'].port}", "GET", "/")
    families, exposed = set(), set()
    for port in (stack["server"].metrics_port, stack["editor"].port):
        names = names_in(scrape(port)[1])
        families |= names[0]
        exposed |= names[1]

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "abn.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(queries) > 20 and dashboard["uid"] and dashboard["title"]
    used = set()
    for query in queries:
        names = set(re.findall(r"\b(?:abn|process)_[a-z0-9_]+", query))
        assert names, f"{query!r} names no metric of the services"
        used |= names
    assert used - exposed == set(), "the dashboard asks for metrics that no service exposes"
    ours = {n for n in families if n.startswith("abn_") and not n.endswith("_created")}
    shown = {n for n in ours if any(u == n or u.startswith(f"{n}_") for u in used)}
    assert ours - shown == set(), "metrics the dashboard does not show"


def test_the_scrape_configuration_looks_where_the_services_answer():
    local = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in local["scrape_configs"]}
    assert targets == {
        "abn-feedback": [f"{settings.LOOPBACK}:{settings.FEEDBACK_METRICS_PORT}"],
        "abn-editor": [f"{settings.LOOPBACK}:{settings.EDITOR_PORT}"],
        "abn-torchserve": [f"{settings.LOOPBACK}:{settings.METRICS_PORT}"],
    }
    (kubernetes,) = yaml.safe_load((ROOT / "deploy" / "prometheus" / "kubernetes.yml").read_text())["scrape_configs"]
    ports = next(
        r for r in kubernetes["relabel_configs"] if r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    )
    assert ports["action"] == "keep" and set(ports["regex"].split("|")) == {"metrics", "http-editor"}


# ---- the schema


def _store_before_runs(url: str, path: Path) -> None:
    """A store as the version before runs were recorded left it: the first five migrations, one correction."""
    row = ("old-1", "sha-1", 4, 6, np.ones((4, 6), "<f4").tobytes(), "3", "abn", "ana", 1.0)
    insert = (
        "INSERT INTO feedback (id, image_sha256, map_height, map_width, map_values, label, model_name, author, created)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    write_old_store(url, path, 5, [("INSERT INTO images VALUES (?, ?)", ("sha-1", png(1))), (insert, row)])


def test_an_older_store_gains_the_runs_table_and_its_counts_in_place(url, tmp_path):
    _store_before_runs(url, tmp_path / "feedback.db")
    store = open_store(url)
    try:
        version = store._execute(
            "PRAGMA user_version" if url.startswith("sqlite") else "SELECT version FROM abn_schema"
        )
        assert version.fetchone()[0] == SCHEMA_VERSION
        assert store.runs() == [] and store.last_runs() == []
        gate_figures = {"decided_by": "every criterion passed", "criteria": [{"name": "a", "interval": [-0.1, 0.2]}]}
        first = Run("r1", "abn", 10.0, 20.0, "promoted", "every criterion passed", "", gate_figures, 16, 4, "1", "2")
        second = Run("r2", "abn", 30.0, 31.5, "stopped", reason="too few corrections")
        for run in (first, second):
            store.record_run(run)
        assert store.runs("abn") == [first, second] and store.runs("other") == []
        assert store.last_runs() == [second] and store.last_runs(judged=True) == [first]
        store.clock = lambda: 1000.0
        rid, _ = store.add_review(ReviewEntry(png(2), b"p", "abn", "3", 0.5))
        store.add_review(ReviewEntry(png(3), b"p", "abn", "3", 0.4))
        store.claim_review("bo", rid, lease_s=10)
        tally = store.tally()
        assert tally.feedback == {("abn", "pending"): 1} and tally.authors == {"ana": 1}
        assert tally.review == {("abn", "claimed"): 1, ("abn", "waiting"): 1}
        store.clock = lambda: 1011.0
        assert store.tally().review == {("abn", "lease_expired"): 1, ("abn", "waiting"): 1}
        assert tally.runs == {("abn", "promoted"): 1, ("abn", "stopped"): 1}
    finally:
        store.close()
