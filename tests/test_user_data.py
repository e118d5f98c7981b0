"""Retraining a model trained on the user's own image folder (the built-in set written out as a folder): the job
replays the folder and gates on its validation split, so expert corrections repair the model's shortcut."""

import shutil

import pytest
import torch
from conftest import png

from finetune import candidate, checkpoint, data, decoy_digits, expert, train
from finetune.data import DataConfig, TensorSet
from finetune.evaluate import evaluate
from finetune.images import resize_map
from finetune.knowledge import TuneConfig
from handlers import wire
from serving import retraining
from serving.client import Client
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.store import SQLiteStore
from serving.torchserve import archive
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import TorchServe

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17")
CORRECTIONS = 64


def test_corrections_repair_a_model_trained_on_an_image_folder(tmp_path):
    data.export(DataConfig(), "train", tmp_path / "folder")
    folder = tmp_path / "folder" / "images"
    train.train(train.TrainConfig(out=str(tmp_path / "model"), data=DataConfig(data=str(folder)), epochs=6))
    ckpt = tmp_path / "model" / "checkpoint.pt"
    model, meta = checkpoint.load(ckpt)
    assert meta["trained_on"]["data"] == str(folder.resolve()) and meta["trained_on"]["val_fraction"] == 0.1
    test = decoy_digits.build("test")  # decoys placed at random: the shortcut does not work there
    test_set = TensorSet(test.images, test.labels)

    def accuracy(m) -> float:
        return evaluate(m, test_set, meta["mean"], meta["std"])["accuracy"]

    archive.build(ckpt, tmp_path / "store", name="abn")
    cfg = ServeConfig.on_free_ports(tmp_path / "serve", tmp_path / "store", {"abn": "abn.v1.mar"})
    store = SQLiteStore(tmp_path / "feedback.db")
    feedback = FeedbackServer(store, "127.0.0.1:0", write_token(tmp_path / "token"))
    with TorchServe(cfg):
        client = Client.for_services(cfg, f"127.0.0.1:{feedback.port}", tmp_path / "token")
        split = decoy_digits.build("train")  # the images the folder holds
        corrections = []
        for i in range(CORRECTIONS):
            image = png(split.images[i, 0].numpy())
            prediction = client.predict(image)
            served_map = resize_map(torch.from_numpy(wire.map_from_proto(prediction.attention))[None], (32, 32))[0]
            corrected = expert.correct(split.masks[i, 0].numpy() > 0, served_map.numpy(), seed=i)
            label = decoy_digits.CLASSES[int(split.labels[i])]
            client.submit_feedback(image, corrected, prediction=prediction, label=label, author="expert")
            corrections.append(candidate.Correction(image, corrected, label))

        # without replay, the corrections alone: what the job did before
        tune = TuneConfig()
        parent = ckpt.read_bytes()
        alone, _ = candidate.tune(parent, corrections, tune, None)
        replay, _ = candidate.own_data(meta)
        assert len(replay) == len(split.images) - round(0.1 * len(split.images))  # the folder's training split
        replayed, _ = candidate.tune(parent, corrections, tune, replay)
        before, without, with_replay = accuracy(model), accuracy(alone), accuracy(replayed)
        print(f"random-decoy test accuracy: served {before:.3f}, without replay {without:.3f}, with {with_replay:.3f}")
        assert with_replay > without

        # the job: replays the folder, gates on its validation split, promotes
        job = retraining.for_services(cfg, store=str(tmp_path / "feedback.db"), workdir=str(tmp_path / "retrain"))
        report = retraining.run_once(job)
        assert report["outcome"] == "promoted", report["gate"]
        assert report["gate"]["criteria"][0]["name"] == "accuracy on validation split"
        new, new_meta = checkpoint.load(tmp_path / "retrain" / report["run"] / "checkpoint.pt")
        assert new_meta["trained_on"]["replayed_on"] == {"data": str(folder.resolve()), "images": len(replay)}
        after = accuracy(new)
        print(f"random-decoy test accuracy: version 1 {before:.3f}, version 2 {after:.3f}")
        assert after >= before + 0.30
        assert client.predict(png(test.images[0, 0].numpy())).model_version == "2"

        # the folder moved away: the job says which option to give
        client.submit_feedback(png(split.images[100, 0].numpy()), corrected, label="1", model_name="abn")
        folder.rename(tmp_path / "moved")
        with pytest.raises(data.DataError, match="--replay-data"):
            retraining.run_once(retraining.for_services(cfg, store=str(tmp_path / "feedback.db"), min_feedback=1,
                                                        workdir=str(tmp_path / "retrain")))  # fmt: skip
        client.close()
    feedback.stop(grace=5)
    store.close()
