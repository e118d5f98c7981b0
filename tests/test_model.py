import pytest
import torch

from finetune import checkpoint
from finetune.model import create_model, list_models

SIZES = {
    "abn_resnet18": [(224, 224), (160, 160), (256, 192)],
    "abn_resnet34": [(224, 224)],
    "abn_resnet50": [(224, 224), (128, 128)],
    "abn_small": [(32, 32), (28, 28), (48, 40)],
}


def test_every_registered_variant_is_tested():
    assert sorted(SIZES) == list_models()


@pytest.mark.parametrize("name,size", [(n, s) for n, sizes in SIZES.items() for s in sizes])
def test_output_shapes(name, size):
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    h, w = size
    stride = 2 if name == "abn_small" else 16
    expected_map = (-(-h // stride), -(-w // stride))
    assert out.logits.shape == (2, 7)
    assert out.attention_logits.shape == (2, 7)
    assert out.attention.shape == (2, 1, *expected_map)
    assert model.map_size(size) == expected_map
    assert 0 <= out.attention.min() and out.attention.max() <= 1


def test_224_input_gives_14x14_map():
    assert create_model("abn_resnet18", 10).map_size((224, 224)) == (14, 14)


def test_supplied_map_replaces_the_models_own():
    torch.manual_seed(0)
    model = create_model("abn_small", 10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        own = model(x)
        zeros = model(x, attention=torch.zeros(4, 1, 16, 16))
        ones = model(x, attention=torch.ones(1, 1, 16, 16))  # one map for the whole batch
        again = model(x, attention=own.attention)
    assert not torch.allclose(own.logits, zeros.logits, atol=1e-4)
    assert not torch.allclose(zeros.logits, ones.logits, atol=1e-4)
    assert torch.allclose(own.logits, again.logits)
    assert torch.equal(zeros.attention, torch.zeros(4, 1, 16, 16))
    assert ones.attention.shape == (4, 1, 16, 16)
    # the attention branch does not see the supplied map
    assert torch.equal(own.attention_logits, zeros.attention_logits)


@pytest.mark.parametrize("shape", [(4, 1, 8, 8), (4, 2, 16, 16), (3, 1, 16, 16), (16, 16)])
def test_wrong_map_shape_is_a_clear_error(shape):
    model = create_model("abn_small", 10).eval()
    with pytest.raises(ValueError, match=r"attention map must have shape \(4 or 1\)x1x16x16"):
        model(torch.randn(4, 3, 32, 32), attention=torch.zeros(shape))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'; choose one of abn_resnet18"):
        create_model("resnet9", 10)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = create_model("abn_small", 3)
    # one training step so that BatchNorm statistics differ from their initial values
    model(torch.randn(8, 3, 32, 32)).logits.sum().backward()
    model.eval()
    meta = checkpoint.metadata(model, "abn_small", ["a", "b", "c"], (32, 32), [0.5] * 3, [0.2] * 3, {"data": "test"})
    checkpoint.save(tmp_path / "m.pt", model, meta)
    loaded, loaded_meta = checkpoint.load(tmp_path / "m.pt")
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert loaded_meta == meta
    assert loaded_meta["map_size"] == [16, 16]
    assert loaded_meta["version"] == 1 and loaded_meta["parent_version"] is None
    assert checkpoint.read_metadata(tmp_path / "m.pt") == meta
    # weights_only loading: the file holds nothing but tensors and plain values
    torch.load(tmp_path / "m.pt", weights_only=True)


def test_loading_something_else_is_a_clear_error(tmp_path):
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="is not a checkpoint of format 1"):
        checkpoint.load(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")
