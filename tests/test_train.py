import json

import pytest
import torch
import torch.nn.functional as F
from figures import assert_figure

from finetune import checkpoint, data, train
from finetune.data import DataConfig
from finetune.images import normalize
from serving import cli


def test_short_run_on_clean_digits_is_far_above_chance(tmp_path):
    args = train.TrainConfig(out=str(tmp_path / "run"), data=DataConfig(clean=True), epochs=5)
    metrics = train.train(args)
    assert metrics["final"]["test"]["accuracy"] > 0.8  # chance is 0.1
    assert metrics["final"]["test"]["attention_accuracy"] > 0.5
    assert len(metrics["history"]) == 5
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["final"]["test"] == metrics["final"]["test"]
    state = torch.load(run / "train_state.pt", weights_only=True)  # what a resume starts from
    assert state["epoch"] == 5 and state["history"] == metrics["history"]
    saved = checkpoint.load(run / "checkpoint.pt")[0].state_dict()
    assert all(torch.equal(saved[k], v) for k, v in state["model"].items())  # the model of the last epoch
    assert_figure(run / "attention.png", (1280, 720))  # 32 validation images, 8 a row
    assert_figure(run / "curves.png", (600, 400))
    meta = checkpoint.read_metadata(run / "checkpoint.pt")
    assert meta["architecture"] == "abn_small" and meta["classes"] == [str(d) for d in range(10)]
    assert meta["input_size"] == [32, 32] and meta["map_size"] == [16, 16]
    assert meta["trained_on"]["data"] == "decoy-digits" and meta["trained_on"]["decoy"] is None


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    straight = train.train(train.TrainConfig(out=str(tmp_path / "a"), data=DataConfig(clean=True), epochs=2))
    train.train(train.TrainConfig(out=str(tmp_path / "b"), data=DataConfig(clean=True), epochs=1))
    resumed = train.train(
        train.TrainConfig(out=str(tmp_path / "b"), data=DataConfig(clean=True), epochs=2, resume=True)
    )
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a = torch.load(tmp_path / "a/checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b/checkpoint.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    assert resumed["final"]["test"]["accuracy"] == pytest.approx(straight["final"]["test"]["accuracy"], abs=0.01)


def test_an_existing_run_is_not_overwritten(tmp_path):
    out = str(tmp_path / "run")
    train.train(train.TrainConfig(out=out, data=DataConfig(clean=True), epochs=1, batch_size=256))
    with pytest.raises(FileExistsError, match="holds a training run already: resume it"):
        train.train(train.TrainConfig(out=out, data=DataConfig(clean=True), epochs=1))


def test_cli_reports_a_bad_folder_clearly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = cli.main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "abn train: error: image folder" in capsys.readouterr().err


def test_cli_evaluate_and_info(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--clean", "--epochs", "1", "--batch-size", "256", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(out / "checkpoint.pt"), "--clean", "--split", "val"]) == 0
    result = json.loads(capsys.readouterr().out)
    # the same checkpoint on the same split, counted here in one plain batch
    model, meta = checkpoint.load(out / "checkpoint.pt")
    val = data.builtin_split(DataConfig(clean=True), "val", tuple(meta["input_size"]))
    with torch.no_grad():
        answer = model(normalize(val.images, meta["mean"], meta["std"]))
    assert result["samples"] == len(val.labels) == 180
    assert result["accuracy"] == (answer.logits.argmax(1) == val.labels).sum().item() / 180
    assert result["attention_accuracy"] == (answer.attention_logits.argmax(1) == val.labels).sum().item() / 180
    loss = F.cross_entropy(answer.logits, val.labels) + F.cross_entropy(answer.attention_logits, val.labels)
    assert result["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert cli.main(["info", str(out / "checkpoint.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "abn_small"
