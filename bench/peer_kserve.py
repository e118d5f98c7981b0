"""The peer bench.serving measures TorchServe against: KServe's Python model server, speaking the Open Inference
Protocol (v2) over gRPC, serving the same ONNX file with the same preprocessing.

This module runs in the benchmark's own virtual environment (bench/peer-requirements.txt, made by bench.peer),
so it imports no package of the product: the model's sizes, normalisation and ONNX Runtime's thread count come
from a JSON file the benchmark writes beside the ONNX file (bench.peer.write_settings). Two commands:

    python -m bench.peer_kserve serve --onnx M.onnx --settings M.peer.json --name NAME --grpc-port P --http-port Q
    python -m bench.peer_kserve measure --target 127.0.0.1:P --name NAME --images DIR --concurrency C \
        --requests N --warmup W

serve: a kserve.Model whose preprocess decodes the PNG of the request's BYTES input and brings it to the
model's size and normalisation as the product's handler does (finetune.images: EXIF orientation, 16-bit grey
to 8 bits, RGB, bilinear resize, [0, 1], (x - mean) / std), and whose predict runs ONNX Runtime on the CPU
(intra-op threads as TorchServe's worker, one inter-op thread, idle threads asleep) with no supplied map,
answering the class probabilities (1 x K, FP32) and the attention map (1 x h x w, FP32) as output tensors.
preprocess and predict are plain methods, as KServe's examples write them: the server runs them on its event
loop, one request after another (KServe's Python server has no batching of its own; one process serves gRPC).

measure: the client. Like the product's client of TorchServe it is Python and grpcio, one channel shared by
every thread, a blocking call per request, the answer decoded to arrays; the load comes from the same
function (bench.load.measure: closed loop, `concurrency` threads). It prints measure's figures as JSON, with
its answer for the first image.
"""

import argparse
import io
import json
import sys
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
INPUT = "image_png"  # the request's BYTES input: one encoded image per element
OUTPUTS = ("probabilities", "attention")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def preprocess(data: bytes, settings: dict) -> np.ndarray:
    """One encoded image as the model's normalised input, 1 x 3 x H x W float32."""
    img: Image.Image = Image.open(io.BytesIO(data))
    img.load()
    if img.getexif().get(0x0112, 1) != 1:  # the Orientation tag
        img = ImageOps.exif_transpose(img)
    if img.mode in SIXTEEN_BIT:
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) // 257).astype(np.uint8))
    h, w = settings["input_size"]
    img = img.convert("RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(settings["mean"], np.float32)
    std = np.asarray(settings["std"], np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)[None].copy()


class Runner:
    """ONNX Runtime on the CPU, set up as the product's OnnxBackend sets up a worker's session."""

    def __init__(self, onnx: str | Path, settings: dict):
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings["threads"]
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        self.inputs, self.outputs = settings["inputs"], settings["outputs"]
        self.map_size = tuple(settings["map_size"])

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (B x K) and attention maps (B x h x w) of normalised images, no map supplied."""
        b = len(images)
        feeds = dict(zip(self.inputs, (images, np.zeros((b, 1, *self.map_size), np.float32), np.zeros(b, bool))))
        logits, attention = self.session.run([self.outputs[0], self.outputs[2]], feeds)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True), attention[:, 0]


def serve(args: argparse.Namespace) -> None:
    sys.argv = sys.argv[:1]  # kserve parses the command line when imported; ours is not for it
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse

    settings = json.loads(Path(args.settings).read_text())

    class ABNModel(kserve.Model):
        def __init__(self, name: str):
            super().__init__(name)
            self.runner: Runner | None = None

        def load(self) -> bool:
            self.runner = Runner(args.onnx, settings)
            self.ready = True
            return self.ready

        def preprocess(self, payload: InferRequest, headers: dict | None = None) -> np.ndarray:
            images = payload.get_input_by_name(INPUT) or payload.inputs[0]
            return np.concatenate([preprocess(bytes(d), settings) for d in images.as_numpy().ravel()])

        def predict(self, payload: np.ndarray, headers: dict | None = None) -> InferResponse:
            assert self.runner is not None
            outputs = []
            for name, array in zip(OUTPUTS, self.runner.run(payload)):
                out = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
                out.set_data_from_numpy(np.ascontiguousarray(array, np.float32), binary_data=True)
                outputs.append(out)
            return InferResponse(response_id=uuid.uuid4().hex, model_name=self.name, infer_outputs=outputs)

    model = ABNModel(args.name)
    model.load()
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1).start([model])


def measure_load(args: argparse.Namespace) -> dict:
    sys.argv = sys.argv[:1]  # as in serve: importing kserve's protos imports kserve
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    from bench.load import measure

    images = [p.read_bytes() for p in sorted(Path(args.images).glob("*.png"))]
    limits = [(f"grpc.max_{way}_message_length", MAX_MESSAGE_BYTES) for way in ("send", "receive")]
    channel = grpc.insecure_channel(args.target, options=limits)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def call(i: int) -> dict[str, np.ndarray]:
        contents = pb.InferTensorContents(bytes_contents=[images[i % len(images)]])
        tensor = pb.ModelInferRequest.InferInputTensor(name=INPUT, datatype="BYTES", shape=[1], contents=contents)
        answer = stub.ModelInfer(pb.ModelInferRequest(model_name=args.name, inputs=[tensor]), timeout=120)
        return {
            o.name: np.frombuffer(raw, np.float32).reshape(list(o.shape))
            for o, raw in zip(answer.outputs, answer.raw_output_contents)
        }

    first = call(0)  # the benchmark compares it with the product's answer for the same image
    result = measure(call, args.concurrency, args.requests, warmup=args.warmup)
    channel.close()
    return {**result, "first_answer": {name: first[name][0].tolist() for name in OUTPUTS}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve", help="serve the ONNX file with KServe's model server")
    s.add_argument("--onnx", required=True)
    s.add_argument("--settings", required=True, help="the JSON bench.peer.write_settings wrote")
    s.add_argument("--name", required=True)
    s.add_argument("--grpc-port", type=int, required=True)
    s.add_argument("--http-port", type=int, required=True)
    m = commands.add_parser("measure", help="load the server and print bench.load.measure's figures as JSON")
    m.add_argument("--target", required=True)
    m.add_argument("--name", required=True)
    m.add_argument("--images", required=True, help="folder of the PNGs to send, in name order")
    m.add_argument("--concurrency", type=int, required=True)
    m.add_argument("--requests", type=int, required=True)
    m.add_argument("--warmup", type=int, default=0)
    args = p.parse_args()
    if args.command == "serve":
        serve(args)
    else:
        print(json.dumps(measure_load(args)), flush=True)


if __name__ == "__main__":
    main()
