"""Benchmark: latency and throughput of one prediction path against another (not a test).

For the same model and images, at concurrency 1, 8 and 32:
  (a) TorchServe over gRPC (ONNX backend, dynamic batching), through serving.client; and the same archive
      built as workers ran before fixed batch shapes and parallel decoding ("torchserve-grpc-before": every
      batch at its own size, one decoding thread), served beside it in the same TorchServe;
  (b) the attention editor's gateway: POST /api/predict (HTTP/1.1 keep-alive, the image in base64 JSON, a
      signed-in expert's session), which calls (a) and answers JSON;
  (c) ONNX Runtime in-process, one request per call;
  (d) PyTorch eager in-process, one request per call;
  (e) the peer (--peer kserve, the default; --no-peer skips it): KServe's Python model server over the Open
      Inference Protocol (v2) gRPC, serving the ONNX file of (a)'s archive (bench/peer_kserve.py, in a virtual
      environment of its own made by bench/peer.py at --peer-venv); its client is a process of its own, loaded
      by the same bench.load.measure as the others.
Every path decodes the PNG and preprocesses it as the handler does. Models:
abn_small at 32x32 and abn_resnet18 at 224x224 (untrained weights: speed does
not depend on them; --models picks some). Prints a table, the ratios (with the
peer: TorchServe's throughput over KServe's at each concurrency and its p50 over
KServe's at the lowest) and writes serving.json into --out.

    .venv/bin/python -m bench.serving --out runs/bench-serving

(Run as a module: a script named serving.py would shadow the package.)
"""

import argparse
import base64
import contextlib
import dataclasses
import http.client
import json
import threading
from pathlib import Path

import numpy as np
import torch

from bench import peer
from bench.load import measure, noise_pngs, onnx_of
from finetune import checkpoint, onnx_export
from finetune.images import image_tensor, normalize, open_image
from finetune.model import create_model
from finetune.progress import track
from handlers.backends import OnnxBackend, TorchBackend, threads_per_worker
from serving.client import Client
from serving.editor.gateway import EditorConfig, EditorServer
from serving.feedback import experts
from serving.feedback.server import FeedbackServer
from serving.feedback.store import SQLiteStore
from serving.torchserve import archive
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe

MODELS = {"abn_small": 32, "abn_resnet18": 224}
PEER_PATH = "kserve-grpc"


def make_checkpoint(arch: str, size: int, out: Path) -> Path:
    torch.manual_seed(0)
    model = create_model(arch, 10).eval()
    meta = checkpoint.metadata(
        model,
        arch,
        [str(i) for i in range(10)],
        (size, size),
        [0.5] * 3,
        [0.25] * 3,
        {"data": "benchmark"},
        name=arch.replace("_", "-"),
    )
    path = out / f"{arch}.pt"
    checkpoint.save(path, model, meta)
    return path


def in_process(backend, meta: dict):
    size, mean, std = tuple(meta["input_size"]), meta["mean"], meta["std"]
    h, w = meta["map_size"]
    maps, supplied = np.zeros((1, 1, h, w), np.float32), np.zeros(1, bool)

    def call(image: bytes):
        x = normalize(image_tensor(open_image(image), size)[None], mean, std).numpy()
        return backend.run(x, maps, supplied)

    return call


