"""Property tests of the parsers that face the network: whatever bytes arrive, each answers with a value or
with its own error naming the field, never with anything else. A bounded number of examples per test keeps
them in the normal suite; HYPOTHESIS_PROFILE=long runs many more."""

import io
import os

import numpy as np
from conftest import dds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from finetune.images import ImageError, open_image
from handlers import requests, wire
from handlers.stubs.abn.v1 import feedback_pb2
from handlers.stubs.abn.v1.prediction_pb2 import AttentionMap
from serving.feedback.service import validate

settings.register_profile("suite", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

META = {"input_size": [32, 32], "map_size": [16, 16], "classes": [str(d) for d in range(10)]}
CLASSES = {"abn": META["classes"]}


def field_of(error: Exception) -> str:
    """The field an error message starts with: "top_k: ..." or "image is empty"."""
    return str(error).split()[0].rstrip(":")


def png(width: int = 8, height: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "PNG")
    return buf.getvalue()


# Bytes that look like images: valid ones with bytes flipped, cut or appended, and noise.
def mangled(valid: bytes):
    return st.tuples(st.integers(0, len(valid)), st.binary(max_size=16), st.integers(0, len(valid))).map(
        lambda t: valid[: t[0]] + t[1] + valid[t[0] + len(t[1]) : t[2] or None]
    )


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def sideways_png() -> bytes:
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6  # turn a quarter for display
    return encoded(Image.new("RGB", (12, 6)), "PNG", exif=exif.tobytes())


# Valid files of the kinds that take other paths through the reader: 16-bit grey, float TIFF, EXIF orientation.
SEEDS = [
    png(),
    dds(),
    encoded(Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000), "PNG"),
    encoded(Image.fromarray(np.ones((8, 8), np.float32)), "TIFF"),
    sideways_png(),
]
IMAGE_BYTES = st.one_of(st.binary(max_size=256), *(mangled(seed) for seed in SEEDS))


@given(IMAGE_BYTES)
def test_any_bytes_are_an_image_or_an_image_error(data):
    try:
        img = open_image(data, "data: image")
    except ImageError as e:
        assert str(e).startswith("data: image")
        return
    img.convert("RGB")  # what the handler does next must work too


MAPS = st.builds(
    AttentionMap,
    height=st.integers(0, 2000),
    width=st.integers(0, 2000),
    values=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=64),
)


@given(st.one_of(st.binary(max_size=128), MAPS.map(lambda m: m.SerializeToString())))
def test_any_bytes_are_an_attention_map_or_a_wire_error(data):
    try:
        values = wire.parse_map(data)
    except wire.WireError as e:
        assert field_of(e) == "attention", str(e)
        return
    assert values.ndim == 2 and np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1


TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["5", "²", "9" * 5000, "json", "proto", " 3 ", "-1"]))


@given(
    data=st.one_of(st.none(), st.just(png(12, 12)), IMAGE_BYTES),
    attention=st.one_of(st.none(), st.binary(max_size=64), MAPS.map(lambda m: m.SerializeToString())),
    top_k=st.one_of(st.none(), TEXT.map(str.encode), st.binary(max_size=8)),
    fmt=st.one_of(st.none(), TEXT.map(str.encode)),
)
def test_any_prediction_request_is_read_or_refused_naming_its_input(data, attention, top_k, fmt):
    request = {k: v for k, v in (("data", data), ("attention", attention), ("top_k", top_k), ("format", fmt)) if v}
    try:
        parsed = requests.parse(request, META)
    except (ImageError, wire.WireError) as e:
        assert field_of(e) in ("data", "attention", "top_k", "format"), str(e)
        return
    assert parsed.image.shape == (3, 32, 32) and parsed.attention.shape == (1, 16, 16)
    assert 1 <= parsed.top_k <= 10 and parsed.format in requests.FORMATS


@given(
    image=st.one_of(st.just(png(16, 16)), IMAGE_BYTES),
    attention=st.one_of(st.none(), MAPS),
    texts=st.fixed_dictionaries(
        {
            name: st.one_of(st.just(""), TEXT, st.sampled_from(["abn", "3", "../x", "a/b", ".."]))
            for name in (
                "label",
                "predicted_label",
                "prediction_id",
                "model_name",
                "model_version",
                "author",
                "idempotency_key",
            )
        }
    ),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_any_correction_is_an_item_or_a_wire_error_naming_its_field(image, attention, texts):
    request = feedback_pb2.SubmitFeedbackRequest(image=image, **texts)
    if attention is not None:
        request.attention.CopyFrom(attention)
    try:
        item = validate(request, CLASSES)
    except wire.WireError as e:
        assert field_of(e) in ("image", "attention", *texts), str(e)
        return
    assert item.attention.ndim == 2 and item.image == image
    for name in ("label", "predicted_label", "model_name"):
        value = getattr(item, name)
        assert "/" not in value and "\\" not in value and value not in (".", "..")
