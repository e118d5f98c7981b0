import json
import shutil

import pytest

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
    assert (out / "demo.png").stat().st_size > 0
