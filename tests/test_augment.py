"""Augmentation: a corrected map and its decided mask are cropped and flipped with their image, colour jitter
touches the image alone, and a run without augmentation reads its items as they are."""

import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from finetune import augment, data
from finetune.augment import Geometry, transform
from finetune.data import DataConfig, TensorSet
from finetune.knowledge import TuneConfig, fine_tune
from finetune.model import create_model
from serving import cli

# A 16 x 16 picture whose map marks rows 4-7, columns 8-11, and whose expert decided rows 4-11, columns 12-15.
REGION = (slice(4, 8), slice(8, 12))
DECIDED = (slice(4, 12), slice(12, 16))


def item(map_size: int = 16) -> dict:
    m = torch.zeros(1, 16, 16)
    m[0, REGION[0], REGION[1]] = 1
    decided = torch.zeros(1, 16, 16)
    decided[0, DECIDED[0], DECIDED[1]] = 1
    image = m.expand(3, -1, -1).clone()  # the image is its map: where one goes, the other must
    if map_size != 16:  # the map and mask at a lower resolution: the same regions, area-averaged
        k = 16 // map_size
        m = torch.nn.functional.avg_pool2d(m, k)
        decided = torch.nn.functional.avg_pool2d(decided, k)
    return {"image": image, "label": 1, "map": m, "has_map": True, "decided": decided, "weight": 1.0}


def region(rows: slice, cols: slice, size: int = 16) -> torch.Tensor:
    out = torch.zeros(size, size, dtype=torch.bool)
    out[rows, cols] = True
    return out


# The bottom-right quarter of the top half: rows 4-11, columns 8-15 of the picture, scaled up twice.
CROP = Geometry(box=(0.25, 0.5, 0.5, 0.5))


def test_a_cropped_image_takes_its_map_and_decided_mask_along():
    out = transform(item(), CROP)
    assert torch.equal(out["image"][0], out["map"][0])  # the same pixels of the same crop, resized alike
    # rows 4-7, columns 8-11 of the picture are rows 0-3, columns 0-3 of the crop: 0-7 once scaled up twice
    assert torch.equal(out["map"][0] > 0.5, region(slice(0, 8), slice(0, 8)))
    # the decided columns 12-15 are the crop's 4-7: 8-15 scaled up, every row of the crop
    assert torch.equal(out["decided"][0].bool(), region(slice(0, 16), slice(8, 16)))
    assert set(out["decided"].unique().tolist()) <= {0.0, 1.0}  # a mask stays a mask
    assert out["label"] == 1 and out["weight"] == 1.0 and out["has_map"]


def test_a_flipped_image_takes_its_map_and_decided_mask_along():
    out = transform(item(), Geometry(flip=True))
    assert torch.equal(out["image"][0], out["map"][0])
    assert torch.equal(out["map"][0].bool(), region(REGION[0], slice(4, 8)))  # columns 8-11 mirrored: 4-7
    assert torch.equal(out["decided"][0].bool(), region(DECIDED[0], slice(0, 4)))
    both = transform(item(), Geometry(CROP.box, flip=True))
    assert torch.equal(both["map"][0] > 0.5, region(slice(0, 8), slice(8, 16)))
    assert torch.equal(both["decided"][0].bool(), region(slice(0, 16), slice(0, 8)))


def test_a_map_at_another_resolution_gets_the_same_box_scaled_to_it():
    out = transform(item(map_size=8), Geometry(CROP.box, flip=True))
    assert out["image"].shape == (3, 16, 16) and out["map"].shape == (1, 8, 8) and out["decided"].shape == (1, 8, 8)
    # at 8 x 8 the marked region is rows 2-3, columns 4-5; the box rows 2-5, columns 4-7; scaled up twice and
    # flipped: rows 0-3, columns 4-7, the picture's region at half its resolution
    assert torch.equal(out["map"][0] > 0.5, region(slice(0, 4), slice(4, 8), 8))
    assert torch.equal(out["decided"][0].bool(), region(slice(0, 8), slice(0, 4), 8))


