"""How training computes (finetune.compute): --device, --precision, --channels-last and --workers of abn train,
finetune and retrain, and the defaults a run from pretrained weights takes.

What cannot run here is refused up front, in one line naming the option. --workers N trains exactly as
--workers 0 (without augmentation; with it, a run repeats exactly for a given N). The GPU's paths run where
there is one (needs_gpu); on a machine without one, they are the refusals."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from photo_folders import colour_folder
from torch.utils.data import DataLoader
from torchvision.models import resnet18

from finetune import checkpoint, compute, data, knowledge, train
from finetune.data import DataConfig, TensorSet
from finetune.distributed import World
from finetune.model import create_model
from serving import cli

ROOT = Path(__file__).resolve().parents[1]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two classes of 7 colour images each (32x32), with corrected maps for three of each, and an untrained
    abn_small for them as parent/checkpoint.pt."""
    root = tmp_path_factory.mktemp("photos")
    colour_folder(root / "images", root / "maps", count=7, mapped=3)
    torch.manual_seed(0)
    model = create_model("abn_small", 2).eval()
    meta = checkpoint.metadata(
        model, "abn_small", ["a", "b"], (32, 32), data.IMAGENET_MEAN, data.IMAGENET_STD, {"data": str(root)}
    )
    checkpoint.save(root / "parent" / "checkpoint.pt", model, meta)
    return root


def finetune_argv(root: Path, out: Path, *given: str) -> list[str]:
    parent = str(root / "parent" / "checkpoint.pt")
    images, maps = str(root / "images"), str(root / "maps")
    return ["finetune", parent, "--data", images, "--maps", maps, "--out", str(out), "--epochs", "2", *given]


