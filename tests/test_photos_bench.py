"""bench/photos.py on a small folder of made-up photographs: the artefact sits where it should and nowhere else,
the simulated experts' maps mark it Ignore, and a run of the product's commands writes its table and resumes."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import photos

SIZE = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three classes of colour pictures of other sizes than the model's, JPEG and PNG."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k, name in enumerate(["cats", "dogs", "owls"]):
        (root / name).mkdir()
        for i in range(14):
            picture = rng.integers(0, 256, (48, 60, 3), dtype=np.uint8)
            picture[12:36, 20:40] = (80 * k, 255 - 80 * k, 120)  # the subject, in the middle
            Image.fromarray(picture).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def stamped(path: Path, kind: str = "tag") -> bool:
    """Whether the picture at path carries the artefact at its place, exactly."""
    picture = np.asarray(Image.open(path).convert("RGB"))
    return np.array_equal(picture, photos.stamp(picture, kind))


def test_the_artefact_sits_on_one_class_for_training_and_on_the_others_for_testing(folder, tmp_path):
    args = argparse.Namespace(
        folder=str(folder),
        classes=None,
        artefact="tag",
        artefact_class="dogs",
        size=SIZE,
        per_class=None,
        test_share=0.25,
        artefact_only=2,
        shares=[0.5],
        seed=0,
    )
    record = photos.prepare(args, tmp_path)
    assert record["counts"] == {c: {"train": 10, "test": 4} for c in ["cats", "dogs", "owls"]}
    data = tmp_path / "data"
    for path in data.rglob("*.png"):
        assert Image.open(path).size == (SIZE, SIZE)
    for c in ["cats", "dogs", "owls"]:
        assert all(stamped(p) == (c == "dogs") for p in (data / "train" / c).iterdir())
        assert not any(stamped(p) for p in (data / "test-clean" / c).iterdir())
        assert all(stamped(p) == (c != "dogs") for p in (data / "test-wrong" / c).iterdir())
    alone = sorted((data / "artefact-only").rglob("*.png"))
    assert len(alone) == 6 and {p.parent.name for p in alone} == {"dogs"} and all(stamped(p) for p in alone)
    # the clean and wrong test photos are the same photos
    assert sorted(p.name for p in (data / "test-clean").rglob("*")) == sorted(
        p.name for p in (data / "test-wrong").rglob("*")
    )

    maps = sorted((tmp_path / "maps" / "0.5").rglob("*.png"))
    assert len(maps) == 15  # half of the 30 training photos
    rows, cols = photos.artefact_box(SIZE)
    on_tag = []
    for path in maps:
        picture = np.asarray(Image.open(path))
        value, decided = picture[..., 0] / 255, picture[..., 1] >= 128
        assert 0 < decided.mean() < 0.6  # strokes: partial, the rest undecided
        ignore = decided & (value < 0.5)
        if path.parent.name == "dogs":
            on_tag.append(ignore[rows, cols].mean())
        else:
            assert not ignore.any()  # no artefact there, nothing to ignore
    assert on_tag and np.mean([share > 0.5 for share in on_tag]) >= 0.5  # most dog maps ignore most of the tag
    assert photos.prepare(args, tmp_path) == record  # a rerun reads it back


def test_a_run_writes_the_table_and_a_rerun_resumes(folder, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "bench/photos.py", str(folder), "--out", str(out), "--size", str(SIZE)]
    command += ["--train-epochs", "1", "--epochs", "1", "--variants", "control", "noise", "--shares", "0.3"]
    command += ["--artefact", "patch", "--artefact-only", "3", "--test-share", "0.25"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("$ ") == 3  # abn train, abn finetune twice: the product's own commands
    results = json.loads((out / "photos.json").read_text())
    assert list(results) == [
        "from scratch",
        "from scratch, 30% corrected, control",
        "from scratch, 30% corrected, noise",
    ]
    for figures in results.values():
        assert figures["test-clean"]["images"] == 12 and figures["artefact-only"]["images"] == 9
        for key in photos.SETS:
            lo, hi = figures[key]["interval"]
            assert lo <= figures[key]["accuracy"] <= hi
        assert figures["artefact_attention"]["images"] == 8  # the test photos of the classes it is not on
    table = (out / "photos.md").read_text()
    assert table.count("| from scratch") == 3 and "always the larger class: 33.3 %" in table
    assert (out / "photos.png").stat().st_size > 10_000
    again = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert again.returncode == 0 and "$ " not in again.stdout  # nothing trained again
