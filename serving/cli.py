"""The product's command line: `abn <command> ...`.

Parsing and dispatch only: each command turns its arguments into the typed
configuration of the library it calls (defaults come from those dataclasses
and serving.settings), calls it, and prints the result.

`abn health` is what the container's HEALTHCHECK and the Kubernetes probes run, every few seconds: it must not
load torch (seconds and a gigabyte each time). So the modules that bring torch in are imported inside the
commands that use them, and main() builds the arguments of the command it runs alone (their defaults come from
those modules).
"""

import argparse
import dataclasses
import json
import logging
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
import psycopg

from finetune.gate import GateConfig
from serving import health, review, settings
from serving.client import Client
from serving.feedback import experts, transfer
from serving.feedback.store import FeedbackStore, Item, NotFoundError, open_store
from serving.torchserve.client import TorchServeClient
from serving.torchserve.config import ServeConfig, Target

if TYPE_CHECKING:
    from finetune.data import DataConfig
    from finetune.knowledge import TuneConfig
    from serving import services

T = TypeVar("T")

# ---- argument groups shared by several commands, and the configurations built from them


def _config(cls: type[T], args: argparse.Namespace, **given) -> T:
    """A cls (a dataclass) with the parsed arguments named like its fields, and the given ones."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(args).items() if k in names and k not in given}, **given)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    from finetune import data, decoy_digits

    d = data.DataConfig()
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data",
        default=d.data,
        help=f"a built-in set ({', '.join(data.BUILTIN)}) or an image folder with one sub-folder per class",
    )
    g.add_argument("--maps", help="folder of corrected maps parallel to an image folder (optional)")
    g.add_argument("--val-data", help="image folder for validation; default: a share of --data")
    g.add_argument(
        "--val-fraction", type=float, default=d.val_fraction, help="share of an image folder held out for validation"
    )
    g.add_argument("--decoy", choices=decoy_digits.DECOY_KINDS, default=d.decoy, help="decoy-digits: kind of decoy")
    g.add_argument("--decoy-size", type=int, help="decoy-digits: decoy side in pixels (glyph 8, shade 4, tag 4)")
    g.add_argument("--clean", action="store_true", help="decoy-digits: the same splits without decoys")
    g.add_argument(
        "--data-seed", type=int, default=d.data_seed, help="decoy-digits: seed of shifts and decoy placement"
    )


def _augment_argument(group, default: str | None = "none") -> None:
    """--augment; default None: train's, which is photo from pretrained weights and none otherwise."""
    from finetune.augment import AUGMENTS

    group.add_argument(
        "--augment",
        choices=AUGMENTS,
        default=default,
        help="augment the training images, a fresh draw every epoch; corrected maps are cropped and flipped with "
        "their image: flip (horizontal, half of the time), photo (random resized crop, flip, colour jitter); "
        "none for decoy-digits, which a flip or crop changes"
        + ("; not given: photo with --pretrained, else none" if default is None else ""),
    )


def _compute_arguments(parser: argparse.ArgumentParser, d, not_given: str) -> None:
    """--device, --precision, --channels-last, --workers (finetune.compute), defaults from d (a config)."""
    from finetune.compute import PRECISIONS
    from finetune.distributed import DEVICES

    g = parser.add_argument_group("computing (docs/operations.md, Training on photographs and on a GPU)")
    g.add_argument(
        "--device",
        choices=DEVICES,
        default=d.device,
        help=f"where to train: cpu; cuda, the GPU (refused where there is none); auto, cuda where there is a GPU, "
        f"else cpu (not given: {not_given})",
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="bf16 or fp16: mixed precision (autocast; fp16 with loss scaling) on a GPU; weights and "
        "checkpoints stay fp32",
    )
    g.add_argument(
        "--channels-last",
        action="store_true",
        default=d.channels_last,
        help="model and images in the channels-last memory format, faster on a GPU's tensor cores; GPU only",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="DataLoader worker processes that read and augment the next batches (0: the training process)",
    )


def _data_config(args: argparse.Namespace) -> "DataConfig":
    from finetune.data import DataConfig

    return _config(DataConfig, args)