def tiny_train(root: Path, out: Path) -> list[str]:
    """abn train's arguments for a run of seconds (should a refusal fail to come)."""
    return ["train", "--data", str(root / "images"), "--epochs", "1", "--batch-size", "4", "--out", str(out)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"these tensors differ: {differ[:5]}"


# ---- refused up front, in one line that names the option


REFUSALS = [
    (["--precision", "bf16", "--device", "cpu"], "--precision bf16 is mixed precision on a GPU"),
    (["--precision", "fp16"], "--precision fp16 is mixed precision on a GPU and this run is on the cpu"),
    (["--channels-last", "--device", "cpu"], "--channels-last is for a GPU's convolutions"),
    (["--workers", "-1"], "--workers must be 0 or more"),
]


def refused(capsys, argv: list[str], command: str, message: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"abn {command}: error: {message}"), err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(("given", "message"), REFUSALS)
def test_what_cannot_run_here_is_refused_by_train_finetune_and_retrain(folder, tmp_path, capsys, given, message):
    refused(capsys, [*tiny_train(folder, tmp_path / "t"), *given], "train", message)
    assert not (tmp_path / "t").exists()  # nothing began
    finetune = ["finetune", "missing.pt", "--data", "d", "--maps", "m", "--out", str(tmp_path / "f"), *given]
    refused(capsys, finetune, "finetune", message)  # before the (missing) checkpoint is read
    refused(capsys, ["retrain", "--dry-run", "--store", str(tmp_path / "no.db"), *given], "retrain", message)
    with pytest.raises(ValueError, match=re.escape(message)):  # and the library, called without the command line
        compute.of(knowledge.TuneConfig(**cli_fields(given)))


def cli_fields(given: list[str]) -> dict:
    """The config fields of these options, as the command line parses them."""
    args = cli.build_parser("train").parse_args(["train", *given])
    return {k: getattr(args, k) for k in compute.FIELDS}


def test_mixed_precision_and_channels_last_say_they_need_the_gpu(folder, tmp_path, capsys):
    for given in (["--precision", "bf16", "--device", "cpu"], ["--channels-last", "--device", "cpu"]):
        assert cli.main([*tiny_train(folder, tmp_path / "t"), *given]) == 2
        assert "give --device cuda" in capsys.readouterr().err


CUDA_REFUSAL = (
    "--device cuda needs a CUDA GPU, and torch sees none here (no GPU or driver, or a CPU build of torch): use "
    "--device cpu, or auto to take a GPU only where there is one"
)


@no_gpu
def test_cuda_without_a_gpu_is_refused(folder, tmp_path, capsys):
    refused(capsys, [*tiny_train(folder, tmp_path / "t"), "--device", "cuda"], "train", CUDA_REFUSAL)
    refused(capsys, finetune_argv(tmp_path, tmp_path / "f", "--device", "cuda"), "finetune", CUDA_REFUSAL)
    refused(
        capsys,
        ["retrain", "--dry-run", "--device", "cuda", "--store", str(tmp_path / "no.db")],
        "retrain",
        CUDA_REFUSAL,
    )
    # and by the installed command itself: the one line on stderr, exit status 2, nothing begun
    done = subprocess.run(
        [sys.executable, "-m", "serving.cli", *tiny_train(folder, tmp_path / "t"), "--device", "cuda"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (2, f"abn train: error: {CUDA_REFUSAL}\n")
    assert not (tmp_path / "t").exists()


def test_the_device_is_decided_in_one_place():
    gpu = torch.cuda.is_available()
    one, two = World(), World(rank=1, world_size=2, local_rank=1)
    assert one.device_for("cpu") == two.device_for("cpu") == torch.device("cpu")
    assert one.device_for("auto") == (torch.device("cuda", 0) if gpu else torch.device("cpu"))
    assert two.device_for("auto") == (torch.device("cuda", 1) if gpu else torch.device("cpu"))
    # not given: as before the option, one process on the CPU, torchrun's processes each on its GPU
    assert one.device_for(None) == one.device == torch.device("cpu")
    assert two.device_for(None) == two.device == (torch.device("cuda", 1) if gpu else torch.device("cpu"))
    with pytest.raises(ValueError, match="--device must be one of cpu, cuda, auto, got 'tpu'"):
        one.device_for("tpu")
    assert compute.of(train.TrainConfig(device="auto")).device.type == ("cuda" if gpu else "cpu")


def test_on_a_machine_with_a_gpu_the_options_are_taken_and_an_old_gpu_refuses_bf16(monkeypatch):
    """The checks alone, with torch told that there is a GPU (nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    run = compute.of(train.TrainConfig(device="cuda", precision="bf16", channels_last=True, workers=3))
    assert run == compute.Compute(torch.device("cuda", 0), "bf16", True, 3)
    assert compute.of(knowledge.TuneConfig(device="auto"), World(1, 2, 1)).device == torch.device("cuda", 1)
    assert compute.of(knowledge.TuneConfig(precision="fp16"), World(1, 2, 1)).device == torch.device("cuda", 1)
    assert compute.of(knowledge.TuneConfig(device="cpu"), World(1, 2, 1)).device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match=r"--precision bf16 needs a GPU with bfloat16 .* use --precision fp16"):
        compute.of(train.TrainConfig(device="cuda", precision="bf16"))


def test_the_process_group_takes_the_backend_of_the_device_it_trains_on(monkeypatch):
    """torchrun's processes on a machine with GPUs: NCCL when they train on the GPUs, gloo with --device cpu."""
    from finetune import distributed

    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **_: calls.append(backend))
    world = World(rank=1, world_size=2, local_rank=1)
    for device in (None, "cuda", "auto", "cpu"):
        distributed.start(world, device=device)
    cuda = [("set_device", torch.device("cuda", 1)), "nccl"]
    assert calls == [*cuda, *cuda, *cuda, "gloo"]


def test_auto_trains_where_it_says(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*tiny_train(folder, out), "--device", "auto"]) == 0
    where = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert f"computing on {where}, fp32, 0 DataLoader worker(s)" in capsys.readouterr().out
    recorded = json.loads((out / "metrics.json").read_text())["compute"]
    assert recorded == {"device": where, "precision": "fp32", "channels_last": False, "workers": 0}


# ---- workers read the same batches, in the same order, with the same draws between them


@pytest.mark.parametrize(("size", "batch_size"), [(10, 3), (12, 4), (5, 8)])
def test_batches_draw_from_the_generator_as_a_plain_data_loader_does(size, batch_size):
    """What the training process draws from the generator, and when, against DataLoader(shuffle=True) without
    workers: the order of every pass, and the generator's state where the training draws between batches (as
    the counterexamples do), match."""
    dataset = TensorSet(torch.arange(size, dtype=torch.float32).view(-1, 1, 1, 1), torch.arange(size))

    def passes(loader, generator) -> list:
        seen = []
        for _ in range(3):
            for batch in loader:
                seen.append((batch["label"].tolist(), generator.get_state().clone()))
                torch.rand(2, generator=generator)  # a draw of the training between batches
            seen.append(generator.get_state().clone())
        return seen

    plain_gen, ours_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    plain = passes(DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=plain_gen), plain_gen)
    for workers in (0, 2):
        ours_gen.manual_seed(5)
        run = compute.Compute(torch.device("cpu"), workers=workers)
        ours = passes(run.batches(dataset, batch_size, ours_gen), ours_gen)
        assert len(ours) == len(plain)
        for a, b in zip(plain, ours, strict=True):
            if isinstance(a, tuple):
                assert a[0] == b[0] and torch.equal(a[1], b[1])
            else:
                assert torch.equal(a, b)


