"""``aprnet train / eval / predict``."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_aprnet.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = main(["train", "--model", "Pix_A", "--width", "0.25", "--size", "32", "--steps", "6", "--batch-size", "4",
               "--classes", "triangle,circle", "--out", str(out)])
    assert rc == 0
    return out


def test_train_writes_checkpoint_and_csv(run_dir, capsys):
    assert (run_dir / "checkpoint.pt").is_file()
    with open(run_dir / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert all(r["phase"] == "train" and float(r["loss"]) > 0 for r in rows)


def test_train_resume_extends(run_dir, tmp_path, capsys):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    assert main(["train", "--out", str(out), "--resume", "--steps", "8"]) == 0
    assert "done: 8 steps" in capsys.readouterr().out
    # an existing run is not overwritten without --resume
    assert main(["train", "--model", "Pix_A", "--steps", "2", "--out", str(out)]) == 2
    assert "resume" in capsys.readouterr().err


def test_eval_prints_accuracy_and_confusion(run_dir, capsys):
    assert main(["eval", str(run_dir / "checkpoint.pt"), "--n", "5"]) == 0
    out = capsys.readouterr().out
    assert "10 images" in out and "accuracy" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "predicted" in line)
    counts = [list(map(int, lines[header + k].split()[1:])) for k in (1, 2)]
    assert np.sum(counts) == 10 and [sum(r) for r in counts] == [5, 5]


def test_predict(run_dir, tmp_path, capsys):
    import imageio.v3 as iio

    from napari_aprnet.data import make_shapes_dataset
    ds = make_shapes_dataset(1, seed=1, size=48, classes=("triangle", "circle"))
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        iio.imwrite(p, (ds[i][0] * 255).astype(np.uint8))
        paths.append(str(p))
    assert main(["predict", str(run_dir / "checkpoint.pt"), *paths, "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    for line in out:
        probs = [float(tok) for tok in line.replace(",", " ").split()[2::2]]
        assert len(probs) == 2 and abs(sum(probs) - 1) < 2e-3 and probs[0] >= probs[1]


def test_predict_errors(run_dir, tmp_path, capsys):
    ckpt = str(run_dir / "checkpoint.pt")
    assert main(["predict", ckpt, str(tmp_path / "missing.png")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    assert main(["predict", ckpt, str(bad)]) == 2
    assert "could not read" in capsys.readouterr().err
    import imageio.v3 as iio
    rgb = tmp_path / "rgb.png"
    iio.imwrite(rgb, np.zeros((20, 20, 3), np.uint8))
    assert main(["predict", ckpt, str(rgb)]) == 2
    assert "grey" in capsys.readouterr().err
    assert main(["predict", str(bad), str(rgb)]) == 2
    assert "not a napari-aprnet checkpoint" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope.pt")]) == 2


def test_train_argument_errors(tmp_path, capsys):
    assert main(["train", "--model", "Pix_Z", "--steps", "2", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nodata"), "--epochs", "1", "--out", str(tmp_path / "y")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "z")]) == 2


def _tampered(run_dir, tmp_path, change, rehash=True):
    """A copy of the run's checkpoint with ``change(data)`` applied (hash updated unless rehash=False)."""
    import torch

    from napari_aprnet.training import checkpoint
    data = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    change(data)
    path = tmp_path / "tampered.pt"
    if rehash:
        checkpoint._write(path, data)
    else:
        torch.save(data, path)
    return str(path)


def _scale_first_weight(data):
    key = next(k for k, v in data["state_dict"].items() if v.is_floating_point())
    data["state_dict"][key] = data["state_dict"][key] * 1.01


def _nan_weight(data):
    key = next(k for k, v in data["state_dict"].items() if v.is_floating_point())
    data["state_dict"][key] = data["state_dict"][key] * float("nan")


@pytest.mark.parametrize("change,rehash,match", [
    (_scale_first_weight, False, "damaged: its contents do not match the sha256"),
    (lambda d: d.pop("sha256"), False, "no integrity hash .*resave_checkpoint"),
    (_nan_weight, True, "contains NaN or Inf"),
    (lambda d: d["input"].update(mean=[float("nan")]), True, "normalisation 'mean'"),
    (lambda d: d["input"].update(std=[0.0]), True, "normalisation 'std'"),
    (lambda d: d["input"].update(size=10**12), True, "input size"),
    (lambda d: d.update(model=[1, 2]), True, "does not describe a usable network"),
    (lambda d: d["model"].update(n_classes="x"), True, "does not describe a usable network"),
])
def test_damaged_checkpoints_are_one_line_errors(run_dir, tmp_path, capsys, change, rehash, match):
    import re
    ckpt = _tampered(run_dir, tmp_path, change, rehash)
    img = tmp_path / "x.npy"
    np.save(img, np.zeros((32, 32), np.float32))
    assert main(["predict", ckpt, str(img)]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_resave_adds_the_hash(run_dir, tmp_path):
    from napari_aprnet.checkpoint import load_checkpoint, resave_checkpoint
    ckpt = _tampered(run_dir, tmp_path, lambda d: d.pop("sha256"), rehash=False)
    resave_checkpoint(ckpt)
    assert "sha256" in load_checkpoint(ckpt)


def test_predict_escapes_control_characters_in_class_names(run_dir, tmp_path, capsys):
    ckpt = _tampered(run_dir, tmp_path, lambda d: d.update(class_names=["tri\x1b[2Jangle", "ci\nrcle\x07"]))
    img = tmp_path / "x.npy"
    np.save(img, np.zeros((32, 32), np.float32))
    assert main(["predict", ckpt, str(img)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and len(out.splitlines()) == 1
    assert "tri\\x1b[2Jangle" in out and "ci\\nrcle\\x07" in out
