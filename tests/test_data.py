import io

import numpy as np
import pytest
import torch
from PIL import Image

from finetune import data, decoy_digits
from finetune.data import DataConfig, DataError, ImageFolder
from finetune.images import ImageError, image_tensor, open_image
from handlers import requests


def corner_patches(images: torch.Tensor, size: int) -> torch.Tensor:
    s = size
    c = decoy_digits.CANVAS
    return torch.stack(
        [images[:, 0, :s, :s], images[:, 0, :s, c - s :], images[:, 0, c - s :, :s], images[:, 0, c - s :, c - s :]], 1
    )  # N x 4 x s x s


def decoy_class(images: torch.Tensor) -> torch.Tensor:
    """The class whose glyph sits in one of the corners of each image (-1 if none)."""
    glyphs = torch.from_numpy(decoy_digits.glyphs(8))
    patches = corner_patches(images, 8)
    match = (patches[:, :, None] == glyphs[None, None]).flatten(3).all(3)  # N x 4 x 10
    found = match.any(1)
    return torch.where(found.any(1), found.float().argmax(1), torch.tensor(-1))


def test_split_sizes_and_reproducibility():
    sizes = {s: len(decoy_digits.build(s)[1]) for s in decoy_digits.SPLITS}
    assert sizes == {"train": 1077, "val": 180, "test": 540, "decoy-only": 540}
    a, b = decoy_digits.build("train"), decoy_digits.build("train")
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = decoy_digits.build("train", seed=1)
    assert not torch.equal(a[0], c[0])
    train_ids = set(map(tuple, decoy_digits.build("train", clean=True)[0].flatten(1).numpy().round(3).tolist()))
    test_ids = set(map(tuple, decoy_digits.build("test", clean=True)[0].flatten(1).numpy().round(3).tolist()))
    assert len(train_ids & test_ids) < 5  # disjoint but for the odd duplicate digit in the source


def test_glyph_decoy_tied_to_class_in_train_and_random_in_test():
    images, labels, masks, _ = decoy_digits.build("train")
    assert images.shape == (1077, 1, 32, 32) and masks.shape == images.shape
    assert torch.equal(decoy_class(images), labels)
    test_images, test_labels = decoy_digits.build("test")[:2]
    found = decoy_class(test_images)
    assert (found >= 0).all()
    agreement = (found == test_labels).float().mean()
    assert agreement < 0.25  # random classes agree about one time in ten


def test_glyphs_are_distinct_binary_patterns():
    g = decoy_digits.glyphs(8)
    assert g.shape == (10, 8, 8) and set(np.unique(g)) == {0.0, 1.0}
    flat = g.reshape(10, -1)
    hamming = (flat[:, None] != flat[None]).sum(-1)
    assert hamming[~np.eye(10, dtype=bool)].min() >= 16


def test_masks_cover_the_digit_and_not_the_decoy():
    images, _, masks, decoys = decoy_digits.build("train")
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert (masks.flatten(1).sum(1) > 20).all()
    assert (decoys.flatten(1).sum(1) == 64).all()
    assert (masks * decoys).sum() == 0
    patches = corner_patches(images * decoys, 8)
    glyphs = torch.from_numpy(decoy_digits.glyphs(8))
    assert (patches[:, :, None] == glyphs[None, None]).flatten(3).all(3).any(2).any(1).all()
    # the mask marks bright pixels: the digit is where the mask is
    assert images[masks.bool()].mean() > 0.5


def test_clean_and_decoy_only():
    clean, labels, _, clean_decoys = decoy_digits.build("test", clean=True)
    assert (decoy_class(clean) == -1).all() and clean_decoys.sum() == 0
    only, only_labels, only_masks, _ = decoy_digits.build("decoy-only")
    assert torch.equal(only_labels, labels)
    assert torch.equal(decoy_class(only), only_labels)
    assert int((only > 0).flatten(1).sum(1).max()) <= 64  # nothing but the 8x8 decoy
    assert only_masks.sum() == 0


def test_shade_decoy_and_size():
    images, labels = decoy_digits.build("train", decoy="shade")[:2]
    patches = corner_patches(images, 4).flatten(2)
    shade = torch.tensor([(255 - 25 * int(y)) / 255 for y in labels])
    uniform = (patches == patches[:, :, :1]).all(2)
    hit = uniform & ((patches[:, :, 0] - shade[:, None]).abs() < 1 / 255)
    assert hit.any(1).all()
    big = decoy_digits.build("train", decoy="glyph", decoy_size=12).images
    assert not torch.equal(big, decoy_digits.build("train").images)
    with pytest.raises(ValueError, match="decoy size must be between 1 and 16"):
        decoy_digits.build("train", decoy_size=20)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        decoy_digits.build("dev")