def signed_in(port: int, token: str) -> str:
    """The session cookie of an expert signed in to the editor at port."""
    conn = http.client.HTTPConnection(f"127.0.0.1:{port}")
    conn.request("POST", "/api/session", json.dumps({"token": token}), {"Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 204, answer.status
    return answer.headers["Set-Cookie"].split(";")[0]


def through_gateway(port: int, cookie: str):
    local = threading.local()  # a keep-alive connection per thread, as a browser keeps one

    def call(image: bytes):
        body = json.dumps({"image": base64.b64encode(image).decode()})
        for attempt in range(2):  # the server closes a connection left idle (5 s): open a new one, once
            if attempt or not hasattr(local, "conn"):
                local.conn = http.client.HTTPConnection(f"127.0.0.1:{port}")
            try:
                local.conn.request("POST", "/api/predict", body, {"Content-Type": "application/json", "Cookie": cookie})
                answer = local.conn.getresponse()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                if attempt:
                    raise
        data = answer.read()
        assert answer.status == 200, data[:200]
        return data

    return call


def local(call, data: list[bytes], requests: int):
    """A path measured in this process: call(image) from bench.load.measure's threads."""

    def run(concurrency: int) -> dict:
        send = lambda i: call(data[i % len(data)])  # noqa: E731
        return measure(send, concurrency, requests, warmup=max(10, concurrency))

    return run


def start_peer(stack: contextlib.ExitStack, py: Path, onnx: Path, meta: dict, threads: int, data: list[bytes],
               out: Path, arch: str, requests: int, ours):  # fmt: skip
    """The peer serving the ONNX file of TorchServe's archive, with the same images to send; a path's run,
    which checks that the peer answers the first image as ours (in-process ONNX Runtime) does."""
    settings = peer.write_settings(meta, threads, onnx_export.INPUTS, onnx_export.OUTPUTS, out / f"{arch}.peer.json")
    images = out / f"images-{arch}"
    images.mkdir(exist_ok=True)
    for i, image in enumerate(data):
        (images / f"{i:04d}.png").write_bytes(image)
    server = stack.enter_context(peer.PeerServer(py, onnx, settings, arch, out / f"peer-{arch}.log"))
    expected = ours(data[0])

    def run(concurrency: int) -> dict:
        r = server.measure(images, concurrency, requests, warmup=max(10, concurrency))
        answer = r.pop("first_answer")
        for name, want in zip(("probabilities", "attention"), expected):
            if not np.allclose(answer[name], want[0], atol=1e-5):
                raise AssertionError(f"the peer's {name} for the first image differ from in-process ONNX Runtime's")
        return r

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-serving")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument(
        "--requests",
        type=int,
        nargs=2,
        default=[600, 120],
        metavar=("SMALL", "RESNET18"),
        help="requests per cell for abn_small and abn_resnet18",
    )
    p.add_argument("--batch-size", type=int, default=8, help="TorchServe's largest batch")
    p.add_argument(
        "--max-batch-delay",
        type=int,
        default=archive.ArchiveConfig.max_batch_delay,
        help="ms TorchServe waits to fill a batch (default: the archive's)",
    )
    p.add_argument("--peer", choices=["kserve"], default="kserve", help="the server measured beside TorchServe")
    p.add_argument("--no-peer", dest="peer", action="store_const", const=None, help="measure no peer")
    p.add_argument("--peer-venv", default="runs/peer-venv", help="the peer's virtual environment, made if needed")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = threads_per_worker(1)
    torch.set_num_threads(threads)
    models = {arch: (MODELS[arch], n) for arch, n in zip(MODELS, args.requests) if arch in args.models}
    peer_py, peer_info = None, None
    if args.peer:
        peer_py = peer.ensure_venv(Path(args.peer_venv))
        peer_info = {"server": args.peer, "version": peer.package_version(peer_py, args.peer), "venv": args.peer_venv}
        print(f"peer: KServe {peer_info['version']} from {peer_py}", flush=True)

    store, paths, metas, served = out / "store", {}, {}, {}
    for arch, (size, _) in models.items():
        ckpt = make_checkpoint(arch, size, out)
        _, metas[arch] = checkpoint.load(ckpt)
        # on the CPU wherever this runs: the in-process paths and the peer do
        cfg = archive.ArchiveConfig(
            backend="onnx", batch_size=args.batch_size, max_batch_delay=args.max_batch_delay, device="cpu"
        )
        paths[arch] = archive.build(ckpt, store, cfg)
        before = dataclasses.replace(cfg, batch_sizes=(), decode_threads=1)
        name = metas[arch]["name"]
        served |= {name: paths[arch].name, f"{name}-before": archive.build(ckpt, store, before, f"{name}-before").name}
    cfg = ServeConfig.on_free_ports(out / "serve", store, served)
    results = []
    feedback_store = SQLiteStore(out / "feedback.db")
    token = experts.add(feedback_store, f"bench-{len(feedback_store.experts())}")
    feedback = FeedbackServer(feedback_store, "127.0.0.1:0")
    with TorchServe(cfg):
        client = Client.for_services(cfg, f"127.0.0.1:{feedback.port}")
        for arch, (size, requests) in models.items():
            gateway = EditorServer(
                EditorConfig(address="127.0.0.1:0", target=cfg.target, model=metas[arch]["name"],
                             feedback=f"127.0.0.1:{feedback.port}"),
                client,
            )  # fmt: skip
            meta, data = metas[arch], noise_pngs(64, size)
            onnx_path = onnx_of(paths[arch], out / f"{arch}.onnx")  # the file TorchServe serves
            onnxruntime = in_process(OnnxBackend(onnx_path, threads), meta)
            runs = {
                "torchserve-grpc": local(lambda im, a=meta["name"]: client.predict(im, model=a), data, requests),
                "torchserve-grpc-before": local(
                    lambda im, a=f"{meta['name']}-before": client.predict(im, model=a), data, requests
                ),
                "editor-gateway": local(through_gateway(gateway.port, signed_in(gateway.port, token)), data, requests),
                "onnxruntime": local(onnxruntime, data, requests),
                "pytorch-eager": local(in_process(TorchBackend(out / f"{arch}.pt", threads), meta), data, requests),
            }
            with contextlib.ExitStack() as stack:
                if peer_py:
                    runs[PEER_PATH] = start_peer(
                        stack, peer_py, onnx_path, meta, threads, data, out, arch, requests, onnxruntime
                    )
                for c in args.concurrency:
                    for name, run in track(runs.items(), desc=f"{arch} concurrency {c}", leave=False):
                        # torch preprocesses on one thread beside ONNX Runtime, as TorchServe's worker does
                        torch.set_num_threads(threads if name == "pytorch-eager" else 1)
                        r = run(c)
                        results.append({"model": arch, "input": size, "path": name, **r})
                        print(
                            f"{arch:>13} {name:>16} c={c:<3} p50 {r['p50_ms']:8.2f} ms  p95 {r['p95_ms']:8.2f} ms  "
                            f"{r['per_second']:8.1f}/s",
                            flush=True,
                        )
            gateway.stop()
        client.close()
    feedback.stop()
    feedback_store.close()

    def cell(arch, path, c):
        return next(r for r in results if r["model"] == arch and r["path"] == path and r["concurrency"] == c)

    ratios, targets = {}, {}
    c1 = min(args.concurrency)
    for arch in models:
        ratios[arch] = {
            "torchserve_p50_over_onnxruntime_p50_at_c1": cell(arch, "torchserve-grpc", c1)["p50_ms"]
            / cell(arch, "onnxruntime", c1)["p50_ms"],
            **{
                f"torchserve_over_before_throughput_at_c{c}": cell(arch, "torchserve-grpc", c)["per_second"]
                / cell(arch, "torchserve-grpc-before", c)["per_second"]
                for c in args.concurrency
            },
            **{
                f"gateway_p50_over_grpc_p50_at_c{c}": cell(arch, "editor-gateway", c)["p50_ms"]
                / cell(arch, "torchserve-grpc", c)["p50_ms"]
                for c in args.concurrency
            },
            **{
                f"gateway_over_grpc_throughput_at_c{c}": cell(arch, "editor-gateway", c)["per_second"]
                / cell(arch, "torchserve-grpc", c)["per_second"]
                for c in args.concurrency
            },
            **{
                f"onnxruntime_over_eager_throughput_at_c{c}": cell(arch, "onnxruntime", c)["per_second"]
                / cell(arch, "pytorch-eager", c)["per_second"]
                for c in args.concurrency
            },
        }
        if peer_py:
            ours = {c: cell(arch, "torchserve-grpc", c) for c in args.concurrency}
            theirs = {c: cell(arch, PEER_PATH, c) for c in args.concurrency}
            throughput = {c: ours[c]["per_second"] / theirs[c]["per_second"] for c in args.concurrency}
            p50 = {c: ours[c]["p50_ms"] / theirs[c]["p50_ms"] for c in args.concurrency}
            ratios[arch].update({f"torchserve_over_kserve_throughput_at_c{c}": v for c, v in throughput.items()})
            ratios[arch].update({f"torchserve_p50_over_kserve_p50_at_c{c}": v for c, v in p50.items()})
            # the serving targets (docs/performance.md, "A peer"): at least the peer's throughput under load,
            # p50 within 1.2x of its at concurrency 1
            targets[arch] = {f"throughput_at_least_kserve_at_c{c}": throughput[c] >= 1 for c in throughput if c > 1}
            targets[arch][f"p50_within_1.2x_kserve_at_c{c1}"] = p50[c1] <= 1.2
    lines = [f"{'model':>13} {'path':>16} {'conc':>5} {'p50 ms':>9} {'p95 ms':>9} {'req/s':>8}"]
    lines += [
        f"{r['model']:>13} {r['path']:>16} {r['concurrency']:>5} {r['p50_ms']:>9.2f} {r['p95_ms']:>9.2f} "
        f"{r['per_second']:>8.1f}"
        for r in results
    ]
    for arch, rs in ratios.items():
        lines += [f"{arch}: {k} = {v:.2f}" for k, v in rs.items()]
    for arch, ts in targets.items():
        lines += [f"{arch}: target {k}: {'met' if v else 'missed'}" for k, v in ts.items()]
    if peer_info:
        lines.append(f"peer: KServe {peer_info['version']} ({PEER_PATH}), one server process, no batching")
    text = "\n".join(lines)
    print(text)
    (out / "serving.json").write_text(
        json.dumps(
            {
                "results": results,
                "ratios": ratios,
                "targets": targets,
                "peer": peer_info,
                "settings": vars(args),
                "threads": threads,
                "text": text,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out / 'serving.json'}")


if __name__ == "__main__":
    main()