def _tune_arguments(parser: argparse.ArgumentParser) -> None:
    from finetune.knowledge import FILLS, TuneConfig

    d = TuneConfig()
    g = parser.add_argument_group("fine-tuning")
    g.add_argument("--gamma", type=float, default=d.gamma, help="weight of the map loss L_map (0: off)")
    g.add_argument(
        "--counterexamples",
        action=argparse.BooleanOptionalAction,
        default=d.counterexamples,
        help="also train on copies of each corrected image whose Ignore pixels come from an image of another "
        "class; --no-counterexamples: on the edits alone, as the paper does",
    )
    g.add_argument("--copies", type=int, default=d.copies, help="counterexamples per edit and pass")
    g.add_argument(
        "--fill",
        choices=FILLS,
        default=d.fill,
        help="what a counterexample's Ignore pixels become: another class's image there (other), or a neutral "
        "fill: uniform noise, the image blurred, its mean colour",
    )
    g.add_argument(
        "--transplants",
        action=argparse.BooleanOptionalAction,
        default=d.transplants,
        help="also train on copies of images of other classes with each corrected image's Ignore pixels pasted "
        "in, keeping their class: an artefact the expert ignored then appears on every class",
    )
    g.add_argument(
        "--correction-share",
        type=float,
        default=d.correction_share,
        help="with replay (retrain): the corrections are repeated to make up at least this share of each epoch",
    )
    g.add_argument(
        "--unfreeze",
        action="store_true",
        help="let the feature extractor learn too (without it, only the attention and perception branches learn)",
    )
    g.add_argument(
        "--epochs",
        type=int,
        default=d.epochs,
        help="passes over the corrected images (with replay, and over the replayed ones)",
    )
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (SGD, Nesterov, cosine decay)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step, counterexamples aside")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD's L2 penalty on the weights")
    g.add_argument("--seed", type=int, default=d.seed, help="of the shuffling and the counterexamples")
    _augment_argument(g)
    _compute_arguments(parser, d, "the CPU; under torchrun, each process its GPU where there are GPUs")


def _tune_config(args: argparse.Namespace) -> "TuneConfig":
    from finetune import compute
    from finetune.distributed import World
    from finetune.knowledge import TuneConfig

    cfg = _config(TuneConfig, args, freeze_features=not args.unfreeze)
    compute.of(cfg, World.from_env())  # refused now, not after a retraining run has read the store
    return cfg


def _target_arguments(parser) -> None:
    """Where TorchServe is, for commands that call it."""
    d = Target()
    parser.add_argument("--key-file", default=str(d.key_file), help="TorchServe's key file")
    parser.add_argument("--inference", default=d.inference, help="TorchServe gRPC inference address")
    parser.add_argument("--management", default=d.management, help="TorchServe gRPC management address")
    parser.add_argument("--management-url", default=d.management_url, help="TorchServe HTTP management (token renewal)")


def _target(args: argparse.Namespace) -> Target:
    return Target(args.inference, args.management, args.management_url, Path(args.key_file))


def _store_argument(parser) -> None:
    parser.add_argument(
        "--store",
        default=settings.feedback_store(),
        help=f"feedback store: a file path, sqlite:///path or postgresql://user@host/db "
        f"(${settings.STORE_ENV} sets the default)",
    )


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-store", default=settings.MODEL_STORE, help="folder of .mar archives")
    p.add_argument("--workdir", default=settings.SERVE_WORKDIR, help="TorchServe's config, logs and key_file.json")
    p.add_argument(
        "--host",
        default=settings.default_host(),
        help=f"address to listen on (beyond loopback only with {settings.LISTEN_ALL_ENV}=1)",
    )
    p.add_argument("--port", type=int, default=settings.INFERENCE_PORT, help="gRPC inference port")
    p.add_argument("--management-port", type=int, default=settings.MANAGEMENT_PORT, help="gRPC management port")
    p.add_argument("--http-port", type=int, default=settings.HTTP_INFERENCE_PORT, help="HTTP inference port")
    p.add_argument(
        "--http-management-port",
        type=int,
        default=settings.HTTP_MANAGEMENT_PORT,
        help="HTTP management port (token renewal)",
    )
    p.add_argument("--metrics-port", type=int, default=settings.METRICS_PORT, help="Prometheus metrics port (/metrics)")
    p.add_argument(
        "--token-expiration-min",
        type=float,
        default=settings.TOKEN_EXPIRATION_MIN,
        help="minutes TorchServe's inference and management keys live",
    )


def _serve_config(args: argparse.Namespace, models: dict[str, str] | None = None) -> ServeConfig:
    return ServeConfig(
        workdir=Path(args.workdir),
        model_store=Path(args.model_store),
        models=models or {},
        host=args.host,
        grpc_inference_port=args.port,
        grpc_management_port=args.management_port,
        http_inference_port=args.http_port,
        http_management_port=args.http_management_port,
        metrics_port=args.metrics_port,
        token_expiration_min=args.token_expiration_min,
    )


def _feedback_arguments(parser) -> None:
    from serving import services

    d = services.FeedbackConfig()
    _store_argument(parser)
    parser.add_argument(
        "--address",
        default=d.address,
        help=f"host:port to listen on (beyond loopback only with {settings.LISTEN_ALL_ENV}=1)",
    )
    parser.add_argument(
        "--token-file", default=d.token_file, help="bearer token file (created, owner-only, when absent)"
    )
    parser.add_argument("--no-token", action="store_true", help="accept calls without a token")
    parser.add_argument("--tls-cert", help="PEM certificate chain; with --tls-key, serve TLS")
    parser.add_argument("--tls-key", help="PEM private key")
    parser.add_argument(
        "--group-linger-ms",
        type=float,
        default=d.group_linger_s * 1000,
        help="how long a SQLite commit waits for more submissions while they come in concurrently (0: never); "
        "fewer commits take less CPU and fewer fsyncs per submission",
    )
    parser.add_argument(
        "--feedback-metrics-port",
        type=int,
        default=d.metrics_port,
        help="the feedback service's Prometheus metrics (HTTP /metrics), on --address's host (0: not served)",
    )