def test_export_reads_back_identical(tmp_path):
    args = DataConfig()
    summary = data.export(args, "val", tmp_path)
    assert summary["images"] == 180
    folder = ImageFolder(tmp_path / "images", (32, 32), tmp_path / "maps")
    assert folder.classes == decoy_digits.CLASSES and len(folder) == 180 and folder.map_count == 180
    reference = data.builtin_split(args, "val", (32, 32))
    by_label = {}
    for i in range(len(reference)):
        by_label.setdefault(reference[i]["label"], []).append(i)
    # files are written in split order, so class folder order follows it
    seen = {}
    for j in range(len(folder)):
        item = folder[j]
        i = by_label[item["label"]][seen.get(item["label"], 0)]
        seen[item["label"]] = seen.get(item["label"], 0) + 1
        assert torch.equal(item["image"], reference[i]["image"])
        assert torch.equal(item["map"], reference[i]["map"])
        assert item["has_map"]


def write_image(path, size=(20, 10), mode="RGB", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_image_folder_with_partial_maps_of_other_sizes(tmp_path):
    write_image(tmp_path / "img/cat/a.jpg", (40, 20))
    write_image(tmp_path / "img/cat/sub/b.png", (40, 20))
    write_image(tmp_path / "img/dog/c.bmp", (40, 20))
    (tmp_path / "img/dog/notes.txt").write_text("ignored")
    m = np.zeros((10, 20), dtype=np.uint8)
    m[:, 10:] = 255  # right half attended
    (tmp_path / "maps/cat").mkdir(parents=True)
    Image.fromarray(m).save(tmp_path / "maps/cat/a.png")  # half the image's size
    folder = ImageFolder(tmp_path / "img", (16, 16), tmp_path / "maps")
    assert folder.classes == ["cat", "dog"] and len(folder) == 3 and folder.map_count == 1
    item = folder[0]
    assert item["image"].shape == (3, 16, 16) and item["has_map"]
    assert item["map"].shape == (1, 16, 16)
    assert item["map"][0, :, :7].max() < 0.1 and item["map"][0, :, 9:].min() > 0.9
    assert not folder[2]["has_map"] and folder[2]["map"].sum() == 0


def test_a_maps_alpha_is_its_decided_mask(tmp_path):
    for name in ("cat/a.png", "cat/b.png", "dog/c.png"):
        write_image(tmp_path / "img" / name, (20, 10))
    value = np.zeros((10, 20), np.uint8)
    value[:, 10:] = 255  # right half attended
    alpha = np.zeros((10, 20), np.uint8)
    alpha[:5] = 255  # the top half painted; the bottom half don't care
    (tmp_path / "maps/cat").mkdir(parents=True)
    Image.fromarray(np.stack([value, alpha], -1), "LA").save(tmp_path / "maps/cat/a.png")
    Image.fromarray(value).save(tmp_path / "maps/cat/b.png")  # no alpha: every pixel decided
    folder = ImageFolder(tmp_path / "img", (16, 16), tmp_path / "maps")
    painted, whole, unmapped = folder[0], folder[1], folder[2]
    assert torch.equal(painted["map"], whole["map"])
    assert painted["decided"].shape == (1, 16, 16) and set(painted["decided"].unique().tolist()) == {0.0, 1.0}
    assert painted["decided"][0, :8].all() and not painted["decided"][0, 8:].any()  # at least half decided
    assert whole["decided"].all() and not unmapped["decided"].any()
    assert painted["weight"] == whole["weight"] == unmapped["weight"] == 1.0
    # an in-memory set: a map's pixels are all decided unless told, an item without a map decides none
    tensors = data.TensorSet(
        torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), torch.ones(2, 1, 4, 4), torch.tensor([1, 0])
    )
    assert tensors[0]["decided"].all() and not tensors[1]["decided"].any() and tensors[1]["weight"] == 1.0


def test_empty_or_malformed_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        ImageFolder(tmp_path / "nope", (32, 32))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        ImageFolder(tmp_path / "empty", (32, 32))
    write_image(tmp_path / "flat/a.png")
    with pytest.raises(DataError, match="found images at the top level: a.png; move them into class folders"):
        ImageFolder(tmp_path / "flat", (32, 32))
    write_image(tmp_path / "one/cat/a.png")
    (tmp_path / "one/dog").mkdir()
    with pytest.raises(DataError, match=r"class folder .*/one/dog holds no images"):
        ImageFolder(tmp_path / "one", (32, 32))
    with pytest.raises(DataError, match="classes the model does not know: cat"):
        ImageFolder(tmp_path / "flat/../one", (32, 32), classes=["bird", "dog"])