@pytest.mark.parametrize("batch_size", ["3", "4"])  # 14 images: a short last batch, and none
def test_workers_fine_tune_exactly_as_without(folder, tmp_path, batch_size):
    for workers in ("0", "2"):
        out = tmp_path / workers
        argv = finetune_argv(folder, out, "--batch-size", batch_size, "--workers", workers)
        assert cli.main(argv) == 0
    assert_same_weights(tmp_path / "0" / "checkpoint.pt", tmp_path / "2" / "checkpoint.pt")
    reports = [json.loads((tmp_path / w / "report.json").read_text()) for w in ("0", "2")]
    assert [h["loss"] for h in reports[0]["history"]] == [h["loss"] for h in reports[1]["history"]]
    assert reports[1]["compute"]["workers"] == 2


def test_workers_train_exactly_as_without(folder, tmp_path):
    for workers in ("0", "2"):
        argv = ["train", "--data", str(folder / "images"), "--val-fraction", "0.25", "--epochs", "2"]
        assert cli.main([*argv, "--batch-size", "4", "--workers", workers, "--out", str(tmp_path / workers)]) == 0
    assert_same_weights(tmp_path / "0" / "checkpoint.pt", tmp_path / "2" / "checkpoint.pt")


def test_with_augmentation_a_run_repeats_for_a_given_number_of_workers():
    images = torch.stack([torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(12)])
    maps = torch.zeros(12, 1, 32, 32)
    maps[:, :, 8:24, 4:16] = 1  # off-centre, so that a flip moves it
    dataset = TensorSet(images, torch.arange(12) % 2, maps)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("abn_small", 2)
        cfg = knowledge.TuneConfig(epochs=2, batch_size=4, augment="photo", workers=2)
        history = knowledge.fine_tune(model, dataset, [0.5] * 3, [0.25] * 3, cfg, progress=False)
        runs.append(([h["loss"] for h in history], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())


def test_a_fine_tune_is_taken_up_again_under_other_compute_settings(folder, tmp_path, capsys):
    """How a run computes is not what it is: its saved state does not refuse other workers (or devices)."""
    out = tmp_path / "run"
    assert cli.main(finetune_argv(folder, out, "--batch-size", "4")) == 0
    assert cli.main(finetune_argv(folder, out, "--batch-size", "4", "--workers", "2")) == 0
    assert f"{out} holds this fine-tune finished: scoring it again" in capsys.readouterr().out
    assert cli.main(finetune_argv(folder, out, "--batch-size", "5")) == 2  # what it is still has to agree
    assert "holds a fine-tune with batch_size = 4, this run asks for batch_size = 5" in capsys.readouterr().err


def test_a_training_run_resumes_under_other_compute_settings(folder, tmp_path):
    """Resuming takes what the run is from its saved state, and how it computes from the command."""
    argv = ["train", "--data", str(folder / "images"), "--val-fraction", "0.25", "--batch-size", "4"]
    assert cli.main([*argv, "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*argv, "--epochs", "2", "--workers", "2", "--resume", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["compute"]["workers"] == 2
    assert cli.main([*argv, "--epochs", "2", "--out", str(tmp_path / "b")]) == 0
    a, b = weights(tmp_path / "a" / "checkpoint.pt"), weights(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


# ---- from pretrained weights: the ImageNet recipe where no option says otherwise


def test_pretrained_runs_default_to_the_imagenet_recipe(tmp_path):
    resolve = train._resolve
    recipe, _ = resolve(train.TrainConfig(arch="abn_resnet50", pretrained="w.pth", out=str(tmp_path / "a")))
    assert recipe.input_size == 224 and recipe.data.augment == "photo"
    given = train.TrainConfig(
        arch="abn_resnet50", pretrained="w.pth", input_size=160, data=DataConfig(augment="none"), out=str(tmp_path)
    )
    kept, _ = resolve(given)
    assert kept.input_size == 160 and kept.data.augment == "none"  # what was given is kept
    plain, _ = resolve(train.TrainConfig(out=str(tmp_path / "b")))
    assert plain.input_size == 32 and plain.data.augment == "none"  # without pretrained weights, as before
    line = train.pretrained_recipe(train.TrainConfig(arch="abn_resnet50", pretrained="w.pth"), recipe)
    assert line == (
        "from pretrained weights: input 224x224, ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, "
        "0.225), --augment photo (the ImageNet recipe, where no option says otherwise)"
    )
    assert train.pretrained_recipe(given, kept) == (
        "from pretrained weights: ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) "
        "(the ImageNet recipe, where no option says otherwise)"
    )


def test_pretrained_weights_take_imagenet_normalisation_even_on_the_digits(tmp_path, capsys):
    torch.manual_seed(7)
    torch.save(resnet18().state_dict(), tmp_path / "resnet18.pth")
    argv = ["train", "--arch", "abn_resnet18", "--pretrained", str(tmp_path / "resnet18.pth"), "--input-size", "32"]
    assert cli.main([*argv, "--epochs", "0", "--out", str(tmp_path / "run")]) == 0
    assert "from pretrained weights: ImageNet's mean" in capsys.readouterr().out
    meta = json.loads((tmp_path / "run" / "metrics.json").read_text())["metadata"]
    assert meta["mean"] == data.IMAGENET_MEAN and meta["std"] == data.IMAGENET_STD  # not the digits' own
    assert meta["trained_on"]["augment"] == "photo" and meta["input_size"] == [32, 32]


# ---- on a GPU


@needs_gpu
def test_mixed_precision_channels_last_and_workers_train_on_the_gpu(folder, tmp_path, capsys):
    base = ["train", "--data", str(folder / "images"), "--epochs", "2", "--batch-size", "4", "--device", "cuda"]
    for precision in ("bf16", "fp16"):
        out = tmp_path / precision
        argv = [*base, "--precision", precision, "--channels-last", "--workers", "2", "--out", str(out)]
        assert cli.main(argv) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["compute"] == {"device": "cuda:0", "precision": precision, "channels_last": True, "workers": 2}
        assert all(np.isfinite(h["train_loss"]) for h in metrics["history"])
        saved = weights(out / "checkpoint.pt")  # fp32, on the CPU, contiguous: the same kind as ever
        floats = [v for v in saved.values() if v.is_floating_point()]
        assert all(v.dtype == torch.float32 and v.device.type == "cpu" and v.is_contiguous() for v in floats)
        model, _ = checkpoint.load(out / "checkpoint.pt")
        assert model(torch.rand(1, 3, 32, 32)).logits.shape == (1, 2)
    capsys.readouterr()


@needs_gpu
def test_fine_tuning_on_the_gpu_in_mixed_precision(folder, tmp_path):
    for precision in ("bf16", "fp16"):
        out = tmp_path / precision
        argv = finetune_argv(folder, out, "--device", "cuda", "--precision", precision, "--channels-last")
        assert cli.main([*argv, "--batch-size", "4", "--workers", "2"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["compute"]["device"] == "cuda:0" and report["compute"]["precision"] == precision
        assert all(np.isfinite(h["loss"]) for h in report["history"])
        saved = weights(out / "checkpoint.pt")
        assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in saved.values() if v.is_floating_point())
    # the same fine-tune on the GPU in fp32 and on the CPU: the same procedure, float rounding apart
    for device in ("cuda", "cpu"):
        argv = finetune_argv(folder, tmp_path / device, "--device", device, "--batch-size", "4")
        assert cli.main(argv) == 0
    gpu, cpu = weights(tmp_path / "cuda" / "checkpoint.pt"), weights(tmp_path / "cpu" / "checkpoint.pt")
    assert all(torch.allclose(gpu[k].float(), cpu[k].float(), atol=1e-2) for k in cpu)