def _feedback_config(args: argparse.Namespace, checkpoints: list[str] | None = None) -> "services.FeedbackConfig":
    from serving import services

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together: give both, or neither")
    return services.FeedbackConfig(
        store=args.store,
        address=args.address,
        token_file=None if args.no_token else args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        checkpoints=checkpoints or [],
        group_linger_s=args.group_linger_ms / 1000,
        metrics_port=args.feedback_metrics_port or None,
    )


# ---- the commands


def _cmd_train(args: argparse.Namespace) -> None:
    from finetune import train

    train.train(_config(train.TrainConfig, args, data=_data_config(args)))


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from finetune import train
    from finetune.model import list_models

    d = train.TrainConfig()
    parser.add_argument("--arch", default=d.arch, choices=list_models(), help="architecture")
    parser.add_argument("--input-size", type=int, help="input side in pixels (default: the architecture's)")
    parser.add_argument(
        "--pretrained",
        metavar="FILE",
        help="start abn_resnet18/34/50 from this torchvision ResNet state dict (.pth): ImageNet weights you "
        "downloaded (nothing is downloaded here; the README says where torchvision publishes them)",
    )
    parser.add_argument(
        "--freeze-epochs",
        type=int,
        help="epochs at the start during which the pretrained backbone stays frozen and only the heads learn "
        f"(not given: {train.PRETRAINED_FREEZE_EPOCHS} with --pretrained, 0 without)",
    )
    _data_arguments(parser)
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training set")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    g.add_argument(
        "--optimizer", choices=sorted(train.DEFAULT_LR), default=d.optimizer, help="sgd (Nesterov momentum) or adamw"
    )
    g.add_argument("--lr", type=float, help="peak learning rate (sgd 0.1, adamw 0.001)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="sgd momentum (Nesterov)")
    g.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help="L2 penalty (sgd) or decoupled decay (adamw)"
    )
    g.add_argument(
        "--schedule",
        choices=train.SCHEDULES,
        default=d.schedule,
        help="learning-rate schedule after warm-up (step: x0.1 at 50%% and 75%%)",
    )
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up")
    g.add_argument("--seed", type=int, default=d.seed, help="of the initial weights and the shuffling")
    _augment_argument(g, default=None)
    _compute_arguments(parser, d, "the CPU")
    parser.add_argument("--name", default=d.name, help="model name recorded in the checkpoint")
    parser.add_argument("--out", default=d.out, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from finetune import checkpoint, data
    from finetune.evaluate import evaluate

    model, meta = checkpoint.load(args.checkpoint)
    size = tuple(meta["input_size"])
    cfg = _data_config(args)
    if cfg.data in data.BUILTIN:
        dataset: data.SizedSet = data.builtin_split(cfg, args.split, size)
    else:
        dataset = data.ImageFolder(cfg.data, size, cfg.maps, classes=meta["classes"])
    result = evaluate(model, dataset, meta["mean"], meta["std"])
    print(json.dumps({"checkpoint": args.checkpoint, "data": cfg.data, "split": args.split, **result}, indent=2))


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from finetune import decoy_digits

    _data_arguments(p)
    p.add_argument("checkpoint", help="the model to evaluate (checkpoint.pt)")
    p.add_argument("--split", choices=decoy_digits.SPLITS, default="test", help="split of a built-in set")


def _cmd_finetune(args: argparse.Namespace) -> None:
    from finetune import knowledge

    knowledge.run(args.checkpoint, args.data, args.maps, args.out, _tune_config(args))


def _finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the model to fine-tune")
    parser.add_argument("--data", required=True, help="image folder, one sub-folder per class")
    parser.add_argument("--maps", required=True, help="folder of corrected maps parallel to --data")
    parser.add_argument("--out", required=True, help="folder for checkpoint.pt, report.json and report.png")
    _tune_arguments(parser)


def _cmd_package(args: argparse.Namespace) -> None:
    from finetune.builds import BuildConfig
    from finetune.parity import ParityConfig
    from handlers import backends
    from serving.torchserve import archive

    cfg = _config(
        archive.ArchiveConfig,
        args,
        build=_config(BuildConfig, args),
        parity=_config(ParityConfig, args),
        gpu=_config(backends.GpuOptions, args),
        batch_sizes=tuple(args.batch_sizes),
    )
    # a GPU asked for and not here: refused before any work. Only here: retraining rebuilds a GPU archive on
    # whatever machine it runs, and the workers check the device where they load it.
    backends.check_device(cfg.device)
    print(f"wrote {archive.build(args.checkpoint, args.model_store, cfg, args.name)}")


def _package_arguments(parser: argparse.ArgumentParser) -> None:
    from finetune import builds
    from finetune.builds import BuildConfig
    from finetune.parity import ParityConfig
    from handlers import backends
    from serving.torchserve import archive

    d = archive.ArchiveConfig()
    parser.add_argument("checkpoint", help="the model to archive (checkpoint.pt)")
    parser.add_argument("--model-store", default=settings.MODEL_STORE, help="folder the .mar is written to")
    parser.add_argument(
        "--backend",
        choices=archive.BACKENDS,
        default=d.backend,
        help="what runs the model in the workers: ONNX Runtime, PyTorch, or auto (the faster, measured here)",
    )
    parser.add_argument("--name", help="model name in TorchServe (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="largest batch TorchServe forms")
    parser.add_argument(
        "--max-batch-delay", type=int, default=d.max_batch_delay, help="ms TorchServe waits to fill a batch"
    )
    parser.add_argument("--workers", type=int, default=d.workers, help="worker processes for this model")
    parser.add_argument(
        "--threads", type=int, help="intra-op threads per worker (default: cores / workers, one on a GPU)"
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="*",
        default=list(d.batch_sizes),
        help="batches are padded to these (up to --batch-size), each warmed at the worker's start; none: unpadded",
    )
    parser.add_argument("--decode-threads", type=int, help="threads decoding a batch (default: cores / workers)")
    o = backends.GpuOptions()
    g = parser.add_argument_group("on a GPU (--backend auto measures these)")
    g.add_argument("--cudnn-search", choices=backends.SEARCHES, default=o.cudnn_search, help="ONNX Runtime's")
    g.add_argument(
        "--cudnn-max-workspace",
        action=argparse.BooleanOptionalAction,
        default=o.cudnn_max_workspace,
        help="ONNX Runtime's CUDA provider option: cuDNN may use as much workspace memory as its fastest "
        "convolutions want",
    )
    g.add_argument("--prefer-nhwc", action="store_true", help="ONNX Runtime's CUDA provider option")
    g.add_argument("--cuda-graph", action="store_true", help="one CUDA graph per batch size")
    g.add_argument("--half", action="store_true", help="the torch backend in fp16")
    b, c = BuildConfig(), ParityConfig()
    g = parser.add_argument_group("build (onnx backend)")
    g.add_argument("--build", choices=builds.BUILDS, default=b.build, help="int8: for the CPU; fp16: for the GPU")
    g.add_argument("--device", choices=backends.DEVICES, default=d.device, help="where workers run the model")
    g.add_argument(
        "--calibration-data", help="image folder to calibrate and check on (default: the model's training data)"
    )
    g.add_argument("--calibration-images", type=int, default=b.calibration_images, help="int8 calibration images")
    g.add_argument("--min-agreement", type=float, default=c.min_agreement, help="top-1 agreement with fp32")
    g.add_argument("--max-attention-mad", type=float, default=c.max_attention_mad, help="mean |attention map - fp32's|")
    g.add_argument("--check-images", type=int, default=c.check_images, help="validation images checked")


def _cmd_serve(args: argparse.Namespace) -> None:
    from serving import services

    models = dict(m.split("=", 1) for m in args.models)
    services.serve(_serve_config(args, models), follow=args.store if args.follow else None)


def _serve_command_arguments(p: argparse.ArgumentParser) -> None:
    from serving.torchserve import archive

    _serve_arguments(p)
    p.add_argument(
        "--models",
        nargs="+",
        default=[f"{settings.MODEL_NAME}={archive.archive_name(settings.MODEL_NAME, 1)}"],
        help="NAME=ARCHIVE pairs to load (with --follow, what the store records as served wins)",
    )
    p.add_argument(
        "--follow",
        action="store_true",
        help="serve the versions the feedback store records as served, and follow each promotion (replicas that "
        "share a store and a model store)",
    )
    _store_argument(p)


def _cmd_demo(args: argparse.Namespace) -> None:
    from serving import demo

    demo.run(_config(demo.DemoConfig, args))


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from serving import demo

    d = demo.DemoConfig()
    parser.add_argument("--out", default=d.out, help="folder for the models, services and reports")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="epochs of the first model")
    parser.add_argument(
        "--corrections", type=int, default=d.corrections, help="most training images the expert corrects"
    )
    parser.add_argument("--test-images", type=int, default=d.test_images, help="test images predicted before and after")


def _cmd_retrain(args: argparse.Namespace) -> None:
    from serving import retraining

    cfg = _config(
        retraining.RetrainConfig, args, target=_target(args), tune=_tune_config(args), gate=_config(GateConfig, args)
    )
    if args.dry_run:
        retraining.dry_run(cfg)
    elif cfg.schedule:
        retraining.run_on_schedule(cfg)
    else:
        retraining.run_once(cfg)


def _retrain_arguments(parser: argparse.ArgumentParser) -> None:
    from serving import retraining

    d = retraining.RetrainConfig()
    g = parser.add_argument_group("retraining")
    g.add_argument("--model", default=d.model, help="served model name")
    _store_argument(g)
    g.add_argument("--model-store", default=d.model_store, help="TorchServe's model store")
    g.add_argument("--workdir", default=d.workdir, help="lock, run folders and reports")
    _target_arguments(g)
    g.add_argument(
        "--min-feedback", type=int, default=d.min_feedback, help="fewest pending corrected images worth a run"
    )
    g.add_argument("--holdout", type=float, default=d.holdout, help="share of the feedback kept back to check")
    g.add_argument(
        "--max-author-share",
        type=float,
        default=d.max_author_share,
        help="most of a run one author may make, where several sent corrections",
    )
    g.add_argument("--replay-data", help="the model's training images, when not where its checkpoint says")
    g.add_argument("--gate-data", help="image folder (one sub-folder per class) to check the candidate on too")
    g.add_argument(
        "--max-drop",
        type=float,
        default=d.gate.max_drop,
        help="largest fall of accuracy on a trusted set that still promotes (judged by its confidence interval)",
    )
    g.add_argument("--confidence", type=float, default=d.gate.confidence, help="of the gate's intervals")
    g.add_argument(
        "--attention-tolerance",
        type=float,
        default=d.gate.attention_tolerance,
        help="largest wrong-way change of mean attention on the decided Ignore or Attend pixels of the kept-back "
        "corrections that still promotes",
    )
    g.add_argument("--fail-at", choices=retraining.STEPS, help="fail on purpose at this step (for tests)")
    g.add_argument("--schedule", help='a cron expression, e.g. "0 3 * * *": keep running, one run per slot')
    g.add_argument(
        "--publish",
        action="store_true",
        help="promote by recording the new archive as served in the store, without TorchServe: the replicas that "
        "follow the store (abn serve --follow) load it",
    )
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="say what the next run would take, how it would weigh each author's corrections and what it would "
        "leave pending and why; train and change nothing",
    )
    _tune_arguments(parser)


