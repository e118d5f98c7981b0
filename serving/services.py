"""Service lifecycles: start the services on typed configurations, say where they are, run until SIGINT or
SIGTERM, stop them cleanly. The command line builds the configurations and calls these."""

import dataclasses
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from finetune import checkpoint, decoy_digits, train
from serving import retraining, review, settings
from serving.client import Client
from serving.editor.gateway import EditorConfig, EditorServer, known_inputs
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.service import known_classes
from serving.feedback.store import FeedbackStore, display_url, open_store
from serving.torchserve import archive
from serving.torchserve.client import TorchServeClient
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe
from serving.torchserve.served import Follower, ServedRecord

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@dataclass
class FeedbackConfig:
    store: str = field(default_factory=settings.feedback_store)
    address: str = field(default_factory=lambda: f"{settings.default_host()}:{settings.FEEDBACK_PORT}")
    token_file: str | None = settings.FEEDBACK_TOKEN_FILE  # created, owner-only, when absent; None: no token
    tls_cert: str | None = None  # PEM certificate chain; with tls_key, serve TLS
    tls_key: str | None = None
    checkpoints: list[str] = field(default_factory=list)  # of the served models: labels are checked against them
    group_linger_s: float = settings.STORE_GROUP_LINGER_S  # SQLite: a commit group's wait for more submissions
    metrics_port: int | None = settings.FEEDBACK_METRICS_PORT  # Prometheus metrics over HTTP; None: not served

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]


@dataclass
class UpConfig:
    """The main job: the demo model trained (or resumed), archived, served beside the feedback service."""

    serve: ServeConfig
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    model_out: str = settings.DEMO_MODEL  # folder of the demo model
    epochs: int = train.TrainConfig.epochs  # of the demo model, when it is trained
    retrain_schedule: str | None = None  # a cron expression: run retraining on it, in the background
    editor: EditorConfig | None = field(default_factory=EditorConfig)  # None: no editor
    review_images: int = settings.REVIEW_DEMO_IMAGES  # built-in test images queued for review on the first start


def check_listen(
    serve: ServeConfig | None = None, feedback: FeedbackConfig | None = None, editor: EditorConfig | None = None
) -> None:
    """Before anything starts: the addresses the services would listen on are allowed."""
    if serve is not None:
        settings.check_host(serve.host, "TorchServe")
    if feedback is not None:
        settings.check_host(feedback.host, "the feedback service", token_off=feedback.token_file is None)
    if editor is not None:
        settings.check_host(editor.host, "the editor")


def wait_for_stop() -> None:
    """Until SIGINT or SIGTERM; blocking both first makes either end the wait, so the caller cleans up."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    print("Ctrl-C stops it.", flush=True)
    signal.sigwait(STOP_SIGNALS)


def start_feedback(cfg: FeedbackConfig, store: FeedbackStore | None = None) -> tuple[FeedbackServer, FeedbackStore]:
    """The feedback service on cfg's store, or on store when it is open already."""
    store = store or open_store(cfg.store, group_linger=cfg.group_linger_s)
    token = write_token(cfg.token_file) if cfg.token_file else None
    tls = (Path(cfg.tls_cert).read_bytes(), Path(cfg.tls_key).read_bytes()) if cfg.tls_cert and cfg.tls_key else None
    server = FeedbackServer(
        store, cfg.address, token, tls, known_classes(cfg.checkpoints), metrics_port=cfg.metrics_port
    )
    metrics_url = f"http://{settings.local_address(cfg.host)}:{server.metrics_port}/metrics"
    metrics = f", Prometheus metrics on {metrics_url}" if server.metrics_port else ""
    print(
        f"feedback service on {cfg.host}:{server.port} ({'TLS' if tls else 'plaintext'}), store "
        f"{display_url(cfg.store)}" + (f", token in {cfg.token_file}" if token else ", no token") + metrics,
        flush=True,
    )
    return server, store


