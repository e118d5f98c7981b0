"""Property tests of the parsers that face the network: whatever bytes arrive, each answers with a value or
with its own error naming the field, never with anything else. A bounded number of examples per test keeps
them in the normal suite; HYPOTHESIS_PROFILE=long runs many more."""

import io
import os
from collections import Counter

import numpy as np
from conftest import dds
from hypothesis import HealthCheck, example, given, settings
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


def accepted_share(outcomes: Counter, floor: float) -> None:
    """The success path ran on at least floor of the cases, so its assertions were exercised, not skipped."""
    total = sum(outcomes.values())
    assert outcomes["accepted"] >= max(1, floor * total), f"{outcomes['accepted']} of {total} cases accepted"


def in_unit_range(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1)


def shaped_maps(value, sides=st.tuples(st.integers(2, 8), st.integers(2, 8))):
    """Maps of sides (2-8 rows and columns) with exactly height x width values drawn from value."""
    return sides.flatmap(
        lambda hw: st.builds(
            AttentionMap,
            height=st.just(hw[0]),
            width=st.just(hw[1]),
            values=st.lists(value, min_size=hw[0] * hw[1], max_size=hw[0] * hw[1]),
        )
    )


IN_RANGE = st.floats(0, 1, width=32)
VALID_MAPS = shaped_maps(IN_RANGE)
SQUARE_MAPS = shaped_maps(IN_RANGE, st.integers(2, 8).map(lambda n: (n, n)))  # valid for a square image
MAPS = st.one_of(
    st.builds(  # sizes and counts from anywhere: almost all refused
        AttentionMap,
        height=st.integers(0, 2000),
        width=st.integers(0, 2000),
        values=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=64),
    ),
    VALID_MAPS,
    shaped_maps(st.one_of(IN_RANGE, st.floats(width=32))),  # the right count, some NaN, infinite or out of [0, 1]
)


def square(value: float = 0.5) -> AttentionMap:
    """A 2x2 map with one value set: a valid one for value in [0, 1]."""
    return AttentionMap(height=2, width=2, values=[0, value, 1, 0.25])


def test_any_bytes_are_an_attention_map_or_a_wire_error():
    outcomes = Counter()

    @given(st.one_of(st.binary(max_size=128), MAPS.map(lambda m: m.SerializeToString())))
    @example(square().SerializeToString())
    @example(square(float("nan")).SerializeToString())  # each check on the values, on its own
    @example(square(float("inf")).SerializeToString())
    @example(square(-0.5).SerializeToString())
    @example(square(1.5).SerializeToString())
    def check(data):
        try:
            values = wire.parse_map(data)
        except wire.WireError as e:
            assert field_of(e) == "attention", str(e)
            outcomes["refused"] += 1
            return
        assert values.ndim == 2 and in_unit_range(values)
        outcomes["accepted"] += 1

    check()
    accepted_share(outcomes, 0.1)


TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["5", "²", "9" * 5000, "json", "proto", " 3 ", "-1"]))


def test_any_prediction_request_is_read_or_refused_naming_its_input():
    outcomes = Counter()

    serialized = st.one_of(st.binary(max_size=64), MAPS.map(lambda m: m.SerializeToString()))
    anything = st.fixed_dictionaries(
        {
            "data": st.one_of(st.none(), st.just(png(12, 12)), IMAGE_BYTES),
            "attention": st.one_of(st.none(), serialized),
            "top_k": st.one_of(st.none(), TEXT.map(str.encode), st.binary(max_size=8)),
            "format": st.one_of(st.none(), TEXT.map(str.encode)),
        }
    )
    valid = st.fixed_dictionaries(  # so that the accepted path runs on many cases, with any valid map
        {
            "data": st.just(png(12, 12)),
            "attention": st.one_of(st.none(), VALID_MAPS.map(lambda m: m.SerializeToString())),
            "top_k": st.one_of(st.none(), st.integers(1, 10).map(lambda k: str(k).encode())),
            "format": st.one_of(st.none(), st.sampled_from([b"json", b"proto"])),
        }
    )

    @given(st.one_of(anything, valid).map(lambda fields: {k: v for k, v in fields.items() if v}))
    @example({"data": png(12, 12), "attention": square().SerializeToString(), "top_k": b"3", "format": b"json"})
    @example({"data": png(12, 12), "attention": square(float("nan")).SerializeToString()})
    @example({"data": png(12, 12), "attention": square(1.5).SerializeToString()})
    def check(request):
        try:
            parsed = requests.parse(request, META)
        except (ImageError, wire.WireError) as e:
            assert field_of(e) in ("data", "attention", "top_k", "format"), str(e)
            outcomes["refused"] += 1
            return
        assert parsed.image.shape == (3, 32, 32) and parsed.attention.shape == (1, 16, 16)
        assert in_unit_range(parsed.attention) and parsed.supplied == ("attention" in request)
        assert 1 <= parsed.top_k <= 10 and parsed.format in requests.FORMATS
        outcomes["accepted"] += 1

    check()
    accepted_share(outcomes, 0.15)


def test_any_correction_is_an_item_or_a_wire_error_naming_its_field():
    outcomes = Counter()
    printable = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12)
    names_ = st.one_of(printable, st.sampled_from(["3", ".", "..", "a/b", "c\\d"]))
    names = ("label", "predicted_label", "prediction_id", "model_name", "model_version", "author", "idempotency_key")
    valid = {"label": "3", "predicted_label": "5", "model_name": "abn", "model_version": "1"}

    @given(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "image": st.one_of(st.just(png(16, 16)), IMAGE_BYTES),
                    "attention": st.one_of(st.none(), MAPS),
                    "texts": st.fixed_dictionaries(
                        {
                            name: st.one_of(st.just(""), TEXT, st.sampled_from(["abn", "3", "../x", "a/b", ".."]))
                            for name in names
                        }
                    ),
                }
            ),
            # a valid image and map, no model named, to a service that knows no models: any plain label is
            # accepted, so what passes must be safe as a folder name
            st.fixed_dictionaries(
                {
                    "image": st.just(png(16, 16)),
                    "attention": SQUARE_MAPS,
                    "texts": st.fixed_dictionaries(
                        {"label": names_, "predicted_label": printable, "author": printable}
                    ),
                    "classes": st.just({}),
                }
            ),
        ).map(lambda case: (case["image"], case["attention"], case["texts"], case.get("classes", CLASSES)))
    )
    @example((png(16, 16), square(), valid, CLASSES))
    @example((png(16, 16), square(), {**valid, "label": ".."}, CLASSES))
    @example((png(16, 16), square(float("nan")), valid, CLASSES))
    @example((png(16, 16), square(-0.5), valid, CLASSES))
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def check(case):
        image, attention, texts, classes = case
        request = feedback_pb2.SubmitFeedbackRequest(image=image, **texts)
        if attention is not None:
            request.attention.CopyFrom(attention)
        try:
            item = validate(request, classes)
        except wire.WireError as e:
            assert field_of(e) in ("image", "attention", *texts), str(e)
            outcomes["refused"] += 1
            return
        assert item.attention.ndim == 2 and in_unit_range(item.attention) and item.image == image
        for name in ("label", "predicted_label", "model_name"):
            value = getattr(item, name)
            assert "/" not in value and "\\" not in value and value not in (".", "..")
        outcomes["accepted"] += 1

    check()
    accepted_share(outcomes, 0.15)