def _cmd_up(args: argparse.Namespace) -> None:
    from serving import services
    from serving.editor.gateway import EditorConfig

    _tls_pair(args.editor_tls_cert, args.editor_tls_key, "the editor")
    services.up(
        services.UpConfig(
            serve=_serve_config(args),
            feedback=_feedback_config(args),
            model_out=args.out,
            epochs=args.epochs,
            retrain_schedule=args.retrain_schedule,
            editor=None
            if args.no_editor
            else EditorConfig(address=args.editor_address, tls_cert=args.editor_tls_cert, tls_key=args.editor_tls_key),
        )
    )


def _up_arguments(p: argparse.ArgumentParser) -> None:
    from finetune import train
    from serving.editor.gateway import EditorConfig

    _serve_arguments(p)
    p.add_argument("--out", default=settings.DEMO_MODEL, help="folder of the demo model")
    p.add_argument(
        "--epochs", type=int, default=train.TrainConfig.epochs, help="epochs of the demo model, when it is trained"
    )
    _feedback_arguments(p.add_argument_group("feedback service"))
    p.add_argument("--retrain-schedule", help='also run `abn retrain` on this cron schedule, e.g. "0 3 * * *"')
    p.add_argument("--editor-address", default=EditorConfig().address, help="the attention editor's host:port")
    p.add_argument("--editor-tls-cert", help="PEM certificate chain; with --editor-tls-key, the editor serves HTTPS")
    p.add_argument("--editor-tls-key", help="PEM private key of the editor")
    p.add_argument("--no-editor", action="store_true", help="do not start the attention editor")