def stop_feedback(server: FeedbackServer, store: FeedbackStore) -> None:
    server.stop()  # calls in flight finish
    store.close()


def _announce(cfg: ServeConfig) -> None:
    t = cfg.target
    print(
        f"TorchServe answers gRPC on {t.inference} (inference) and {t.management} (management), Prometheus "
        f"metrics on {cfg.metrics_url}; tokens in {cfg.key_file}; logs in {cfg.workdir / 'logs'}",
        flush=True,
    )


def serve(cfg: ServeConfig, follow: str | None = None) -> None:
    """TorchServe alone, with the archives cfg names; follow: the URL of a feedback store whose record of what
    is served this replica serves and follows (served.Follower)."""
    check_listen(serve=cfg)
    if follow is None:
        with TorchServe(cfg):
            _announce(cfg)
            wait_for_stop()
        return
    store = open_store(follow)
    try:
        cfg.models = _recorded(store, cfg.model_store, cfg.models)
        with TorchServe(cfg), _following(cfg, store):
            _announce(cfg)
            wait_for_stop()
    finally:
        store.close()


def _recorded(store: FeedbackStore, model_store: Path, models: dict[str, str]) -> dict[str, str]:
    """The archives to start with: what the store records as served, for every model it records; a model named
    in models that it does not record yet is recorded as served (the first replica's start): the archive a
    record file of an earlier release names, else the one models names."""
    chosen = dict(models)
    for name in {*store.served_models(), *models}:
        path = ServedRecord(store, model_store, name).archive()
        if path is not None:
            chosen[name] = path.name
        if store.served(name) is None:
            meta = checkpoint.read_metadata(archive.checkpoint_of(model_store / chosen[name]))
            store.set_served(name, chosen[name], str(meta["version"]))
    return chosen


@contextmanager
def _following(cfg: ServeConfig, store: FeedbackStore) -> Iterator[None]:
    with TorchServeClient(cfg.target) as client:
        follower = Follower(client, store, cfg.model_store, list(cfg.models))
        follower.start()
        try:
            yield
        finally:
            follower.stop()


def feedback(cfg: FeedbackConfig) -> None:
    """The feedback service alone."""
    check_listen(feedback=cfg)
    server, store = start_feedback(cfg)
    try:
        wait_for_stop()
    finally:
        stop_feedback(server, store)


def start_editor(cfg: EditorConfig) -> tuple[EditorServer, Client]:
    # no service token for the feedback service: the gateway calls it with the signed-in expert's
    client = Client.for_target(cfg.target, cfg.feedback, model=cfg.model, feedback_ca=cfg.feedback_ca)
    server = EditorServer(cfg, client)
    scheme = "https" if cfg.tls_cert else "http"
    print(
        f"attention editor on {scheme}://{settings.local_address(cfg.host)}:{server.port}/ : sign in with a token "
        "from `abn experts add NAME`",
        flush=True,
    )
    if not cfg.tls_cert and not settings.is_loopback(cfg.host):
        print(
            f"the editor serves plain HTTP on {cfg.host}: experts' tokens cross the network in the clear; give it "
            "--tls-cert and --tls-key, or put a TLS proxy in front of it",
            flush=True,
        )
    return server, client


def editor(cfg: EditorConfig) -> None:
    """The editor alone, in front of a running TorchServe and feedback service."""
    check_listen(editor=cfg)
    server, client = start_editor(cfg)
    try:
        wait_for_stop()
    finally:
        server.stop()
        client.close()


def _queue_test_images(cfg: UpConfig, client: Client, name: str) -> None:
    """Until they are all queued once, the built-in test images go into the review queue, so the editor has
    work (an image already waiting is not queued twice)."""
    folder = Path(settings.RUNS) / "review_images"
    done = folder / ".queued"
    if cfg.review_images <= 0 or done.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    split = decoy_digits.build("test")
    for i in range(min(cfg.review_images, len(split.images))):
        digit = (split.images[i, 0].numpy() * 255).round().astype("uint8")
        Image.fromarray(digit).resize((128, 128), Image.Resampling.NEAREST).save(folder / f"test-{i:03d}.png")
    result = review.add_folder(client, review.QueueConfig(str(folder), model=name))
    print(f"review queue: {result}", flush=True)
    if not result["refused"]:
        done.touch()


