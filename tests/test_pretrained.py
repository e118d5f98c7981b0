"""Starting from ImageNet weights: a torchvision ResNet state dict lands in the ABN, and the backbone waits.

No weights are downloaded: every file here is a torchvision ResNet-18 made with a fixed seed and saved as a
state dict, as torchvision publishes its ImageNet weights. The runs use a tiny photo folder at 32x32."""

import hashlib
import json
import re

import pytest
import torch
from photo_folders import colour_folder
from torchvision.models import resnet18, resnet34, resnet50

from finetune import checkpoint, pretrained, train
from finetune.data import DataConfig
from finetune.model import create_model
from serving import cli

FILE = "resnet18-test.pth"


@pytest.fixture
def resnet(tmp_path):
    """A torchvision ResNet-18 with fixed random weights (standing in for ImageNet's), eval mode, and its file."""
    torch.manual_seed(7)
    model = resnet18()
    for m in model.modules():  # BatchNorm statistics of their own, so that loading them is seen too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(model.state_dict(), tmp_path / FILE)
    return model.eval(), tmp_path / FILE


@pytest.fixture
def photos(tmp_path):
    """Two classes of 8 colour images each (class a reddish, b bluish), with maps for two images of each."""
    colour_folder(tmp_path / "photos", tmp_path / "maps", count=8, mapped=2)
    return tmp_path / "photos"


def run_config(out, weights, photos, **given) -> train.TrainConfig:
    data = DataConfig(data=str(photos), val_fraction=0.25)
    fields = {"arch": "abn_resnet18", "input_size": 32, "epochs": 1, "batch_size": 4, "pretrained": str(weights)}
    return train.TrainConfig(out=str(out), data=data, **{**fields, **given})


def backbone_state(model) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.clone() for i, m in enumerate(model.backbone()) for k, v in m.state_dict().items()}


def test_the_resnet_lands_where_it_computes_the_same(resnet):
    """Not the name table read back: the ABN's features compute torchvision's stem + layer1..3, its perception
    branch torchvision's layer4, and the attention branch's stage holds layer4's weights."""
    tv, path = resnet
    model = create_model("abn_resnet18", 2).eval()
    loaded = pretrained.load(model, "abn_resnet18", path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        g = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))
        assert torch.equal(model.features(x), g)
        assert torch.equal(model.perception(g), tv.layer4(g))
    stage = model.attention_branch.stage.state_dict()
    assert stage.keys() == tv.layer4.state_dict().keys()
    assert all(torch.equal(stage[k], v) for k, v in tv.layer4.state_dict().items())
    # the classifier of 1000 classes does not fit 2: left out, and said so
    assert loaded.skipped == [
        "fc not loaded: the file's classifier has 1000 classes, this model 2; it starts untrained"
    ]
    assert not loaded.missing and not loaded.unexpected
    assert loaded.origin == {"file": FILE, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    # where the class counts agree, the classifier is loaded too
    thousand = create_model("abn_resnet18", 1000)
    assert not pretrained.load(thousand, "abn_resnet18", path).skipped
    assert torch.equal(thousand.fc.weight, tv.fc.weight) and torch.equal(thousand.fc.bias, tv.fc.bias)


@pytest.mark.parametrize(("arch", "make"), [("abn_resnet34", resnet34), ("abn_resnet50", resnet50)])
def test_resnet_34_and_50_load_whole(tmp_path, arch, make):
    torch.manual_seed(3)
    tv = make().eval()
    torch.save(tv.state_dict(), tmp_path / "w.pth")
    model = create_model(arch, 1000).eval()
    loaded = pretrained.load(model, arch, tmp_path / "w.pth")
    assert not loaded.missing and not loaded.unexpected and not loaded.skipped
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        g = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))
        assert torch.equal(model.features(x), g)
        assert torch.equal(model.perception(g), tv.layer4(g))