def _tls_pair(cert: str | None, key: str | None, what: str) -> None:
    if bool(cert) != bool(key):
        raise ValueError(f"{what}: the TLS certificate and key go together: give both, or neither")


def _cmd_editor(args: argparse.Namespace) -> None:
    from serving import services
    from serving.editor.gateway import EditorConfig, known_inputs
    from serving.feedback.service import known_classes

    _tls_pair(args.tls_cert, args.tls_key, "abn editor")
    services.editor(
        EditorConfig(
            address=args.address,
            target=_target(args),
            model=args.model,
            feedback=args.feedback,
            feedback_ca=args.feedback_ca,
            classes=known_classes(args.checkpoint),
            inputs=known_inputs(args.checkpoint),
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            model_store=args.model_store,
        )
    )


def _editor_arguments(p: argparse.ArgumentParser) -> None:
    from serving.editor.gateway import EditorConfig

    d = EditorConfig()
    p.add_argument(
        "--address",
        default=d.address,
        help=f"host:port to listen on (beyond loopback only with {settings.LISTEN_ALL_ENV}=1)",
    )
    _target_arguments(p)
    p.add_argument("--model", default=d.model, help="the served model that predicts uploaded images")
    p.add_argument("--feedback", default=d.feedback, help="the feedback service's address")
    p.add_argument("--feedback-ca", help="PEM certificate of the feedback service's CA, when it serves TLS")
    p.add_argument(
        "--checkpoint", nargs="*", default=[], help="checkpoints of the served models: their classes are the choices"
    )
    p.add_argument("--tls-cert", help="PEM certificate chain; with --tls-key, serve HTTPS")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--model-store", help="TorchServe's model store: with it, operators roll back from the Models page")


@contextmanager
def _store(url: str, create: bool = False) -> Iterator[FeedbackStore]:
    """The feedback store at url, closed after use. Only a command that makes a store (create) takes a path
    where there is none: elsewhere a mistyped --store would be a new, empty store that the command reports on or
    changes, and the service would never see the change."""
    store = open_store(url, create=create)
    try:
        yield store
    finally:
        store.close()