def _demo_archive(cfg: UpConfig, store: FeedbackStore) -> tuple[str, Path]:
    """The model's name and the archive to serve: the one promoted last, else the demo model's, trained and
    archived if need be; built again if it does not carry its code (an archive of an earlier version)."""
    train.train(train.TrainConfig(out=cfg.model_out, resume=True, epochs=cfg.epochs))
    ckpt = Path(cfg.model_out) / "checkpoint.pt"
    meta = checkpoint.read_metadata(ckpt)
    mar = cfg.serve.model_store / archive.archive_name(meta["name"], meta["version"])
    if not mar.exists() or mar.stat().st_mtime < ckpt.stat().st_mtime:
        archive.build(ckpt, cfg.serve.model_store)
    served = ServedRecord(store, cfg.serve.model_store, meta["name"]).archive() or mar
    if not archive.carries_code(served):
        print(f"{served} does not carry the code its handler runs: building it again", flush=True)
        served = archive.rebuild(served)
    return meta["name"], served


def up(cfg: UpConfig) -> None:
    check_listen(cfg.serve, cfg.feedback, cfg.editor)
    store = open_store(cfg.feedback.store, group_linger=cfg.feedback.group_linger_s)
    try:
        name, mar = _demo_archive(cfg, store)
        cfg.serve.models = _recorded(store, cfg.serve.model_store, {name: mar.name})
        with TorchServe(cfg.serve):
            _announce(cfg.serve)
            with _following(cfg.serve, store):
                _up_services(cfg, store, name)
    finally:
        store.close()


def _up_services(cfg: UpConfig, store: FeedbackStore, name: str) -> None:
    """The feedback service, the editor and the schedule beside a running TorchServe, until stopped."""
    sample = decoy_digits.build("test").images[0, 0]
    Image.fromarray((sample.numpy() * 255).round().astype("uint8")).save(Path(settings.RUNS) / "sample.png")
    cfg.feedback.checkpoints = cfg.feedback.checkpoints or [str(Path(cfg.model_out) / "checkpoint.pt")]
    server, _ = start_feedback(cfg.feedback, store)
    feedback_target = f"{settings.local_address(cfg.feedback.host)}:{server.port}"
    ca = cfg.feedback.tls_cert  # this machine's clients trust the service's own certificate
    with Client.for_services(cfg.serve, feedback_target, cfg.feedback.token_file, feedback_ca=ca) as client:
        _queue_test_images(cfg, client, name)
    gateway = None
    if cfg.editor is not None:
        gateway = start_editor(
            dataclasses.replace(
                cfg.editor,
                target=cfg.serve.target,
                model=name,
                feedback=feedback_target,
                feedback_ca=cfg.editor.feedback_ca or ca,
                classes=cfg.editor.classes or known_classes(cfg.feedback.checkpoints),
                inputs=cfg.editor.inputs or known_inputs(cfg.feedback.checkpoints),
                model_store=cfg.editor.model_store or str(cfg.serve.model_store),
            )
        )
    if cfg.retrain_schedule:
        job = retraining.for_services(cfg.serve, model=name, store=cfg.feedback.store, schedule=cfg.retrain_schedule)
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # the thread inherits it: only this one waits
        threading.Thread(target=retraining.run_on_schedule, args=(job,), daemon=True).start()
    print(
        'Try it: see README.md, "Asking for a prediction" and "Sending a correction" (runs/sample.png is a test digit)',
        flush=True,
    )
    try:
        wait_for_stop()
    finally:
        if gateway is not None:
            gateway[0].stop()
            gateway[1].close()
        server.stop()  # calls in flight finish; the store closes after the follower stops