@pytest.mark.parametrize(
    ("prefix", "head", "wrapper"),
    [("module.", "fc.", None), ("model.", "head.fc.", "state_dict"), ("", "classifier.", "model")],
)
def test_timm_style_names_load_the_same(resnet, tmp_path, prefix, head, wrapper):
    tv, path = resnet
    torch.manual_seed(1)
    plain = create_model("abn_resnet18", 1000)
    pretrained.load(plain, "abn_resnet18", path)
    renamed = {prefix + (head + k[3:] if k.startswith("fc.") else k): v for k, v in tv.state_dict().items()}
    other = tmp_path / "timm.pth"
    torch.save({wrapper: renamed, "epoch": 90} if wrapper else renamed, other)
    torch.manual_seed(1)  # the same heads as plain's, so that the whole models compare
    model = create_model("abn_resnet18", 1000)
    loaded = pretrained.load(model, "abn_resnet18", other)
    assert not loaded.missing and not loaded.unexpected and not loaded.skipped
    for k, v in plain.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_a_tensor_of_the_wrong_shape_is_an_error_naming_the_layer(resnet, tmp_path, photos, capsys):
    tv, _ = resnet
    state = tv.state_dict()
    state["layer2.1.conv2.weight"] = torch.zeros(128, 128, 5, 5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as e:
        pretrained.load(create_model("abn_resnet18", 2), "abn_resnet18", tmp_path / "bad.pth")
    assert str(e.value) == (
        "bad.pth: layer2.1.conv2.weight has shape 128x128x5x5, but abn_resnet18's features.2.1.conv2.weight "
        "needs 128x128x3x3: is the file a ResNet-18's?"
    )
    # as a user meets it: the command stops before training, with the same sentence
    argv = ["train", "--arch", "abn_resnet18", "--pretrained", str(tmp_path / "bad.pth"), "--input-size", "32"]
    code = cli.main([*argv, "--data", str(photos), "--out", str(tmp_path / "run")])
    assert code == 2
    assert f"abn train: error: {e.value}" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_missing_and_unexpected_tensors_are_reported(resnet, tmp_path, capsys):
    tv, _ = resnet
    state = {k: v for k, v in tv.state_dict().items() if k != "layer3.1.bn2.weight" and not k.startswith("fc.")}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # counters: not missed
    state["layer4.2.conv1.weight"] = torch.zeros(512, 512, 3, 3)  # a third block: ResNet-18 has two
    state["projection.weight"] = torch.zeros(128, 512)
    torch.save(state, tmp_path / "partial.pth")
    model = create_model("abn_resnet18", 2)
    loaded = pretrained.load(model, "abn_resnet18", tmp_path / "partial.pth")
    assert loaded.missing == ["fc.bias", "fc.weight", "layer3.1.bn2.weight"]
    assert loaded.unexpected == ["layer4.2.conv1.weight", "projection.weight"]
    assert torch.equal(model.features[3][1].bn2.weight, torch.ones(256))  # left at its start
    assert torch.equal(model.features[3][1].bn2.bias, tv.layer3[1].bn2.bias)  # its neighbour loaded
    summary = loaded.summary()
    assert "missing from the file (left at their random start): fc.bias, fc.weight, layer3.1.bn2.weight" in summary
    assert "unexpected in the file (ignored): layer4.2.conv1.weight, projection.weight" in summary


def resnet_file(p):
    torch.save(resnet18().state_dict(), p.with_suffix(".pth"))


def whole_model(p):
    torch.save(resnet18(), p.with_suffix(".pth"))


def abn_names(p):
    torch.save({"features.0.0.weight": torch.zeros(64, 3, 7, 7)}, p.with_suffix(".pth"))


@pytest.mark.parametrize(
    ("make", "arch", "message"),
    [
        (resnet_file, "abn_small", "abn_small has no ImageNet counterpart"),
        (lambda p: p.with_suffix(".safetensors").write_bytes(b"{}"), "abn_resnet18", ".safetensors files are not"),
        (whole_model, "abn_resnet18", "pickled objects beside tensors (a whole model?)"),
        (lambda p: p.with_suffix(".pth").write_bytes(b"not torch"), "abn_resnet18", "is not a file torch.save wrote"),
        (abn_names, "abn_resnet18", "has none of a ResNet's backbone tensors"),
        (lambda p: None, "abn_resnet18", "do not exist"),
    ],
    ids=["no-resnet-arch", "safetensors", "whole-model", "not-torch", "no-resnet-names", "absent"],
)
def test_files_that_cannot_be_used_are_refused_with_the_reason(tmp_path, make, arch, message):
    make(tmp_path / "w")
    path = next(tmp_path.glob("w.*"), tmp_path / "w.pth")
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        pretrained.load(create_model(arch, 2), arch, path)


def test_the_checkpoint_records_its_origin_and_fine_tuning_keeps_it(resnet, tmp_path, photos, capsys):
    _, path = resnet
    run = tmp_path / "run"
    argv = ["train", "--arch", "abn_resnet18", "--pretrained", str(path), "--input-size", "32", "--epochs", "1"]
    assert cli.main([*argv, "--batch-size", "4", "--data", str(photos), "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    origin = {"file": FILE, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert re.search(
        rf"pretrained: \d+ of the model's tensors filled from {FILE} \(sha256 {origin['sha256']}\)", printed
    )
    assert "fc not loaded" in printed and "epoch 1: the pretrained backbone is frozen, the heads learn" in printed
    assert cli.main(["info", str(run / "checkpoint.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["pretrained"] == origin
    tuned = tmp_path / "tuned"
    args = ["finetune", str(run / "checkpoint.pt"), "--data", str(photos), "--maps", str(tmp_path / "maps")]
    assert cli.main([*args, "--out", str(tuned), "--epochs", "1", "--batch-size", "8"]) == 0
    meta = checkpoint.read_metadata(tuned / "checkpoint.pt")
    assert meta["version"] == 2 and meta["pretrained"] == origin
    # and from random weights, the record says so
    assert cli.main(["train", "--epochs", "1", "--data", str(photos), "--out", str(tmp_path / "r")]) == 0
    assert checkpoint.read_metadata(tmp_path / "r" / "checkpoint.pt")["pretrained"] is None


def test_the_backbone_is_frozen_for_the_first_epochs_then_learns(resnet, tmp_path, photos):
    _, path = resnet
    model = create_model("abn_resnet18", 2)
    pretrained.load(model, "abn_resnet18", path)
    start = backbone_state(model)

    def backbone_after(run) -> dict[str, torch.Tensor]:
        saved, _ = checkpoint.load(run / "checkpoint.pt")
        return backbone_state(saved)

    train.train(run_config(tmp_path / "a", path, photos, freeze_epochs=1))
    after_one = backbone_after(tmp_path / "a")
    assert all(torch.equal(after_one[k], v) for k, v in start.items())  # weights and BatchNorm statistics
    train.train(run_config(tmp_path / "a", path, photos, freeze_epochs=1, epochs=2, resume=True))
    after_two = backbone_after(tmp_path / "a")
    weights = [f"{i}.{k}" for i, m in enumerate(model.backbone()) for k, _ in m.named_parameters()]
    unchanged = [k for k in weights if torch.equal(after_two[k], start[k])]
    assert not unchanged, f"unfrozen, these weights did not learn: {unchanged[:5]}"
    # without freezing, the first epoch moves the backbone: the freeze above is what kept it
    train.train(run_config(tmp_path / "b", path, photos, freeze_epochs=0))
    assert not torch.equal(backbone_after(tmp_path / "b")["0.0.0.weight"], start["0.0.0.weight"])


def test_freezing_defaults_to_two_epochs_with_pretrained_weights_and_needs_them(tmp_path):
    resolve = train._resolve
    assert resolve(train.TrainConfig(out=str(tmp_path / "a"), pretrained="w.pth"))[0].freeze_epochs == 2
    assert resolve(train.TrainConfig(out=str(tmp_path / "a")))[0].freeze_epochs == 0
    with pytest.raises(ValueError, match="give --pretrained too"):
        resolve(train.TrainConfig(out=str(tmp_path / "a"), freeze_epochs=1))