def _cmd_experts_add(args: argparse.Namespace) -> None:
    with _store(args.store) as store:
        token = experts.add(store, args.name, args.role)
    print(f"{args.role} {args.name!r} added; their token, shown this once (the store keeps only its hash):\n{token}")


def _cmd_experts_list(args: argparse.Namespace) -> None:
    with _store(args.store) as store:
        rows = store.experts()
    print(json.dumps([{"name": e.name, "role": e.role, "added": e.created} for e in rows], indent=2))


def _cmd_experts_remove(args: argparse.Namespace) -> None:
    with _store(args.store) as store:
        experts.remove(store, args.name)
    print(f"expert {args.name!r} removed: their token stops working within {settings.EXPERT_CACHE_S:g} s")


def _queue_client(args: argparse.Namespace) -> Client:
    t = _target(args)
    return Client.for_target(t, args.feedback, args.token_file, model=args.model, feedback_ca=args.feedback_ca)


def _cmd_review_add(args: argparse.Namespace) -> None:
    with _queue_client(args) as client:
        result = review.add_folder(client, _config(review.QueueConfig, args))
    print(json.dumps(result, indent=2))


def _cmd_review_list(args: argparse.Namespace) -> None:
    with _queue_client(args) as client:
        items = client.feedback.review_items(args.model, args.label, args.limit)
    for i in items:
        p = i.prediction
        print(f"{i.priority:.3f}  {i.id}  {p.model_name}:{p.model_version}  {p.scores[0].label}  {i.reason}")


def _review_arguments(p: argparse.ArgumentParser) -> None:
    _target_arguments(p)
    p.add_argument("--model", default=settings.MODEL_NAME, help="the served model")
    p.add_argument("--feedback", default=f"{settings.LOOPBACK}:{settings.FEEDBACK_PORT}", help="feedback service")
    p.add_argument("--token-file", default=settings.FEEDBACK_TOKEN_FILE, help="the feedback service's token file")
    p.add_argument("--feedback-ca", help="PEM certificate of the feedback service's CA, when it serves TLS")


def _cmd_feedback_serve(args: argparse.Namespace) -> None:
    from serving import services

    services.feedback(_feedback_config(args, args.checkpoint))


def _cmd_feedback_stats(args: argparse.Namespace) -> None:
    with _store(args.store) as store:
        print(json.dumps(store.stats(args.model, args.author), indent=2))


def _state_of(item: Item) -> str:
    """An item's state in words: by which run, into which version, and why."""
    by = {"consumed": item.consumed_by, "rejected": item.rejected_by}.get(item.state)
    words = item.state + (f" by {by}" if by else "")
    words += f", promoted as version {item.promoted_version}" if item.promoted_version else ""
    return words + (f": {item.reason}" if item.reason else "")


def _cmd_feedback_list(args: argparse.Namespace) -> None:
    with _store(args.store) as store:
        for item in store.items(model_name=args.model, with_data=False, author=args.author):
            when = datetime.fromtimestamp(item.created, UTC).isoformat(timespec="seconds")
            kind = "confirmed" if item.confirmed else item.label or item.predicted_label or "-"
            print(f"{when}  {item.id}  {item.author or '-'}  {item.model_name}:{item.model_version}  {kind}  "
                  f"{_state_of(item)}")  # fmt: skip


def _cmd_feedback_withdraw(args: argparse.Namespace) -> None:
    with _store(args.store) as store:
        item = store.withdraw(args.id, args.author)
    print(f"{item.id} withdrawn: retraining will not use it")


