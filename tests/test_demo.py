import json
import shutil
import sqlite3
from contextlib import closing

import pytest
from figures import assert_figure

from serving import cli

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17")


def test_the_walkthrough_completes_and_improves_the_served_model(tmp_path, capsys):
    out = tmp_path / "walk"
    assert cli.main(["demo", "--out", str(out), "--epochs", "6", "--corrections", "60", "--test-images", "120"]) == 0
    printed = capsys.readouterr().out
    for step in (
        "1. training",
        "2. serving",
        "3. version 1 over gRPC",
        "4. a simulated expert",
        "5. retraining",
        "6. version 2 over gRPC",
    ):
        assert step in printed
    result = json.loads((out / "demo.json").read_text())
    assert result["retrain"]["outcome"] == "promoted" and result["corrections"] == 60
    assert result["test_accuracy"]["2"] > result["test_accuracy"]["1"] + 0.1
    assert result["attention_on_digit"]["2"] > result["attention_on_digit"]["1"]
    assert_figure(out / "demo.png", (540, 1440))  # 8 test images, each with the maps of versions 1 and 2
    # the demo's store: version 2 served, and every correction consumed by the run that made it
    with closing(sqlite3.connect(f"file:{out / 'feedback.db'}?mode=ro", uri=True)) as db:
        assert db.execute("SELECT model_name, archive, version FROM served").fetchall() == [("abn", "abn.v2.mar", "2")]
        states = db.execute("SELECT consumed_by, promoted_version, COUNT(*) FROM feedback GROUP BY 1, 2").fetchall()
    assert states == [(result["retrain"]["run"], "2", 60)] and result["retrain"]["consumed"] == 60
