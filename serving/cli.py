"""The product's command line: `abn <command> ...`."""

import argparse
import json
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import grpc
import psycopg
from PIL import Image

from finetune import checkpoint, data, decoy_digits, knowledge, retrain, train
from finetune.data import DataError
from finetune.evaluate import evaluate
from serving import client, demo, feedback_server, package, settings
from serving.feedback_store import SQLiteStore, copy_store, display_url, export_folder, open_store
from serving.torchserve import ServeConfig, TorchServe


def _cmd_evaluate(args: argparse.Namespace) -> None:
    model, meta = checkpoint.load(args.checkpoint)
    size = tuple(meta["input_size"])
    if args.data in data.BUILTIN:
        dataset = data.builtin_split(args, args.split, size)
    else:
        dataset = data.ImageFolder(args.data, size, args.maps, classes=meta["classes"])
    result = evaluate(model, dataset, meta["mean"], meta["std"])
    print(json.dumps({"checkpoint": args.checkpoint, "data": args.data, "split": args.split, **result}, indent=2))


def _cmd_package(args: argparse.Namespace) -> None:
    path = package.build(args.checkpoint, args.model_store, args.backend, args.name, args.batch_size,
                         args.max_batch_delay, args.workers, args.threads)
    print(f"wrote {path}")


def _check_listen(args: argparse.Namespace) -> None:
    """Before anything starts: the addresses the command would listen on are allowed."""
    if "host" in args:
        settings.check_host(args.host, "TorchServe")
    if "address" in args:
        settings.check_host(args.address.rsplit(":", 1)[0], "the feedback service", token_off=args.no_token)