def _cmd_feedback_reject(args: argparse.Namespace) -> None:
    with _store(args.store) as store:
        ids = args.id or store.ids_of(rejected=False, author=args.author)
        count = store.mark_rejected(ids, f"operator {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"{count} pending corrections marked rejected")


def _cmd_feedback_requeue(args: argparse.Namespace) -> None:
    with _store(args.store) as store:
        count = store.requeue(args.id or store.ids_of(rejected=True, author=args.author, rejected_by=args.run))
    print(f"{count} rejected corrections pending again")


def _selection_arguments(p: argparse.ArgumentParser, runs: bool) -> None:
    _store_argument(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", nargs="+", help="these corrections")
    which.add_argument("--author", help="every one of this author's")
    if runs:
        which.add_argument("--run", help="every one this retraining run rejected")


def _cmd_rollback(args: argparse.Namespace) -> None:
    from serving.torchserve import served

    with _store(args.store) as store, TorchServeClient(_target(args), model=args.model) as client:
        before, after = served.rollback(client, served.ServedRecord(store, args.model_store, args.model))
    print(
        f"{args.model}: version {after} is the default again (was {before}); a restart, and every replica that "
        "follows the store, serves it too"
    )


def _rollback_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=settings.MODEL_NAME, help="served model name")
    p.add_argument("--model-store", default=settings.MODEL_STORE, help="TorchServe's model store")
    _store_argument(p)
    _target_arguments(p)


def _cmd_feedback_export(args: argparse.Namespace) -> None:
    consumed = {"pending": False, "consumed": True, "all": None}[args.state]
    with _store(args.store) as store:
        print(json.dumps(transfer.export_folder(store, args.out, consumed, args.model, args.author), indent=2))


def _cmd_feedback_copy(args: argparse.Namespace) -> None:
    with _store(args.source) as source, _store(args.target, create=True) as target:
        print(json.dumps(transfer.copy_store(source, target), indent=2))


def _cmd_feedback_backup(args: argparse.Namespace) -> None:
    transfer.backup(args.store, args.out)
    print(f"wrote {args.out}")


def _cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when TorchServe answers its ping (and the model has a ready worker, and the feedback service
    answers SERVING, where asked); 1 otherwise. The container's HEALTHCHECK."""
    with Client.for_target(
        _target(args), args.feedback or f"{settings.LOOPBACK}:0", timeout=args.timeout, feedback_ca=args.feedback_ca
    ) as client:
        checks = health.health(client, args.model, bool(args.feedback))
    print(json.dumps(checks))
    return 0 if all(checks.values()) else 1


def _health_arguments(p: argparse.ArgumentParser) -> None:
    _target_arguments(p)
    p.add_argument("--model", default="", help="also ask that this model has a ready worker")
    p.add_argument(
        "--feedback",
        default=f"{settings.LOOPBACK}:{settings.FEEDBACK_PORT}",
        help='the feedback service\'s address ("" to leave it out)',
    )
    p.add_argument("--feedback-ca", help="PEM certificate of the feedback service's CA, when it serves TLS")
    p.add_argument("--timeout", type=float, default=settings.HEALTH_TIMEOUT_S, help="seconds per call")


def _cmd_info(args: argparse.Namespace) -> None:
    from finetune import checkpoint
    from serving.torchserve import archive

    if args.checkpoint.endswith(".mar"):
        print(json.dumps(archive.describe(args.checkpoint), indent=2))
        return
    print(json.dumps(checkpoint.read_metadata(args.checkpoint), indent=2))


def _cmd_export_data(args: argparse.Namespace) -> None:
    from finetune import data

    print(json.dumps(data.export(_data_config(args), args.split, args.out), indent=2))


def _export_data_arguments(p: argparse.ArgumentParser) -> None:
    from finetune import decoy_digits

    _data_arguments(p)
    p.add_argument("--split", choices=decoy_digits.SPLITS, default="train", help="split of the built-in set")
    p.add_argument("--out", required=True, help="folder to write images/ and maps/ into")


def _feedback_serve_arguments(p: argparse.ArgumentParser) -> None:
    _feedback_arguments(p)
    p.add_argument(
        "--checkpoint",
        nargs="*",
        default=[],
        help="checkpoints of the served models: labels are checked against their classes",
    )


def _filter_arguments(p: argparse.ArgumentParser) -> None:
    _store_argument(p)
    p.add_argument("--model", default="", help="only this model")
    p.add_argument("--author", default="", help="only this author's")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    _filter_arguments(p)
    p.add_argument("--out", required=True, help="folder to write images/ and maps/ into")
    p.add_argument(
        "--state",
        choices=("pending", "consumed", "all"),
        default="all",
        help="only the corrections no run has used yet (pending), only those a run used (consumed), or all",
    )


def _copy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, help="store to read")
    p.add_argument("--to", dest="target", required=True, help="store to write (made where there is none)")


def _withdraw_arguments(p: argparse.ArgumentParser) -> None:
    _store_argument(p)
    p.add_argument("--id", required=True, help="the correction")
    p.add_argument("--author", required=True, help="its author (only they may withdraw it)")


def _backup_arguments(p: argparse.ArgumentParser) -> None:
    _store_argument(p)
    p.add_argument("--out", required=True, help="the new file")


def _expert_arguments(p: argparse.ArgumentParser) -> None:
    _store_argument(p)
    p.add_argument("name", help="the expert's name, which signs their corrections")


def _expert_add_arguments(p: argparse.ArgumentParser) -> None:
    _expert_arguments(p)
    p.add_argument(
        "--role",
        choices=settings.ROLES,
        default="expert",
        help="operator: may also roll back, requeue and reject from the editor's Models page",
    )


def _review_add_arguments(p: argparse.ArgumentParser) -> None:
    _review_arguments(p)
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument(
        "--priority",
        choices=sorted(review.PRIORITIES),
        default=review.QueueConfig.priority,
        help="what puts an image first: margin (its top two classes close) or entropy (its attention spread out)",
    )
    p.add_argument("--limit", type=int, help="at most this many images, in name order")