def test_colour_jitter_changes_the_image_and_leaves_the_map_and_mask_alone():
    torch.manual_seed(0)
    before = item()
    before["image"] = before["image"] * 0.5 + torch.rand(3, 16, 16) * 0.5  # colour to jitter
    out = transform(before, Geometry(), jitter=True)
    assert not torch.equal(out["image"], before["image"])
    assert torch.equal(out["map"], before["map"]) and torch.equal(out["decided"], before["decided"])


def test_every_kind_keeps_the_map_on_its_image():
    """Random draws of each kind, through a data set: the image stays a monotone function of its map (colour
    jitter changes the values, not their order), so whatever crop and flip came, both got the same one."""
    torch.manual_seed(1)
    one = item()
    plain = TensorSet(one["image"][None], torch.tensor([1]), one["map"][None], decided=one["decided"][None])
    for kind in ("flip", "photo"):
        dataset = data.augmented(plain, kind)
        flipped = cropped = 0
        for _ in range(24):
            out = dataset[0]
            order = out["map"][0].flatten().argsort(stable=True)
            assert (out["image"][0].flatten()[order].diff() >= 0).all(), kind
            flipped += torch.equal(out["map"], one["map"].flip(-1))
            cropped += not torch.equal(out["map"].bool(), one["map"].bool()) and not torch.equal(
                out["map"].bool(), one["map"].flip(-1).bool()
            )
            assert torch.equal(out["decided"] > 0, out["decided"] == 1)
        if kind == "flip":
            assert 0 < flipped < 24  # about half
        assert (cropped > 0) == (kind == "photo"), kind


def test_none_is_the_data_set_itself():
    plain = TensorSet(torch.rand(4, 3, 8, 8), torch.arange(4), torch.rand(4, 1, 8, 8))
    assert data.augmented(plain, "none") is plain
    first = plain[0]
    assert augment.augment(first, "none") is first and augment.draw("none", first["image"]) == Geometry()
    with pytest.raises(ValueError, match="augment must be one of none, flip, photo, got 'rotate'"):
        data.augmented(plain, "rotate")


def test_training_augments_its_training_split_only(tmp_path):
    d = data.load(DataConfig(augment="flip"), (32, 32))
    assert isinstance(d.train, augment.Augmented) and d.source["augment"] == "flip"
    assert all(isinstance(s, TensorSet) for s in (d.val, *d.evals.values()))
    plain = data.load(DataConfig(), (32, 32))
    assert isinstance(plain.train, TensorSet) and plain.source["augment"] == "none"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), 40 * i).save(tmp_path / name / f"{i}.png")
    folder = data.load(DataConfig(data=str(tmp_path), augment="photo", val_fraction=0.5), (8, 8))
    assert isinstance(folder.train, augment.Augmented) and isinstance(folder.val, Subset)
    assert folder.source["augment"] == "photo"


def test_the_command_line_passes_augment_to_train_and_finetune():
    parser = cli.build_parser()
    assert cli._data_config(parser.parse_args(["train", "--augment", "photo"])).augment == "photo"
    assert cli._data_config(parser.parse_args(["train"])).augment is None  # train's: none, photo from pretrained
    base = ["finetune", "ckpt.pt", "--data", "d", "--maps", "m", "--out", "o"]
    assert cli._tune_config(parser.parse_args([*base, "--augment", "flip"])).augment == "flip"
    assert cli._tune_config(parser.parse_args(base)).augment == "none"


def test_fine_tuning_trains_on_augmented_items():
    """The same seed and data, augmented and not: the weights differ only if fine_tune read augmented items."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 32, 32, generator=g)
    maps = torch.zeros(16, 1, 32, 32)
    maps[:, :, 8:24, 4:16] = 1  # off-centre, so that a flip moves it
    dataset = TensorSet(images, torch.arange(16) % 2, maps)
    weights = {}
    for kind in ("none", "flip"):
        torch.manual_seed(0)
        model = create_model("abn_small", 2)
        fine_tune(model, dataset, [0.5] * 3, [0.25] * 3, TuneConfig(epochs=1, batch_size=16, augment=kind), False)
        weights[kind] = torch.cat([p.flatten() for p in model.parameters()])
    assert not torch.equal(weights["none"], weights["flip"])