def _serve_config(args: argparse.Namespace, models: dict[str, str]) -> ServeConfig:
    return ServeConfig(workdir=Path(args.workdir), model_store=Path(args.model_store), models=models,
                       host=args.host, grpc_inference_port=args.port, grpc_management_port=args.management_port,
                       http_inference_port=args.http_port, http_management_port=args.http_management_port,
                       metrics_port=args.metrics_port, token_expiration_min=args.token_expiration_min)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _wait_for_stop() -> None:
    """Until SIGINT or SIGTERM; blocking both first makes either end the wait, so the caller cleans up."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    print("Ctrl-C stops it.", flush=True)
    signal.sigwait(STOP_SIGNALS)


def _start_feedback(args: argparse.Namespace, checkpoints: list[str]):
    store = open_store(args.store)
    token = None if args.no_token else feedback_server.write_token(args.token_file)
    tls = (Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes()) if args.tls_cert else None
    server, port = feedback_server.make_server(store, args.address, token, tls,
                                               feedback_server.known_classes(checkpoints))
    host = args.address.rsplit(":", 1)[0]
    print(f"feedback service on {host}:{port} ({'TLS' if tls else 'plaintext'}), store {display_url(args.store)}"
          + (f", token in {args.token_file}" if token else ", no token"), flush=True)
    return server, store


def _stop_feedback(server, store) -> None:
    server.stop(grace=30).wait()  # calls in flight finish
    store.close()


def _announce(cfg: ServeConfig) -> None:
    print(f"TorchServe answers gRPC on {cfg.host}:{cfg.grpc_inference_port} (inference) and "
          f"{cfg.host}:{cfg.grpc_management_port} (management), Prometheus metrics on {cfg.host}:{cfg.metrics_port}; "
          f"tokens in {cfg.key_file}; logs in {cfg.workdir / 'logs'}", flush=True)


def _cmd_serve(args: argparse.Namespace) -> None:
    _check_listen(args)
    cfg = _serve_config(args, dict(m.split("=", 1) for m in args.models))
    with TorchServe(cfg):
        _announce(cfg)
        _wait_for_stop()


def _start_retrain_schedule(args: argparse.Namespace, cfg: ServeConfig, model: str) -> None:
    """The retraining job on its schedule, in the background of the main job, against its services."""
    job = retrain.for_services(cfg, model=model, store=args.store, schedule=args.retrain_schedule)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # the thread inherits it: only the main thread waits
    threading.Thread(target=retrain.run_on_schedule, args=(job,), daemon=True).start()


def _cmd_up(args: argparse.Namespace) -> None:
    """The main job, on embedded defaults: train the demo model unless it is trained, archive it, and serve
    it beside the feedback service."""
    _check_listen(args)
    train.train(train.default_args(out=args.out, resume=True, epochs=args.epochs))
    ckpt = Path(args.out) / "checkpoint.pt"
    meta = checkpoint.read_metadata(ckpt)
    mar = Path(args.model_store) / package.archive_name(meta["name"], meta["version"])
    if not mar.exists() or mar.stat().st_mtime < ckpt.stat().st_mtime:
        package.build(ckpt, args.model_store)
    mar = package.served_archive(args.model_store, meta["name"]) or mar  # what retraining promoted last
    sample = decoy_digits.build("test").images[0, 0]
    Image.fromarray((sample.numpy() * 255).round().astype("uint8")).save("runs/sample.png")
    cfg = _serve_config(args, {meta["name"]: mar.name})
    with TorchServe(cfg):
        _announce(cfg)
        server, store = _start_feedback(args, [str(ckpt)])
        if args.retrain_schedule:
            _start_retrain_schedule(args, cfg, meta["name"])
        print("Try it: see README.md, \"Asking for a prediction\" and \"Sending a correction\" (runs/sample.png is "
              "a test digit)", flush=True)
        try:
            _wait_for_stop()
        finally:
            _stop_feedback(server, store)


def _cmd_retrain(args: argparse.Namespace) -> None:
    if args.schedule:
        retrain.run_on_schedule(args)
    else:
        retrain.run_once(args)


def _cmd_feedback_serve(args: argparse.Namespace) -> None:
    _check_listen(args)
    server, store = _start_feedback(args, args.checkpoint)
    try:
        _wait_for_stop()
    finally:
        _stop_feedback(server, store)


def _cmd_feedback_stats(args: argparse.Namespace) -> None:
    store = open_store(args.store, create=False)
    print(json.dumps(store.stats(args.model), indent=2))
    store.close()


def _cmd_feedback_export(args: argparse.Namespace) -> None:
    store = open_store(args.store, create=False)
    consumed = {"pending": False, "consumed": True, "all": None}[args.state]
    print(json.dumps(export_folder(store, args.out, consumed, args.model), indent=2))
    store.close()


def _cmd_feedback_copy(args: argparse.Namespace) -> None:
    source, target = open_store(args.source, create=False), open_store(args.target)
    try:
        print(json.dumps(copy_store(source, target), indent=2))
    finally:
        source.close()
        target.close()


def _cmd_feedback_backup(args: argparse.Namespace) -> None:
    if Path(args.out).exists():
        raise ValueError(f"{args.out} exists: a backup goes into a new file")
    store = open_store(args.store, create=False)
    try:
        if not isinstance(store, SQLiteStore):
            raise ValueError("backup copies a SQLite store; back up PostgreSQL with pg_dump")
        store.backup(args.out)
    finally:
        store.close()
    print(f"wrote {args.out}")


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-store", default="runs/model_store", help="folder of .mar archives")
    p.add_argument("--workdir", default="runs/serve", help="TorchServe's config, logs and key_file.json")
    p.add_argument("--host", default=settings.default_host(),
                   help=f"address to listen on (beyond loopback only with {settings.LISTEN_ALL_ENV}=1)")
    p.add_argument("--port", type=int, default=7070, help="gRPC inference port")
    p.add_argument("--management-port", type=int, default=7071, help="gRPC management port")
    p.add_argument("--http-port", type=int, default=8080, help="HTTP inference port")
    p.add_argument("--http-management-port", type=int, default=8081, help="HTTP management port (token renewal)")
    p.add_argument("--metrics-port", type=int, default=8082, help="Prometheus metrics port (/metrics)")
    p.add_argument("--token-expiration-min", type=float, default=60.0,
                   help="minutes TorchServe's inference and management keys live")


def _cmd_health(args: argparse.Namespace) -> None:
    """Exit 0 when TorchServe answers its ping (and the model has a ready worker, and the feedback service
    answers SERVING, where asked); 1 otherwise. The container's HEALTHCHECK."""
    with client.Client(args.inference, args.key_file, args.management_url, management_target=args.management,
                       timeout=args.timeout, feedback_target=args.feedback or "127.0.0.1:0",
                       feedback_ca=args.feedback_ca) as c:
        checks = {"torchserve": c.ping()}
        if args.model:
            checks[f"model {args.model}"] = c.model_ready(args.model)
        if args.feedback:
            checks["feedback"] = c.feedback_serving()
    print(json.dumps(checks))
    if not all(checks.values()):
        raise SystemExit(1)