def _review_list_arguments(p: argparse.ArgumentParser) -> None:
    _review_arguments(p)
    p.add_argument("--label", default="", help="only items of this predicted class")
    p.add_argument("--limit", type=int, default=settings.REVIEW_LIST_DEFAULT, help="at most this many items")


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint (.pt) or an archive (.mar)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command with its arguments; given only (a command's name), that command's arguments alone, the
    others listed without theirs: their defaults import what `abn health` must not load (the module's docstring)."""
    parser = argparse.ArgumentParser(prog="abn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(group, name: str, help: str, func, add_arguments=None) -> None:
        p = group.add_parser(name, help=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if add_arguments and only in (None, p.prog.split()[1]):  # prog: "abn feedback list"
            add_arguments(p)
        p.set_defaults(func=func)

    def commands(name: str, help: str):
        """A command whose commands follow: abn feedback list, ..."""
        return sub.add_parser(name, help=help).add_subparsers(dest=f"{name}_command", required=True, metavar="command")

    command(sub, "train", "train a model from scratch", _cmd_train, _train_arguments)
    command(sub, "evaluate", "accuracy of a checkpoint on a data set", _cmd_evaluate, _evaluate_arguments)
    command(sub, "finetune", "fine-tune a checkpoint on corrected attention maps", _cmd_finetune, _finetune_arguments)
    command(sub, "package", "build a TorchServe archive (.mar) from a checkpoint", _cmd_package, _package_arguments)
    command(sub, "serve", "run TorchServe with archives from the model store", _cmd_serve, _serve_command_arguments)
    command(
        sub,
        "demo",
        "the whole loop on built-in data: train, serve, correct, retrain, compare",
        _cmd_demo,
        _demo_arguments,
    )
    command(
        sub,
        "retrain",
        "fine-tune the served model on pending feedback and promote it",
        _cmd_retrain,
        _retrain_arguments,
    )

    fsub = commands("feedback", "the feedback service and its store")
    command(fsub, "serve", "run the feedback service", _cmd_feedback_serve, _feedback_serve_arguments)
    command(
        fsub,
        "stats",
        "counts of stored corrections by state, label, model version and author",
        _cmd_feedback_stats,
        _filter_arguments,
    )
    command(
        fsub,
        "list",
        "the corrections, oldest first, each with its state and why",
        _cmd_feedback_list,
        _filter_arguments,
    )
    command(
        fsub,
        "export",
        "write corrections as an image folder plus a maps folder",
        _cmd_feedback_export,
        _export_arguments,
    )
    command(
        fsub,
        "copy",
        "copy every correction, as it is, from one store into another (e.g. to PostgreSQL); "
        "rerun after an interruption",
        _cmd_feedback_copy,
        _copy_arguments,
    )
    command(
        fsub,
        "reject",
        "set pending corrections aside: retraining will not use them",
        _cmd_feedback_reject,
        lambda p: _selection_arguments(p, runs=False),
    )
    command(
        fsub,
        "requeue",
        "make rejected corrections pending again",
        _cmd_feedback_requeue,
        lambda p: _selection_arguments(p, runs=True),
    )
    command(
        fsub,
        "withdraw",
        "take back a pending correction for its author: retraining will not use it",
        _cmd_feedback_withdraw,
        _withdraw_arguments,
    )
    command(
        fsub,
        "backup",
        "copy a SQLite store into a new file while the service runs",
        _cmd_feedback_backup,
        _backup_arguments,
    )

    command(
        sub,
        "rollback",
        "make the version before the served one the default again, and record it",
        _cmd_rollback,
        _rollback_arguments,
    )
    command(
        sub,
        "editor",
        "the attention editor: a web page where experts review and correct maps",
        _cmd_editor,
        _editor_arguments,
    )
    esub = commands("experts", "the experts who may correct maps, each with a token")
    command(esub, "add", "add an expert and print their token (once)", _cmd_experts_add, _expert_add_arguments)
    command(esub, "list", "the experts, by name", _cmd_experts_list, _store_argument)
    command(esub, "remove", "remove an expert: their token stops working", _cmd_experts_remove, _expert_arguments)
    rsub = commands("review", "the review queue the editor shows")
    command(
        rsub,
        "add",
        "predict every image of a folder and queue it, least certain first",
        _cmd_review_add,
        _review_add_arguments,
    )
    command(
        rsub, "list", "the items waiting for review, highest priority first", _cmd_review_list, _review_list_arguments
    )
    command(
        sub,
        "up",
        "the main job on embedded defaults: train the demo model, archive it, serve it",
        _cmd_up,
        _up_arguments,
    )
    command(sub, "health", "check that the services answer (exit status 0) or not (1)", _cmd_health, _health_arguments)
    command(
        sub,
        "info",
        "print a checkpoint's metadata, or an archive's (.mar) settings and build",
        _cmd_info,
        _info_arguments,
    )
    command(
        sub,
        "export-data",
        "write a built-in set as an image folder plus a maps folder",
        _cmd_export_data,
        _export_data_arguments,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # the command's own arguments alone (the module's docstring says why); none asked for: all, for the help
    args = build_parser(argv[0] if argv and not argv[0].startswith("-") else None).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("serving").setLevel(logging.INFO)  # the services' own lines: health changes, incidents
    try:
        return args.func(args) or 0
    # finetune's DataError is a ValueError: caught here without importing finetune (torch)
    except (NotFoundError, OSError, ValueError, RuntimeError, sqlite3.Error, psycopg.Error) as e:
        print(f"abn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        print(f"abn {args.command}: error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