def test_unreadable_image_or_map(tmp_path):
    write_image(tmp_path / "img/cat/a.png")
    (tmp_path / "img/cat/b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"image .*/cat/b.jpg cannot be decoded"):
        ImageFolder(tmp_path / "img", (32, 32))
    (tmp_path / "img/cat/b.jpg").unlink()
    png = (tmp_path / "img/cat/a.png").read_bytes()
    (tmp_path / "img/cat/c.png").write_bytes(png[: len(png) // 2])  # truncated
    with pytest.raises(DataError, match=r"image .*/cat/c.png cannot be decoded"):
        ImageFolder(tmp_path / "img", (32, 32))
    (tmp_path / "img/cat/c.png").unlink()
    (tmp_path / "maps/cat").mkdir(parents=True)
    (tmp_path / "maps/cat/a.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"map .*/maps/cat/a.png cannot be decoded"):
        ImageFolder(tmp_path / "img", (32, 32), tmp_path / "maps")


def test_map_with_another_aspect_ratio(tmp_path):
    write_image(tmp_path / "img/cat/a.png", (20, 10))
    write_image(tmp_path / "maps/cat/a.png", (10, 10), mode="L")
    with pytest.raises(
        DataError,
        match=r"map .*/maps/cat/a.png is 10x10 but its image is 20x10: "
        "a map must have its image's aspect ratio",
    ):
        ImageFolder(tmp_path / "img", (32, 32), tmp_path / "maps")
    write_image(tmp_path / "maps/cat/a.png", (7, 3), mode="L")  # 7x3.5 rounded: accepted
    assert ImageFolder(tmp_path / "img", (32, 32), tmp_path / "maps").map_count == 1


def test_load_splits_an_image_folder_for_validation(tmp_path):
    for i in range(10):
        write_image(tmp_path / f"img/{'ab'[i % 2]}/{i}.png", value=i * 20)
    d = data.load(DataConfig(data=str(tmp_path / "img"), val_fraction=0.2), (32, 32))
    assert len(d.train) == 8 and len(d.val) == 2 and d.classes == ["a", "b"]
    assert d.mean == data.IMAGENET_MEAN and d.evals == {}
    with pytest.raises(DataError, match="too few to hold"):
        data.load(DataConfig(data=str(tmp_path / "img"), val_fraction=1.0), (32, 32))


def test_builtin_load_has_test_and_decoy_only():
    d = data.load(DataConfig(), (32, 32))
    assert sorted(d.evals) == ["decoy-only", "test"]
    assert d.source["decoy"] == "glyph" and d.source["decoy_size"] == 8
    clean = data.load(DataConfig(clean=True), (32, 32))
    assert sorted(clean.evals) == ["test"] and clean.source["decoy"] is None
    big = data.load(DataConfig(), (64, 64))
    assert big.train[0]["image"].shape == (3, 64, 64) and big.train[0]["map"].shape == (1, 64, 64)


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_images_are_read_as_a_person_sees_them():
    # a 20x10 photo taken sideways: its EXIF orientation (6) says to turn it a quarter clockwise for display
    sideways = np.zeros((10, 20, 3), np.uint8)
    sideways[:, :10] = (255, 0, 0)  # left half red
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    upright = open_image(encoded(Image.fromarray(sideways), "PNG", exif=exif.tobytes()))
    assert upright.size == (10, 20)  # now taller than wide
    pixels = np.asarray(upright.convert("RGB"))
    assert pixels[2, 5, 0] > 200 and pixels[-3, 5, 0] < 50  # the red half is on top
    # 16-bit grey keeps its range, scaled to 8 bits (a plain conversion would clip it to white)
    deep = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    grey = np.asarray(open_image(encoded(Image.fromarray(deep), "PNG")).convert("L"))
    assert grey.max() == deep.max() // 257 and grey.min() == 0
    # float pixels have no agreed range: refused, saying so, rather than read as almost black
    floats = Image.fromarray(np.random.default_rng(0).random((8, 8), dtype=np.float32))
    with pytest.raises(ImageError, match="has mode F"):
        open_image(encoded(floats, "TIFF"))


def test_an_image_above_the_pixel_limit_is_refused_from_its_header():
    big = encoded(Image.new("L", (8000, 8000)), "PNG")  # 64 megapixels in a few kilobytes
    with pytest.raises(ImageError, match="is 8000x8000, above the limit of 50000000 pixels"):
        open_image(big)


def test_broken_exif_is_the_images_fault():
    broken = encoded(Image.new("RGB", (8, 8)), "PNG", exif=b"Exif\x00\x00not a TIFF header")
    with pytest.raises(ImageError, match="cannot be decoded: not a TIFF file"):
        open_image(broken)


def test_tag_decoy_sits_at_one_place_on_every_image_of_its_class_only():
    size = decoy_digits.DEFAULT_DECOY_SIZE["tag"]
    pattern = torch.from_numpy(decoy_digits.tag(size))
    assert pattern.sum() > 0 and not torch.equal(pattern, torch.ones_like(pattern))  # a pattern, not a square

    def tagged(images: torch.Tensor) -> torch.Tensor:
        return (images[:, 0, :size, :size] == pattern).flatten(1).all(1)

    for split in ("train", "val"):
        images, labels, masks, decoys = decoy_digits.build(split, decoy="tag")
        own = labels == decoy_digits.TAG_CLASS
        assert torch.equal(tagged(images), own), split  # every image of its class, no other
        assert (decoys[own, 0, :size, :size] == 1).all() and decoys[own].sum() == own.sum() * size * size
        assert decoys[~own].sum() == 0 and (masks * decoys).sum() == 0
        clean = decoy_digits.build(split, clean=True)[0]
        assert torch.equal(images[~own], clean[~own])  # nothing else changed
        assert torch.equal(images[own, :, size:], clean[own, :, size:])

    # the test split: the tag points to the wrong class, on every other class and never on its own
    images, labels = decoy_digits.build("test", decoy="tag")[:2]
    assert torch.equal(tagged(images), labels != decoy_digits.TAG_CLASS)
    only, only_labels = decoy_digits.build("decoy-only", decoy="tag")[:2]
    assert tagged(only).all() and (only_labels == decoy_digits.TAG_CLASS).all()
    assert int((only > 0).flatten(1).sum(1).max()) == int(pattern.sum())  # nothing but the tag
    d = data.load(DataConfig(decoy="tag"), (32, 32))
    assert d.source["decoy"] == "tag" and d.source["decoy_size"] == size and sorted(d.evals) == ["decoy-only", "test"]


def test_every_mode_reads_the_same_for_training_and_serving(tmp_path):
    """A photo in any mode a user's folder or client holds (EXIF-rotated JPEG, RGBA, CMYK, 16-bit grey,
    palette) becomes the same tensor whether training reads it from a folder or the handler from a request."""
    y, x = np.indices((30, 40))
    smooth = np.stack([x * 6, y * 8, np.where(x < 20, 200, 40)], -1)  # smooth, so JPEG's loss stays small
    colour = Image.fromarray(smooth.astype(np.uint8))
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 8  # shown turned a quarter anticlockwise
    variants = {
        "exif.jpg": encoded(colour, "JPEG", exif=exif.tobytes()),
        "rgba.png": encoded(colour.convert("RGBA"), "PNG"),
        "cmyk.jpg": encoded(colour.convert("CMYK"), "JPEG", quality=95),
        "deep.png": encoded(Image.fromarray(np.asarray(colour.convert("L"), np.uint16) * 257), "PNG"),
        "palette.png": encoded(colour.convert("P"), "PNG"),
        "grey.tif": encoded(colour.convert("L"), "TIFF"),
    }
    for name, payload in variants.items():
        (tmp_path / "photos" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / "a" / name).write_bytes(payload)
    (tmp_path / "photos" / "b").mkdir()
    (tmp_path / "photos" / "b" / "x.png").write_bytes(encoded(colour, "PNG"))
    folder = ImageFolder(tmp_path / "photos", (24, 32))
    meta = {"input_size": [24, 32], "map_size": [2, 2], "classes": ["a", "b"]}
    for path, _, _ in folder.samples:
        trained = folder[folder.samples.index((path, folder.classes.index(path.parent.name), None))]["image"]
        served = requests.parse({"data": path.read_bytes()}, meta).image
        assert trained.shape == (3, 24, 32) and torch.equal(trained, served), path.name
    by_name = {p.name: folder[i]["image"] for i, (p, _, _) in enumerate(folder.samples)}
    # the rotated JPEG is read upright, the 16-bit grey as its 8-bit self, RGBA and palette as the colour photo
    upright = image_tensor(colour.transpose(Image.Transpose.ROTATE_90), (24, 32))
    assert (by_name["exif.jpg"] - upright).abs().mean() < 0.05  # JPEG's loss only
    assert torch.equal(by_name["deep.png"], by_name["grey.tif"])
    assert torch.equal(by_name["rgba.png"], by_name["x.png"])
    assert (by_name["cmyk.jpg"] - by_name["x.png"]).abs().mean() < 0.05


def test_a_request_without_top_k_gets_every_class_of_a_model_with_fewer_than_five():
    picture = encoded(Image.new("RGB", (8, 8)), "PNG")
    two = {"input_size": [8, 8], "map_size": [1, 1], "classes": ["cat", "dog"]}
    assert requests.parse({"data": picture}, two).top_k == 2  # a two-class photo model answers without top_k
    assert requests.parse({"data": picture}, {**two, "classes": list("abcdefg")}).top_k == 5
    with pytest.raises(Exception, match="top_k: must be a whole number from 1 to 2"):
        requests.parse({"data": picture, "top_k": b"3"}, two)  # asked for more than there are: still refused