def _health_arguments(p: argparse.ArgumentParser) -> None:
    client.add_arguments(p)
    p.add_argument("--model", default="", help="also ask that this model has a ready worker")
    p.add_argument("--feedback", default=f"127.0.0.1:{feedback_server.PORT}",
                   help='the feedback service\'s address ("" to leave it out)')
    p.add_argument("--feedback-ca", help="PEM certificate of the feedback service's CA, when it serves TLS")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per call")


def _cmd_info(args: argparse.Namespace) -> None:
    print(json.dumps(checkpoint.read_metadata(args.checkpoint), indent=2))


def _cmd_export_data(args: argparse.Namespace) -> None:
    print(json.dumps(data.export(args, args.split, args.out), indent=2))


def _command(sub, name: str, help: str, func, add_arguments=None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    if add_arguments:
        add_arguments(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    _command(sub, "train", "train a model from scratch", train.train, train.add_arguments)
    p = _command(sub, "evaluate", "accuracy of a checkpoint on a data set", _cmd_evaluate)
    p.add_argument("checkpoint")
    data.add_arguments(p)
    p.add_argument("--split", choices=decoy_digits.SPLITS, default="test", help="split of a built-in set")
    _command(sub, "finetune", "fine-tune a checkpoint on corrected attention maps", knowledge.run,
             knowledge.add_command_arguments)
    _command(sub, "package", "build a TorchServe archive (.mar) from a checkpoint", _cmd_package,
             package.add_arguments)
    p = _command(sub, "serve", "run TorchServe with archives from the model store", _cmd_serve,
                 _add_serve_arguments)
    p.add_argument("--models", nargs="+", default=["abn=abn.v1.mar"], help="NAME=ARCHIVE pairs to load")
    _command(sub, "demo", "the whole loop on built-in data: train, serve, correct, retrain, compare", demo.run,
             demo.add_arguments)
    _command(sub, "retrain", "fine-tune the served model on pending feedback and promote it", _cmd_retrain,
             retrain.add_arguments)

    fsub = sub.add_parser("feedback", help="the feedback service and its store").add_subparsers(
        dest="feedback_command", required=True, metavar="command")
    p = _command(fsub, "serve", "run the feedback service", _cmd_feedback_serve, feedback_server.add_arguments)
    p.add_argument("--checkpoint", nargs="*", default=[],
                   help="checkpoints of the served models: labels are checked against their classes")
    for name, help, func in (("stats", "counts of stored corrections by state, label and model version",
                              _cmd_feedback_stats),
                             ("export", "write corrections as an image folder plus a maps folder",
                              _cmd_feedback_export)):
        p = _command(fsub, name, help, func)
        settings.add_store_argument(p)
        p.add_argument("--model", default="", help="only this model")
    p.add_argument("--out", required=True)
    p.add_argument("--state", choices=("pending", "consumed", "all"), default="all")
    p = _command(fsub, "copy", "copy every correction, as it is, from one store into another (e.g. to PostgreSQL); "
                 "rerun after an interruption", _cmd_feedback_copy)
    p.add_argument("--from", dest="source", required=True, help="store to read")
    p.add_argument("--to", dest="target", required=True, help="store to write")
    p = _command(fsub, "backup", "copy a SQLite store into a new file while the service runs", _cmd_feedback_backup)
    settings.add_store_argument(p)
    p.add_argument("--out", required=True, help="the new file")

    p = _command(sub, "up", "the main job on embedded defaults: train the demo model, archive it, serve it",
                 _cmd_up, _add_serve_arguments)
    p.add_argument("--out", default="runs/demo", help="folder of the demo model")
    p.add_argument("--epochs", type=int, default=train.default_args().epochs,
                   help="epochs of the demo model, when it is trained")
    feedback_server.add_arguments(p.add_argument_group("feedback service"))
    p.add_argument("--retrain-schedule", help='also run `abn retrain` on this cron schedule, e.g. "0 3 * * *"')
    _command(sub, "health", "check that the services answer (exit status 0) or not (1)", _cmd_health,
             _health_arguments)
    p = _command(sub, "info", "print a checkpoint's metadata", _cmd_info)
    p.add_argument("checkpoint")
    p = _command(sub, "export-data", "write a built-in set as an image folder plus a maps folder", _cmd_export_data,
                 data.add_arguments)
    p.add_argument("--split", choices=decoy_digits.SPLITS, default="train")
    p.add_argument("--out", required=True, help="folder to write images/ and maps/ into")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, OSError, ValueError, RuntimeError, sqlite3.Error, psycopg.Error) as e:
        print(f"abn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        print(f"abn {args.command}: error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
