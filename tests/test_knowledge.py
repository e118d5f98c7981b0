import json

import numpy as np
import pytest
import torch
from figures import assert_figure
from PIL import Image

from finetune import candidate, checkpoint, expert
from finetune.data import TensorSet
from finetune.evaluate import evaluate
from finetune.knowledge import TuneConfig, counterexamples, fine_tune, map_loss, transplants
from finetune.model import create_model
from serving import cli

MEAN, STD = [0.5] * 3, [0.25] * 3


def tiny_set(n=32, seed=0):
    """Bright square on the left = class 0, on the right = class 1; the edit marks the square."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g) * 0.2
    labels = torch.arange(n) % 2
    maps = torch.zeros(n, 1, 32, 32)
    for i in range(n):
        c = 4 if labels[i] == 0 else 20
        images[i, :, 12:20, c : c + 8] = 1.0
        maps[i, 0, 12:20, c : c + 8] = 1.0
    return TensorSet(images, labels, maps)


def test_map_loss_is_zero_when_the_map_equals_the_edit():
    m = torch.rand(4, 1, 16, 16)
    has = torch.tensor([True, False, True, True])
    assert map_loss(m, m, has) == 0
    at_image_size = m.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    assert map_loss(m, at_image_size, has) < 1e-5  # edits at image size are resized to the map's
    assert map_loss(m, torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.bool)) == 0
    other = torch.zeros(4, 1, 16, 16)
    expected = m[has].flatten(1).norm(dim=1).mean()
    assert torch.isclose(map_loss(m, other, has), expected)


def test_map_loss_gradient_reaches_only_the_attention_branch():
    torch.manual_seed(0)
    model = create_model("abn_small", 10)
    out = model(torch.randn(4, 3, 32, 32))
    map_loss(out.attention, torch.zeros(4, 1, 32, 32), torch.ones(4, dtype=torch.bool)).backward()
    touched = {
        name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    # the map is computed by the attention branch from the features; the perception branch never sees L_map
    assert "attention_branch" in touched and "perception" not in touched and "fc" not in touched


def test_frozen_features_stay_bit_identical_and_branches_learn():
    torch.manual_seed(0)
    model = create_model("abn_small", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fine_tune(model, tiny_set(), MEAN, STD, TuneConfig(epochs=2, batch_size=8), progress=False)
    after = model.state_dict()
    for k in before:
        if k.startswith("features."):
            assert torch.equal(before[k], after[k]), k  # weights and BatchNorm statistics
    changed = [k for k in before if not k.startswith("features.") and not torch.equal(before[k], after[k])]
    assert any(k.startswith("attention_branch.") for k in changed)
    assert any(k.startswith("perception.") for k in changed) and "fc.weight" in changed


def test_unfrozen_features_learn():
    torch.manual_seed(0)
    model = create_model("abn_small", 2)
    before = model.features[0].weight.clone()
    fine_tune(model, tiny_set(), MEAN, STD, TuneConfig(epochs=1, batch_size=8, freeze_features=False), progress=False)
    assert not torch.equal(before, model.features[0].weight)


def test_map_loss_counts_decided_pixels_only_and_weighs_each_sample():
    g = torch.Generator().manual_seed(0)
    m, edits = torch.rand(2, 1, 4, 4, generator=g), torch.rand(2, 1, 4, 4, generator=g)
    has = torch.ones(2, dtype=torch.bool)
    decided = torch.zeros(2, 1, 4, 4)
    decided[0, 0, :2], decided[1] = 1, 1  # the first decided its top half only
    per_sample = torch.stack([(m[0, 0, :2] - edits[0, 0, :2]).norm(), (m[1] - edits[1]).norm()])
    assert torch.isclose(map_loss(m, edits, has, decided), per_sample.mean())
    anything = edits.clone()
    anything[0, 0, 2:] = 1 - anything[0, 0, 2:]  # what an undecided pixel holds pulls nowhere
    assert torch.isclose(map_loss(m, anything, has, decided), per_sample.mean())
    weight = torch.tensor([0.2, 1.0])
    assert torch.isclose(map_loss(m, edits, has, decided, weight), (per_sample * weight).mean())  # not renormalised
    # a mask at image size is area-averaged to the map's: every other column decided weighs each pixel by half
    columns = torch.zeros(2, 1, 8, 8)
    columns[..., ::2] = 1
    assert torch.isclose(map_loss(m, edits, has, columns), (m - edits).flatten(1).norm(dim=1).mean() * 0.5**0.5)


def test_counterexamples_fill_only_ignore_pixels_from_another_class():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 8, 8, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    maps = torch.rand(6, 1, 8, 8, generator=g)
    decided = (torch.rand(6, 1, 8, 8, generator=g) > 0.5).float()
    decided[3] *= (maps[3] >= 0.5).float()  # decides attend pixels only: no counterexample
    has = torch.tensor([True, False, True, True, False, True])
    made, index = counterexamples(images, labels, maps, decided, has, torch.Generator().manual_seed(0), copies=4)
    assert len(made) == 6 and set(index.tolist()) == {0, 2, 5}  # 12 asked for, a batch's worth made
    ignore = ((decided[index] >= 0.5) & (maps[index] < 0.5)).expand(-1, 3, -1, -1)
    assert torch.equal(made[~ignore], images[index][~ignore])  # attend and undecided pixels are the image's
    for j, i in enumerate(index.tolist()):
        fill = ignore[j]
        sources = [k for k in range(6) if torch.equal(made[j][fill], images[k][fill])]
        assert sources and all(labels[k] != labels[i] for k in sources), (i, sources)
    one_class = torch.zeros(6, dtype=torch.long)
    none, idx = counterexamples(images, one_class, maps, decided, has, torch.Generator())
    assert len(none) == 0 and len(idx) == 0  # no other class in the batch: none
    none, idx = counterexamples(images, labels, maps, decided, torch.zeros(6, dtype=torch.bool), torch.Generator())
    assert len(none) == 0 and len(idx) == 0


@pytest.mark.parametrize("fill", ["noise", "blur", "mean"])
def test_neutral_fills_replace_only_ignore_pixels_and_need_no_other_class(fill):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 16, 16, generator=g)
    images[:, :, :4, :4] = torch.tensor([0.0, 1.0]).repeat(8)[:16].view(4, 4)  # a checkerboard tag, every image
    labels = torch.zeros(8, dtype=torch.long)  # one class: the "other" fill could make nothing here
    maps = torch.ones(8, 1, 16, 16)
    maps[:, :, :4, :4] = 0  # the tag is to be ignored
    decided = torch.ones(8, 1, 16, 16)
    has = torch.tensor([True, True, False, True, False, False, False, False])
    made, index = counterexamples(images, labels, maps, decided, has, torch.Generator().manual_seed(0), 2, fill)
    assert sorted(index.tolist()) == [0, 0, 1, 1, 3, 3]
    tag = torch.zeros(16, 16, dtype=torch.bool)
    tag[:4, :4] = True
    assert torch.equal(made[..., ~tag], images[index][..., ~tag])  # the rest is the image's
    filled, original = made[..., tag], images[index][..., tag]
    assert not torch.equal(filled, original) and filled.min() >= 0 and filled.max() <= 1
    assert filled.std(dim=-1).mean() < original.std(dim=-1).mean() or fill == "noise"  # the tag's contrast gone
    if fill == "mean":
        assert torch.allclose(filled, images[index].mean((2, 3))[..., None].expand_as(filled))
    with pytest.raises(ValueError, match="fill must be one of"):
        counterexamples(images, labels, maps, decided, has, g, fill="zeros")


def test_transplants_paste_the_ignored_pixels_into_other_classes_images_which_keep_their_class():
    g = torch.Generator().manual_seed(2)
    images = torch.rand(6, 3, 8, 8, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    maps = torch.ones(6, 1, 8, 8)
    maps[:, :, :3, :3] = 0  # a tag in the corner, to be ignored
    decided = torch.zeros(6, 1, 8, 8)
    decided[:, :, :4, :4] = 1  # strokes over the corner only
    has = torch.tensor([True, False, False, False, False, True])
    made, partner = transplants(images, labels, maps, decided, has, torch.Generator().manual_seed(0), copies=2)
    assert len(made) == 4 and all(labels[k] != 0 for k in partner.tolist())  # into images of other classes only
    tag = torch.zeros(8, 8, dtype=torch.bool)
    tag[:3, :3] = True
    assert torch.equal(made[..., ~tag], images[partner][..., ~tag])  # the rest is the image pasted into
    for j in range(len(made)):  # the corner is one of the edited images' (0 or 5)
        assert any(torch.equal(made[j][..., tag], images[k][..., tag]) for k in (0, 5))
    one_class = torch.zeros(6, dtype=torch.long)
    none, idx = transplants(images, one_class, maps, decided, has, torch.Generator())
    assert len(none) == 0 and len(idx) == 0  # no other class in the batch: none


def test_short_fine_tune_moves_the_map_toward_the_edits():
    torch.manual_seed(0)
    model = create_model("abn_small", 2)
    data = tiny_set(64)
    before = evaluate(model, data, MEAN, STD)
    fine_tune(
        model, data, MEAN, STD, TuneConfig(epochs=5, batch_size=16, lr=0.05, freeze_features=False), progress=False
    )
    after = evaluate(model, data, MEAN, STD)
    assert after["map_share"] > before["map_share"] + 0.1
    assert after["map_iou"] > before["map_iou"]


def test_expert_traces_the_object_and_erases_attention_elsewhere():
    mask = np.zeros((32, 32), bool)
    mask[10:22, 14:18] = True  # a stroke of a digit
    before = np.full((32, 32), 0.1, np.float32)
    before[0:6, 0:6] = 0.9  # attention on a decoy in the corner
    edited = expert.correct(mask, before, brush=2)
    assert (edited[mask] == 1).all()
    assert edited[0:6, 0:6].max() == 0
    assert edited[28:, 28:].min() == pytest.approx(0.1)  # untouched where nothing was wrong
    spill = edited[~mask] == 1
    assert 0 < spill.sum() < 4 * mask.sum()  # a round brush spills a little over the edge
    blank = expert.correct(mask, None, brush=1)
    assert (blank[mask] == 1).all() and blank[~mask].max() <= 1


def test_expert_sloppiness():
    mask = np.zeros((64, 64), bool)
    mask[8:56, 20:28] = True
    careful = expert.correct(mask, None, brush=2)
    missed = expert.correct(mask, None, brush=2, miss=0.5, seed=1)
    assert (missed[mask] == 1).mean() < 0.95 and (careful[mask] == 1).all()
    wobbly = expert.correct(mask, None, brush=2, jitter=3.0, seed=1)
    assert not np.array_equal(wobbly, careful)
    with pytest.raises(ValueError, match="brush radius must be at least 1"):
        expert.correct(mask, None, brush=0)


def test_expert_strokes_decide_a_few_pixels_and_leave_the_rest():
    obj = np.zeros((32, 32), bool)
    obj[6:26, 14:18] = True  # a digit's stroke
    decoy = np.zeros((32, 32), bool)
    decoy[:8, :8] = True
    before = np.full((32, 32), 0.3, np.float32)
    before[:8, :8] = 0.9
    edited, decided = expert.strokes(obj, decoy, before, brush=2, seed=0)
    assert decided[decoy].all() and (edited[decoy] == 0).all()  # one Ignore stroke over the decoy
    attend = decided & (edited == 1)
    assert attend.sum() > 10 and (attend & obj).sum() > 0.5 * attend.sum()  # Attend strokes, on the object mostly
    assert np.array_equal(edited[~decided], before[~decided]) and decided.mean() < 0.4  # the rest untouched
    assert not expert.strokes(obj, decoy, before, miss=1.0)[1].any()
    shifted = expert.strokes(obj, decoy, before, attend=(0, 0), wrong=1.0, seed=1)[1]
    assert 0 < (shifted & decoy).sum() < decoy.sum()  # landed partly off the decoy
    wobbly = expert.strokes(obj, decoy, before, jitter=2.0, seed=0)[1]
    assert not np.array_equal(wobbly, decided)


def save_folder(root, data, maps=True):
    for i in range(len(data)):
        item = data[i]
        name = f"{'ab'[item['label']]}/{i:03d}.png"
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        img = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(img).save(root / "images" / name)
        if maps and i % 2 == 0:
            (root / "maps" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((item["map"][0].numpy() * 255).astype("uint8")).save(root / "maps" / name)


@pytest.fixture
def parent(tmp_path):
    torch.manual_seed(0)
    model = create_model("abn_small", 2)
    meta = checkpoint.metadata(model, "abn_small", ["a", "b"], (32, 32), MEAN, STD, {"data": "tiny"})
    checkpoint.save(tmp_path / "parent.pt", model, meta)
    return tmp_path / "parent.pt"


def test_finetune_command_writes_a_new_version_and_a_report(tmp_path, parent, capsys):
    save_folder(tmp_path, tiny_set(16))
    out = tmp_path / "tuned"
    code = cli.main(
        [
            "finetune",
            str(parent),
            "--data",
            str(tmp_path / "images"),
            "--maps",
            str(tmp_path / "maps"),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--fill",
            "blur",
            "--transplants",
        ]
    )
    assert code == 0, capsys.readouterr().err
    meta = checkpoint.read_metadata(out / "checkpoint.pt")
    config = meta["trained_on"]["finetuned_on"]["config"]
    assert config["fill"] == "blur" and config["transplants"]  # the options reach the run
    assert meta["version"] == 2 and meta["parent_version"] == 1
    assert meta["trained_on"]["parent"] == {"data": "tiny"}
    assert meta["trained_on"]["finetuned_on"]["edited"] == 8 and meta["trained_on"]["finetuned_on"]["images"] == 16
    report = json.loads((out / "report.json").read_text())
    assert len(report["history"]) == 2 and report["before"]["mapped_samples"] == 8
    assert {"map_share", "map_iou", "accuracy"} <= set(report["after"])
    assert_figure(out / "report.png", (720, 1440))  # a row per edited image: it, its maps before, corrected, after


def test_finetune_command_rejects_maps_that_do_not_match(tmp_path, parent, capsys):
    save_folder(tmp_path, tiny_set(8))
    args = ["finetune", str(parent), "--data", str(tmp_path / "images"), "--out", str(tmp_path / "o")]
    (tmp_path / "maps/a/typo.png").write_bytes((tmp_path / "maps/a/000.png").read_bytes())
    assert cli.main(args + ["--maps", str(tmp_path / "maps")]) == 2
    err = capsys.readouterr().err
    assert "1 map(s) that match no image" in err and "a/typo.png" in err
    (tmp_path / "empty_maps").mkdir()
    assert cli.main(args + ["--maps", str(tmp_path / "empty_maps")]) == 2
    assert "no image in" in capsys.readouterr().err
    Image.new("L", (10, 20)).save(tmp_path / "maps/a/000.png")  # wrong aspect ratio
    (tmp_path / "maps/a/typo.png").unlink()
    assert cli.main(args + ["--maps", str(tmp_path / "maps")]) == 2
    assert "aspect ratio" in capsys.readouterr().err


@pytest.mark.parametrize("corrections,replayed", [(35, 1077), (1, 1000), (400, 1077), (1000, 10), (7, 0)])
def test_corrections_are_repeated_to_their_share_of_an_epoch_and_no_more(corrections, replayed):
    share = 0.25
    k = candidate.repeats(corrections, replayed, share)
    assert k >= 1
    if replayed:
        assert corrections * k / (corrections * k + replayed) >= share or k == 1
        if k > 1:  # one repeat fewer would fall short
            assert corrections * (k - 1) / (corrections * (k - 1) + replayed) < share
